"""Run benchmark specs on an in-memory model, unit by unit, with an optional resume cache.

A *unit* is the smallest piece of work that is cached: one subject of a multiple-choice
benchmark, or 64 consecutive items of the others. With a :class:`PredictionCache`, each
finished unit is written atomically, stamped with the fingerprint of the settings, so a
killed evaluation resumes from the units already done and ends with the same numbers.
Units are also how a data-parallel evaluation shares work (:mod:`zhlora.evaluation.distributed`):
:func:`score_share` scores one process's units, :func:`merge_shares` puts all shares back in order.

:func:`evaluate_benchmarks` is also the library entry point for callers that already hold a
model (e.g. probes evaluated during training): it never loads or saves a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zhlora.data import benchmarks
from zhlora.differences import differences
from zhlora.errors import ZhloraError
from zhlora.evaluation.benchdata import BenchmarkItems, Unit
from zhlora.evaluation.distributed import EvalProcesses, assign_units
from zhlora.evaluation.engine import EvalEngine, GenerationRouted
from zhlora.evaluation.hf_model import HFEvalModel
from zhlora.evaluation.prefix import PrefixUse
from zhlora.evaluation.scoring import item_ids_sha256
from zhlora.evaluation.tasks import task_for
from zhlora.filenames import CACHE_DIRNAME, CACHE_SETTINGS
from zhlora.io_utils import atomic_write_json, atomic_write_text, dumps_json
from zhlora.progress import progress_bar

logger = logging.getLogger(__name__)



@dataclass
class BenchmarkResult:
    """One benchmark's ``results.json`` entry (``summary``), prediction rows and compute time (s).

    ``prefix`` counts the multiple-choice items computed in this call that were scored from
    their subject's shared few-shot prefix (None for other kinds of benchmark).
    """

    summary: dict
    predictions: list[dict]
    seconds: float
    prefix: PrefixUse | None = None


def benchmark_units(bench: BenchmarkItems) -> list[Unit]:
    """The units of a benchmark, in evaluation order (its task's)."""
    return task_for(bench.spec).units(bench)


def run_unit(engine: EvalEngine, bench: BenchmarkItems, unit: Unit, max_new_tokens: int,
             prefix_use: PrefixUse | None = None) -> list[dict]:
    """Prediction rows of one unit; multiple-choice units add their shared-prefix counts to ``prefix_use``."""
    return task_for(bench.spec).run(engine, bench, unit, max_new_tokens=max_new_tokens, prefix_use=prefix_use)


def summarize_benchmark(bench: BenchmarkItems, rows: Sequence[dict]) -> dict:
    """The ``results.json`` entry of a benchmark (spec identity, language + its task's scores), without timings.

    ``language`` comes from the benchmark registry, so the analysis reads it from the file.
    """
    spec = bench.spec
    entry = {
        "kind": spec.kind, "language": benchmarks.language_of(spec.name), "spec_version": spec.version,
        "spec_reference": spec.reference, "protocol": spec.protocol, "split": spec.eval_split,
        "data_sha256": dict(sorted(bench.files_sha256.items())),
    }
    entry.update(task_for(spec).summarize(bench, rows))
    return entry


SHARING_WARN_BELOW = 0.9  # fraction of items; below it, most of the few-shot prompts are recomputed per item


def log_prefix_use(benchmark: str, use: PrefixUse) -> None:
    """Say how many items were scored from the shared few-shot prefix; warn when few were.

    Few items sharing means the evaluation runs several times slower than it could (every
    prompt computed in full), not that its numbers are wrong.
    """
    message = (f"{benchmark}: {use.shared_items}/{use.items} items ({use.rate:.0%}) scored from the shared few-shot "
               f"prefix, {use.mean_shared_tokens:.0f} tokens on average")
    if use.rate < SHARING_WARN_BELOW:
        logger.warning("%s; the others were computed in full (slower, same numbers): contexts truncated to the model's "
                       "window, subjects with one item, or a tokenizer that splits the prompts unusually.", message)
    else:
        logger.info(message)


# ---------------------------------------------------------------------------------------
# Resume cache
# ---------------------------------------------------------------------------------------
def settings_fingerprint(settings: Mapping) -> str:
    """sha256 of the settings that determine the numbers (canonical JSON)."""
    return hashlib.sha256(dumps_json(settings).encode("utf-8")).hexdigest()


class PredictionCache:
    """Finished units under ``folder/<benchmark>/<unit>.json``, each stamped with the settings fingerprint.

    ``folder/settings.json`` (fingerprint + settings) is written with the first finished unit,
    so a run that fails before scoring anything leaves no cache behind.
    """

    def __init__(self, folder: Path, settings: Mapping):
        self.folder = Path(folder)
        self.settings = dict(settings)
        self.fingerprint = settings_fingerprint(settings)

    def _path(self, benchmark: str, key: str) -> Path:
        return self.folder / benchmark / f"{key}.json"

    def load(self, benchmark: str, key: str, ids_sha256: str) -> list[dict] | None:
        """The cached rows of a unit, or None when it has not been evaluated yet."""
        path = self._path(benchmark, key)
        if not path.is_file():
            return None
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("fingerprint") != self.fingerprint or cached.get("item_ids_sha256") != ids_sha256:
            raise ZhloraError(
                f"The prediction cache {path} was written by an evaluation with other settings or items; "
                "zhlora will not mix them. Rerun with --overwrite to start fresh, or use another --results_dir."
            )
        return cached["rows"]

    def save(self, benchmark: str, key: str, ids_sha256: str, rows: list[dict]) -> None:
        """Write a finished unit atomically (rows keep their key order, so resumed predictions files are identical)."""
        if not (self.folder / CACHE_SETTINGS).is_file():
            atomic_write_json(self.folder / CACHE_SETTINGS, {"fingerprint": self.fingerprint, "settings": self.settings})
        payload = {"fingerprint": self.fingerprint, "item_ids_sha256": ids_sha256, "rows": rows}
        atomic_write_text(self._path(benchmark, key), json.dumps(payload, ensure_ascii=False))


def open_prediction_cache(results_dir: Path, settings: Mapping) -> PredictionCache:
    """The resume cache of ``results_dir`` for ``settings``; refuses a cache made with other settings."""
    folder = Path(results_dir) / CACHE_DIRNAME
    cache = PredictionCache(folder, settings)
    settings_path = folder / CACHE_SETTINGS
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous.get("fingerprint") != cache.fingerprint:
            changed = differences(previous.get("settings", {}), settings)
            raise ZhloraError(
                f"{results_dir} holds a partial evaluation made with other settings ({'; '.join(changed[:5])}). "
                "zhlora will not mix predictions of different settings: rerun with --overwrite to discard it, "
                "or choose another --results_dir."
            )
        logger.info("Resuming the evaluation in %s", results_dir)
    return cache


# ---------------------------------------------------------------------------------------
# Library entry point
# ---------------------------------------------------------------------------------------
def score_share(
    engine: EvalEngine,
    items_by_benchmark: Mapping[str, BenchmarkItems],
    *,
    max_new_tokens: int,
    cache: PredictionCache | None = None,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Score this process's units of every benchmark (:func:`~zhlora.evaluation.distributed.assign_units`).

    Returns ``{"rows": {benchmark: {unit index: rows}}, "seconds": {benchmark: seconds},
    "prefix": {benchmark: PrefixUse | None}}`` (shared-prefix counts of the units computed here);
    :func:`merge_shares` puts the shares of all processes together. Finished units go to
    ``cache`` as they complete, so every process resumes its own work.
    """
    share: dict = {"rows": {}, "seconds": {}, "prefix": {}}
    for name, bench in items_by_benchmark.items():
        started = time.perf_counter()
        units = benchmark_units(bench)
        owners = assign_units([len(unit.items) for unit in units], world_size)
        mine = [index for index, owner in enumerate(owners) if owner == rank]
        share["rows"][name] = {}
        prefix_use = PrefixUse() if task_for(bench.spec).shares_prefix else None
        with progress_bar(sum(len(units[i].items) for i in mine), name, "item", disable=not progress) as bar:
            for index in mine:
                unit = units[index]
                ids_sha256 = item_ids_sha256([item.id for item in unit.items])
                unit_rows = cache.load(name, unit.key, ids_sha256) if cache else None
                if unit_rows is None:
                    unit_rows = run_unit(engine, bench, unit, max_new_tokens, prefix_use)
                    if cache:
                        cache.save(name, unit.key, ids_sha256, unit_rows)
                share["rows"][name][index] = unit_rows
                bar.update(len(unit.items))
        share["seconds"][name] = time.perf_counter() - started
        share["prefix"][name] = prefix_use
    return share


def merge_shares(items_by_benchmark: Mapping[str, BenchmarkItems], shares: Sequence[dict]) -> dict[str, BenchmarkResult]:
    """One result per benchmark from the shares of all processes, rows in unit (= item) order.

    A benchmark's seconds are those of its slowest process.
    """
    results: dict[str, BenchmarkResult] = {}
    for name, bench in items_by_benchmark.items():
        by_unit = {index: rows for share in shares for index, rows in share["rows"][name].items()}
        n_units = len(benchmark_units(bench))
        if sorted(by_unit) != list(range(n_units)):
            raise ZhloraError(f"{name}: the processes returned units {sorted(by_unit)} of {n_units}. "
                              "This is a bug in zhlora: please report it with the log above.")
        rows = [row for index in range(n_units) for row in by_unit[index]]
        seconds = max(share["seconds"][name] for share in shares)
        prefix_use = None
        for use in (share["prefix"][name] for share in shares if share["prefix"][name] is not None):
            prefix_use = prefix_use or PrefixUse()
            prefix_use.add(use)
        results[name] = BenchmarkResult(summarize_benchmark(bench, rows), rows, seconds, prefix_use)
        if prefix_use is not None and prefix_use.items:
            log_prefix_use(name, prefix_use)
    return results


def evaluate_benchmarks(
    model,
    tokenizer,
    items_by_benchmark: Mapping[str, BenchmarkItems],
    *,
    batch_size: int | str = "auto",
    max_new_tokens: int = 256,
    generator=None,
    cache: PredictionCache | None = None,
    progress: bool = False,
    processes: EvalProcesses | None = None,
) -> dict[str, BenchmarkResult]:
    """Evaluate an in-memory model on loaded benchmarks; return one result per benchmark.

    Args:
        model: a causal LM, plain or PEFT-wrapped (the adapter as it is now, unmerged). Its
            train/eval mode is restored afterwards, so a training loop can call this.
        tokenizer: the model's tokenizer.
        items_by_benchmark: name -> :func:`~zhlora.evaluation.items.load_benchmark_items` output.
        batch_size: rows per forward pass or ``"auto"``.
        max_new_tokens: generation budget per GSM8K answer (tokens).
        generator: answers generation requests (``generate(prompts, stop, max_new_tokens)``);
            default: the HF engine on ``model`` (see :mod:`zhlora.evaluation.vllm_backend`).
        cache: resume cache (see :func:`open_prediction_cache`); None computes everything.
        progress: show a progress bar per benchmark.
        processes: a data-parallel evaluation (:mod:`zhlora.evaluation.distributed`): this
            process scores its share of the units and the main process gathers them. Every
            process must call this; processes other than the main one get ``{}``.

    Example (cheap probes every N training steps)::

        items = {"mmlu": load_benchmark_items("data", resolve_spec("mmlu"), limit=5)}
        scores = {n: r.summary["accuracy_micro"] for n, r in evaluate_benchmarks(model, tok, items).items()}
    """
    processes = processes or EvalProcesses()
    engine: EvalEngine = HFEvalModel(model, tokenizer, batch_size=batch_size)
    if generator is not None:
        engine = GenerationRouted(engine, generator)
    was_training = model.training
    model.eval()
    try:
        share = score_share(engine, items_by_benchmark, max_new_tokens=max_new_tokens,
                            cache=cache, progress=progress, rank=processes.rank, world_size=processes.world_size)
    finally:
        model.train(was_training)
    shares = processes.gather(share)
    return {} if shares is None else merge_shares(items_by_benchmark, shares)
