"""Every kind of bad input gets one clear DataError naming the file and line, and leaves no output."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from data_release import write_release

from zhlora.data import normalize
from zhlora.data.archives import extract_zip
from zhlora.data.readers import iter_json_records, iter_parquet_rows, read_csv_rows, read_text
from zhlora.data.sources import download_data
from zhlora.errors import DataError


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "belle.json", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": \n')
    with pytest.raises(DataError, match=r"belle\.json, line 3: not valid JSON"):
        list(iter_json_records(path))
    array = _write(tmp_path / "alpaca.json", '[\n {"instruction": "a"},\n {"instruction": }\n]')
    with pytest.raises(DataError, match=r"alpaca\.json, line 3, column 18: not valid JSON"):
        list(iter_json_records(array))
    not_object = _write(tmp_path / "list.jsonl", '{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"list\.jsonl, line 2: expected a JSON object, got list"):
        list(iter_json_records(not_object))


def test_wrong_field_types_name_the_row():
    with pytest.raises(DataError, match=r'f\.json, line 4: field "output" must be a string, got int'):
        normalize.instruction_from_row("f.json, line 4", {"instruction": "a", "output": 3})
    with pytest.raises(DataError, match=r'g\.jsonl, line 2: the answer does not end with "#### <number>"'):
        normalize.gsm8k_problem("g.jsonl, line 2", {"question": "q", "answer": "42"}, "test", 1)
    with pytest.raises(DataError, match=r"m\.parquet, row 5: `answer` must be an integer 0-3"):
        normalize.mmlu_question_from_hub_row(
            "m.parquet, row 5", {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 4}, "test", 0
        )


@pytest.mark.parametrize(
    "reader, content, message",
    [
        (normalize.cmmlu_questions, ",Question,A,B,C,D,Answer\n0,q,a,b,c,d\n", r"line 2: expected 7 columns .* found 6"),
        (normalize.cmmlu_questions, ",Question,A,B,C,D,Answer\n0,q,a,b,c,d,A,extra\n", r"line 2: expected 7 columns .* found 8"),
        (normalize.mmlu_questions, "q,a,b,c,d,A\n\"multi\nline\",a,b,c,d\n", r"line 2: expected 6 columns .*no header.* found 5"),
        (normalize.cmmlu_questions, "Question,A,B,C,D,Answer\n", r"line 1: unexpected header Question,A,B,C,D,Answer"),
    ],
)
def test_csv_with_missing_or_extra_columns(tmp_path, reader, content, message):
    path = _write(tmp_path / "subject.csv", content)
    with pytest.raises(DataError, match=message):
        reader(path, "subject", "test")


def test_answer_outside_a_to_d(tmp_path):
    path = _write(tmp_path / "law_val.csv", "id,question,A,B,C,D,answer\r\n0,q,a,b,c,d,B\r\n1,q,a,b,c,d,e\r\n")
    with pytest.raises(DataError, match=r'law_val\.csv, line 3: answer "e" is not one of A, B, C, D'):
        normalize.ceval_questions(path, "law", "val")
    # C-Eval test rows may have no answer, but a val row may not
    blank = _write(tmp_path / "law2_val.csv", "id,question,A,B,C,D,answer\r\n0,q,a,b,c,d,\r\n")
    with pytest.raises(DataError, match=r'line 2: answer "" is not one of'):
        normalize.ceval_questions(blank, "law2", "val")
    no_column = _write(tmp_path / "law3_val.csv", "id,question,A,B,C,D\r\n0,q,a,b,c,d\r\n")
    with pytest.raises(DataError, match=r"the val split needs an answer column"):
        normalize.ceval_questions(no_column, "law3", "val")


def test_empty_files(tmp_path):
    for name, read in (("a.csv", read_csv_rows), ("b.jsonl", lambda p: list(iter_json_records(p))), ("c.txt", read_text)):
        path = _write(tmp_path / name, "  \n")
        with pytest.raises(DataError, match=rf"{name}: the file is empty"):
            read(path)
    with pytest.raises(DataError, match=r"d\.json: the JSON array is empty"):
        list(iter_json_records(_write(tmp_path / "d.json", "[]")))


def test_non_utf8_files_name_the_line(tmp_path):
    gbk = "第一行\n第二行，中文\n".encode("gb18030")
    for name, read in (("a.csv", read_csv_rows), ("b.jsonl", lambda p: list(iter_json_records(p))), ("c.txt", read_text)):
        path = _write(tmp_path / name, b'{"x": "ok"}\n' + gbk if name.endswith("jsonl") else b"ok,1\n" + gbk)
        with pytest.raises(DataError, match=rf"{name}, line 2: not UTF-8 text .*iconv"):
            read(path)


def test_broken_parquet_and_missing_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    broken = _write(tmp_path / "x.parquet", b"not parquet")
    with pytest.raises(DataError, match=r"x\.parquet: not a readable Parquet file"):
        list(iter_parquet_rows(broken, ["text"]))
    path = tmp_path / "y.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), path)
    with pytest.raises(DataError, match=r"y\.parquet: missing column\(s\) answer"):
        list(iter_parquet_rows(path, ["question", "answer"]))


@pytest.mark.parametrize("member", ["../evil.csv", "dev/../../evil.csv", "/tmp/evil.csv"])
def test_archive_member_escaping_the_target_is_refused(tmp_path, member):
    archive = tmp_path / "ceval-exam.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("dev/law_dev.csv", "id,question\n")
        handle.writestr(member, "pwned")
    target = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match=r"ceval-exam\.zip: member .*(outside|absolute path)"):
        extract_zip(archive, target)
    assert not (tmp_path / "out" / "evil.csv").exists() and not (tmp_path / "evil.csv").exists()
    assert not any(target.rglob("*.csv"))  # checked before anything is written


def test_archive_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("dev/link.csv")
        info.external_attr = 0o120777 << 16
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")


def test_corrupt_archive(tmp_path):
    archive = _write(tmp_path / "cmmlu.zip", b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"cmmlu\.zip: not a valid zip archive"):
        extract_zip(archive, tmp_path / "out")


def test_duplicate_ids_are_refused(tmp_path):
    release = write_release(tmp_path / "release")
    val = release / "ceval" / "val" / "law_val.csv"
    val.write_bytes(val.read_bytes() + b"0,dup,a,b,c,d,A\r\n")
    with pytest.raises(DataError, match=r"ceval val: item id law-val-0 occurs 2 times"):
        download_data(tmp_path / "data", source=f"local:{release}", datasets=["ceval"])


def test_cli_prints_one_paragraph_and_exits_2(tmp_path):
    release = write_release(tmp_path / "release")
    _write(release / "gsm8k" / "test.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": \n')
    result = subprocess.run(
        [sys.executable, "-m", "zhlora", "download-data", "--data_dir", str(tmp_path / "data"),
         "--source", f"local:{release}", "--datasets", "gsm8k"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "test.jsonl, line 2: not valid JSON" in error_lines[0]
    assert not (tmp_path / "data" / "gsm8k").exists()
