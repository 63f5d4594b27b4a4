"""The processed training set as flat token arrays, checked against the model before training.

``zhlora preprocess`` writes ``processed_data/train_dataset`` (``datasets.save_to_disk``; columns
``input_ids``, ``labels`` with -100 on prompt tokens, ``length``) and ``processed_data/meta.json``
(the tokenizer's ``name_or_path``, ``vocab_size`` and ``vocab_sha256``). Training reads the token
columns straight from Arrow into two flat numpy arrays plus row offsets: 50,000 rows cost a
few hundred MB as Python lists but a few dozen as arrays.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zhlora.data.preprocess import IGNORE_INDEX
from zhlora.errors import DataError
from zhlora.filenames import PROCESSED_META

REQUIRED_COLUMNS = ("input_ids", "labels")
_PREPROCESS_HINT = "Create it with `zhlora preprocess` (it writes processed_data/train_dataset and processed_data/meta.json)."


@dataclass
class TokenRows:
    """Tokenized rows: row ``i`` is ``input_ids[offsets[i]:offsets[i+1]]`` (labels likewise)."""

    input_ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per row."""
        return np.diff(self.offsets)

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, labels)`` of one row (views, not copies)."""
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.input_ids[start:end], self.labels[start:end]

    def scored_tokens_per_row(self) -> np.ndarray:
        """Next-token targets per row: labelled tokens after the first position."""
        scored = (self.labels != IGNORE_INDEX).astype(np.int64)
        first = self.offsets[:-1][self.lengths > 0]
        scored[first] = 0  # the first token of a row is never a target (nothing precedes it)
        return np.add.reduceat(scored, self.offsets[:-1]) if len(scored) else np.zeros(len(self), np.int64)


def _flat_list_column(table, name: str, where: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) or column.null_count:
        raise DataError(f"{where}: column `{name}` must hold lists of token ids without nulls. {_PREPROCESS_HINT}")
    offsets = column.offsets.to_numpy().astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
    return values[offsets[0] : offsets[-1]], offsets - offsets[0]


def load_token_rows(dataset_path: str | Path) -> TokenRows:
    """Read a processed dataset folder into :class:`TokenRows`.

    Raises:
        DataError: the folder is missing, is not a ``save_to_disk`` dataset, lacks a column,
            has rows whose labels and tokens differ in length, or is empty.
    """
    import datasets

    path = Path(dataset_path)
    if not path.is_dir():
        raise DataError(f"--dataset_path {path} does not exist. {_PREPROCESS_HINT}")
    if not (path / "state.json").is_file():
        raise DataError(
            f"--dataset_path {path} is not a processed dataset (no state.json from datasets.save_to_disk). {_PREPROCESS_HINT}"
        )
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise DataError(f"--dataset_path {path}: could not load the dataset ({exc}). {_PREPROCESS_HINT}") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError(
            f"--dataset_path {path} holds several splits ({', '.join(dataset)}); pass the split folder, "
            f"e.g. {path / 'train'}."
        )
    missing = [name for name in REQUIRED_COLUMNS if name not in dataset.column_names]
    if missing:
        raise DataError(
            f"--dataset_path {path} lacks the column(s) {', '.join(missing)} (it has {', '.join(dataset.column_names)}). "
            f"{_PREPROCESS_HINT}"
        )
    if len(dataset) == 0:
        raise DataError(f"--dataset_path {path} has no rows. {_PREPROCESS_HINT}")
    table = dataset.with_format(None).data
    input_ids, offsets = _flat_list_column(table, "input_ids", path)
    labels, label_offsets = _flat_list_column(table, "labels", path)
    if not np.array_equal(offsets, label_offsets):
        bad = int(np.flatnonzero(np.diff(offsets) != np.diff(label_offsets))[0])
        raise DataError(f"{path}, row {bad}: `labels` and `input_ids` have different lengths. {_PREPROCESS_HINT}")
    return TokenRows(input_ids=input_ids, labels=labels, offsets=offsets)


def read_processed_meta(dataset_path: str | Path) -> tuple[dict, Path]:
    """``meta.json`` beside the dataset folder (``processed_data/meta.json``) and its path."""
    meta_path = Path(dataset_path).parent / PROCESSED_META
    if not meta_path.is_file():
        raise DataError(
            f"{meta_path} is missing, so the tokenizer that made {dataset_path} is unknown and training could "
            f"silently learn from mismatched token ids. {_PREPROCESS_HINT}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc}). Rerun `zhlora preprocess`.") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object. Rerun `zhlora preprocess`.")
    return meta, meta_path


def check_tokenizer_matches(meta: dict, meta_path: Path, tokenizer, model_path: str | Path) -> None:
    """Raise a DataError unless the processed data was tokenized with ``tokenizer``."""
    from zhlora.data.preprocess import vocab_sha256

    recorded = {key: (meta.get("tokenizer") or {}).get(key) for key in ("vocab_size", "vocab_sha256", "name_or_path")}
    if recorded["vocab_size"] is None and recorded["vocab_sha256"] is None:
        raise DataError(f"{meta_path} records no tokenizer (vocab_size, vocab_sha256). Rerun `zhlora preprocess`.")
    actual_size, actual_sha = len(tokenizer), vocab_sha256(tokenizer)
    if (recorded["vocab_size"] is not None and int(recorded["vocab_size"]) != actual_size) or (
        recorded["vocab_sha256"] is not None and recorded["vocab_sha256"] != actual_sha
    ):
        raise DataError(
            f"The processed data was tokenized with a different tokenizer than the model's: {meta_path} records "
            f"{recorded['name_or_path'] or 'an unnamed tokenizer'} (vocab {recorded['vocab_size']}, sha256 "
            f"{str(recorded['vocab_sha256'])[:12]}...), but {model_path} has vocab {actual_size} (sha256 "
            f"{actual_sha[:12]}...). Rerun `zhlora preprocess --model_path {model_path}` so the token ids mean what "
            "the model thinks they mean."
        )


def check_rows_fit(rows: TokenRows, max_seq_length: int, embedding_rows: int, dataset_path: str | Path) -> None:
    """Raise a DataError when a row is too long for packing, uses an id outside the embedding, or nothing is scored."""
    lengths = rows.lengths
    too_long = np.flatnonzero(lengths > max_seq_length)
    if len(too_long):
        raise DataError(
            f"{dataset_path}: {len(too_long)} row(s) are longer than --max_seq_length {max_seq_length} "
            f"(row {int(too_long[0])} has {int(lengths[too_long[0]])} tokens; the longest has {int(lengths.max())}). "
            f"Train with --max_seq_length {int(lengths.max())} or rerun preprocess with the same --max_seq_length."
        )
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise DataError(f"{dataset_path}, row {int(empty[0])}: no tokens. Rerun `zhlora preprocess`.")
    largest = int(rows.input_ids.max())
    if largest >= embedding_rows or int(rows.input_ids.min()) < 0:
        raise DataError(
            f"{dataset_path}: token id {largest} is outside the model's embedding table ({embedding_rows} rows). "
            "The data was tokenized for another model; rerun `zhlora preprocess` with this model's tokenizer."
        )
    labels = rows.labels[rows.labels != IGNORE_INDEX]
    if len(labels) and (int(labels.max()) >= embedding_rows or int(labels.min()) < 0):
        raise DataError(f"{dataset_path}: a label id is outside 0..{embedding_rows - 1} (and not -100). Rerun `zhlora preprocess`.")
    if int(rows.scored_tokens_per_row().sum()) == 0:
        raise DataError(
            f"{dataset_path}: no row has a labelled response token (all labels are -100), so there is nothing to "
            "learn. Check the prompt template and rerun `zhlora preprocess`."
        )


def dataset_fingerprint(dataset_path: str | Path) -> str:
    """sha256 over the dataset folder's files (``"<name>:<sha256>\\n"`` sorted by name) and meta.json."""
    from zhlora.io_utils import sha256_file

    path = Path(dataset_path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    lines = [f"{p.relative_to(path).as_posix()}:{sha256_file(p)}\n" for p in files]
    meta = path.parent / PROCESSED_META
    if meta.is_file():
        lines.append(f"../meta.json:{sha256_file(meta)}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
