"""``zhlora train``: step 5, LoRA fine-tune the base model on the processed data.

Examples::

    zhlora train --model_path models/base_model --dataset_path processed_data/train_dataset \\
        --output_dir results/lora-chinese-llama --lora_rank 16
    zhlora train --config configs/llama2-7b-belle.yaml --max_steps 500 --use_dora
    accelerate launch --config_file configs/accelerate/ddp.yaml -m zhlora train ...   # several GPUs

A run folder with checkpoints of the same run is resumed automatically (``--resume`` insists
on it); one holding a different run is refused unless ``--overwrite``. Ctrl-C saves a
checkpoint and exits with status 130.

Writes ``adapter_model.safetensors``, ``adapter_config.json``, ``train_config.yaml``,
``training_log.jsonl``, ``loss_curve.png``, ``checkpoint-<step>/`` and, last, ``manifest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zhlora.config import ExperimentConfig, add_config_flags, config_from_args, config_to_dict, dump_config_yaml
from zhlora.errors import ConfigError
from zhlora.locking import folder_lock
from zhlora.models.loading import check_model_argument

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the seed's paths, run control, and the model, lora and train config groups."""
    parser.add_argument("--model_path", default="models/base_model", help="Base model folder (default: models/base_model).")
    parser.add_argument("--dataset_path", default="processed_data/train_dataset",
                        help="Processed training set from `zhlora preprocess` (default: processed_data/train_dataset).")
    parser.add_argument("--output_dir", default=None, help="Run folder (default: results/<run_name>, i.e. results/lora-chinese-llama).")
    parser.add_argument("--resume", action="store_true", help="Resume from the newest checkpoint (also automatic when one exists).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Delete the adapter, checkpoints and logs of another run in --output_dir and start over.")
    parser.add_argument("--probe_data_dir", default=None,
                        help="Benchmark data for --monitor_every probes (default: the data_dir recorded by `zhlora preprocess`).")
    add_config_flags(parser, ["model", "lora", "train"])


@dataclass
class TrainOutcome:
    """What ``run`` did: ``completed``, ``complete`` (already done), ``interrupted`` or ``stopped``."""

    status: str
    output_dir: Path
    step: int = 0
    last_loss: float | None = None
    is_main_process: bool = True  # False on the other processes of a distributed launch (they print nothing)
    monitoring: dict | None = None  # the manifest's monitoring section (--monitor_every)


def main(args: argparse.Namespace) -> int:
    """Train; exit 0 when the adapter is written (or already was), 130 after Ctrl-C."""
    cfg = config_from_args(args)
    output_dir = Path(args.output_dir or Path("results") / cfg.run_name)
    check_model_argument(args.model_path, "--model_path")
    # One writer per run folder; under `accelerate launch` the main process (rank 0) holds it for all.
    lock = folder_lock(output_dir) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock:
        outcome = run(cfg, Path(args.model_path), Path(args.dataset_path), output_dir, resume=args.resume,
                      overwrite=args.overwrite, probe_data_dir=Path(args.probe_data_dir) if args.probe_data_dir else None)
    if not outcome.is_main_process:
        return 130 if outcome.status == "interrupted" else 0
    if outcome.status == "complete":
        print(f"{output_dir} already holds this run's adapter; nothing to do (pass --overwrite to train again).")
    elif outcome.status == "interrupted":
        print(f"Interrupted at step {outcome.step}; checkpoint saved in {output_dir}. "
              "Run the same command again to resume.", file=sys.stderr)
        return 130
    else:
        loss = "none logged" if outcome.last_loss is None else f"{outcome.last_loss:.4f}"
        print(f"{output_dir}: adapter after {outcome.step} steps (last logged loss {loss}).")
        if outcome.monitoring:
            print(_monitoring_lines(outcome.monitoring, outcome.step))
    return 0


def _monitoring_lines(summary: dict, last_step: int) -> str:
    """What the user reads about the probes: a crossed budget, the exported step and the overhead."""
    from zhlora.monitoring.callback import overhead_line

    lines = []
    exceeded = summary["budget_exceeded"]
    if exceeded:
        lines.append(f"Forgetting budget {summary['forgetting_budget']} exceeded at step {exceeded['step']}: "
                     f"{'; '.join(exceeded['violations'])}.")
    if summary["forgetting_budget"] and summary["selected_step"] is not None:
        where = "the last step" if summary["selected_step"] == last_step else f"step {summary['selected_step']}"
        deferred = summary["overhead"]["probes_deferred"]
        lines.append(f"Final adapter = {where} ({summary['selection_reason']})."
                     + ("" if summary["selected_within_budget"] else " WARNING: it exceeds the budget; lower "
                        "--learning_rate or --lora_rank, add --replay_ratio, or probe more often"
                        + (f" ({deferred} due probe(s) were deferred by --probe_overhead: raise it, or pass 0 to check "
                           "the budget at every due step)." if deferred else ".")))
    lines.append(f"{overhead_line(summary['overhead'])} Curves in probe_curves.png.")
    return "\n".join(lines)


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


def run(
    cfg: ExperimentConfig, model_path: Path, dataset_path: Path, output_dir: Path,
    resume: bool = False, overwrite: bool = False, callbacks: Sequence = (), probe_data_dir: Path | None = None,
) -> TrainOutcome:
    """Validate the inputs, build model + adapter + data plan, train, and write the run folder.

    ``callbacks`` are :class:`zhlora.training.loop.StepCallback` objects, run after the
    forgetting monitor (built here when ``cfg.train.monitor_every`` > 0, probing the benchmark
    data in ``probe_data_dir``, by default the ``data_dir`` that ``preprocess`` recorded).
    Every process of a distributed launch runs this function.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from zhlora.io_utils import atomic_write_text
    from zhlora.modeling import load_model, load_tokenizer, model_fingerprint
    from zhlora.training import checkpoint as ckpt
    from zhlora.training import dataset as data
    from zhlora.training import lora, outputs
    from zhlora.training.logbook import LOG_NAME, TrainingLog, read_log_rows
    from zhlora.training.loop import LoopSettings, train_loop
    from zhlora.training.packing import pack_rows
    from zhlora.training.schedule import build_lr_scheduler, plan_steps

    lcfg, tcfg = cfg.lora, cfg.train
    _check_environment(cfg)
    init_weights = lora.parse_init_lora_weights(lcfg.init_lora_weights)
    accelerator = Accelerator(
        # several processes without a GPU (torchrun on a CPU box): gloo data parallelism
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=tcfg.gradient_accumulation_steps,
        log_with=None if tcfg.report_to == "none" else tcfg.report_to,
        project_dir=str(output_dir),
    )
    if not accelerator.is_main_process:
        logging.getLogger("zhlora").setLevel(logging.WARNING)

    # --- inputs: data, tokenizer identity, fingerprints ------------------------------------
    rows = data.load_token_rows(dataset_path)
    meta, meta_path = data.read_processed_meta(dataset_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    data.check_tokenizer_matches(meta, meta_path, tokenizer, model_path)
    base_sha = model_fingerprint(model_path)
    data_sha = data.dataset_fingerprint(dataset_path)
    raw = config_to_dict(cfg)
    fingerprint = outputs.run_fingerprint(raw["lora"], raw["train"], raw["model"], base_sha, data_sha)

    # --- the run folder: fresh, resume or already complete ----------------------------------
    start = outputs.decide_start(output_dir, fingerprint, resume=resume, overwrite=overwrite)
    if start.kind == "complete":
        return TrainOutcome("complete", output_dir, is_main_process=accelerator.is_main_process)
    if accelerator.is_main_process:
        if overwrite:
            outputs.clear_run_artefacts(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / outputs.CONFIG_NAME, dump_config_yaml(cfg))
    accelerator.wait_for_everyone()

    # --- model + adapter (same seed on every process: identical initial adapter) -----------
    set_seed(tcfg.seed)
    model = load_model(
        model_path, torch_dtype=cfg.model.torch_dtype, load_in_4bit=cfg.model.load_in_4bit,
        device_map={"": accelerator.local_process_index} if cfg.model.load_in_4bit else None,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    model.set_attn_implementation(_attention_implementation())
    lora.check_target_modules(model, lcfg.target_modules)
    data.check_rows_fit(rows, tcfg.max_seq_length, model.get_input_embeddings().weight.shape[0], dataset_path)
    if cfg.model.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=tcfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora_config = lora.build_lora_config(lcfg.lora_rank, lcfg.lora_alpha, lcfg.lora_dropout, lcfg.target_modules,
                                         lcfg.use_rslora, lcfg.use_dora, init_weights)
    model = lora.apply_lora(model, lora_config)
    initial_adapter = output_dir / outputs.INITIAL_ADAPTER_DIR
    if lora.is_mutating_init(init_weights):
        # PiSSA/OLoRA rewrite the base weights; keep the start point to convert the result to plain LoRA.
        model.peft_config["default"].init_lora_weights = True
        if accelerator.is_main_process and not initial_adapter.is_dir():
            model.save_pretrained(str(initial_adapter))
    trainable, total = lora.count_parameters(model)
    logger.info("LoRA r=%d alpha=%g on %s: %.2fM trainable of %.1fM parameters (%.3f%%)", lcfg.lora_rank,
                lcfg.lora_alpha, ",".join(lcfg.target_modules), trainable / 1e6, total / 1e6, 100 * trainable / total)

    # --- data plan --------------------------------------------------------------------------
    lengths = rows.lengths
    bins = pack_rows(lengths, tcfg.max_seq_length) if tcfg.packing else [[i] for i in range(len(rows))]
    plan = plan_steps(len(bins), tcfg.per_device_train_batch_size, tcfg.gradient_accumulation_steps,
                      accelerator.num_processes, tcfg.num_train_epochs, tcfg.max_steps, tcfg.warmup_ratio)
    logger.info("%d rows (%d tokens, %d scored) in %d packed sequences of <= %d tokens (%.1f%% full); "
                "%d sequences per optimizer step, %d steps per epoch, %d steps", len(rows), int(lengths.sum()),
                int(rows.scored_tokens_per_row().sum()), len(bins), tcfg.max_seq_length,
                100 * lengths.sum() / (len(bins) * tcfg.max_seq_length), plan.bins_per_step,
                plan.steps_per_epoch, plan.total_steps)

    # --- optimizer, schedule, resume --------------------------------------------------------
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.learning_rate,
                                  weight_decay=tcfg.weight_decay)
    scheduler = build_lr_scheduler(optimizer, tcfg.lr_scheduler_type, plan.warmup_steps, plan.total_steps)
    _configure_sharding(accelerator, model, tcfg.per_device_train_batch_size, tcfg.max_grad_norm)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    ckpt.register_adapter_only_hooks(accelerator)
    start_step = 0
    if start.kind == "resume":
        start_step = int(ckpt.load_checkpoint(accelerator, model, start.checkpoint)["step"])
    else:
        set_seed(tcfg.seed, device_specific=True)  # dropout differs between processes
    log = TrainingLog(output_dir / LOG_NAME, resume_step=start_step if start.kind == "resume" else None,
                      enabled=accelerator.is_main_process)
    if tcfg.report_to != "none":
        accelerator.init_trackers(cfg.run_name, config=_tracker_config(cfg))

    monitor = None
    if tcfg.monitor_every:
        monitor = _build_monitor(cfg, accelerator, tokenizer, meta, probe_data_dir, output_dir, plan.total_steps)
        record = monitor.start(accelerator.unwrap_model(model), start_step, read_log_rows(output_dir / LOG_NAME))
        if record is not None:
            log.append({"step": 0, **record})
        callbacks = [monitor, *callbacks]

    settings = LoopSettings(
        output_dir=output_dir, seed=tcfg.seed, pad_token_id=tokenizer.pad_token_id,
        max_grad_norm=tcfg.max_grad_norm, logging_steps=tcfg.logging_steps, save_steps=tcfg.save_steps,
        save_total_limit=tcfg.save_total_limit, run_state={"run_fingerprint": fingerprint},
    )
    result = train_loop(
        accelerator, model, optimizer, scheduler, rows, bins, plan, settings, start_step=start_step, log=log,
        callbacks=callbacks,
        on_log=None if tcfg.report_to == "none" else lambda row: accelerator.log(
            {k: v for k, v in row.items() if k != "step" and v is not None}, step=row["step"]),
    )
    if result.status == "interrupted":
        accelerator.end_training()
        return TrainOutcome("interrupted", output_dir, result.step, result.last_loss, accelerator.is_main_process)

    # --- the adapter, curve and manifest (written last: it marks the run complete) ----------
    adapter_step = result.step
    if monitor is not None and monitor.restore_selected(accelerator.unwrap_model(model), result.step) is not None:
        adapter_step = monitor.selection.step  # an earlier step, chosen by the forgetting budget
    _write_final_adapter(accelerator, model, output_dir, initial_adapter if lora.is_mutating_init(init_weights) else None)
    if accelerator.is_main_process:
        _write_report_files(
            output_dir, cfg, result, plan, fingerprint, model_path, base_sha, dataset_path, data_sha, meta, rows,
            len(bins), trainable, total, start_step, accelerator.num_processes, _attention_implementation(),
            adapter_step=adapter_step, monitoring=None if monitor is None else monitor.summary(),
        )
    accelerator.end_training()  # closes the trackers and the process group: last
    return TrainOutcome(result.status, output_dir, result.step, result.last_loss, accelerator.is_main_process,
                        monitoring=None if monitor is None or not accelerator.is_main_process else monitor.summary())


def _build_monitor(cfg: ExperimentConfig, accelerator, tokenizer, meta: dict, probe_data_dir: Path | None,
                   output_dir: Path, total_steps: int):
    """The forgetting monitor of ``--monitor_every``: probe sets drawn from the benchmark data, the parsed budget."""
    from accelerate.utils import DistributedType

    from zhlora.monitoring.budget import parse_budget
    from zhlora.monitoring.callback import ForgettingMonitor
    from zhlora.monitoring.probes import ProbeSizes, select_probe_sets

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
    suite = select_probe_sets(data_dir, ProbeSizes().capped(tcfg.probe_limit), prompt_template=meta.get("template", "alpaca"),
                              tokenizer=tokenizer,
                              required=tuple(budget.probes) if budget else ())
    log_metrics = None if tcfg.report_to == "none" else lambda values, step: accelerator.log(values, step=step)
    return ForgettingMonitor(
        suite, tokenizer, budget, tcfg.budget_action, monitor_every=tcfg.monitor_every, save_steps=tcfg.save_steps,
        total_steps=total_steps, probe_overhead=tcfg.probe_overhead, output_dir=output_dir,
        is_main_process=accelerator.is_main_process, log_metrics=log_metrics,
    )


def _write_final_adapter(accelerator, model, output_dir: Path, initial_adapter: Path | None) -> None:
    """Save the adapter beside the run files, moving each file into place once fully written."""
    from zhlora.training.checkpoint import save_adapter

    tmp = output_dir / ".adapter.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    kwargs = {"path_initial_model_for_weight_conversion": str(initial_adapter)} if initial_adapter else {}
    save_adapter(accelerator, model, tmp, **kwargs)
    if accelerator.is_main_process:
        for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
            if (tmp / name).exists():
                os.replace(tmp / name, output_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)


def _write_report_files(
    output_dir, cfg, result, plan, fingerprint, model_path, base_sha, dataset_path, data_sha, meta, rows,
    n_bins, trainable, total, start_step, world_size, attention, adapter_step: int, monitoring: dict | None = None,
) -> None:
    from zhlora.analysis.charts import plot_loss_curve
    from zhlora.io_utils import atomic_write_json, provenance, sha256_file
    from zhlora.training.checkpoint import ADAPTER_WEIGHTS_NAME
    from zhlora.training.logbook import LOG_NAME
    from zhlora.training.outputs import CURVE_NAME, MANIFEST_NAME

    plot_loss_curve(output_dir / LOG_NAME, output_dir / CURVE_NAME)
    if monitoring is not None:
        from zhlora.analysis.charts import plot_probe_curves, probe_chart_marks
        from zhlora.monitoring.callback import PROBE_CURVES_NAME

        plot_probe_curves(output_dir / LOG_NAME, output_dir / PROBE_CURVES_NAME, **probe_chart_marks(monitoring))
    manifest = {
        "schema_version": 1,
        "provenance": provenance(),
        "run_fingerprint": fingerprint,
        "seed": cfg.train.seed,
        "base_model": {"path": str(model_path), "weights_sha256": base_sha},
        "dataset": {
            "path": str(dataset_path), "sha256": data_sha, "rows": len(rows), "tokens": int(rows.lengths.sum()),
            "scored_tokens": int(rows.scored_tokens_per_row().sum()),
            "tokenizer": {k: (meta.get("tokenizer") or {}).get(k) for k in ("name_or_path", "vocab_size", "vocab_sha256")},
            # how the prompts were rendered: evaluation renders ppl_zh the same way (commands/evaluate.py checks)
            "template": meta.get("template_identity") or {"name": meta.get("template", "alpaca"), "chat_template_sha256": None},
        },
        "adapter": {
            "file": ADAPTER_WEIGHTS_NAME, "sha256": sha256_file(output_dir / ADAPTER_WEIGHTS_NAME),
            "trainable_parameters": trainable, "total_parameters": total,
            "step": adapter_step,  # the last step, unless a forgetting budget chose an earlier one
        },
        "monitoring": monitoring,
        "training": {
            "status": result.status, "steps": result.step, "planned_steps": plan.total_steps,
            "epochs": round(plan.epoch_of(result.step), 4), "last_logged_loss": result.last_loss,
            "packed_sequences": n_bins, "world_size": world_size, "attention": attention,
            "resumed_from_step": start_step or None,
            "this_session": {
                "seconds": round(result.seconds, 2), "real_tokens": result.real_tokens,
                "pad_fraction": round(result.pad_fraction, 5),
                "tokens_per_second": round(result.real_tokens / max(result.seconds, 1e-9), 1),
            },
        },
    }
    atomic_write_json(output_dir / MANIFEST_NAME, manifest)
