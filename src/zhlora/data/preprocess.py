"""Step 2: render instruction rows, tokenize, mask the prompt, apply the length rule, save.

Each row becomes ``input_ids = [BOS if the tokenizer adds one] + prompt + response + [EOS]`` with ``labels`` equal to
``input_ids`` on the response and EOS and ``-100`` on the prompt, so the loss falls on the
answer only. Prompt and response are tokenized separately (as Chinese-LLaMA-Alpaca does), so
the boundary between them is exact for any tokenizer. A row longer than ``max_seq_length``
is dropped (``overlong="drop"``) or has its response cut (``"truncate"``; no EOS then, since
the answer did not end there). Outputs go to ``processed_data/`` (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhlora.data.templates import CHAT_TEMPLATE, render_prompt, template_identity
from zhlora.errors import DataError, ZhloraError
from zhlora.filenames import PROCESSED_META, PROCESSED_STATS, TRAIN_DIRNAME
from zhlora.io_utils import atomic_write_json, provenance, read_jsonl, replace_folder, sha256_file, staging_folder

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips
TOKENIZE_BATCH_ROWS = 1000
CHAR_RATIO_ROWS = 2000  # rows measured for tokens per Chinese character
# What to do about each drop reason of tokenize_rows (formatted with the input file and the settings).
DROP_ADVICE = {
    "too_long": "{n} row(s) were longer than --max_seq_length {max_seq_length}: raise it, or keep them cut to "
                "length with --overlong truncate",
    "prompt_too_long": "{n} row(s) had a prompt (instruction + input) that alone fills --max_seq_length "
                       "{max_seq_length}: raise --max_seq_length (--overlong truncate cannot help: it cuts responses only)",
    "empty_response": "{n} row(s) had an empty output, so there is nothing to learn from them: check {source} (its "
                      "\"output\" fields are empty) and download it again with `zhlora download-data --force`, or use "
                      "another source",
}
# Han characters: CJK Unified Ideographs, Extension A, Compatibility Ideographs, Extensions B-F.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")


@dataclass(frozen=True)
class TokenizedRow:
    """One training row, or why it was dropped (``drop_reason``); ``truncated`` if its response was cut."""

    input_ids: list[int] | None
    labels: list[int] | None
    drop_reason: str | None = None
    truncated: bool = False


def build_example(
    prompt_ids: Sequence[int], response_ids: Sequence[int], eos_id: int, max_seq_length: int | None, overlong: str,
    drop_empty: bool = True,
) -> TokenizedRow:
    """Join prompt and response token ids into ``input_ids``/``labels`` under the length rule.

    ``prompt_ids`` already carry BOS. The full row is ``prompt + response + [eos]``. When it
    exceeds ``max_seq_length`` tokens: ``overlong="drop"`` drops it (reason ``too_long``);
    ``"truncate"`` keeps the whole prompt and the first ``max_seq_length - len(prompt)``
    response tokens without EOS, or drops the row (``prompt_too_long``) when not even one
    response token fits. ``max_seq_length=None`` applies no length rule. An empty response is
    dropped (``empty_response``: nothing to learn) unless ``drop_empty`` is false (evaluation
    then scores its EOS alone).
    """
    if not response_ids and drop_empty:
        return TokenizedRow(None, None, "empty_response")
    prompt, response = list(prompt_ids), list(response_ids)
    if max_seq_length is None or len(prompt) + len(response) + 1 <= max_seq_length:
        ids = prompt + response + [eos_id]
        return TokenizedRow(ids, [IGNORE_INDEX] * len(prompt) + response + [eos_id])
    if overlong == "drop":
        return TokenizedRow(None, None, "too_long")
    room = max_seq_length - len(prompt)
    if room < 1:
        return TokenizedRow(None, None, "prompt_too_long")
    kept = response[:room]
    return TokenizedRow(prompt + kept, [IGNORE_INDEX] * len(prompt) + kept, truncated=True)


def encode_instructions(
    tokenizer, prompts: Sequence[str], responses: Sequence[str], max_seq_length: int | None = None,
    overlong: str = "drop", drop_empty: bool = True,
) -> list[TokenizedRow]:
    """The one encoder of instruction rows: rendered prompt with the tokenizer's special tokens
    (BOS when it adds one), response without, then EOS; labels on the response and EOS only.

    Training rows (:func:`tokenize_rows`) and the held-out loss of evaluation (``ppl_zh``,
    :mod:`zhlora.evaluation.tasks.perplexity`) both come from here, so that loss is the training
    loss on unseen rows by construction. Prompt and response are tokenized separately, so their
    boundary is exact for any tokenizer. Length rule and empty responses: :func:`build_example`.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ZhloraError(f"The tokenizer {tokenizer.name_or_path} has no EOS token; responses could not be ended.")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [build_example(p_ids, r_ids, eos_id, max_seq_length, overlong, drop_empty)
            for p_ids, r_ids in zip(prompt_ids, response_ids)]


def tokenize_rows(
    tokenizer, rows: list[dict[str, str]], template: str, max_seq_length: int, overlong: str
) -> tuple[dict[str, list], dict[str, Any]]:
    """Tokenize instruction rows in batches; return the dataset columns and their counts.

    The columns are ``input_ids``, ``labels`` and ``length`` (tokens per row). The counts are
    ``rows_in``, ``rows_out``, ``dropped`` (by reason), ``truncated``, ``loss_tokens`` (tokens
    with a label, i.e. response + EOS) and ``rows_per_second``.
    """
    columns: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    dropped: Counter[str] = Counter()
    truncated = loss_tokens = 0
    started = time.perf_counter()
    for start in range(0, len(rows), TOKENIZE_BATCH_ROWS):
        batch = rows[start:start + TOKENIZE_BATCH_ROWS]
        prompts = [render_prompt(template, row["instruction"], row["input"], tokenizer) for row in batch]
        for example in encode_instructions(tokenizer, prompts, [row["output"] for row in batch], max_seq_length, overlong):
            if example.drop_reason:
                dropped[example.drop_reason] += 1
                continue
            truncated += example.truncated
            loss_tokens += len(example.labels) - example.labels.count(IGNORE_INDEX)
            columns["input_ids"].append(example.input_ids)
            columns["labels"].append(example.labels)
            columns["length"].append(len(example.input_ids))
    seconds = time.perf_counter() - started
    counts = {
        "rows_in": len(rows),
        "rows_out": len(columns["length"]),
        "dropped": dict(sorted(dropped.items())),
        "truncated": truncated,
        "loss_tokens": loss_tokens,
        "rows_per_second": round(len(rows) / seconds, 1) if seconds > 0 else None,
    }
    return columns, counts


def length_summary(lengths: Sequence[int]) -> dict[str, float | int]:
    """Distribution of row lengths in tokens: count, total, min, mean, percentiles, max."""
    if not lengths:
        return {"count": 0, "total": 0}
    ordered = sorted(lengths)

    def percentile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "count": len(ordered),
        "total": sum(ordered),
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "p50": percentile(0.50),
        "p90": percentile(0.90),
        "p99": percentile(0.99),
        "max": ordered[-1],
    }


def count_han(text: str) -> int:
    """Number of Han (Chinese) characters in ``text``."""
    return len(_HAN.findall(text))


def tokens_per_chinese_char(tokenizer, texts: Sequence[str]) -> float | None:
    """Tokens (no special tokens) per Han character over ``texts``; None if they hold no Han.

    A lower value means the vocabulary covers Chinese better: Llama-2 falls back to UTF-8
    bytes for most characters, while Chinese-LLaMA-2 has whole-character pieces.
    """
    han = sum(count_han(text) for text in texts)
    if han == 0:
        return None
    tokens = sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"])
    return round(tokens / han, 4)


def vocab_sha256(tokenizer) -> str:
    """SHA-256 of the tokenizer's vocabulary (token -> id, as sorted JSON): its identity."""
    text = json.dumps(tokenizer.get_vocab(), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_identity(tokenizer) -> dict[str, Any]:
    """What training checks against the model: name, vocabulary size (with added tokens) and hash."""
    return {
        "name_or_path": str(tokenizer.name_or_path),
        "vocab_size": len(tokenizer),
        "vocab_sha256": vocab_sha256(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def replay_count(replay_ratio: float, n_chinese: int) -> int:
    """English rows to mix in so they make up ``replay_ratio`` of the training set: r/(1-r)·n."""
    return round(replay_ratio / (1.0 - replay_ratio) * n_chinese)


def _read_rows(path: Path) -> list[dict[str, str]]:
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not all(isinstance(row.get(key), str) for key in ("instruction", "input", "output")):
            raise DataError(
                f'{path}, line {number}: expected {{"instruction", "input", "output"}} strings. '
                "Rerun download-data with --force to rewrite the file."
            )
    return rows


def _input_files(data_dir: Path, replay_ratio: float) -> dict[str, Path]:
    """The normalized files preprocessing reads; a missing one names the command that writes it."""
    inputs = {"belle_train": data_dir / "belle" / "train.jsonl", "belle_heldout": data_dir / "belle" / "heldout.jsonl"}
    if replay_ratio > 0:
        inputs["alpaca_train"] = data_dir / "alpaca" / "train.jsonl"
    for key, path in inputs.items():
        if path.is_file():
            continue
        if key == "alpaca_train":
            raise DataError(
                f"{path} does not exist. --replay_ratio needs English instructions: run `zhlora download-data "
                f"--data_dir {data_dir} --datasets alpaca` (add --source sample to use the bundled sample)."
            )
        raise DataError(
            f"{path} does not exist. Run `zhlora download-data --data_dir {data_dir}` first "
            "(add --source sample to try the bundled samples)."
        )
    return inputs


def drop_advice(dropped: dict[str, int], max_seq_length: int, source: Path) -> str:
    """One clause per drop reason, each with its own advice (``""`` when nothing was dropped)."""
    return "; ".join(DROP_ADVICE[reason].format(n=count, max_seq_length=max_seq_length, source=source)
                     if reason in DROP_ADVICE else f"{count} row(s) dropped ({reason})"
                     for reason, count in sorted(dropped.items()) if count)


def mix_replay(
    chinese: list[dict[str, str]], english: list[dict[str, str]], replay_ratio: float, seed: int
) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Mix ``replay_count`` English rows (drawn with ``seed``) into ``chinese`` and shuffle the mix.

    Returns the mixed rows and ``{ratio, requested, used, effective_ratio}``: ``used`` <
    ``requested`` when there are not enough English rows, and ``effective_ratio`` is the share
    of English rows actually in the mix, ``used / (chinese + used)``.
    """
    requested = replay_count(replay_ratio, len(chinese))
    rng = random.Random(seed)
    chosen = rng.sample(english, min(requested, len(english)))
    effective = round(len(chosen) / (len(chinese) + len(chosen)), 4) if chosen else 0.0
    if requested > len(english):
        logger.warning(
            "Replay shortfall: --replay_ratio %g asks for %d English rows but only %d exist, so all %d are used and "
            "the effective replay ratio is %.3f, not %g. Download more English instructions (a larger alpaca set) "
            "or lower --replay_ratio.", replay_ratio, requested, len(english), len(english), effective, replay_ratio)
    mixed = chinese + chosen
    rng.shuffle(mixed)
    return mixed, {"ratio": replay_ratio, "requested": requested, "used": len(chosen), "effective_ratio": effective}


def _save_dataset(columns: dict[str, list], path: Path) -> None:
    from datasets import Dataset, Features, List, Value

    features = Features(
        {"input_ids": List(Value("int32")), "labels": List(Value("int32")), "length": Value("int32")}
    )
    Dataset.from_dict(columns, features=features).save_to_disk(str(path))


def _write_outputs(output_dir: Path, datasets: dict[str, dict[str, list]], stats: dict, meta: dict) -> None:
    """Save the datasets, then stats.json, then meta.json (the completion marker)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / PROCESSED_META).unlink(missing_ok=True)  # incomplete until meta.json is back
    staging = staging_folder(output_dir, ".partial-")
    try:
        for dirname, columns in datasets.items():
            _save_dataset(columns, staging / dirname)
            replace_folder(staging / dirname, output_dir / dirname)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(output_dir / PROCESSED_STATS, stats)
    atomic_write_json(output_dir / PROCESSED_META, meta)


def preprocess_data(
    data_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    tokenizer,
    template: str = "alpaca",
    max_seq_length: int = 1024,
    overlong: str = "drop",
    replay_ratio: float = 0.0,
    seed: int = 42,
    force: bool = False,
) -> dict[str, Any]:
    """Build ``train_dataset`` (BELLE sample [+ alpaca replay]) and count the held-out BELLE rows.

    The held-out rows go through the same length rule so ``stats.json`` shows how they fare
    (``eval``); they are not saved as a dataset: ``ppl_zh`` scores ``belle/heldout.jsonl`` itself.

    Returns the statistics written to ``stats.json``. ``meta.json`` is written last and
    marks the output complete; a complete output made from the same inputs and settings is
    reused, one made differently raises unless ``force`` is set.
    """
    if overlong not in ("drop", "truncate"):
        raise ZhloraError(f'overlong must be "drop" or "truncate", got "{overlong}".')
    identity = template_identity(template, tokenizer)  # an unknown or unusable template fails here, before any work
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    inputs = _input_files(data_dir, replay_ratio)
    request = {
        "tokenizer": tokenizer_identity(tokenizer),
        "template": template,
        # the chat template's text decides the rendering; old requests (other templates) keep their shape
        **({"chat_template_sha256": identity["chat_template_sha256"]} if template == CHAT_TEMPLATE else {}),
        "max_seq_length": max_seq_length,
        "overlong": overlong,
        "replay_ratio": replay_ratio,
        "seed": seed,
        "inputs_sha256": {key: sha256_file(path) for key, path in inputs.items()},
    }
    meta_path = output_dir / PROCESSED_META
    if meta_path.is_file() and not force:
        if json.loads(meta_path.read_text(encoding="utf-8")).get("request") == request:
            logger.info("%s is complete for these inputs and settings; skipping (--force redoes it)", output_dir)
            return json.loads((output_dir / PROCESSED_STATS).read_text(encoding="utf-8"))
        raise ZhloraError(
            f"{output_dir} already holds data preprocessed with other inputs or settings (see {meta_path}). "
            "Pass --force to replace it, or choose another --output_dir."
        )

    belle_train = _read_rows(inputs["belle_train"])
    train_rows, replay = belle_train, {"ratio": replay_ratio, "requested": 0, "used": 0, "effective_ratio": 0.0}
    if replay_ratio > 0:
        train_rows, replay = mix_replay(belle_train, _read_rows(inputs["alpaca_train"]), replay_ratio, seed)
    train_columns, train_counts = tokenize_rows(tokenizer, train_rows, template, max_seq_length, overlong)
    eval_columns, eval_counts = tokenize_rows(
        tokenizer, _read_rows(inputs["belle_heldout"]), template, max_seq_length, overlong
    )
    for name, counts in (("train", train_counts), ("eval", eval_counts)):
        logger.info(
            "%s: %d rows in, %d out, dropped %s, truncated %d (%s rows/s)",
            name, counts["rows_in"], counts["rows_out"], counts["dropped"] or "none", counts["truncated"],
            counts["rows_per_second"],
        )
    advice = drop_advice(train_counts["dropped"], max_seq_length, inputs["belle_train"])
    if not train_columns["length"]:
        raise DataError(f"Every training row was dropped: {advice}.")
    if advice:
        logger.info("Training rows dropped: %s.", advice)
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in belle_train[:CHAR_RATIO_ROWS]]
    stats = {
        "train": {**train_counts, "lengths": length_summary(train_columns["length"])},
        "eval": {**eval_counts, "lengths": length_summary(eval_columns["length"])},
        "replay": replay,
        "tokens_per_chinese_char": tokens_per_chinese_char(tokenizer, texts),
        "tokens_per_chinese_char_rows": len(texts),
    }
    meta = {
        "schema_version": 1,
        "request": request,
        "tokenizer": request["tokenizer"],
        "template": template,
        "template_identity": identity,
        "max_seq_length": max_seq_length,
        "rows": {"train": train_counts["rows_out"], "eval": eval_counts["rows_out"]},
        "data_dir": str(data_dir),
        "provenance": provenance(),
    }
    _write_outputs(output_dir, {TRAIN_DIRNAME: train_columns}, stats, meta)
    return stats
