"""The evaluation recipe: the library entry point of steps 4 and 6, read top to bottom.

:func:`evaluate` is what ``zhlora evaluate`` (and through it ``zhlora run``, ``zhlora sweep`` and
the seed scripts ``scripts/evaluate_baseline.py`` / ``evaluate_model.py``) calls; a notebook or
another tool can call it the same way. It holds each results folder's lock (the main process
of a data-parallel launch holds them for all) and runs four stages:

1. :func:`read_items` — the benchmark specs, the tokenizer and every benchmark's items
   (``--subjects`` checked against the data), and the adapter's training template;
2. :func:`plan_folders` — each results folder's identity (settings, model, data): a finished
   ``results.json`` with the same identity is reused, another one is refused, an unfinished
   folder resumes from its prediction cache;
3. :func:`run_engine` — the model (+ adapter at each scale) through the evaluation engine;
4. :func:`finish` — ``results.json`` (written first; everything after it is idempotent),
   ``results.md``, charts, and the cache removed.

Printing and the forgetting comparison are the command's (:mod:`zhlora.commands.evaluate`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhlora.config import EVAL_IDENTITY_FIELDS, ExperimentConfig
from zhlora.differences import differences
from zhlora.errors import ConfigError, ZhloraError, did_you_mean
from zhlora.filenames import (
    ADAPTER_WEIGHTS,
    CACHE_DIRNAME,
    PREDICTIONS_DIRNAME,
    RESULTS_FILE,
    RESULTS_MD,
    RUN_MANIFEST,
    SAMPLES_NAME,
)
from zhlora.locking import folder_lock

logger = logging.getLogger(__name__)

_NOT_FINGERPRINTED = ("batch_size", "data_dir")  # change speed or paths, not the numbers


@dataclass
class EvalOutcome:
    """What :func:`evaluate` did, one entry per results folder (one per adapter scale).

    ``results[folder]`` is the ``results.json`` object written to (or found in) ``folder``;
    ``fresh[folder]`` says whether it was evaluated now (False: a finished folder with the same
    identity was reused). Both are empty on the non-main processes of a data-parallel launch,
    which write nothing.
    """

    results_dirs: list[Path]
    results: dict[Path, dict] = field(default_factory=dict)
    fresh: dict[Path, bool] = field(default_factory=dict)
    is_main_process: bool = True


@dataclass
class EvalInputs:
    """Stage 1: what is evaluated, before any model is loaded."""

    cfg: ExperimentConfig
    model_path: str
    adapter_dir: Path | None
    data_dir: Path
    items: dict  # {benchmark: zhlora.evaluation.benchdata.BenchmarkItems}
    template: dict  # zhlora.data.templates.template_identity of --prompt_template


def evaluate(cfg: ExperimentConfig, model_path: str | Path, adapter_dir: Path | None, results_dirs: list[Path], *,
             scales: list[float] | None = None, data_dir: str | Path = "data", device: str = "auto",
             overwrite: bool = False) -> EvalOutcome:
    """Evaluate ``model_path`` (+ the LoRA adapter in ``adapter_dir`` at each of ``scales``) into ``results_dirs``.

    ``results_dirs[i]`` receives the evaluation at ``scales[i]`` (default ``[1.0]``). ``device``:
    auto, cpu or cuda; under ``torchrun``/``accelerate launch`` the processes split the work and
    the main process writes results byte-identical to one process. ``overwrite`` discards each
    folder's earlier results and partial evaluation first.
    """
    from zhlora.evaluation.distributed import init_eval_processes

    scales = list(scales or [1.0])
    if len(scales) != len(results_dirs):
        raise ValueError(f"{len(results_dirs)} results folders for {len(scales)} adapter scales")
    batch_size = parse_batch_size(cfg.eval.batch_size)
    if cfg.eval.backend == "vllm" and adapter_dir and scales != [1.0]:
        raise ConfigError(f"--backend vllm applies a LoRA adapter at scale 1 only, not {scales}; use --backend hf.")
    processes = init_eval_processes(cpu=device == "cpu")
    if processes.world_size > 1 and processes.is_main:
        logger.info("Data-parallel evaluation: %d processes (%s).", processes.world_size,
                    processes.state.distributed_type.value)
    if cfg.eval.backend == "vllm" and processes.world_size > 1:
        raise ConfigError(f"--backend vllm runs in one process (vLLM spreads a model over GPUs itself), but this "
                          f"evaluation was launched as {processes.world_size} processes; launch it once, or use --backend hf.")
    inputs = read_items(cfg, str(model_path), adapter_dir, Path(data_dir))
    outcome = EvalOutcome(results_dirs=list(results_dirs), is_main_process=processes.is_main)
    with contextlib.ExitStack() as locks:
        for results_dir in results_dirs if processes.is_main else ():  # one writer per results folder: the main process
            locks.enter_context(folder_lock(results_dir))
        for results_dir in results_dirs:
            clear_results_dir(results_dir, overwrite, processes.is_main)
        processes.wait_for_everyone()  # the main process has cleared the folders before anyone opens a cache
        todo = plan_folders(inputs, results_dirs, scales, overwrite, outcome)
        if todo:
            run_engine(inputs, todo, batch_size, device, processes, outcome)
    return outcome


# --- 1. read the items ------------------------------------------------------------------------------

def read_items(cfg: ExperimentConfig, model_path: str, adapter_dir: Path | None, data_dir: Path) -> EvalInputs:
    """The benchmark specs, every benchmark's items and the prompt template; checks the adapter's template."""
    from zhlora.data.templates import template_identity
    from zhlora.models.loading import load_tokenizer

    specs = resolve_specs(cfg.eval.benchmarks, cfg.eval.protocol, cfg.eval.gsm8k_variant)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    template = template_identity(cfg.data.prompt_template, tokenizer if cfg.data.prompt_template == "chat" else None)
    items = load_items(specs, data_dir, cfg, tokenizer)
    if adapter_dir:
        check_adapter_template(adapter_dir, template, items)
    return EvalInputs(cfg=cfg, model_path=model_path, adapter_dir=adapter_dir, data_dir=data_dir, items=items,
                      template=template)


def resolve_specs(benchmarks: list[str], protocol: str, gsm8k_variant: str) -> dict:
    """``{benchmark: spec}`` for ``--benchmarks`` under ``--protocol``/``--gsm8k_variant``."""
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


def load_items(specs: dict, data_dir: Path, cfg: ExperimentConfig, tokenizer) -> dict:
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
        _check_subjects(items, choice_names, qualified, bare, data_dir, ec.subjects)
    for name, bench in items.items():
        if bench.n_items == 0:
            raise ZhloraError(f"Benchmark {name} has no items in {data_dir}. Re-download it with "
                              f"`zhlora download-data --datasets {bench.spec.source} --data_dir {data_dir} --force`.")
    return items


def _check_subjects(items: dict, choice_names: list[str], qualified: dict, bare: list[str], data_dir: Path,
                    subjects: list[str]) -> None:
    """Refuse unknown ``--subjects``; drop the multiple-choice benchmarks none of them belongs to (in place)."""
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
        raise ConfigError(f"--subjects {','.join(subjects)}: none of these subjects has items in {data_dir}.")


def check_adapter_template(adapter_dir: Path, template: dict, items: dict) -> None:
    """Refuse to score ``ppl_zh`` with prompts rendered unlike the adapter's training rows.

    The held-out Chinese loss is the fine-tuning loss on unseen rows only when the prompts
    look like the training prompts; the training run records its template in manifest.json
    (older runs and bare checkpoints record none, and are not checked).
    """
    if "ppl_zh" not in items or not (adapter_dir / RUN_MANIFEST).is_file():
        return
    trained = (json.loads((adapter_dir / RUN_MANIFEST).read_text(encoding="utf-8")).get("dataset") or {}).get("template")
    if trained and trained != template:
        raise ConfigError(
            f"ppl_zh: the adapter in {adapter_dir} was trained on prompts rendered with template {trained['name']!r}"
            + (f" (chat template sha256 {trained['chat_template_sha256'][:12]})" if trained.get("chat_template_sha256") else "")
            + f", but this evaluation renders them with {template['name']!r}"
            + (f" (chat template sha256 {template['chat_template_sha256'][:12]})" if template.get("chat_template_sha256") else "")
            + f". Pass --prompt_template {trained['name']} (and evaluate the baseline the same way), so the held-out "
            "Chinese loss is measured on the training format."
        )


# --- 2. identity, reuse and resume ------------------------------------------------------------------

def clear_results_dir(results_dir: Path, overwrite: bool, main_process: bool = True) -> None:
    """With ``overwrite``, delete what evaluate wrote (the resume cache first, results.json last; main process only)."""
    from zhlora.evaluation.results import RESULT_FILES

    if not overwrite or not main_process:
        return
    for name in (CACHE_DIRNAME, PREDICTIONS_DIRNAME):
        shutil.rmtree(results_dir / name, ignore_errors=True)
    for name in reversed(RESULT_FILES):
        (results_dir / name).unlink(missing_ok=True)


def results_settings(cfg: ExperimentConfig, data_dir: Path, template: dict) -> dict:
    """The ``settings`` of ``results.json``: the identity fields, the template, and the speed/path knobs."""
    ec = cfg.eval
    return {
        **{name: getattr(ec, name) for name in EVAL_IDENTITY_FIELDS}, "batch_size": ec.batch_size,
        "torch_dtype": cfg.model.torch_dtype, "prompt_template": cfg.data.prompt_template,
        **({"chat_template_sha256": template["chat_template_sha256"]} if template["chat_template_sha256"] else {}),
        "data_dir": str(data_dir),
    }


def spec_identity(items: dict) -> dict:
    """Each benchmark's spec version, reference, shots (None for perplexity) and data hashes."""
    return {name: {"version": bench.spec.version, "reference": bench.spec.reference,
                   "shots": None if bench.spec.kind == "perplexity" else bench.shots,
                   "data_sha256": dict(sorted(bench.files_sha256.items()))} for name, bench in items.items()}


def evaluation_identity(settings: dict, model: dict, specs: dict) -> dict:
    """What must match for cached predictions or a finished results.json to be reused."""
    return {
        "settings": {k: v for k, v in settings.items() if k not in _NOT_FINGERPRINTED},
        "model": {k: model.get(k) for k in ("base_sha256", "adapter_sha256", "adapter_scale")}
        | ({"base_path": model.get("base_path")} if model.get("base_sha256") is None else {}),
        "specs": specs,
    }


def identity_of_results(results: dict) -> dict:
    """What :func:`evaluation_identity` covers, read back from a finished ``results.json``."""
    specs = {name: {"version": entry.get("spec_version"), "reference": entry.get("spec_reference"),
                    "shots": entry.get("shots"), "data_sha256": entry.get("data_sha256")}
             for name, entry in results.get("benchmarks", {}).items()}
    return evaluation_identity(results.get("settings", {}), results.get("model", {}), specs)


def finished_results(results_dir: Path, expected: dict) -> dict | None:
    """The folder's ``results.json`` when it was made with exactly ``expected``; None when there is none.

    A finished evaluation with the same settings, model and data is this command's result (a kill
    between writing it and anything after must not leave a folder that refuses to be finished);
    one made differently is refused, naming what differs, unless ``overwrite``.
    """
    path = results_dir / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        found = identity_of_results(results)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        raise ZhloraError(f"{path} is not a readable results file. Pass --overwrite to evaluate again and "
                          "replace it, or choose another --results_dir.") from None
    if found != expected:
        changes = differences(found, expected)
        raise ZhloraError(f"{path} already holds results made with other settings ({'; '.join(changes[:5])}). "
                          "Pass --overwrite to evaluate again and replace it, or choose another --results_dir.")
    return results


def model_identity(model_path: str, adapter_dir: Path | None) -> dict:
    """The ``model`` entry of results.json, without the scale: base path and fingerprint, adapter and its sha256."""
    from zhlora.io_utils import sha256_file
    from zhlora.models.manifest import model_fingerprint, read_model_manifest

    local = Path(model_path).is_dir()
    origin = (read_model_manifest(Path(model_path)) or {}).get("finetuned_from") if local else None
    return {
        "base_path": model_path,
        "base_sha256": model_fingerprint(model_path) if local else None,
        "adapter_path": str(adapter_dir) if adapter_dir else None,
        "adapter_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS) if adapter_dir else None,
        # a fully fine-tuned model: the model it was trained from, which its results pair with
        **({"finetuned_from": origin} if origin else {}),
    }


@dataclass
class _Todo:
    """One results folder still to evaluate."""

    results_dir: Path
    scale: float
    cache: Any  # zhlora.evaluation.runner.PredictionCache
    settings: dict
    model_entry: dict


def plan_folders(inputs: EvalInputs, results_dirs: list[Path], scales: list[float], overwrite: bool,
         outcome: EvalOutcome) -> list[_Todo]:
    """Reuse (and finish) folders already holding these results; open the caches of the others."""
    from zhlora.evaluation.runner import open_prediction_cache

    identity = model_identity(inputs.model_path, inputs.adapter_dir)
    settings = results_settings(inputs.cfg, inputs.data_dir, inputs.template)
    specs = spec_identity(inputs.items)
    todo = []
    for results_dir, scale in zip(results_dirs, scales):
        model_entry = {**identity, "adapter_scale": scale if inputs.adapter_dir else None}
        expected = evaluation_identity(settings, model_entry, specs)
        finished = None if overwrite else finished_results(results_dir, expected)
        if finished is None:
            todo.append(_Todo(results_dir, scale, open_prediction_cache(results_dir, expected), settings, model_entry))
        elif outcome.is_main_process:
            logger.info("%s already holds these results (same settings, model and data); finishing its files. "
                        "Pass --overwrite to evaluate again.", results_dir / RESULTS_FILE)
            finish(results_dir, finished, rewrite_markdown=True)
            outcome.results[results_dir], outcome.fresh[results_dir] = finished, False
    return todo


# --- 3. run the engine --------------------------------------------------------------------------------

def device_map(device: str, local_rank: int = 0):
    """None (CPU) or the GPU of this process (its local rank under a launcher)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible. Use --device cpu (or auto).")
    return None if device == "cpu" else {"": local_rank}


def parse_batch_size(value: str):
    """``--batch_size``: a positive integer, or ``"auto"`` (backs off on OOM)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f'--batch_size must be a positive integer or "auto", got "{value}".') from None


def run_engine(inputs: EvalInputs, todo: list[_Todo], batch_size, device: str, processes, outcome: EvalOutcome) -> None:
    """Load the model (+ adapter) once and evaluate each remaining folder's scale; the main process writes."""
    from zhlora.evaluation.adapters import check_adapter_applied, load_adapter, set_adapter_scale
    from zhlora.evaluation.hf_model import HFEvalModel
    from zhlora.evaluation.results import build_results, build_timings, write_result_files
    from zhlora.evaluation.runner import evaluate_benchmarks
    from zhlora.evaluation.samples import sample_generations
    from zhlora.io_utils import atomic_write_json
    from zhlora.models.loading import load_model, load_tokenizer

    cfg, ec, adapter_dir = inputs.cfg, inputs.cfg.eval, inputs.adapter_dir
    logger.info("Evaluating %s%s on %s", inputs.model_path, f" + {adapter_dir}" if adapter_dir else "", ", ".join(inputs.items))
    model = load_model(inputs.model_path, torch_dtype=cfg.model.torch_dtype,
                       device_map=device_map(device, processes.local_rank), trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(inputs.model_path, trust_remote_code=cfg.model.trust_remote_code)
    adapter_check = None
    if adapter_dir:
        model = load_adapter(model, adapter_dir)
        adapter_check = check_adapter_applied(model, tokenizer, adapter_dir)
        (logger.info if adapter_check["ok"] else logger.error)("Adapter check: %s", adapter_check["message"])
    generator = None
    if ec.backend == "vllm" and any(bench.spec.kind == "generate" for bench in inputs.items.values()):
        from zhlora.evaluation.vllm_backend import VllmGenerator

        generator = VllmGenerator(inputs.model_path, adapter_dir, 1.0, cfg.model.torch_dtype, cfg.model.trust_remote_code)

    for job in todo:
        started = time.perf_counter()
        if adapter_dir:
            set_adapter_scale(model, job.scale)
        benchmarks = evaluate_benchmarks(model, tokenizer, inputs.items, batch_size=batch_size,
                                         max_new_tokens=ec.max_new_tokens, generator=generator, cache=job.cache,
                                         progress=processes.is_main, processes=processes)
        if not processes.is_main:
            continue  # the main process gathered this process's rows and writes the results
        results = build_results({**job.model_entry, "adapter_check": adapter_check}, job.settings, benchmarks)
        if ec.sample_max_new_tokens > 0:
            samples = sample_generations(generator or HFEvalModel(model, tokenizer, batch_size=batch_size), tokenizer,
                                         cfg.data.prompt_template, ec.sample_max_new_tokens)
            atomic_write_json(job.results_dir / SAMPLES_NAME, samples)
        write_result_files(job.results_dir, results, benchmarks,
                           build_timings(benchmarks, time.perf_counter() - started))
        finish(job.results_dir, results)
        outcome.results[job.results_dir], outcome.fresh[job.results_dir] = results, True


# --- 4. finish -----------------------------------------------------------------------------------------

def finish(results_dir: Path, results: dict, rewrite_markdown: bool = False) -> None:
    """Everything after the predictions: results.md (when reused), charts, then ``results.json``, then cache removal.

    ``results.json`` comes last of the files, so a folder holding it is complete; idempotent, so a
    folder whose results.json a kill left behind is finished here.
    """
    from zhlora.analysis.charts import plot_results_charts
    from zhlora.evaluation.results import mark_results_complete, results_markdown
    from zhlora.io_utils import atomic_write_text

    if rewrite_markdown:
        atomic_write_text(results_dir / RESULTS_MD, results_markdown(results))
    for path in plot_results_charts(results, results_dir):
        logger.info("chart: %s", path)
    mark_results_complete(results_dir, results)
    shutil.rmtree(results_dir / CACHE_DIRNAME, ignore_errors=True)
