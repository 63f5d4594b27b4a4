"""Strict readers of the upstream file formats: JSON lines / JSON arrays, CSV, Parquet, text.

Every reader yields ``(where, row)`` pairs, where ``where`` names the file and the line, item
or row ("ceval/val/law_val.csv, line 7"), so that the normalizers can say exactly which input
is wrong. Any problem with the file itself (not UTF-8, not JSON, empty, ragged CSV) raises a
:class:`~zhlora.errors.DataError` that names the file, the line and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zhlora.errors import DataError

_FIX_HINT = "Re-download the file (rerun download-data with --force) or fix it by hand."


def _not_utf8(path: Path, line_number: int, bad: bytes) -> DataError:
    return DataError(
        f"{path}, line {line_number}: not UTF-8 text (byte {bad!r}). zhlora reads UTF-8 only; convert the file "
        f"(e.g. `iconv -f GB18030 -t UTF-8`) or re-download it. {_FIX_HINT}"
    )


def _decode_line(raw: bytes, path: Path, line_number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, line_number, raw[exc.start:exc.start + 1]) from None


def _decode_file(raw: bytes, path: Path) -> str:
    """Decode a whole file's bytes (a UTF-8 BOM is dropped); name the line of the first bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line_number = raw.count(b"\n", 0, exc.start) + 1
        raise _not_utf8(path, line_number, raw[exc.start:exc.start + 1]) from None


def _first_char(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return chr(text[0]) if text else ""


def iter_json_records(path: str | os.PathLike, progress: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, object)`` for each record of a JSON-lines file or a JSON array file.

    JSON lines are streamed one line at a time (BELLE's 2M-row file never sits in memory);
    a file whose first character is ``[`` is read as one JSON array (alpaca_data.json).
    Blank lines are skipped. ``progress`` shows a bytes progress bar.
    """
    path = Path(path)
    first = _first_char(path)
    if not first:
        raise DataError(f"{path}: the file is empty. {_FIX_HINT}")
    if first == "[":
        yield from _iter_json_array(path)
        return
    count = 0
    size = path.stat().st_size
    with open(path, "rb") as handle, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"reading {path.name}", disable=None if progress else True, leave=False
    ) as bar:
        for line_number, raw in enumerate(handle, start=1):
            bar.update(len(raw))
            text = _decode_line(raw, path, line_number)
            if line_number == 1:
                text = text.lstrip("\ufeff")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {line_number}: not valid JSON ({exc.msg}, column {exc.colno}). "
                    f"Each line must be one JSON object. {_FIX_HINT}"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}, line {line_number}: expected a JSON object, got {type(obj).__name__}. {_FIX_HINT}")
            count += 1
            yield f"{path}, line {line_number}", obj
    if count == 0:
        raise DataError(f"{path}: the file has no records (only blank lines). {_FIX_HINT}")


def _iter_json_array(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    text = _decode_file(path.read_bytes(), path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg}). {_FIX_HINT}") from None
    if not items:
        raise DataError(f"{path}: the JSON array is empty. {_FIX_HINT}")
    for index, obj in enumerate(items):
        if not isinstance(obj, dict):
            raise DataError(f"{path}, item {index}: expected a JSON object, got {type(obj).__name__}. {_FIX_HINT}")
        yield f"{path}, item {index}", obj


def read_csv_rows(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """Read a whole CSV file as ``[(line_number, fields), ...]`` (header row included).

    Uses the csv module with ``newline=''`` semantics, so CRLF files (C-Eval) and quoted cells
    that span lines (MMLU) are read correctly; ``line_number`` is the line where the record
    starts. Malformed quoting, NUL bytes, non-UTF-8 bytes and empty files raise DataError.
    """
    path = Path(path)
    text = _decode_file(path.read_bytes(), path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty. {_FIX_HINT}")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows = []
    start_line = 1
    try:
        for fields in reader:
            if fields:
                rows.append((start_line, fields))
            start_line = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({exc}). {_FIX_HINT}") from None
    return rows


def iter_parquet_rows(
    path: str | os.PathLike, columns: list[str], progress: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, row)`` for each row of a Parquet file, reading only ``columns``.

    Rows are read in record batches, so a large file is never fully in memory.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses
        raise DataError(f"{path}: not a readable Parquet file ({exc}). {_FIX_HINT}") from None
    present = set(parquet.schema_arrow.names)
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; the file has {', '.join(sorted(present))}. "
            "The upstream layout may have changed: check the file table in zhlora/data/hub.py."
        )
    if parquet.metadata.num_rows == 0:
        raise DataError(f"{path}: the file has no rows. {_FIX_HINT}")
    index = 0
    with tqdm(total=parquet.metadata.num_rows, unit="rows", desc=f"reading {path.name}", disable=None if progress else True, leave=False) as bar:
        for batch in parquet.iter_batches(columns=columns, batch_size=4096):
            for row in batch.to_pylist():
                yield f"{path}, row {index}", row
                index += 1
            bar.update(batch.num_rows)


def read_text(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file, naming the line of the first bad byte when it is not UTF-8."""
    path = Path(path)
    text = _decode_file(path.read_bytes(), path)
    if not text.strip():
        raise DataError(f"{path}: the file is empty. {_FIX_HINT}")
    return text
