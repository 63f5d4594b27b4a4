"""``zhlora evaluate``: steps 4 and 6, score a base model (or base + LoRA adapter) on the benchmarks.

Examples::

    zhlora evaluate --model_path models/base_model --results_dir evaluation_results/baseline
    zhlora evaluate --model_path models/base_model --lora_model_path results/lora-chinese-llama \\
        --results_dir evaluation_results/lora-chinese-llama
    zhlora evaluate --model_path models/base_model --lora_model_path results/run --adapter_scales 0,0.5,1
    zhlora evaluate --model_path models/base_model --benchmarks mmlu,cmmlu --limit 20 --shots 0

Writes ``results.json``, ``predictions/<benchmark>.jsonl``, ``results.md``, ``timings.json`` and
charts to the results folder. A killed evaluation continues from its finished subjects when
the same command is run again; ``--overwrite`` discards earlier results of the folder.
Under ``accelerate launch -m zhlora evaluate ...`` or ``torchrun --nproc_per_node N -m zhlora evaluate ...``
the processes split every benchmark's units and the main process writes results byte-identical
to a single-process run (:mod:`zhlora.evaluation.distributed`). The evaluation itself is the
library's :func:`zhlora.recipes.evaluate.evaluate`; this module parses flags and prints.
With an adapter and a baseline beside it (``evaluation_results/baseline``, or
``--baseline_results``), the forgetting comparison is written too.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from zhlora.config import add_config_flags, config_from_args
from zhlora.errors import ConfigError, ZhloraError
from zhlora.filenames import BASELINE_NAME, EVAL_DIRNAME, FORGETTING_MD, RESULTS_FILE, TRAINING_LOG

logger = logging.getLogger(__name__)



def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the eval group, model/adapter/data/results paths, dtype and device, --overwrite."""
    add_config_flags(parser, ["eval"])
    paths = parser.add_argument_group("paths")
    paths.add_argument("--model_path", "--base_model_path", dest="model_path", default="models/base_model",
                       help="Base model folder or hub id (default: models/base_model).")
    paths.add_argument("--lora_model_path", "--adapter_path", dest="lora_model_path", default=None,
                       help="PEFT LoRA adapter folder (results/<run>), applied unmerged. Omit for the base model.")
    paths.add_argument("--results_dir", default=None,
                       help="Output folder (default: evaluation_results/baseline, or evaluation_results/<adapter folder name>).")
    paths.add_argument("--data_dir", default="data", help="Normalized data folder written by download-data (default: data).")
    paths.add_argument("--no_compare", action="store_true",
                       help="Skip the automatic forgetting comparison and report (zhlora run does them as its own step).")
    paths.add_argument("--baseline_results", default=None,
                       help="Baseline results folder to compare an adapter against (default: <results_dir>/../baseline if present).")
    model = parser.add_argument_group("model")
    model.add_argument("--adapter_scale", type=float, default=None,
                       help="Scale of the LoRA update, 0 (base model) .. 1 (as trained); overrides --adapter_scales.")
    model.add_argument("--torch_dtype", dest="cfg__model__torch_dtype", default=argparse.SUPPRESS, metavar="DTYPE",
                       help="auto (bf16 on GPUs that support it, else fp32), bfloat16, float16 or float32 (default: auto).")
    model.add_argument("--trust_remote_code", dest="cfg__model__trust_remote_code", action=argparse.BooleanOptionalAction,
                       default=argparse.SUPPRESS, help="Run modelling code shipped inside the model folder (default: off).")
    model.add_argument("--prompt_template", dest="cfg__data__prompt_template", default=argparse.SUPPRESS, metavar="TEMPLATE",
                       help="Training template used to render the ppl_zh prompts: alpaca or llama2_chat (default: alpaca).")
    model.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="Where to run: auto (the GPU when there is one), cpu or cuda (default: auto).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Discard the folder's earlier results and partial evaluation, then evaluate from scratch.")


def results_dirs_for(args: argparse.Namespace, scales: list[float]) -> list[Path]:
    """``--results_dir`` (default ``evaluation_results/<adapter folder name>`` or ``baseline``), one per scale."""
    from zhlora.experiment import scale_results_name

    if args.results_dir is not None:
        base = Path(args.results_dir)
    else:
        base = Path(EVAL_DIRNAME) / (Path(args.lora_model_path).name if args.lora_model_path else BASELINE_NAME)
    if len(scales) == 1:
        return [base]
    return [base.parent / scale_results_name(base.name, scale) for scale in scales]


def main(args: argparse.Namespace) -> int:
    """Check the flags, evaluate through the recipe, then print each folder's summary and comparison."""
    from zhlora.evaluation.adapters import check_adapter_folder
    from zhlora.models.loading import check_model_argument
    from zhlora.recipes.evaluate import evaluate

    cfg = config_from_args(args)
    check_model_argument(args.model_path, "--model_path")
    scales = [args.adapter_scale] if args.adapter_scale is not None else list(cfg.eval.adapter_scales)
    for scale in scales:
        if not 0.0 <= scale <= 1.0:
            raise ConfigError(f"--adapter_scale must be in [0, 1], got {scale}.")
    if args.lora_model_path is None and scales != [1.0]:
        raise ConfigError("--adapter_scale/--adapter_scales scale a LoRA adapter; pass --lora_model_path too.")
    adapter_dir = check_adapter_folder(args.lora_model_path) if args.lora_model_path else None
    outcome = evaluate(cfg, args.model_path, adapter_dir, results_dirs_for(args, scales), scales=scales,
                       data_dir=args.data_dir, device=args.device, overwrite=args.overwrite)
    for results_dir in outcome.results_dirs:
        if results_dir not in outcome.results:
            continue  # a non-main process of a data-parallel launch: the main one prints
        _print_summary(results_dir, outcome.results[results_dir])
        if adapter_dir and not args.no_compare:
            _compare_with_baseline(args, cfg, results_dir)
    return 0


def _print_summary(results_dir: Path, results: dict) -> None:
    print(f"{results_dir}:")
    for name, entry in results["benchmarks"].items():
        if entry["kind"] == "perplexity":
            bpb = f", {entry['bits_per_byte']:.4f} bits/byte" if entry.get("bits_per_byte") is not None else ""
            print(f"  {name:<8} loss {entry['loss']:.4f} nats/token, perplexity {entry['perplexity']:.3f}{bpb} "
                  f"({entry['n_documents']} documents, {entry['n_tokens']} tokens)")
        else:
            macro = f", macro {100 * entry['accuracy_macro']:.2f}" if "accuracy_macro" in entry else ""
            print(f"  {name:<8} accuracy {100 * entry['accuracy_micro']:.2f}{macro} (n={entry['n']}, {entry['shots']}-shot)")
    check = results["model"].get("adapter_check")
    if check and not check["ok"]:
        print(f"  WARNING: {check['message']}")


def _compare_with_baseline(args: argparse.Namespace, cfg, results_dir: Path) -> None:
    """Write the forgetting comparison when a baseline evaluation exists (given or beside the results)."""
    from zhlora.analysis.compare import compare_and_report

    baseline = Path(args.baseline_results) if args.baseline_results else results_dir.parent / BASELINE_NAME
    if not (baseline / RESULTS_FILE).is_file():
        if args.baseline_results:
            raise ZhloraError(f"--baseline_results {baseline} holds no {RESULTS_FILE}; evaluate the base model there first.")
        logger.info("No baseline results in %s: skipping the forgetting comparison (zhlora compare does it later).", baseline)
        return
    training_log = Path(args.lora_model_path) / TRAINING_LOG
    forgetting, html = compare_and_report(
        baseline, results_dir, results_dir, cfg.report, data_dir=args.data_dir, overwrite=True,
        training_log=training_log if training_log.is_file() else None, budget=cfg.train.forgetting_budget,
    )
    print(f"  forgetting: {forgetting['headline']['text']} ({results_dir / FORGETTING_MD})")
    print(f"  report: {html}")
