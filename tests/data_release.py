"""Tiny fake upstream releases for the data tests: the local release layout and the hub layout.

``write_release(root)`` writes ``root/<source>/...`` exactly as the real releases unpack
(C-Eval CRLF with an explanation column in dev, CMMLU's unnamed index column, headerless
MMLU with a multi-line quoted cell, BELLE JSON lines with a literal backslash-n, ...).
``write_hub_repos(release, hub_root)`` packs the same content the way the hub serves it
(zips, Parquet) and returns ``{repo_id: folder}`` for :class:`hub_server.HubServer`.
The content is invented for the tests.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

BELLE_ROWS = 40
ALPACA_ROWS = 12

# split -> rows per subject
CEVAL_SIZES = {"dev": 2, "val": 3, "test": 2}
CMMLU_SIZES = {"dev": 2, "test": 4}
MMLU_SIZES = {"dev": 2, "val": 2, "test": 3}
GSM8K_SIZES = {"train": 5, "test": 3}
CEVAL_SUBJECTS = ("law", "computer_network")
CMMLU_SUBJECTS = ("agronomy", "ancient_chinese")
MMLU_SUBJECTS = ("abstract_algebra", "anatomy")

EXPECTED_ROWS = {
    "ceval": {split: n * len(CEVAL_SUBJECTS) for split, n in CEVAL_SIZES.items()},
    "cmmlu": {split: n * len(CMMLU_SUBJECTS) for split, n in CMMLU_SIZES.items()},
    "mmlu": {split: n * len(MMLU_SUBJECTS) for split, n in MMLU_SIZES.items()},
    "gsm8k": dict(GSM8K_SIZES),
    "english_text": {"test": 2},
    "alpaca": {"train": ALPACA_ROWS},
}

WIKITEXT = (
    " \n = First Article = \n \n The first article is about valleys . \n \n = = History = = \n \n"
    " It has a history section . \n \n = Second Article = \n \n The second one is short . \n"
)


def _csv_text(rows: list[list[str]], line_ending: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=line_ending).writerows(rows)
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def belle_rows() -> list[dict]:
    rows = [{"instruction": f"第{i}题：请计算{i}加{i}等于多少？", "input": "", "output": f"{i}加{i}等于{2 * i}。"} for i in range(BELLE_ROWS)]
    rows[0]["instruction"] = "根据给定的年份，计算该年是否为闰年。\\n\n\\n1996\\n"
    rows[1]["input"] = "这是补充的输入。"
    return rows


def alpaca_rows() -> list[dict]:
    return [{"instruction": f"Add {i} and {i}.", "input": "" if i % 2 else f"numbers: {i}", "output": f"The sum is {2 * i}."} for i in range(ALPACA_ROWS)]


def ceval_rows(subject: str, split: str) -> list[list[str]]:
    header = ["id", "question", "A", "B", "C", "D"] + {"dev": ["answer", "explanation"], "val": ["answer"], "test": []}[split]
    rows = [header]
    for i in range(CEVAL_SIZES[split]):
        row = [str(i), f"{subject}题目{i}：下列哪项正确？\n（多行题干）", "甲", "乙", "丙", "丁"]
        if split == "dev":
            row += ["ABCD"[i % 4], f"1. 解析{i}"]
        elif split == "val":
            row += ["ABCD"[(i + 1) % 4]]
        rows.append(row)
    return rows


def cmmlu_rows(subject: str, split: str) -> list[list[str]]:
    rows = [["", "Question", "A", "B", "C", "D", "Answer"]]
    rows += [[str(i), f"{subject}问题{i}", "一", "二", "三", "四", "ABCD"[i % 4]] for i in range(CMMLU_SIZES[split])]
    return rows


def mmlu_rows(subject: str, split: str) -> list[list[str]]:
    rows = [[f"{subject} question {i}?", "1", "2, or 3", "4", "5", "ABCD"[(i + 2) % 4]] for i in range(MMLU_SIZES[split])]
    rows[0][0] = 'A "quoted"\nmulti-line question?'
    return rows


def gsm8k_rows(split: str) -> list[dict]:
    return [{"question": f"Tom has {i} apples and buys 1,000 more. How many?", "answer": f"{i} + 1000 = <<{i}+1000={i + 1000}>>{i + 1000}\n#### {i + 1000:,}"} for i in range(GSM8K_SIZES[split])]


def write_release(root: Path) -> Path:
    """Write the tiny release under ``root`` (``root/<source>/...``) and return ``root``."""
    _write(root / "belle" / "part1.json", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in belle_rows()[:25]))
    _write(root / "belle" / "part2.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in belle_rows()[25:]))
    for subject in CEVAL_SUBJECTS:
        for split in CEVAL_SIZES:
            _write(root / "ceval" / split / f"{subject}_{split}.csv", _csv_text(ceval_rows(subject, split), "\r\n"))
    for subject in CMMLU_SUBJECTS:
        for split in CMMLU_SIZES:
            _write(root / "cmmlu" / split / f"{subject}.csv", _csv_text(cmmlu_rows(subject, split), "\n"))
    for subject in MMLU_SUBJECTS:
        for split in MMLU_SIZES:
            _write(root / "mmlu" / split / f"{subject}_{split}.csv", _csv_text(mmlu_rows(subject, split), "\n"))
    for split in GSM8K_SIZES:
        _write(root / "gsm8k" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in gsm8k_rows(split)))
    _write(root / "english_text" / "wiki.test.txt", WIKITEXT)
    _write(root / "alpaca" / "alpaca_data.json", json.dumps(alpaca_rows(), indent=2))
    return root


def _zip_folder(folder: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(folder).as_posix())


def _parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_hub_repos(release: Path, hub_root: Path) -> dict[str, Path]:
    """Pack the release the way the hub serves it; return ``{repo_id: folder}``."""
    repos = {}

    def repo(repo_id: str) -> Path:
        folder = hub_root / repo_id.replace("/", "__")
        repos[repo_id] = folder
        return folder

    belle = repo("BelleGroup/train_0.5M_CN") / "Belle_open_source_0.5M.json"
    belle.parent.mkdir(parents=True)
    belle.write_bytes((release / "belle" / "part1.json").read_bytes() + (release / "belle" / "part2.jsonl").read_bytes())
    _zip_folder(release / "ceval", repo("ceval/ceval-exam") / "ceval-exam.zip")
    _zip_folder(release / "cmmlu", repo("haonan-li/cmmlu") / "cmmlu_v1_0_1.zip")
    for split, hub_split in (("dev", "dev"), ("val", "validation"), ("test", "test")):
        rows = [
            {"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
            for subject in MMLU_SUBJECTS for r in mmlu_rows(subject, split)
        ]
        _parquet(repo("cais/mmlu") / "all" / f"{hub_split}-00000-of-00001.parquet", rows)
    for split in GSM8K_SIZES:
        _parquet(repo("openai/gsm8k") / "main" / f"{split}-00000-of-00001.parquet", gsm8k_rows(split))
    lines = [{"text": line} for line in WIKITEXT.splitlines(keepends=True)]
    _parquet(repo("Salesforce/wikitext") / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet", lines)
    alpaca = [{**r, "text": "unused"} for r in alpaca_rows()]
    _parquet(repo("tatsu-lab/alpaca") / "data" / "train-00000-of-00001-a09b74b3ef9c3b56.parquet", alpaca)
    return repos
