"""Probe sets: small, fixed, seeded subsets of the benchmarks, evaluated on the model while it trains.

Six probes, two sides:

======================  ==========================  =========  ====================================
value (training log)     items                      side       overlap with the final evaluation
======================  ==========================  =========  ====================================
``zh_loss``  (nats/tok)  ``belle/heldout`` rows      learning   same split: the final ``ppl_zh``
                                                                scores every held-out row
``ceval_acc``  (0-1)     C-Eval ``dev``, 0-shot      learning   none scored; dev rows are the
                                                                final 5-shot examples
``cmmlu_acc``  (0-1)     CMMLU ``dev``, 0-shot       learning   none scored; same as C-Eval
``en_ppl``               ``english_text/test``,      forgetting same documents as the final
                         first characters of docs               ``ppl_en`` (only one split exists)
``mmlu_acc``  (0-1)      MMLU ``val``, 0-shot        forgetting none (the final scores ``test``)
``gsm8k_acc``  (0-1)     GSM8K ``train``, 8-shot CoT forgetting none (the final scores ``test``)
``en_acc``  (0-1)        MMLU + GSM8K probe items    forgetting (pooled: every item one vote)
======================  ==========================  =========  ====================================

Items are drawn once, before training, with a fixed seed (:data:`PROBE_SEED`, the same for
every run so that runs of one experiment are probed on the same items), spread round-robin
over subjects. :func:`probe_manifest` records exactly which ids each probe uses and how they
relate to the final evaluation's items.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zhlora.data.benchmarks import ChoiceSpec, GenerateSpec, resolve_spec
from zhlora.errors import DataError, ZhloraError
from zhlora.evaluation.items import ALL, BenchmarkItems, TextItem, load_benchmark_items
from zhlora.evaluation.runner import BenchmarkResult, evaluate_benchmarks
from zhlora.evaluation.scoring import item_ids_sha256

logger = logging.getLogger(__name__)

PROBE_SEED = 20240601
ENGLISH_ACCURACY_PROBES = ("mmlu_acc", "gsm8k_acc")


@dataclass(frozen=True)
class ProbeSource:
    """Where a probe's items come from and which summary value it reports."""

    name: str  # the value's name in training_log.jsonl
    benchmark: str  # spec name in zhlora.data.benchmarks
    split: str  # the split probed (data/<source>/<split>.jsonl)
    language: str  # "zh" or "en"
    side: str  # "learning" or "forgetting"
    value_key: str  # key of the benchmark summary reported: accuracy_micro, loss or perplexity


PROBE_SOURCES = (
    ProbeSource("zh_loss", "ppl_zh", "heldout", "zh", "learning", "loss"),
    ProbeSource("ceval_acc", "ceval", "dev", "zh", "learning", "accuracy_micro"),
    ProbeSource("cmmlu_acc", "cmmlu", "dev", "zh", "learning", "accuracy_micro"),
    ProbeSource("en_ppl", "ppl_en", "test", "en", "forgetting", "perplexity"),
    ProbeSource("mmlu_acc", "mmlu", "val", "en", "forgetting", "accuracy_micro"),
    ProbeSource("gsm8k_acc", "gsm8k", "train", "en", "forgetting", "accuracy_micro"),
)

_OVERLAP_NOTES = {
    "zh_loss": "these rows are also scored by the final ppl_zh (the whole held-out slice); choosing the exported "
               "step by zh_loss makes that final figure slightly optimistic",
    "en_ppl": "the beginnings of these documents are also scored by the final ppl_en (english_text has one split); "
              "a budget on en_ppl makes that final figure slightly optimistic",
    "ceval_acc": "dev rows are never scored by the final evaluation; they are its few-shot examples when --shots > 0",
    "cmmlu_acc": "dev rows are never scored by the final evaluation; they are its few-shot examples when --shots > 0",
    "mmlu_acc": "val rows are neither scored nor used as shots by the final evaluation (test, shots from dev)",
    "gsm8k_acc": "train problems are never scored by the final evaluation (test); the 5-shot gsm8k variant draws "
                 "its shots from train, the default gsm8k_cot uses fixed exemplars",
}


@dataclass(frozen=True)
class ProbeSizes:
    """Items per probe. The defaults cost about 60k forward tokens plus 8 short generations
    per probe run (a few optimizer steps of the default Llama-2-7B recipe; docs/monitoring.md)."""

    zh_loss: int = 64  # held-out BELLE rows
    en_ppl: int = 16  # English documents, first en_ppl_chars characters of each
    en_ppl_chars: int = 2000  # ~500 Llama tokens per document
    mmlu_acc: int = 96
    gsm8k_acc: int = 8
    ceval_acc: int = 48
    cmmlu_acc: int = 48

    def capped(self, limit: int | None) -> ProbeSizes:
        """These sizes with every item count at most ``limit`` (None: unchanged)."""
        if limit is None:
            return self
        return dataclasses.replace(self, **{s.name: min(getattr(self, s.name), limit) for s in PROBE_SOURCES})

    def evaluated(self, benchmarks: Sequence[str], required: Sequence[str] = ()) -> ProbeSizes:
        """These sizes with the probes of benchmarks the final evaluation leaves out set to 0 (not drawn),
        except the probes a forgetting budget reads (``required``; ``en_acc`` keeps MMLU and GSM8K)."""
        keep = set(required) | ({"mmlu_acc", "gsm8k_acc"} if "en_acc" in required else set())
        return dataclasses.replace(self, **{s.name: 0 for s in PROBE_SOURCES
                                            if s.benchmark not in benchmarks and s.name not in keep})


@dataclass
class ProbeSuite:
    """The probe sets of a run: the items per probe (ready for the evaluation engine) and their sources."""

    items: dict[str, BenchmarkItems]
    sources: dict[str, ProbeSource]
    sizes: ProbeSizes
    skipped: dict[str, str]  # probe -> why it is not measured (its data file is missing or empty)

    def ids(self, name: str) -> list[str]:
        """The item ids of probe ``name`` in evaluation order."""
        return [item.id for group in self.items[name].groups.values() for item in group]


def spread_over_groups(groups: Mapping[str, list], n: int, rng: random.Random) -> dict[str, list]:
    """Pick ``n`` items spread evenly over ``groups`` (subjects): shuffle each, then take round-robin.

    Groups are visited in sorted order, so the result depends only on the data and ``rng``;
    every group gets ``n // len(groups)`` or one more item (fewer if it runs out). The items
    of each group keep their file order.
    """
    order = {key: rng.sample(range(len(items)), len(items)) for key, items in sorted(groups.items())}
    chosen: dict[str, list[int]] = {key: [] for key in order}
    remaining = n
    while remaining > 0 and any(len(chosen[k]) < len(order[k]) for k in order):
        for key, permutation in order.items():
            taken = chosen[key]
            if remaining > 0 and len(taken) < len(permutation):
                taken.append(permutation[len(taken)])
                remaining -= 1
    return {key: [groups[key][i] for i in sorted(indices)] for key, indices in chosen.items() if indices}


def _probe_spec(source: ProbeSource, protocol: str):
    spec = resolve_spec(source.benchmark, protocol=protocol, gsm8k_variant="gsm8k_cot")
    return dataclasses.replace(spec, eval_split=source.split)


def _truncate(text: str, chars: int) -> str:
    """The first ``chars`` characters of ``text``, cut back to a whitespace so no word is split."""
    if len(text) <= chars:
        return text
    cut = text[:chars]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return cut[:space] if space > chars // 2 else cut


def _load_source(data_dir: Path, source: ProbeSource, size: int, sizes: ProbeSizes, protocol: str,
                 prompt_template: str, tokenizer, rng: random.Random) -> BenchmarkItems:
    spec = _probe_spec(source, protocol)
    bench = load_benchmark_items(data_dir, spec, shots=0 if isinstance(spec, ChoiceSpec) else None,
                                 prompt_template=prompt_template, tokenizer=tokenizer)
    if isinstance(spec, ChoiceSpec):
        bench.groups = spread_over_groups(bench.groups, size, rng)
        return bench
    pool = bench.groups[ALL]
    picked = [pool[i] for i in sorted(rng.sample(range(len(pool)), min(size, len(pool))))]
    if source.name == "en_ppl":
        picked = [TextItem(item.id, item.prompt, _truncate(item.text, sizes.en_ppl_chars)) for item in picked]
    bench.groups = {ALL: picked}
    return bench


def select_probe_sets(
    data_dir: str | Path, sizes: ProbeSizes, *, prompt_template: str = "alpaca", tokenizer=None, protocol: str = "lm-eval",
    required: tuple[str, ...] = (), seed: int = PROBE_SEED,
) -> ProbeSuite:
    """Draw the probe sets from ``data_dir`` (normalized ``data/<source>/<split>.jsonl``).

    A probe whose data file is missing or empty is skipped with a warning, unless its value
    is in ``required`` (the probes a forgetting budget reads; ``en_acc`` needs MMLU or GSM8K).
    ``prompt_template`` renders the ``zh_loss`` prompts as the training rows were (the
    ``chat`` template needs ``tokenizer``).

    Raises:
        DataError: a required probe has no data (the message says how to download it).
    """
    data_dir = Path(data_dir)
    items: dict[str, BenchmarkItems] = {}
    skipped: dict[str, str] = {}
    for source in PROBE_SOURCES:
        size = getattr(sizes, source.name)
        if size <= 0:
            skipped[source.name] = "size 0"
            continue
        spec = resolve_spec(source.benchmark)
        path = data_dir / spec.source / f"{source.split}.jsonl"
        if not path.is_file():
            skipped[source.name] = (f"{path} is missing (create it with `zhlora download-data --datasets {spec.source} "
                                    f"--data_dir {data_dir}`)")
            continue
        rng = random.Random(f"{seed}:{source.name}")  # one stream per probe: sizes of the others do not matter
        bench = _load_source(data_dir, source, size, sizes, protocol, prompt_template, tokenizer, rng)
        if bench.n_items == 0:
            skipped[source.name] = f"{path} has no items"
            continue
        items[source.name] = bench
    english = [name for name in ENGLISH_ACCURACY_PROBES if name in items]
    for name in required:
        if name == "en_acc" and not english:
            raise DataError(
                "--forgetting_budget acc:... reads the English probe accuracy (MMLU val and GSM8K train), but neither "
                f"is available: {skipped.get('mmlu_acc')} {skipped.get('gsm8k_acc')}"
            )
        if name != "en_acc" and name not in items:
            raise DataError(f"--forgetting_budget reads the {name} probe, which has no data: {skipped.get(name)}")
    for name, why in skipped.items():
        if why != "size 0":
            logger.warning("probe %s skipped: %s", name, why)
    return ProbeSuite(items, {s.name: s for s in PROBE_SOURCES if s.name in items}, sizes, skipped)


def probe_manifest(suite: ProbeSuite, seed: int = PROBE_SEED) -> dict:
    """What the run's manifest records about the probe sets: ids, splits, sizes, overlap with the final evaluation."""
    probes = {}
    for name, bench in suite.items.items():
        source = suite.sources[name]
        final = resolve_spec(source.benchmark, gsm8k_variant="gsm8k_cot")
        ids = suite.ids(name)
        entry = {
            "benchmark": source.benchmark, "split": source.split, "final_eval_split": final.eval_split,
            "language": source.language, "side": source.side, "value": source.value_key,
            "n": len(ids), "ids": ids, "ids_sha256": item_ids_sha256(ids),
            "data_sha256": dict(sorted(bench.files_sha256.items())),
            "disjoint_from_final_scored_items": source.split != final.eval_split,
            "note": _OVERLAP_NOTES[name],
        }
        if isinstance(bench.spec, ChoiceSpec):
            entry["shots"] = 0
        elif isinstance(bench.spec, GenerateSpec):
            entry.update(shots=bench.shots, variant=bench.spec.variant)
        if name == "en_ppl":
            entry["chars_per_document"] = suite.sizes.en_ppl_chars
        probes[name] = entry
    return {"seed": seed, "probes": probes, "skipped": dict(sorted(suite.skipped.items())),
            "en_acc": "micro accuracy over the items of " + " + ".join(n for n in ENGLISH_ACCURACY_PROBES if n in probes)}


def pooled_accuracy(results: list[BenchmarkResult]) -> float | None:
    """Fraction correct over all prediction rows of ``results`` (every item one vote), None when empty."""
    rows = [row for result in results for row in result.predictions]
    return sum(bool(row["correct"]) for row in rows) / len(rows) if rows else None


@dataclass
class ProbeMeasurement:
    """Probe values after one step and the wall time they took (seconds)."""

    values: dict[str, float]
    seconds: float
    seconds_per_probe: dict[str, float]


def evaluate_probes(model, tokenizer, suite: ProbeSuite, *, batch_size: int | str = "auto",
                    max_new_tokens: int = 256) -> ProbeMeasurement:
    """Evaluate every probe on ``model`` as it is (adapter applied, in memory); restore its train/eval mode.

    The engine runs without gradients and draws no random numbers, so probing leaves the
    weights and the training run unchanged.
    """
    started = time.perf_counter()
    try:
        results = evaluate_benchmarks(model, tokenizer, suite.items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    except ZhloraError as exc:
        raise ZhloraError(f"Forgetting probes failed: {exc}") from None
    values = {name: float(results[name].summary[suite.sources[name].value_key]) for name in results}
    english = [results[name] for name in ENGLISH_ACCURACY_PROBES if name in results]
    if english:
        values["en_acc"] = pooled_accuracy(english)
    return ProbeMeasurement(
        values={name: round(value, 6) for name, value in values.items()},
        seconds=time.perf_counter() - started,
        seconds_per_probe={name: round(result.seconds, 3) for name, result in results.items()},
    )
