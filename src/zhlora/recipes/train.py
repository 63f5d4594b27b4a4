"""The training recipe: the library entry point of step 5, read top to bottom.

:func:`train` is what ``zhlora train`` (and through it ``zhlora run``, ``zhlora sweep`` and the
seed script ``scripts/train_lora.py``) calls; a notebook or another tool can call it the same
way. It holds the run folder's lock (one writer per folder; under ``accelerate launch`` the main
process holds it for all) and runs four stages:

1. :func:`read_inputs` — the accelerator, the processed rows and their tokenizer, the run's
   fingerprint, and whether the folder is fresh, resumable or already complete;
2. :func:`prepare` — the run folder, model + LoRA adapter, the packed data plan, optimizer and
   schedule, the resumed checkpoint, the training log and the forgetting monitor;
3. :func:`fit` — the explicit loop (:func:`zhlora.training.loop.train_loop`) with the callbacks;
4. :func:`finish` — the final adapter (the budget's chosen step when a forgetting budget
   chose one), the curves and ``manifest.json`` (written last: it marks the run complete).

Every process of a distributed launch runs all four; only the main process writes run files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhlora.config import ExperimentConfig, config_to_dict, dump_config_yaml
from zhlora.errors import ConfigError
from zhlora.locking import folder_lock

logger = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What :func:`train` did: ``completed``, ``complete`` (already done), ``interrupted`` or ``stopped``."""

    status: str
    output_dir: Path
    step: int = 0
    last_loss: float | None = None
    is_main_process: bool = True  # False on the other processes of a distributed launch (they print nothing)
    monitoring: dict | None = None  # the manifest's monitoring section (--monitor_every)


@dataclass
class TrainInputs:
    """Stage 1: what identifies the run and where it starts (no model loaded yet)."""

    cfg: ExperimentConfig
    model_path: Path
    dataset_path: Path
    output_dir: Path
    overwrite: bool
    accelerator: Any  # accelerate.Accelerator
    rows: Any  # zhlora.training.dataset.TokenRows
    meta: dict  # processed_data/meta.json
    tokenizer: Any
    base_sha: str  # the base model's weights_sha256
    data_sha: str  # the processed training set's fingerprint
    fingerprint: str  # zhlora.training.outputs.run_fingerprint
    start: Any  # zhlora.training.outputs.RunStart: fresh, resume or complete
    init_weights: bool | str  # --init_lora_weights as PEFT takes it (zhlora.training.lora.parse_init_lora_weights)


@dataclass
class TrainRun:
    """Stage 2: the run context that :func:`fit` trains and :func:`finish` writes out."""

    inputs: TrainInputs
    model: Any  # the PEFT model, prepared by accelerate
    optimizer: Any
    scheduler: Any
    bins: list[list[int]]  # packed sequences (row indices)
    plan: Any  # zhlora.training.schedule.StepPlan
    trainable: int  # trainable parameters
    total: int  # all parameters
    start_step: int  # 0, or the resumed checkpoint's step
    log: Any  # zhlora.training.logbook.TrainingLog
    monitor: Any = None  # zhlora.monitoring.callback.ForgettingMonitor (--monitor_every)

    @property
    def initial_adapter(self) -> Path:
        """The PiSSA/OLoRA start point, kept to convert the result to plain LoRA."""
        from zhlora.filenames import INITIAL_ADAPTER_DIR

        return self.inputs.output_dir / INITIAL_ADAPTER_DIR


def train(
    cfg: ExperimentConfig, model_path: str | os.PathLike, dataset_path: str | os.PathLike, output_dir: str | os.PathLike,
    resume: bool = False, overwrite: bool = False, callbacks: Sequence = (),
    probe_data_dir: str | os.PathLike | None = None,
) -> TrainOutcome:
    """Validate the inputs, build model + adapter + data plan, train, and write the run folder.

    ``callbacks`` are :class:`zhlora.training.loop.StepCallback` objects, run after the
    forgetting monitor (built when ``cfg.train.monitor_every`` > 0, probing the benchmark data
    in ``probe_data_dir``, by default the ``data_dir`` that ``preprocess`` recorded). A folder
    with checkpoints of the same run is resumed (``resume`` insists on one); one holding another
    run is refused unless ``overwrite``. Every process of a distributed launch calls this.
    """
    from zhlora.training.outputs import check_output_dir_is_a_run_folder

    model_path, dataset_path, output_dir = Path(model_path), Path(dataset_path), Path(output_dir)
    probe_data_dir = Path(probe_data_dir) if probe_data_dir is not None else None
    check_output_dir_is_a_run_folder(output_dir)
    # One writer per run folder; under `accelerate launch` the main process (rank 0) holds it for all.
    lock = folder_lock(output_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock:
        inputs = read_inputs(cfg, model_path, dataset_path, output_dir, resume=resume, overwrite=overwrite)
        if inputs.start.kind == "complete":
            return TrainOutcome("complete", output_dir, is_main_process=inputs.accelerator.is_main_process)
        run = prepare(inputs, probe_data_dir)
        result = fit(run, callbacks)
        return finish(run, result)


def read_inputs(cfg: ExperimentConfig, model_path: Path, dataset_path: Path, output_dir: Path,
                resume: bool, overwrite: bool) -> TrainInputs:
    """The accelerator, the processed rows checked against the tokenizer, the fingerprint, where to start."""
    import torch
    from accelerate import Accelerator

    from zhlora.models.loading import load_tokenizer
    from zhlora.models.manifest import model_fingerprint
    from zhlora.training import dataset as data
    from zhlora.training import lora, outputs

    tcfg = cfg.train
    _check_environment(cfg)
    init_weights = lora.parse_init_lora_weights(cfg.lora.init_lora_weights)
    accelerator = Accelerator(
        # several processes without a GPU (torchrun on a CPU box): gloo data parallelism
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
        log_with=None if tcfg.report_to == "none" else tcfg.report_to,
        project_dir=str(output_dir),
    )
    if not accelerator.is_main_process:
        logging.getLogger("zhlora").setLevel(logging.WARNING)

    rows = data.load_token_rows(dataset_path)
    meta, meta_path = data.read_processed_meta(dataset_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    data.check_tokenizer_matches(meta, meta_path, tokenizer, model_path)
    base_sha = model_fingerprint(model_path)
    data_sha = data.dataset_fingerprint(dataset_path)
    raw = config_to_dict(cfg)
    fingerprint = outputs.run_fingerprint(raw["lora"], raw["train"], raw["model"], base_sha, data_sha)
    start = outputs.decide_start(output_dir, fingerprint, resume=resume, overwrite=overwrite)
    return TrainInputs(cfg, model_path, dataset_path, output_dir, overwrite, accelerator, rows, meta, tokenizer,
                       base_sha, data_sha, fingerprint, start, init_weights)


def prepare(inputs: TrainInputs, probe_data_dir: Path | None = None) -> TrainRun:
    """The run folder, model + adapter (same seed on every process), data plan, optimizer, resume, log, monitor."""
    import torch
    from accelerate.utils import set_seed

    from zhlora.filenames import RUN_CONFIG, TRAINING_LOG
    from zhlora.io_utils import atomic_write_text
    from zhlora.training import checkpoint as ckpt
    from zhlora.training import outputs
    from zhlora.training.logbook import TrainingLog
    from zhlora.training.packing import pack_rows
    from zhlora.training.schedule import build_lr_scheduler, plan_steps

    cfg, accelerator, output_dir, rows = inputs.cfg, inputs.accelerator, inputs.output_dir, inputs.rows
    tcfg = cfg.train
    if accelerator.is_main_process:
        if inputs.overwrite:
            outputs.clear_run_artefacts(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / RUN_CONFIG, dump_config_yaml(cfg))
    accelerator.wait_for_everyone()

    set_seed(tcfg.seed)
    model, trainable, total = _build_model(inputs)

    lengths = rows.lengths
    bins = pack_rows(lengths, tcfg.max_seq_length) if tcfg.packing else [[i] for i in range(len(rows))]
    plan = plan_steps(len(bins), tcfg.per_device_train_batch_size, tcfg.gradient_accumulation_steps,
                      accelerator.num_processes, tcfg.num_train_epochs, tcfg.max_steps, tcfg.warmup_ratio)
    logger.info("%d rows (%d tokens, %d scored) in %d packed sequences of <= %d tokens (%.1f%% full); "
                "%d sequences per optimizer step, %d steps per epoch, %d steps", len(rows), int(lengths.sum()),
                int(rows.scored_tokens_per_row().sum()), len(bins), tcfg.max_seq_length,
                100 * lengths.sum() / (len(bins) * tcfg.max_seq_length), plan.bins_per_step,
                plan.steps_per_epoch, plan.total_steps)
    if plan.repeated_per_epoch:
        logger.info("The last step of each epoch tops up with %d sequence(s) from the epoch's start (%.1f%% of an "
                    "epoch's sequences trained twice), so every step has the same shape on every process",
                    plan.repeated_per_epoch, 100 * plan.repeated_per_epoch / len(bins))

    if accelerator.is_main_process and inputs.start.kind == "fresh":
        from zhlora.storage import check_free_space, checkpoint_bytes

        planned = plan.total_steps // tcfg.save_steps if tcfg.save_steps > 0 else 0
        kept = min(planned, tcfg.save_total_limit) if tcfg.save_total_limit > 0 else planned
        check_free_space(output_dir, checkpoint_bytes(trainable, kept), f"{kept} checkpoint(s) and the trained weights")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.peak_learning_rate,
                                  weight_decay=tcfg.weight_decay)
    scheduler = build_lr_scheduler(optimizer, tcfg.lr_scheduler_type, plan.warmup_steps, plan.total_steps)
    _configure_sharding(accelerator, model, tcfg.per_device_train_batch_size, tcfg.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ckpt.register_adapter_only_hooks(accelerator)
    resuming = inputs.start.kind == "resume"
    start_step = 0
    if resuming:
        start_step = int(ckpt.load_checkpoint(accelerator, model, inputs.start.checkpoint)["step"])
    else:
        set_seed(tcfg.seed, device_specific=True)  # dropout differs between processes
    log = TrainingLog(output_dir / TRAINING_LOG, resume_step=start_step if resuming else None,
                      enabled=accelerator.is_main_process)
    if tcfg.report_to != "none":
        accelerator.init_trackers(cfg.run_name, config=_tracker_config(cfg))
    run = TrainRun(inputs, model, optimizer, scheduler, bins, plan, trainable, total, start_step, log)
    if tcfg.monitor_every:
        run.monitor = _start_monitor(run, probe_data_dir)
    elif tcfg.forgetting_budget:
        logger.info("--forgetting_budget %s is the analysis margin; training is not probed against it "
                    "(add --monitor_every N to stop or choose a step within it)", tcfg.forgetting_budget)
    return run


def fit(run: TrainRun, callbacks: Sequence = ()):
    """The training loop from ``run.start_step``; returns its :class:`zhlora.training.loop.LoopResult`."""
    from zhlora.training.loop import LoopSettings, train_loop

    inputs, tcfg = run.inputs, run.inputs.cfg.train
    accelerator = inputs.accelerator
    if run.monitor is not None:
        callbacks = [run.monitor, *callbacks]
    settings = LoopSettings(
        output_dir=inputs.output_dir, seed=tcfg.seed, pad_token_id=inputs.tokenizer.pad_token_id,
        max_grad_norm=tcfg.max_grad_norm, logging_steps=tcfg.logging_steps, save_steps=tcfg.save_steps,
        save_total_limit=tcfg.save_total_limit, run_state={"run_fingerprint": inputs.fingerprint},
    )
    return train_loop(
        accelerator, run.model, run.optimizer, run.scheduler, inputs.rows, run.bins, run.plan, settings,
        start_step=run.start_step, log=run.log, callbacks=callbacks,
        on_log=None if tcfg.report_to == "none" else lambda row: accelerator.log(
            {k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"]),
    )


def finish(run: TrainRun, result) -> TrainOutcome:
    """After the loop: the adapter, curves and manifest (last), or only the trackers after an interruption."""
    from zhlora.training import lora
    from zhlora.training.weights import save_full_model

    inputs = run.inputs
    accelerator, output_dir = inputs.accelerator, inputs.output_dir
    if result.status == "interrupted":
        accelerator.end_training()
        return TrainOutcome("interrupted", output_dir, result.step, result.last_loss, accelerator.is_main_process)

    adapter_step = result.step
    monitor = run.monitor
    if monitor is not None and monitor.restore_selected(accelerator.unwrap_model(run.model), result.step) is not None:
        adapter_step = monitor.selection.step  # an earlier step, chosen by the forgetting budget
    if inputs.cfg.train.finetuning_type == "full":
        save_full_model(accelerator, run.model, inputs.tokenizer, output_dir,
                        {"path": str(inputs.model_path), "weights_sha256": inputs.base_sha})
    else:
        mutating = lora.is_mutating_init(inputs.init_weights)
        _write_final_adapter(accelerator, run.model, output_dir, run.initial_adapter if mutating else None)
    monitoring = None
    if accelerator.is_main_process:
        monitoring = None if monitor is None else monitor.summary()
        write_weight_change(inputs)
        write_run_manifest(run, result, adapter_step, monitoring)
    accelerator.end_training()  # closes the trackers and the process group: last
    return TrainOutcome(result.status, output_dir, result.step, result.last_loss, accelerator.is_main_process,
                        monitoring=monitoring)


def _build_model(inputs: TrainInputs) -> tuple[Any, int, int]:
    """The base model with its LoRA adapter; returns (model, trainable parameters, all parameters)."""
    from zhlora.models.loading import load_model
    from zhlora.training import dataset as data
    from zhlora.training import lora

    cfg, accelerator, init_weights = inputs.cfg, inputs.accelerator, inputs.init_weights
    lcfg, tcfg = cfg.lora, cfg.train
    model = load_model(
        inputs.model_path, torch_dtype=cfg.model.torch_dtype, load_in_4bit=cfg.model.load_in_4bit,
        device_map={"": accelerator.local_process_index} if cfg.model.load_in_4bit else None,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    model.set_attn_implementation(_attention_implementation())
    data.check_rows_fit(inputs.rows, tcfg.max_seq_length, model.get_input_embeddings().weight.shape[0],
                        inputs.dataset_path)
    if tcfg.finetuning_type == "full":
        if tcfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.requires_grad_(True)
        trainable, total = lora.count_parameters(model)
        logger.info("Full fine-tuning: all %.1fM parameters trainable, learning rate %g", total / 1e6,
                    tcfg.peak_learning_rate)
        return model, trainable, total
    lora.check_target_modules(model, lcfg.target_modules)
    if cfg.model.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tcfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_config = lora.build_lora_config(lcfg.lora_rank, lcfg.lora_alpha, lcfg.lora_dropout, lcfg.target_modules,
                                         lcfg.use_rslora, lcfg.use_dora, init_weights)
    model = lora.apply_lora(model, lora_config)
    if lora.is_mutating_init(init_weights):
        from zhlora.filenames import INITIAL_ADAPTER_DIR

        # PiSSA/OLoRA rewrite the base weights; keep the start point to convert the result to plain LoRA.
        initial_adapter = inputs.output_dir / INITIAL_ADAPTER_DIR
        model.peft_config["default"].init_lora_weights = True
        if accelerator.is_main_process and not initial_adapter.is_dir():
            model.save_pretrained(str(initial_adapter))
    trainable, total = lora.count_parameters(model)
    logger.info("LoRA r=%d alpha=%g on %s: %.2fM trainable of %.1fM parameters (%.3f%%)", lcfg.lora_rank,
                lcfg.lora_alpha, ",".join(lcfg.target_modules), trainable / 1e6, total / 1e6, 100 * trainable / total)
    return model, trainable, total


def _check_environment(cfg: ExperimentConfig) -> None:
    import torch

    if cfg.model.load_in_4bit and not torch.cuda.is_available():
        raise ConfigError(
            "--load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes has no 4-bit kernels for this machine. "
            "Drop --load_in_4bit to train the full-precision base model here."
        )
    packages = {"tensorboard": "tensorboard", "wandb": "wandb"}
    if cfg.train.report_to != "none":
        package = packages.get(cfg.train.report_to)
        if package is None:
            raise ConfigError(f'--report_to must be none, tensorboard or wandb, got "{cfg.train.report_to}".')
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"--report_to {cfg.train.report_to} needs the {package} package: pip install {package}.")


def _attention_implementation() -> str:
    """flash-attention 2 (varlen packing) on CUDA when installed, else PyTorch sdpa with a 4-D mask."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _configure_sharding(accelerator, model, batch_size: int, max_grad_norm: float) -> None:
    """DeepSpeed and FSDP settings that depend on zhlora's flags and model (nothing to do otherwise).

    DeepSpeed cannot infer the micro-batch size without an accelerate dataloader and clips
    gradients itself; FSDP needs PEFT's wrap policy so frozen and trainable weights sit in
    separate flat parameters.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = batch_size
        ds_config["gradient_clipping"] = max_grad_norm
    elif accelerator.distributed_type == DistributedType.FSDP:
        from peft.utils.other import fsdp_auto_wrap_policy

        accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)


def _tracker_config(cfg: ExperimentConfig) -> dict:
    """The config flattened to scalars (what TensorBoard's hparams accept)."""
    flat = {}
    for group, values in config_to_dict(cfg).items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _start_monitor(run: TrainRun, probe_data_dir: Path | None):
    """The forgetting monitor of ``--monitor_every``, with its step-0 probes logged (unless resumed past them).

    Probe sets are drawn from the benchmark data; the budget is parsed from the config.
    """
    from accelerate.utils import DistributedType

    from zhlora.filenames import TRAINING_LOG
    from zhlora.forgetting_budget import parse_budget
    from zhlora.monitoring.callback import ForgettingMonitor
    from zhlora.monitoring.probes import ProbeSizes, select_probe_sets
    from zhlora.training.logbook import read_log_rows

    inputs = run.inputs
    cfg, accelerator, meta, output_dir = inputs.cfg, inputs.accelerator, inputs.meta, inputs.output_dir
    tcfg = cfg.train
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        raise ConfigError(
            "--monitor_every evaluates the whole model in place on the main process, but DeepSpeed and FSDP shard it "
            "across processes. Train without --monitor_every and evaluate the checkpoint-<step>/ folders afterwards "
            "(zhlora evaluate --lora_model_path ...), or launch with plain data parallelism."
        )
    data_dir = probe_data_dir or (Path(meta["data_dir"]) if meta.get("data_dir") else None)
    if data_dir is None or not data_dir.is_dir():
        raise ConfigError(
            f"--monitor_every needs the benchmark data (data/<source>/<split>.jsonl), but {data_dir or 'no data folder'} "
            "is not a folder (the processed data does not record where it came from). Pass --probe_data_dir DATA_DIR."
        )
    budget = parse_budget(tcfg.forgetting_budget)
    required = tuple(budget.probes) if budget else ()
    sizes = ProbeSizes().capped(tcfg.probe_limit).evaluated(cfg.eval.benchmarks, required)  # probes mirror the evaluation
    suite = select_probe_sets(data_dir, sizes, prompt_template=meta.get("template", "alpaca"), tokenizer=inputs.tokenizer,
                              required=required)
    log_metrics = None if tcfg.report_to == "none" else lambda values, step: accelerator.log(values, step=step)
    monitor = ForgettingMonitor(
        suite, inputs.tokenizer, budget, tcfg.budget_action, monitor_every=tcfg.monitor_every,
        save_steps=tcfg.save_steps, total_steps=run.plan.total_steps, probe_overhead=tcfg.probe_overhead,
        output_dir=output_dir, is_main_process=accelerator.is_main_process, log_metrics=log_metrics,
    )
    record = monitor.start(accelerator.unwrap_model(run.model), run.start_step, read_log_rows(output_dir / TRAINING_LOG))
    if record is not None:
        run.log.append({"step": 0, **record})
    return monitor


def _write_final_adapter(accelerator, model, output_dir: Path, initial_adapter: Path | None) -> None:
    """Save the adapter beside the run files, moving each file into place once fully written."""
    from zhlora.filenames import ADAPTER_CONFIG, ADAPTER_WEIGHTS
    from zhlora.io_utils import share_per_umask
    from zhlora.training.checkpoint import save_adapter

    tmp = output_dir / ".adapter.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    kwargs = {"path_initial_model_for_weight_conversion": str(initial_adapter)} if initial_adapter else {}
    save_adapter(accelerator, model, tmp, **kwargs)
    if accelerator.is_main_process:
        share_per_umask(tmp)
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"):
            if (tmp / name).exists():
                os.replace(tmp / name, output_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)


def write_weight_change(inputs: TrainInputs) -> None:
    """The spectrum of the update (``weight_change.json`` + chart; :mod:`zhlora.models.weight_change`), before the manifest."""
    import time

    from zhlora.analysis.charts import plot_weight_change
    from zhlora.errors import ZhloraError
    from zhlora.filenames import WEIGHT_CHANGE, WEIGHT_CHANGE_CHART
    from zhlora.io_utils import atomic_write_json
    from zhlora.models import weight_change

    started = time.perf_counter()
    full = inputs.cfg.train.finetuning_type == "full"
    try:
        rows = (weight_change.full_weight_change(inputs.model_path, inputs.output_dir) if full
                else weight_change.lora_weight_change(inputs.model_path, inputs.output_dir))
    except ZhloraError as exc:
        logger.info("No weight-change spectrum: %s", exc)
        return
    summary = weight_change.summarize(rows, "full" if full else "lora", None if full else inputs.cfg.lora.lora_rank)
    if summary["non_finite_matrices"]:
        logger.warning("Weight change: %d matrices hold NaN or inf (the run diverged; lower --learning_rate)",
                       summary["non_finite_matrices"])
    if not summary["by_type"]:
        return
    atomic_write_json(inputs.output_dir / WEIGHT_CHANGE, summary)
    plot_weight_change(summary, inputs.output_dir / WEIGHT_CHANGE_CHART)
    logger.info("Weight change: the median matrix needs rank %s for 90%% of its update (%.1f s; %s)",
                summary["rank90_median"], time.perf_counter() - started, WEIGHT_CHANGE)


def write_run_manifest(run: TrainRun, result, adapter_step: int, monitoring: dict | None) -> None:
    """The loss (and probe) curves, then ``manifest.json``: the run's record, written last (main process)."""
    from zhlora.analysis.charts import plot_loss_curve
    from zhlora.filenames import ADAPTER_WEIGHTS, LOSS_CURVE, MODEL_MANIFEST, PROBE_CURVES_NAME, RUN_MANIFEST, TRAINING_LOG
    from zhlora.io_utils import atomic_write_json, provenance, sha256_file
    from zhlora.models.manifest import model_fingerprint

    inputs, plan = run.inputs, run.plan
    output_dir, rows, meta = inputs.output_dir, inputs.rows, inputs.meta
    plot_loss_curve(output_dir / TRAINING_LOG, output_dir / LOSS_CURVE)
    if monitoring is not None:
        from zhlora.analysis.charts import plot_probe_curves, probe_chart_marks

        plot_probe_curves(output_dir / TRAINING_LOG, output_dir / PROBE_CURVES_NAME, **probe_chart_marks(monitoring))
    manifest = {
        "schema_version": 1,
        "provenance": provenance(),
        "run_fingerprint": inputs.fingerprint,
        "seed": inputs.cfg.train.seed,
        "base_model": {"path": str(inputs.model_path), "weights_sha256": inputs.base_sha},
        "dataset": {
            "path": str(inputs.dataset_path), "sha256": inputs.data_sha, "rows": len(rows),
            "tokens": int(rows.lengths.sum()), "scored_tokens": int(rows.scored_tokens_per_row().sum()),
            "tokenizer": {k: (meta.get("tokenizer") or {}).get(k) for k in ("name_or_path", "vocab_size", "vocab_sha256")},
            # how the prompts were rendered: evaluation renders ppl_zh the same way (recipes/evaluate.py checks)
            "template": meta.get("template_identity") or {"name": meta.get("template", "alpaca"), "chat_template_sha256": None},
        },
        "finetuning_type": inputs.cfg.train.finetuning_type,
        "learning_rate": inputs.cfg.train.peak_learning_rate,
        # the trained weights: the adapter file, or (full fine-tuning) the model folder's weight fingerprint
        "adapter": {
            **({"file": ADAPTER_WEIGHTS, "sha256": sha256_file(output_dir / ADAPTER_WEIGHTS)}
               if inputs.cfg.train.finetuning_type == "lora"
               else {"file": MODEL_MANIFEST, "weights_sha256": model_fingerprint(output_dir)}),
            "trainable_parameters": run.trainable, "total_parameters": run.total,
            "step": adapter_step,  # the last step, unless a forgetting budget chose an earlier one
        },
        "monitoring": monitoring,
        "training": {
            "status": result.status, "steps": result.step, "planned_steps": plan.total_steps,
            "epochs": round(plan.epoch_of(result.step), 4), "last_logged_loss": result.last_loss,
            "packed_sequences": len(run.bins), "world_size": inputs.accelerator.num_processes,
            "sequences_per_step": plan.bins_per_step, "steps_per_epoch": plan.steps_per_epoch,
            "repeated_sequences_per_epoch": plan.repeated_per_epoch,
            "attention": _attention_implementation(), "resumed_from_step": run.start_step or None,
            "this_session": {
                "seconds": round(result.seconds, 2), "cpu_seconds": round(result.cpu_seconds, 2),
                "real_tokens": result.real_tokens,
                "pad_fraction": round(result.pad_fraction, 5),
                "tokens_per_second": round(result.real_tokens / max(result.seconds, 1e-9), 1),
            },
        },
    }
    atomic_write_json(output_dir / RUN_MANIFEST, manifest)
