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
to a single-process run (:mod:`zhlora.evaluation.distributed`).
With an adapter and a baseline beside it (``evaluation_results/baseline``, or
``--baseline_results``), the forgetting comparison is written too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import time
from pathlib import Path

from zhlora.config import SIZE_FIELDS, add_config_flags, config_from_args
from zhlora.errors import ConfigError, ZhloraError, did_you_mean
from zhlora.filenames import FORGETTING_MD, RESULTS_FILE, RESULTS_MD, SAMPLES_NAME

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
    from zhlora.data.benchmarks import resolve_spec

    if not benchmarks:
        raise ConfigError("--benchmarks is empty; name at least one, e.g. --benchmarks mmlu,cmmlu.")
    if len(set(benchmarks)) != len(benchmarks):
        raise ConfigError(f"--benchmarks names a benchmark twice: {','.join(benchmarks)}.")
    return {name: resolve_spec(name, protocol, gsm8k_variant) for name in benchmarks}


def split_subjects(subjects: list[str] | None, benchmarks: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``--subjects`` as ``({benchmark: [subject]}, [bare subject])``: ``mmlu:philosophy`` names one benchmark's subject."""
    qualified: dict[str, list[str]] = {}
    bare: list[str] = []
    for entry in subjects or []:
        bench, sep, subject = entry.partition(":")
        if not sep:
            bare.append(entry)
            continue
        if bench not in benchmarks:
            raise ConfigError(f'--subjects {entry}: "{bench}" is not one of the evaluated benchmarks '
                              f"({', '.join(benchmarks)}).{did_you_mean(bench, benchmarks)}")
        qualified.setdefault(bench, []).append(subject)
    return qualified, bare


def _load_items(specs: dict, data_dir: Path, cfg, tokenizer) -> dict:
    """Every benchmark's items; ``--subjects`` must name subjects of the multiple-choice benchmarks.

    A subject may be written ``benchmark:subject`` (``mmlu:philosophy``); a bare name applies to
    every benchmark that has it, and the log says which ones matched.
    """
    from zhlora.evaluation.items import load_benchmark_items

    ec = cfg.eval
    choice_names = [name for name, spec in specs.items() if spec.kind == "multiple_choice"]
    if ec.subjects is not None and not choice_names:
        raise ConfigError("--subjects applies to multiple-choice benchmarks (ceval, cmmlu, mmlu); none is selected.")
    qualified, bare = split_subjects(ec.subjects, list(specs))
    for bench in qualified:
        if bench not in choice_names:
            raise ConfigError(f"--subjects {bench}:...: {bench} has no subjects (only ceval, cmmlu and mmlu do).")
    items = {}
    for name, spec in specs.items():
        wanted = None if ec.subjects is None or name not in choice_names else qualified.get(name, []) + bare
        items[name] = load_benchmark_items(data_dir, spec, shots=ec.shots, subjects=wanted, limit=ec.size_of(name),
                                           prompt_template=cfg.data.prompt_template, tokenizer=tokenizer)
    if ec.subjects is not None:
        choice = {name: items[name] for name in choice_names}
        for bench, names in qualified.items():
            for subject in names:
                if subject not in choice[bench].available_subjects:
                    raise ConfigError(f'--subjects: no subject "{subject}" in {bench}.'
                                      f"{did_you_mean(subject, choice[bench].available_subjects)}")
        for subject in bare:
            matched = [name for name, bench in choice.items() if subject in bench.available_subjects]
            if not matched:
                known = {s for bench in choice.values() for s in bench.available_subjects}
                raise ConfigError(f'--subjects: no subject "{subject}" in {", ".join(choice)}.{did_you_mean(subject, known)}')
            logger.info("--subjects %s: found in %s%s", subject, " and ".join(matched),
                        f" (write {matched[0]}:{subject} to evaluate one of them)" if len(matched) > 1 else "")
        for name in [n for n, bench in choice.items() if not bench.groups]:
            logger.info("%s: none of --subjects belongs to it; skipping it", name)
            del items[name]
        if not items:
            raise ConfigError(f"--subjects {','.join(ec.subjects)}: none of these subjects has items in {data_dir}.")
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


def _prepare_results_dir(results_dir: Path, overwrite: bool, main_process: bool = True) -> None:
    """With ``--overwrite``, delete what evaluate wrote (the resume cache first, results.json last; main process only)."""
    from zhlora.evaluation.results import PREDICTIONS_DIRNAME, RESULT_FILES
    from zhlora.evaluation.runner import CACHE_DIRNAME

    if not overwrite or not main_process:
        return
    for name in (CACHE_DIRNAME, PREDICTIONS_DIRNAME):
        shutil.rmtree(results_dir / name, ignore_errors=True)
    for name in reversed(RESULT_FILES):
        (results_dir / name).unlink(missing_ok=True)


def _identity_of_results(results: dict) -> dict:
    """What :func:`_fingerprint_input` covers, read back from a finished ``results.json``."""
    specs = {name: {"version": entry.get("spec_version"), "reference": entry.get("spec_reference"),
                    "shots": entry.get("shots"), "data_sha256": entry.get("data_sha256")}
             for name, entry in results.get("benchmarks", {}).items()}
    return _fingerprint_input(results.get("settings", {}), results.get("model", {}), specs)


def _finished_results(results_dir: Path, expected: dict) -> dict | None:
    """The folder's ``results.json`` when it was made with exactly ``expected``; None when there is none.

    A finished evaluation with the same settings, model and data is this command's result (a kill
    between writing it and anything after must not leave a folder that refuses to be finished);
    one made differently is refused, naming what differs, unless ``--overwrite``.
    """
    path = results_dir / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        found = _identity_of_results(results)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        raise ZhloraError(f"{path} is not a readable results file. Pass --overwrite to evaluate again and "
                          "replace it, or choose another --results_dir.") from None
    if found != expected:
        from zhlora.experiment import changed_settings

        changes = changed_settings(found, expected)
        raise ZhloraError(f"{path} already holds results made with other settings ({'; '.join(changes[:5])}). "
                          "Pass --overwrite to evaluate again and replace it, or choose another --results_dir.")
    return results


def _device_map(device: str, local_rank: int = 0):
    """None (CPU) or the GPU of this process (its local rank under a launcher)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible. Use --device cpu (or auto).")
    return None if device == "cpu" else {"": local_rank}


def _settings(cfg, data_dir: Path, template: dict) -> dict:
    ec = cfg.eval
    return {
        "benchmarks": list(ec.benchmarks), "protocol": ec.protocol, "shots": ec.shots, "gsm8k_variant": ec.gsm8k_variant,
        **{name: getattr(ec, name) for name in SIZE_FIELDS}, "subjects": ec.subjects, "batch_size": ec.batch_size, "max_new_tokens": ec.max_new_tokens,
        "backend": ec.backend, "torch_dtype": cfg.model.torch_dtype, "prompt_template": cfg.data.prompt_template,
        **({"chat_template_sha256": template["chat_template_sha256"]} if template["chat_template_sha256"] else {}),
        "data_dir": str(data_dir),
    }


def _check_adapter_template(adapter_dir: Path, template: dict, items: dict) -> None:
    """Refuse to score ``ppl_zh`` with prompts rendered unlike the adapter's training rows.

    The held-out Chinese loss is the fine-tuning loss on unseen rows only when the prompts
    look like the training prompts; the training run records its template in manifest.json
    (older runs and bare checkpoints record none, and are not checked).
    """
    from zhlora.training.outputs import MANIFEST_NAME

    if "ppl_zh" not in items or not (adapter_dir / MANIFEST_NAME).is_file():
        return
    trained = (json.loads((adapter_dir / MANIFEST_NAME).read_text(encoding="utf-8")).get("dataset") or {}).get("template")
    if trained and trained != template:
        raise ConfigError(
            f"ppl_zh: the adapter in {adapter_dir} was trained on prompts rendered with template {trained['name']!r}"
            + (f" (chat template sha256 {trained['chat_template_sha256'][:12]})" if trained.get("chat_template_sha256") else "")
            + f", but this evaluation renders them with {template['name']!r}"
            + (f" (chat template sha256 {template['chat_template_sha256'][:12]})" if template.get("chat_template_sha256") else "")
            + f". Pass --prompt_template {trained['name']} (and evaluate the baseline the same way), so the held-out "
            "Chinese loss is measured on the training format."
        )


def _spec_identity(items: dict) -> dict:
    """Each benchmark's spec version, reference, shots (None for perplexity) and data hashes."""
    return {name: {"version": bench.spec.version, "reference": bench.spec.reference,
                   "shots": None if bench.spec.kind == "perplexity" else bench.shots,
                   "data_sha256": dict(sorted(bench.files_sha256.items()))} for name, bench in items.items()}


def _fingerprint_input(settings: dict, model: dict, specs: dict) -> dict:
    """What must match for cached predictions or a finished results.json to be reused."""
    return {
        "settings": {k: v for k, v in settings.items() if k not in _NOT_FINGERPRINTED},
        "model": {k: model.get(k) for k in ("base_sha256", "adapter_sha256", "adapter_scale")}
        | ({"base_path": model.get("base_path")} if model.get("base_sha256") is None else {}),
        "specs": specs,
    }


def _batch_size(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'--batch_size must be a positive integer or "auto", got "{value}".') from None


def main(args: argparse.Namespace) -> int:
    """Validate inputs, lock the results folders, then evaluate (see :func:`_evaluate`)."""
    from zhlora.data.templates import template_identity
    from zhlora.evaluation.adapters import check_adapter_folder
    from zhlora.evaluation.distributed import init_eval_processes
    from zhlora.locking import folder_lock
    from zhlora.models.loading import check_model_argument, load_tokenizer

    cfg = config_from_args(args)
    ec = cfg.eval
    check_model_argument(args.model_path, "--model_path")
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
    processes = init_eval_processes(cpu=args.device == "cpu")
    if ec.backend == "vllm" and processes.world_size > 1:
        raise ConfigError(f"--backend vllm runs in one process (vLLM spreads a model over GPUs itself), but this "
                          f"evaluation was launched as {processes.world_size} processes; launch it once, or use --backend hf.")
    data_dir = Path(args.data_dir)
    specs = _resolve_specs(ec.benchmarks, ec.protocol, ec.gsm8k_variant)
    tokenizer = load_tokenizer(str(args.model_path), trust_remote_code=cfg.model.trust_remote_code)
    template = template_identity(cfg.data.prompt_template, tokenizer if cfg.data.prompt_template == "chat" else None)
    items = _load_items(specs, data_dir, cfg, tokenizer)
    if adapter_dir:
        _check_adapter_template(adapter_dir, template, items)
    results_dirs = _results_dirs(args, scales)
    with contextlib.ExitStack() as locks:
        for results_dir in results_dirs if processes.is_main else ():  # one writer per results folder: the main process
            locks.enter_context(folder_lock(results_dir))
        return _evaluate(args, cfg, items, results_dirs, scales, adapter_dir, batch_size, processes, template)


def _evaluate(args: argparse.Namespace, cfg, items: dict, results_dirs: list[Path], scales: list[float],
              adapter_dir: Path | None, batch_size, processes, template: dict) -> int:
    """Evaluate into ``results_dirs`` (locked by the caller), one per adapter scale.

    ``processes``: this process's place in a data-parallel evaluation; only the main one writes.
    """
    from zhlora.evaluation.adapters import check_adapter_applied, load_adapter, set_adapter_scale
    from zhlora.evaluation.hf_model import HFEvalModel
    from zhlora.evaluation.results import build_results, build_timings, write_results
    from zhlora.evaluation.runner import evaluate_benchmarks, open_prediction_cache
    from zhlora.evaluation.samples import sample_generations
    from zhlora.io_utils import atomic_write_json, sha256_file
    from zhlora.models.loading import load_model, load_tokenizer
    from zhlora.models.manifest import model_fingerprint

    ec = cfg.eval
    data_dir = Path(args.data_dir)
    for results_dir in results_dirs:
        _prepare_results_dir(results_dir, args.overwrite, processes.is_main)
    processes.wait_for_everyone()  # the main process has cleared the folders before anyone opens a cache

    base_path = str(args.model_path)
    identity = {
        "base_path": base_path,
        "base_sha256": model_fingerprint(base_path) if Path(base_path).is_dir() else None,
        "adapter_path": str(adapter_dir) if adapter_dir else None,
        "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors") if adapter_dir else None,
    }
    settings = _settings(cfg, data_dir, template)
    specs = _spec_identity(items)
    expected = [_fingerprint_input(settings, {**identity, "adapter_scale": s if adapter_dir else None}, specs) for s in scales]
    todo = []
    for results_dir, scale, fingerprint in zip(results_dirs, scales, expected):
        finished = None if args.overwrite else _finished_results(results_dir, fingerprint)
        if finished is None:
            todo.append((results_dir, scale, open_prediction_cache(results_dir, fingerprint)))
        elif processes.is_main:
            _finish(args, cfg, results_dir, finished, adapter_dir)
    if not todo:
        return 0

    logger.info("Evaluating %s%s on %s", base_path, f" + {adapter_dir}" if adapter_dir else "", ", ".join(items))
    model = load_model(base_path, torch_dtype=cfg.model.torch_dtype, device_map=_device_map(args.device, processes.local_rank),
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

    for results_dir, scale, cache in todo:
        started = time.perf_counter()
        if adapter_dir:
            set_adapter_scale(model, scale)
        model_entry = {**identity, "adapter_scale": scale if adapter_dir else None, "adapter_check": adapter_check}
        outcome = evaluate_benchmarks(model, tokenizer, items, batch_size=batch_size, max_new_tokens=ec.max_new_tokens,
                                      generator=generator, cache=cache, progress=processes.is_main, processes=processes)
        if not processes.is_main:
            continue  # the main process gathered this process's rows and writes the results
        results = build_results(model_entry, settings, outcome)
        if ec.sample_max_new_tokens > 0:
            samples = sample_generations(generator or HFEvalModel(model, tokenizer, batch_size=batch_size), tokenizer,
                                         cfg.data.prompt_template, ec.sample_max_new_tokens)
            atomic_write_json(results_dir / SAMPLES_NAME, samples)
        write_results(results_dir, results, outcome, build_timings(outcome, time.perf_counter() - started))
        _finish(args, cfg, results_dir, results, adapter_dir, fresh=True)
    return 0


def _finish(args: argparse.Namespace, cfg, results_dir: Path, results: dict, adapter_dir: Path | None,
            fresh: bool = False) -> None:
    """Everything after ``results.json``: results.md, cache removal, charts, summary, comparison.

    Idempotent, so a finished results.json whose later files a kill cut short is completed here.
    """
    from zhlora.evaluation.results import results_markdown
    from zhlora.evaluation.runner import CACHE_DIRNAME
    from zhlora.io_utils import atomic_write_text

    if not fresh:
        logger.info("%s already holds these results (same settings, model and data); finishing its files. "
                    "Pass --overwrite to evaluate again.", results_dir / RESULTS_FILE)
        atomic_write_text(results_dir / RESULTS_MD, results_markdown(results))
    shutil.rmtree(results_dir / CACHE_DIRNAME, ignore_errors=True)
    _write_charts(results, results_dir)
    _print_summary(results_dir, results)
    if adapter_dir and not args.no_compare:
        _compare_with_baseline(args, cfg, results_dir)


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
    from zhlora.analysis.compare import compare_and_report
    from zhlora.training.logbook import LOG_NAME

    baseline = Path(args.baseline_results) if args.baseline_results else results_dir.parent / BASELINE_DIRNAME
    if not (baseline / RESULTS_FILE).is_file():
        if args.baseline_results:
            raise ZhloraError(f"--baseline_results {baseline} holds no {RESULTS_FILE}; evaluate the base model there first.")
        logger.info("No baseline results in %s: skipping the forgetting comparison (zhlora compare does it later).", baseline)
        return
    training_log = Path(args.lora_model_path) / LOG_NAME
    forgetting, html = compare_and_report(
        baseline, results_dir, results_dir, cfg.report, data_dir=args.data_dir, overwrite=True,
        training_log=training_log if training_log.is_file() else None,
    )
    print(f"  forgetting: {forgetting['headline']['text']} ({results_dir / FORGETTING_MD})")
    print(f"  report: {html}")
