"""The training loop: explicit, one optimizer step at a time, no hidden trainer class.

Each optimizer step:

1. take this process's micro-batches of packed bins (:mod:`zhlora.training.packing`) from the
   epoch's seeded bin order, and count the scored tokens of the whole step on all processes;
2. for each micro-batch, forward with the packed attention layout and back-propagate
   :func:`~zhlora.training.loss.micro_batch_objective` (inside ``accelerator.accumulate``, which
   skips the gradient all-reduce until the last micro-batch);
3. clip, step the optimizer and the LR schedule;
4. run the callbacks (the monitoring hook: ``on_step_end(step, model)`` may add a log row or
   ask to stop), reduce the step's statistics across processes, log, checkpoint, and stop on
   Ctrl-C, SIGTERM or a callback's request (after saving a checkpoint).
"""

from __future__ import annotations

import functools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from zhlora.data.preprocess import IGNORE_INDEX
from zhlora.training.checkpoint import save_checkpoint
from zhlora.training.dataset import TokenRows
from zhlora.training.logbook import TrainingLog
from zhlora.training.loss import fused_linear_token_loss_sum, micro_batch_objective, token_loss_sum
from zhlora.training.packing import (
    PackedBatch,
    block_causal_mask,
    collate_bins,
    epoch_permutation,
    micro_batch_bins,
    pad_fraction,
)
from zhlora.training.schedule import StepPlan
from zhlora.training.segment_attention import SEGMENTS, row_bounds, use_segment_attention

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What a callback returns after an optimizer step."""

    record: dict | None = None  # logged to training_log.jsonl as {"step": step, **record}
    stop: bool = False  # end the run after this step (a checkpoint is saved first)


class StepCallback(Protocol):
    """The monitoring hook, called on every process after every optimizer step.

    ``model`` is the unwrapped PEFT model in train mode; a callback that evaluates must switch
    it to eval mode and back, and must not change its weights.
    """

    def on_step_end(self, step: int, model: torch.nn.Module) -> StepReport | None: ...


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs (plain values unpacked from the config by the command)."""

    output_dir: Path
    seed: int
    pad_token_id: int
    max_grad_norm: float  # 0 disables clipping (the norm is still logged)
    logging_steps: int
    save_steps: int
    save_total_limit: int
    run_state: dict = field(default_factory=dict)  # identity fields stored in every checkpoint


@dataclass
class LoopResult:
    """How the loop ended."""

    status: str  # "completed", "interrupted" (Ctrl-C / SIGTERM) or "stopped" (a callback)
    step: int
    last_loss: float | None
    real_tokens: int  # non-pad tokens processed by all processes in this session
    total_tokens: int  # positions computed, padding included
    seconds: float  # wall seconds of this session's loop
    checkpoint: Path | None = None
    cpu_seconds: float = 0.0  # CPU seconds of this process (all its threads) over the same span

    @property
    def pad_fraction(self) -> float:
        return pad_fraction(self.real_tokens, self.total_tokens)


def attention_layout(attn_implementation: str) -> str:
    """How packed rows are kept apart: ``varlen`` (flash-attention), ``segments`` (one row's attention
    at a time, :mod:`~zhlora.training.segment_attention`) or a 4-D mask (``sdpa``, ``eager``)."""
    if attn_implementation.startswith("flash_attention"):
        return "varlen"
    if attn_implementation == SEGMENTS:
        return "segments"
    if attn_implementation in ("sdpa", "eager"):
        return attn_implementation
    raise ValueError(f"unsupported attention implementation {attn_implementation!r} for packed training")


def training_layout(model, device) -> str:
    """The model's :func:`attention_layout`, except that sdpa on a CPU becomes ``segments``.

    CPU sdpa kernels compute every pair of a block-diagonal mask, masked or not; segment
    attention computes only the pairs within each row (same loss, perf/README.md).
    """
    layout = attention_layout(model.config._attn_implementation)
    if layout == "sdpa" and torch.device(device).type == "cpu":
        use_segment_attention(model)
        return "segments"
    return layout


def unwrapped(model):
    """The model inside DDP's (and DeepSpeed's) wrapper, which holds the config."""
    while hasattr(model, "module"):
        model = model.module
    return model


# Vocabularies from this size up (Gemma's 262,144) get the fused output layer: the float32 logits of ~800
# scored positions are then 0.8 GB, with their softmax and gradient several times that. Below it (Llama's 32k,
# SmolLM2's 49k, Llama-3's 128k) the plain path keeps results identical to earlier releases.
FUSED_HEAD_MIN_VOCAB = 200_000


def fused_head_weight(model) -> torch.Tensor | None:
    """The frozen output-layer weight when the training loss should use :func:`fused_linear_token_loss_sum`, else None.

    Only for a plain linear head (no bias, no logit soft-capping or scaling) that is frozen (LoRA; a
    full fine-tuning run trains it) and at least :data:`FUSED_HEAD_MIN_VOCAB` wide.
    """
    inner = unwrapped(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    head = inner.get_output_embeddings()
    config = inner.config
    if (head is None or not isinstance(head, torch.nn.Linear) or head.bias is not None or head.weight.requires_grad
            or head.weight.shape[0] < FUSED_HEAD_MIN_VOCAB or getattr(config, "final_logit_softcapping", None)
            or getattr(config, "logit_scale", None) not in (None, 1.0)):
        return None
    return head.weight


def sliding_window_of(config) -> int | None:
    """The local layers' window of a model that mixes full and sliding-window attention (Gemma 2/3), else None."""
    window = getattr(config, "sliding_window", None)
    return window if window and "sliding_attention" in (getattr(config, "layer_types", None) or ()) else None


def packed_inputs(batch: PackedBatch, layout: str, mask_dtype: torch.dtype, device,
                  sliding_window: int | None = None) -> dict:
    """Model keyword arguments for one packed micro-batch.

    ``varlen`` expects a flattened batch (one row) whose ``position_ids`` resets mark the rows;
    ``segments`` the same plus the row boundaries as ``cu_seq_lens_q`` (the attention function
    applies each layer's sliding window itself); ``sdpa`` gets a boolean and ``eager`` an additive
    block-diagonal causal mask, which transformers passes to the attention layers unchanged (a 4-D
    mask is taken as prepared). With a ``sliding_window`` (see :func:`sliding_window_of`) that mask is
    a mapping per layer type, the local layers' one banded, as transformers builds for one row.
    """
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "position_ids": batch.position_ids.to(device),
        "use_cache": False,
    }
    if layout == "segments":
        inputs["cu_seq_lens_q"] = row_bounds(inputs["position_ids"])
    elif layout != "varlen":
        segment_ids = batch.segment_ids.to(device)
        dtype = None if layout == "sdpa" else mask_dtype
        inputs["attention_mask"] = block_causal_mask(segment_ids, dtype)
        if sliding_window is not None:
            inputs["attention_mask"] = {"full_attention": inputs["attention_mask"],
                                        "sliding_attention": block_causal_mask(segment_ids, dtype, sliding_window)}
    return inputs


def packed_forward(model, batch: PackedBatch, layout: str, mask_dtype: torch.dtype, device) -> tuple[torch.Tensor, int]:
    """Summed token loss and scored-token count of one packed micro-batch (see :func:`packed_inputs`).

    Logits are computed only where a token is scored (``logits_to_keep`` as a boolean mask, so
    transformers projects just those hidden states): the vocabulary projection, its float32 copy
    and the cross-entropy of prompt tokens and padding are skipped, which leaves the loss as it
    was and saves ~30% of the output layer's work on instruction data (49k x 576 of SmolLM2's
    135M weights are that layer). transformers releases before the boolean ``logits_to_keep``
    (``slice_logits_to_keep``) compute every logit and the scored ones are picked after: the same loss.
    """
    targets = batch.targets.to(device)
    scored = targets != IGNORE_INDEX
    inputs = packed_inputs(batch, layout, mask_dtype, device, sliding_window_of(unwrapped(model).config))
    head = fused_head_weight(model) if _masked_logits_supported() else None
    if head is not None:  # a vocabulary so wide that the scored positions' logits would dominate memory
        out = model(**inputs, logits_to_keep=torch.zeros_like(scored), output_hidden_states=True)
        return fused_linear_token_loss_sum(out.hidden_states[-1][scored], head, targets[scored])
    if _masked_logits_supported():
        logits = model(**inputs, logits_to_keep=scored).logits
    else:
        logits = model(**inputs).logits[scored]
    return token_loss_sum(logits, targets[scored])


@functools.cache
def _masked_logits_supported() -> bool:
    """Whether this transformers takes a boolean ``(batch, sequence)`` mask as ``logits_to_keep``."""
    import transformers
    from transformers import modeling_utils

    supported = hasattr(modeling_utils, "slice_logits_to_keep")
    if supported:
        logger.info("Logits only at scored positions (transformers %s takes a boolean logits_to_keep)",
                    transformers.__version__)
    else:
        logger.warning("transformers %s has no boolean logits_to_keep (slice_logits_to_keep): every position's logits "
                       "are computed and the scored ones picked after (same loss, ~25%% slower on instruction data). "
                       "A newer transformers (5.25 has it) trains faster.", transformers.__version__)
    return supported


class StopSignals:
    """Turn Ctrl-C and SIGTERM into a request to stop after the current step.

    A second Ctrl-C aborts at once (KeyboardInterrupt). SIGTERM (a scheduler's preemption, or
    the launcher forwarding Ctrl-C) only ever requests the stop. Outside the main thread the
    handlers cannot be installed and this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            logger.warning("%s received: finishing this step and saving a checkpoint (Ctrl-C again aborts).",
                           signal.Signals(signum).name)
        self.requested = True

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _step_batches(
    rows: TokenRows, bins: Sequence[Sequence[int]], order: np.ndarray, step_in_epoch: int, rank: int,
    world_size: int, batch_size: int, accumulation_steps: int, pad_token_id: int, flatten: bool,
) -> list[PackedBatch]:
    batches = []
    for micro in range(accumulation_steps):
        bin_ids = micro_batch_bins(order, step_in_epoch, micro, rank, world_size, batch_size, accumulation_steps)
        batches.append(collate_bins([[rows.row(i) for i in bins[b]] for b in bin_ids], pad_token_id, flatten=flatten))
    return batches


def train_loop(
    accelerator, model, optimizer, scheduler, rows: TokenRows, bins: Sequence[Sequence[int]], plan: StepPlan,
    settings: LoopSettings, start_step: int = 0, log: TrainingLog | None = None,
    callbacks: Sequence[StepCallback] = (), on_log: Callable[[dict], None] | None = None,
) -> LoopResult:
    """Train from ``start_step`` to ``plan.total_steps`` (or until asked to stop); see the module docstring.

    ``model``/``optimizer`` come from ``accelerator.prepare``; ``scheduler`` is a plain LR scheduler
    stepped once per optimizer step. ``on_log`` receives each logged row (trackers, progress).
    """
    from zhlora.progress import progress_bar

    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = accelerator.gradient_accumulation_steps
    batch_size = plan.bins_per_step // (world * accumulation)
    unwrapped = accelerator.unwrap_model(model)
    layout = training_layout(unwrapped, device)
    mask_dtype = unwrapped.get_input_embeddings().weight.dtype
    max_norm = settings.max_grad_norm if settings.max_grad_norm > 0 else math.inf

    model.train()
    # window sums since the last log row: loss (nats), scored, real and computed tokens
    window = torch.zeros(4, dtype=torch.float64, device=device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    window_start = session_start = time.perf_counter()
    session_cpu_start = time.process_time()
    last_loss: float | None = None
    order, order_epoch = None, -1
    status, checkpoint = "completed", None
    step = start_step
    progress = progress_bar(plan.total_steps, "training", "step", initial=start_step,
                            disable=not accelerator.is_main_process)
    with StopSignals() as signals, progress:
        while step < plan.total_steps:
            epoch, step_in_epoch = divmod(step, plan.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_permutation(len(bins), settings.seed, epoch), epoch
            batches = _step_batches(rows, bins, order, step_in_epoch, rank, world, batch_size, accumulation,
                                    settings.pad_token_id, flatten=layout in ("varlen", "segments"))
            local_targets = torch.tensor(float(sum(b.target_tokens for b in batches)), device=device)
            step_targets = int(accelerator.reduce(local_targets, reduction="sum").item())

            step_loss = torch.zeros((), dtype=torch.float64, device=device)
            for batch in batches:
                with accelerator.accumulate(model):
                    loss_sum, _ = packed_forward(model, batch, layout, mask_dtype, device)
                    accelerator.backward(micro_batch_objective(loss_sum, step_targets, world, accumulation))
                step_loss += loss_sum.detach().double()
            if not accelerator.sync_gradients:
                raise RuntimeError("gradient accumulation is out of step with the optimizer steps (a bug in zhlora)")
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            callbacks_start = time.perf_counter()
            reports = [cb.on_step_end(step, unwrapped) for cb in callbacks]
            window_start += time.perf_counter() - callbacks_start  # probes are not training time
            callback_stop = any(r is not None and r.stop for r in reports)
            stats = torch.tensor(
                [step_loss.item(), sum(b.target_tokens for b in batches), sum(b.real_tokens for b in batches),
                 sum(b.total_tokens for b in batches), float(signals.requested), float(callback_stop)],
                dtype=torch.float64, device=device,
            )
            stats = accelerator.reduce(stats, reduction="sum")  # every process agrees on what happened
            window += stats[:4]
            totals += stats[:4]
            interrupted, stop = bool(stats[4] > 0), bool(stats[4] + stats[5] > 0)

            if step % settings.logging_steps == 0 or step == plan.total_steps or stop:
                seconds = time.perf_counter() - window_start
                last_loss = float(window[0] / max(window[1], 1))
                row = {
                    "step": step,
                    "loss": round(last_loss, 6),
                    "learning_rate": learning_rate,
                    "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                    "tokens_per_second": round(float(window[2]) / seconds, 1),
                    "epoch": round(plan.epoch_of(step), 4),
                    "pad_fraction": round(pad_fraction(int(window[2]), int(window[3])), 4),
                }
                if accelerator.is_main_process:
                    progress.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{row['tokens_per_second']:.0f}")
                    if log is not None:
                        log.append(row)
                    if on_log is not None:
                        on_log(row)
                window.zero_()
                window_start = time.perf_counter()
            progress.update(1)  # after the step's loss is set, so the progress line shows this step's loss
            if accelerator.is_main_process and log is not None:
                for report in reports:
                    if report is not None and report.record:
                        log.append({"step": step, **report.record})

            if step % settings.save_steps == 0 or (stop and step < plan.total_steps):
                state = {
                    **settings.run_state,
                    "epoch": plan.epoch_of(step),
                    "steps_per_epoch": plan.steps_per_epoch,
                    "total_steps": plan.total_steps,
                    "world_size": world,
                    "seed": settings.seed,
                }
                checkpoint = save_checkpoint(accelerator, model, settings.output_dir, step, state, settings.save_total_limit)
                window_start = time.perf_counter()  # saving is not training time
            if stop:
                status = "interrupted" if interrupted else "stopped"
                break

    return LoopResult(
        status=status,
        step=step,
        last_loss=last_loss,
        real_tokens=int(totals[2]),
        total_tokens=int(totals[3]),
        seconds=time.perf_counter() - session_start,
        checkpoint=checkpoint,
        cpu_seconds=time.process_time() - session_cpu_start,
    )

