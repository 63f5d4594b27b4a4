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
With an adapter and a baseline beside it (``evaluation_results/baseline``, or
``--baseline_results``), the forgetting comparison is written too.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from zhlora.config import SIZE_FIELDS, add_config_flags, config_from_args
from zhlora.errors import ConfigError, ZhloraError, did_you_mean

logger = logging.getLogger(__name__)

BASELINE_DIRNAME = "baseline"
_NOT_FINGERPRINTED = ("batch_size", "data_dir")  # change speed or paths, not the numbers


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


def _resolve_specs(benchmarks: list[str], protocol: str, gsm8k_variant: str) -> dict:
    from zhlora.evaluation.specs import resolve_spec

    if not benchmarks:
        raise ConfigError("--benchmarks is empty; name at least one, e.g. --benchmarks mmlu,cmmlu.")
    if len(set(benchmarks)) != len(benchmarks):
        raise ConfigError(f"--benchmarks names a benchmark twice: {','.join(benchmarks)}.")
    return {name: resolve_spec(name, protocol, gsm8k_variant) for name in benchmarks}


def _load_items(specs: dict, data_dir: Path, cfg) -> dict:
    """Every benchmark's items; ``--subjects`` must name subjects of the multiple-choice benchmarks."""
    from zhlora.evaluation.items import load_benchmark_items

    ec = cfg.eval
    items = {name: load_benchmark_items(data_dir, spec, shots=ec.shots, subjects=ec.subjects, limit=ec.size_of(name),
                                        prompt_template=cfg.data.prompt_template) for name, spec in specs.items()}
    choice = {name: bench for name, bench in items.items() if bench.spec.kind == "multiple_choice"}
    if ec.subjects is not None:
        if not choice:
            raise ConfigError("--subjects applies to multiple-choice benchmarks (ceval, cmmlu, mmlu); none is selected.")
        known = {s for bench in choice.values() for s in bench.available_subjects}
        for subject in ec.subjects:
            if subject not in known:
                raise ConfigError(f'--subjects: no subject "{subject}" in {", ".join(choice)}.{did_you_mean(subject, known)}')
        for name in [n for n, bench in choice.items() if not bench.groups]:
            logger.info("%s: none of --subjects belongs to it; skipping it", name)
            del items[name]
    for name, bench in items.items():
        if bench.n_items == 0:
            raise ZhloraError(f"Benchmark {name} has no items in {data_dir}. Re-download it with "
                              f"`zhlora download-data --datasets {bench.spec.source} --data_dir {data_dir} --force`.")
    return items


def _results_dirs(args: argparse.Namespace, scales: list[float]) -> list[Path]:
    from zhlora.experiment import scale_results_name

    if args.results_dir is not None:
        base = Path(args.results_dir)
    else:
        base = Path("evaluation_results") / (Path(args.lora_model_path).name if args.lora_model_path else BASELINE_DIRNAME)
    if len(scales) == 1:
        return [base]
    return [base.parent / scale_results_name(base.name, scale) for scale in scales]


def _prepare_results_dir(results_dir: Path, overwrite: bool) -> None:
    """Refuse to replace finished results unless ``--overwrite``, which deletes what evaluate wrote."""
    from zhlora.evaluation.results import PREDICTIONS_DIRNAME, RESULT_FILES
    from zhlora.evaluation.runner import CACHE_DIRNAME

    if not overwrite:
        if (results_dir / "results.json").exists():
            raise ZhloraError(f"{results_dir / 'results.json'} already exists. Pass --overwrite to evaluate again "
                              "and replace it, or choose another --results_dir.")
        return
    for name in RESULT_FILES:
        (results_dir / name).unlink(missing_ok=True)
    for name in (PREDICTIONS_DIRNAME, CACHE_DIRNAME):
        shutil.rmtree(results_dir / name, ignore_errors=True)


def _device_map(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible. Use --device cpu (or auto).")
    return None if device == "cpu" else {"": 0}


def _settings(cfg, data_dir: Path) -> dict:
    ec = cfg.eval
    return {
        "benchmarks": list(ec.benchmarks), "protocol": ec.protocol, "shots": ec.shots, "gsm8k_variant": ec.gsm8k_variant,
        **{name: getattr(ec, name) for name in SIZE_FIELDS}, "subjects": ec.subjects, "batch_size": ec.batch_size, "max_new_tokens": ec.max_new_tokens,
        "backend": ec.backend, "torch_dtype": cfg.model.torch_dtype, "prompt_template": cfg.data.prompt_template,
        "data_dir": str(data_dir),
    }


def _fingerprint_input(settings: dict, model: dict, items: dict) -> dict:
    """What must match for cached predictions to be reused: settings, model identity, specs, data."""
    return {
        "settings": {k: v for k, v in settings.items() if k not in _NOT_FINGERPRINTED},
        "model": {k: model[k] for k in ("base_sha256", "adapter_sha256", "adapter_scale")}
        | ({"base_path": model["base_path"]} if model["base_sha256"] is None else {}),
        "specs": {name: {"version": bench.spec.version, "reference": bench.spec.reference, "shots": bench.shots,
                         "data_sha256": bench.files_sha256} for name, bench in items.items()},
    }


def _batch_size(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'--batch_size must be a positive integer or "auto", got "{value}".') from None


def main(args: argparse.Namespace) -> int:
    """Validate inputs, load the model (and adapter), evaluate per scale, write results, compare."""
    from zhlora.evaluation.adapters import (
        check_adapter_applied,
        check_adapter_folder,
        load_adapter,
        set_adapter_scale,
    )
    from zhlora.evaluation.results import build_results, build_timings, write_results
    from zhlora.evaluation.runner import (
        CACHE_DIRNAME,
        evaluate_benchmarks,
        open_prediction_cache,
    )
    from zhlora.io_utils import sha256_file
    from zhlora.modeling import load_model, load_tokenizer, model_fingerprint

    cfg = config_from_args(args)
    ec = cfg.eval
    batch_size = _batch_size(ec.batch_size)
    scales = [args.adapter_scale] if args.adapter_scale is not None else list(ec.adapter_scales)
    for scale in scales:
        if not 0.0 <= scale <= 1.0:
            raise ConfigError(f"--adapter_scale must be in [0, 1], got {scale}.")
    if args.lora_model_path is None and scales != [1.0]:
        raise ConfigError("--adapter_scale/--adapter_scales scale a LoRA adapter; pass --lora_model_path too.")
    adapter_dir = check_adapter_folder(args.lora_model_path) if args.lora_model_path else None
    if ec.backend == "vllm" and adapter_dir and scales != [1.0]:
        raise ConfigError(f"--backend vllm applies a LoRA adapter at scale 1 only, not {scales}; use --backend hf.")
    data_dir = Path(args.data_dir)
    specs = _resolve_specs(ec.benchmarks, ec.protocol, ec.gsm8k_variant)
    items = _load_items(specs, data_dir, cfg)
    results_dirs = _results_dirs(args, scales)
    for results_dir in results_dirs:
        _prepare_results_dir(results_dir, args.overwrite)

    base_path = str(args.model_path)
    identity = {
        "base_path": base_path,
        "base_sha256": model_fingerprint(base_path) if Path(base_path).is_dir() else None,
        "adapter_path": str(adapter_dir) if adapter_dir else None,
        "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors") if adapter_dir else None,
    }
    settings = _settings(cfg, data_dir)
    caches = [open_prediction_cache(d, _fingerprint_input(settings, {**identity, "adapter_scale": s if adapter_dir else None}, items))
              for d, s in zip(results_dirs, scales)]

    logger.info("Evaluating %s%s on %s", base_path, f" + {adapter_dir}" if adapter_dir else "", ", ".join(items))
    model = load_model(base_path, torch_dtype=cfg.model.torch_dtype, device_map=_device_map(args.device),
                       trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(base_path, trust_remote_code=cfg.model.trust_remote_code)
    adapter_check = None
    if adapter_dir:
        model = load_adapter(model, adapter_dir)
        adapter_check = check_adapter_applied(model, tokenizer, adapter_dir)
        (logger.info if adapter_check["ok"] else logger.error)("Adapter check: %s", adapter_check["message"])
    generator = None
    if ec.backend == "vllm" and any(bench.spec.kind == "generate" for bench in items.values()):
        from zhlora.evaluation.vllm_backend import VllmGenerator

        generator = VllmGenerator(base_path, adapter_dir, 1.0, cfg.model.torch_dtype, cfg.model.trust_remote_code)

    for results_dir, scale, cache in zip(results_dirs, scales, caches):
        started = time.perf_counter()
        if adapter_dir:
            set_adapter_scale(model, scale)
        model_entry = {**identity, "adapter_scale": scale if adapter_dir else None, "adapter_check": adapter_check}
        outcome = evaluate_benchmarks(model, tokenizer, items, batch_size=batch_size, max_new_tokens=ec.max_new_tokens,
                                      generator=generator, cache=cache, progress=True)
        results = build_results(model_entry, settings, outcome)
        write_results(results_dir, results, outcome, build_timings(outcome, time.perf_counter() - started))
        shutil.rmtree(results_dir / CACHE_DIRNAME, ignore_errors=True)
        _write_charts(results, results_dir)
        _print_summary(results_dir, results)
        if adapter_dir and not args.no_compare:
            _compare_with_baseline(args, cfg, results_dir)
    return 0


def _write_charts(results: dict, results_dir: Path) -> None:
    from zhlora.analysis.charts import plot_results_charts

    for path in plot_results_charts(results, results_dir):
        logger.info("chart: %s", path)


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
    from zhlora.analysis.compare import compare_results

    baseline = Path(args.baseline_results) if args.baseline_results else results_dir.parent / BASELINE_DIRNAME
    if not (baseline / "results.json").is_file():
        if args.baseline_results:
            raise ZhloraError(f"--baseline_results {baseline} holds no results.json; evaluate the base model there first.")
        logger.info("No baseline results in %s: skipping the forgetting comparison (zhlora compare does it later).", baseline)
        return
    report = cfg.report
    forgetting = compare_results(
        baseline, results_dir, results_dir, bootstrap_samples=report.bootstrap_samples, confidence=report.confidence,
        significance=report.significance, seed=report.stats_seed, data_dir=args.data_dir, overwrite=True,
    )
    from zhlora.analysis.report import write_report

    training_log = Path(args.lora_model_path) / "training_log.jsonl"
    html = write_report(
        results_dir, forgetting, base_dir=baseline, tuned_dir=results_dir,
        training_log=training_log if training_log.is_file() else None, language=report.chart_language,
    )
    print(f"  forgetting: {forgetting['headline']['text']} ({results_dir / 'forgetting.md'})")
    print(f"  report: {html}")
