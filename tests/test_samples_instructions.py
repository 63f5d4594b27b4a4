"""The bundled instruction samples: BELLE-format Chinese rows and Alpaca-format English rows.

They are what the embedded default trains on (BELLE) and replays (Alpaca) offline, so the
files must be byte-compatible with the real releases' layouts and big and varied enough for
the length filter and the held-out split to have something to do.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

BELLE_SAMPLE = Path(str(files("zhlora").joinpath("samples/belle/belle_sample.json")))
ALPACA_SAMPLE = Path(str(files("zhlora").joinpath("samples/alpaca/alpaca_data.json")))
KEYS = ["instruction", "input", "output"]


def _cjk_ratio(text: str) -> float:
    """Share of non-whitespace characters that are CJK unified ideographs."""
    chars = [c for c in text if not c.isspace()]
    return sum("\u4e00" <= c <= "\u9fff" for c in chars) / len(chars)


@pytest.fixture(scope="module")
def belle_lines() -> list[str]:
    return BELLE_SAMPLE.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def belle_rows(belle_lines) -> list[dict]:
    return [json.loads(line) for line in belle_lines]


@pytest.fixture(scope="module")
def alpaca_rows() -> list[dict]:
    return json.loads(ALPACA_SAMPLE.read_text(encoding="utf-8"))


def test_belle_is_json_lines_in_belle_serialisation(belle_lines):
    assert len(belle_lines) >= 300
    for number, line in enumerate(belle_lines, start=1):
        row = json.loads(line)
        assert isinstance(row, dict), f"line {number} is not an object"
        # BELLE writes json.dumps(row, ensure_ascii=False): CJK unescaped, ", " and ": " separators.
        assert line == json.dumps(row, ensure_ascii=False), f"line {number} is not BELLE-serialised"


def test_belle_rows_have_exactly_the_three_string_fields(belle_rows):
    for number, row in enumerate(belle_rows, start=1):
        assert list(row) == KEYS, f"line {number}: keys {list(row)}"
        assert all(isinstance(row[key], str) for key in KEYS), f"line {number}"
        assert row["instruction"].strip(), f"line {number}: empty instruction"
        assert row["output"].strip(), f"line {number}: empty output"


def test_belle_instructions_are_unique(belle_rows):
    seen: dict[str, int] = {}
    for number, row in enumerate(belle_rows, start=1):
        key = row["instruction"].strip()
        assert key not in seen, f"line {number} repeats the instruction of line {seen[key]}"
        seen[key] = number


def test_belle_is_mostly_chinese(belle_rows):
    text = "".join(row[key] for row in belle_rows for key in KEYS)
    assert _cjk_ratio(text) > 0.5


def test_belle_has_a_spread_of_lengths_and_shapes(belle_rows):
    lengths = [len(row["output"]) for row in belle_rows]
    assert sum(n < 50 for n in lengths) >= 30, "too few short answers"
    assert sum(n > 400 for n in lengths) >= 5, "too few long answers for the length filter"
    assert sum(bool(row["input"]) for row in belle_rows) >= 20, "too few rows with an input text"
    # BELLE's literal backslash-n artefact (the text "\n" before a real newline) must occur.
    assert any("\\n\n" in row["instruction"] for row in belle_rows)


def test_belle_key_order_matches_the_real_release(shared_data, belle_rows):
    real = [
        json.loads(line)
        for line in (shared_data / "belle" / "general_sample10.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert {tuple(row) for row in real} == {tuple(row) for row in belle_rows} == {tuple(KEYS)}


def test_belle_sample_is_not_copied_from_real_belle(shared_data, belle_rows):
    real_instructions = set()
    for name in ("general_sample10.jsonl", "school_math_0.25M_first1k.json"):
        for line in (shared_data / "belle" / name).read_text(encoding="utf-8").splitlines():
            real_instructions.add(json.loads(line)["instruction"].strip())
    copied = [row["instruction"] for row in belle_rows if row["instruction"].strip() in real_instructions]
    assert not copied


def test_alpaca_is_one_indented_array_like_alpaca_data_json(alpaca_rows):
    assert isinstance(alpaca_rows, list)
    assert len(alpaca_rows) >= 100
    # tatsu-lab wrote the file with json.dump(rows, f, indent=4) (ASCII escapes, no trailing newline).
    assert ALPACA_SAMPLE.read_text(encoding="utf-8") == json.dumps(alpaca_rows, indent=4)


def test_alpaca_rows_have_the_three_string_fields_and_are_english(alpaca_rows):
    for number, row in enumerate(alpaca_rows, start=1):
        assert list(row) == KEYS, f"row {number}: keys {list(row)}"
        assert all(isinstance(row[key], str) for key in KEYS), f"row {number}"
        assert row["instruction"].strip() and row["output"].strip(), f"row {number}"
    instructions = [row["instruction"].strip() for row in alpaca_rows]
    assert len(set(instructions)) == len(instructions)
    assert sum(bool(row["input"]) for row in alpaca_rows) >= 15, "too few rows with an input"
    text = "".join(row[key] for row in alpaca_rows for key in KEYS)
    assert sum(c.isascii() for c in text) / len(text) > 0.98
    assert _cjk_ratio(text) == 0
