"""The perplexity task: summed token losses of held-out responses or of whole documents.

Used by every :class:`~zhlora.data.benchmarks.kinds.PerplexitySpec`. ``target="response"``
rows (``ppl_zh``) are encoded exactly as training rows
(:func:`~zhlora.evaluation.requests.response_sequence`); ``target="document"`` texts
(``ppl_en``) are scored in disjoint windows, lm-eval's ``loglikelihood_rolling``. A unit is
:data:`~zhlora.evaluation.benchdata.CHUNK_ITEMS` consecutive documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zhlora.data.benchmarks import PerplexitySpec
from zhlora.data.readers import iter_json_records
from zhlora.data.templates import render_prompt
from zhlora.errors import DataError
from zhlora.evaluation.benchdata import ALL, BenchmarkItems, TextItem, Unit, chunked_units, data_file
from zhlora.evaluation.engine import EvalEngine
from zhlora.evaluation.prefix import PrefixUse
from zhlora.evaluation.requests import document_windows, response_sequence
from zhlora.evaluation.scoring import LL_DIGITS, summarize_perplexity, text_units
from zhlora.io_utils import sha256_file


class PerplexityTask:
    """Load, run and score :class:`PerplexitySpec` benchmarks (see :class:`~zhlora.evaluation.tasks.Task`)."""

    kind = "perplexity"
    shares_prefix = False

    def load(self, data_dir: Path, spec: PerplexitySpec, *, shots: int | None, subjects: Sequence[str] | None,
             limit: int | None, prompt_template: str, tokenizer) -> BenchmarkItems:
        """The first ``limit`` documents; instruction prompts rendered with the training ``prompt_template``."""
        path = data_file(data_dir, spec.source, spec.eval_split)
        items = []
        for index, (where, row) in enumerate(iter_json_records(path)):
            item_id = str(row.get("id", f"{spec.source}-{spec.eval_split}-{index}"))
            if spec.target == "response":
                for key in ("instruction", "output"):
                    if not isinstance(row.get(key), str):
                        raise DataError(f"{where}: an instruction row needs a text field {key!r}.")
                prompt = render_prompt(prompt_template, row["instruction"], row.get("input") or "", tokenizer)
                items.append(TextItem(item_id, prompt, row["output"]))
            else:
                if not isinstance(row.get("text"), str):
                    raise DataError(f"{where}: a text document needs a text field 'text'.")
                if row["text"].strip():
                    items.append(TextItem(item_id, "", row["text"]))
        return BenchmarkItems(spec=spec, groups={ALL: items[:limit]},
                              files_sha256={f"{spec.source}/{path.name}": sha256_file(path)})

    def units(self, bench: BenchmarkItems) -> list[Unit]:
        """Chunks of consecutive documents."""
        return chunked_units(bench.groups[ALL])

    def run(self, engine: EvalEngine, bench: BenchmarkItems, unit: Unit, *, max_new_tokens: int,
            prefix_use: PrefixUse | None) -> list[dict]:
        """Prediction rows ``{id, nll, n_tokens, loss, n_bytes, n_characters, n_words}`` (nats)."""
        spec: PerplexitySpec = bench.spec
        window = min(spec.window_tokens, engine.max_length - 1)
        sequences, owners = [], []
        for index, doc in enumerate(unit.items):
            if spec.target == "response":
                parts = [response_sequence(engine.tokenizer, doc.prompt, doc.text)]
            else:
                parts = document_windows(engine.tokenizer, doc.text, window)
            sequences.extend(parts)
            owners.extend([index] * len(parts))
        totals = [[0.0, 0] for _ in unit.items]
        for owner, (nll, count) in zip(owners, engine.sequence_nll(sequences)):
            totals[owner][0] += nll
            totals[owner][1] += count
        return [
            {"id": doc.id, "nll": round(nll, LL_DIGITS), "n_tokens": count, "loss": round(nll / count, LL_DIGITS),
             **text_units(doc.text)}
            for doc, (nll, count) in zip(unit.items, totals)
        ]

    def summarize(self, bench: BenchmarkItems, rows: Sequence[dict]) -> dict:
        """Token-weighted loss and perplexity, and the spec's tokenizer-independent units."""
        return summarize_perplexity(rows, bench.spec.units)
