"""``zhlora train``: step 5, LoRA fine-tune the base model on the processed data.

Examples::

    zhlora train --model_path models/base_model --dataset_path processed_data/train_dataset \\
        --output_dir results/lora-chinese-llama --lora_rank 16
    zhlora train --config configs/llama2-7b-belle.yaml --max_steps 500 --use_dora
    accelerate launch --config_file configs/accelerate/ddp.yaml -m zhlora train ...   # several GPUs

A run folder with checkpoints of the same run is resumed automatically (``--resume`` insists
on it); one holding a different run is refused unless ``--overwrite``. Ctrl-C saves a
checkpoint and exits with status 130. The recipe itself is the library function
:func:`zhlora.recipes.train.train`; this module parses flags and prints.

Writes ``adapter_model.safetensors``, ``adapter_config.json``, ``train_config.yaml``,
``training_log.jsonl``, ``loss_curve.png``, ``checkpoint-<step>/`` and, last, ``manifest.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zhlora.config import add_config_flags, config_from_args
from zhlora.filenames import RUNS_DIRNAME
from zhlora.models.loading import check_model_argument


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


def main(args: argparse.Namespace) -> int:
    """Train; exit 0 when the adapter is written (or already was), 130 after Ctrl-C."""
    from zhlora.recipes.train import train

    cfg = config_from_args(args)
    output_dir = Path(args.output_dir or Path(RUNS_DIRNAME) / cfg.run_name)
    check_model_argument(args.model_path, "--model_path")
    outcome = train(cfg, Path(args.model_path), Path(args.dataset_path), output_dir, resume=args.resume,
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
        what = "fine-tuned model" if cfg.train.finetuning_type == "full" else "adapter"
        print(f"{output_dir}: {what} after {outcome.step} steps (last logged loss {loss}).")
        if outcome.monitoring:
            print(_monitoring_lines(outcome.monitoring, outcome.step))
    return 0


def _monitoring_lines(summary: dict, last_step: int) -> str:
    """What the user reads about the probes: a crossed budget, the exported step and the overhead."""
    from zhlora.filenames import PROBE_CURVES_NAME
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
    lines.append(f"{overhead_line(summary['overhead'])} Curves in {PROBE_CURVES_NAME}.")
    return "\n".join(lines)
