"""download-data from local folders, the bundled samples and the real data: layouts, ids, manifest, reruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_release import BELLE_ROWS, EXPECTED_ROWS, write_release

from zhlora.data.sampling import reservoir_sample, sample_train_heldout, train_heldout_sizes
from zhlora.data.sources import download_data, parse_source, read_data_manifest, samples_dir
from zhlora.errors import DataError, ZhloraError
from zhlora.io_utils import read_jsonl, sha256_file

ALL = ["belle", "ceval", "cmmlu", "mmlu", "gsm8k", "english_text", "alpaca"]
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="module")
def local_data(release, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "data"
    download_data(out, source=f"local:{release}", datasets=ALL, belle_sample_size=20, belle_heldout_size=5, seed=7)
    return out


def test_local_release_gives_expected_rows_and_manifest(local_data, release):
    manifest = read_data_manifest(local_data)
    for name, splits in EXPECTED_ROWS.items():
        entry = manifest["sources"][name]
        assert {split: info["rows"] for split, info in entry["splits"].items()} == splits
        for split, info in entry["splits"].items():
            path = local_data / name / f"{split}.jsonl"
            assert len(read_jsonl(path)) == info["rows"]
            assert sha256_file(path) == info["sha256"]
        assert entry["origin"] == {"kind": "local", "path": str(release.resolve() / name)}
    belle = manifest["sources"]["belle"]
    assert belle["splits"]["train"]["rows"] == 20 and belle["splits"]["heldout"]["rows"] == 5
    assert belle["details"]["rows_available"] == BELLE_ROWS
    assert belle["details"]["rows_with_literal_newlines_fixed"] == 1
    assert set(belle["inputs_sha256"]) == {"part1.json", "part2.jsonl"}
    assert belle["inputs_sha256"]["part1.json"] == sha256_file(release / "belle" / "part1.json")
    assert "ceval/law_val.csv" not in manifest["sources"]["ceval"]["inputs_sha256"]  # keys are relative to DIR/ceval
    assert "val/law_val.csv" in manifest["sources"]["ceval"]["inputs_sha256"]
    assert manifest["provenance"]["tool"] == "zhlora"


def test_records_are_normalized_with_stable_ids(local_data):
    ceval_dev = read_jsonl(local_data / "ceval" / "dev.jsonl")
    assert ceval_dev[0]["id"] == "computer_network-dev-0"  # files are read in sorted order
    assert ceval_dev[0]["explanation"] == "1. 解析0" and ceval_dev[0]["answer"] == "A"
    assert "\n（多行题干）" in ceval_dev[0]["question"] and "\r" not in ceval_dev[0]["question"]
    ceval_test = read_jsonl(local_data / "ceval" / "test.jsonl")
    assert all(row["answer"] is None for row in ceval_test)
    cmmlu = read_jsonl(local_data / "cmmlu" / "test.jsonl")
    assert [r["id"] for r in cmmlu[:2]] == ["agronomy-test-0", "agronomy-test-1"]
    assert cmmlu[1]["choices"] == ["一", "二", "三", "四"] and cmmlu[1]["answer"] == "B"
    mmlu = read_jsonl(local_data / "mmlu" / "val.jsonl")
    assert mmlu[0] == {
        "id": "abstract_algebra-val-0", "subject": "abstract_algebra", "question": 'A "quoted"\nmulti-line question?',
        "choices": ["1", "2, or 3", "4", "5"], "answer": "C", "explanation": None,
    }
    gsm8k = read_jsonl(local_data / "gsm8k" / "test.jsonl")
    assert gsm8k[2]["id"] == "gsm8k-test-2" and gsm8k[2]["answer_number"] == "1002"
    docs = read_jsonl(local_data / "english_text" / "test.jsonl")
    assert [d["meta"]["title"] for d in docs] == ["First Article", "Second Article"]
    assert "history section" in docs[0]["text"] and "Second" not in docs[0]["text"]
    alpaca = read_jsonl(local_data / "alpaca" / "train.jsonl")
    assert alpaca[0] == {"instruction": "Add 0 and 0.", "input": "numbers: 0", "output": "The sum is 0."}


def test_belle_sample_is_seeded_disjoint_and_cleaned(local_data, release, tmp_path):
    train = read_jsonl(local_data / "belle" / "train.jsonl")
    heldout = read_jsonl(local_data / "belle" / "heldout.jsonl")
    key = lambda row: row["instruction"]  # noqa: E731 - instructions are unique in the fixture
    assert not {key(r) for r in train} & {key(r) for r in heldout}
    all_rows = train + heldout
    assert not any("\\n" in r["instruction"] for r in all_rows)
    again = tmp_path / "again"
    download_data(again, source=f"local:{release}", datasets=["belle"], belle_sample_size=20, belle_heldout_size=5, seed=7)
    assert read_jsonl(again / "belle" / "train.jsonl") == train
    other = tmp_path / "other"
    download_data(other, source=f"local:{release}", datasets=["belle"], belle_sample_size=20, belle_heldout_size=5, seed=8)
    assert read_jsonl(other / "belle" / "train.jsonl") != train


def test_reservoir_sampling_is_uniform_and_streaming():
    import random

    counts = [0] * 10
    for trial in range(2000):
        sample, seen = reservoir_sample(iter(range(10)), 3, random.Random(trial))
        assert seen == 10 and len(set(sample)) == 3
        for item in sample:
            counts[item] += 1
    # each item is drawn with probability 3/10: 600 expected per item out of 2000 trials
    assert all(abs(c - 600) < 90 for c in counts), counts
    sample, seen = reservoir_sample((i for i in range(2)), 5, random.Random(0))
    assert sorted(sample) == [0, 1] and seen == 2


def test_short_sources_shrink_the_heldout_slice_first():
    assert train_heldout_sizes(1000, 100, 50) == (100, 50)
    assert train_heldout_sizes(40, 200, 500) == (36, 4)  # a tenth held out, the rest trains
    assert train_heldout_sizes(40, 20, 500) == (20, 4)
    assert train_heldout_sizes(5, 10, 0) == (5, 0)
    train, heldout, seen = sample_train_heldout(range(40), 200, 500, seed=1)
    assert (len(train), len(heldout), seen) == (36, 4, 40) and not set(train) & set(heldout)


def test_rerun_skips_complete_sources_and_refuses_other_settings(release, tmp_path, caplog):
    out = tmp_path / "data"
    download_data(out, source=f"local:{release}", datasets=["gsm8k", "belle"], belle_sample_size=10, belle_heldout_size=2)
    stamp = (out / "gsm8k" / "test.jsonl").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        download_data(out, source=f"local:{release}", datasets=["gsm8k", "belle"], belle_sample_size=10, belle_heldout_size=2)
    assert "skipping" in caplog.text
    assert (out / "gsm8k" / "test.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings.*sample_size: 10 -> 12.*--force"):
        download_data(out, source=f"local:{release}", datasets=["belle"], belle_sample_size=12, belle_heldout_size=2)
    download_data(out, source=f"local:{release}", datasets=["belle"], belle_sample_size=12, belle_heldout_size=2, force=True)
    assert len(read_jsonl(out / "belle" / "train.jsonl")) == 12
    (out / "gsm8k" / "test.jsonl").write_text("tampered\n")  # no longer what the manifest recorded: redone
    download_data(out, source=f"local:{release}", datasets=["gsm8k"])
    assert len(read_jsonl(out / "gsm8k" / "test.jsonl")) == EXPECTED_ROWS["gsm8k"]["test"]
    assert not list(out.glob(".*"))  # no staging folders left behind


def test_a_failing_source_leaves_no_output_that_looks_complete(release, tmp_path):
    broken = tmp_path / "broken"
    write_release(broken)
    (broken / "ceval" / "val" / "law_val.csv").write_text("id,question,A,B,C,D,answer\r\n0,q,a,b,c,d,E\r\n", encoding="utf-8")
    out = tmp_path / "data"
    with pytest.raises(DataError, match=r"law_val\.csv, line 2: answer \"E\" is not one of A, B, C, D"):
        download_data(out, source=f"local:{broken}", datasets=["gsm8k", "ceval"])
    assert not (out / "ceval").exists() and not list(out.glob(".ceval*"))
    manifest = read_data_manifest(out)
    assert set(manifest["sources"]) == {"gsm8k"}  # the source before it is complete and recorded


def test_bad_source_and_dataset_names_suggest_the_right_one(tmp_path):
    with pytest.raises(ZhloraError, match='Unknown data source "hff".*Did you mean "hf"'):
        parse_source("hff")
    with pytest.raises(ZhloraError, match='Unknown data source "cevl".*Did you mean "ceval"'):
        download_data(tmp_path, source="sample", datasets=["cevl"])
    with pytest.raises(ZhloraError, match="no such folder"):
        parse_source(f"local:{tmp_path / 'nope'}")
    with pytest.raises(ZhloraError, match='Unknown BELLE dataset "BelleGroup/train_3M_CN".*train_2M_CN'):
        download_data(tmp_path, source="hf", datasets=["belle"], belle_dataset="BelleGroup/train_3M_CN")


def test_local_folder_missing_a_source_or_split_is_named(release, tmp_path):
    partial = tmp_path / "partial"
    write_release(partial)
    for path in (partial / "mmlu" / "val").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"mmlu/val: missing the val split of mmlu"):
        download_data(tmp_path / "d1", source=f"local:{partial}", datasets=["mmlu"])
    (partial / "gsm8k" / "train.jsonl").unlink()
    with pytest.raises(DataError, match=r"train\.jsonl: missing the train split of gsm8k"):
        download_data(tmp_path / "d2", source=f"local:{partial}", datasets=["gsm8k"])
    with pytest.raises(DataError, match=r"missing folder for cmmlu"):
        download_data(tmp_path / "d3", source=f"local:{partial / 'belle'}", datasets=["cmmlu"])


def test_modelscope_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # importing it fails, installed or not
    with pytest.raises(ZhloraError, match=r"pip install 'zhlora\[modelscope\]'"):
        download_data(tmp_path, source="modelscope", datasets=["gsm8k"])


def test_seed_script_accepts_output_dir_alias(release, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "download_data.py"), "--output_dir", str(tmp_path / "d"),
         "--source", f"local:{release}", "--datasets", "gsm8k,english_text"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gsm8k: train 5, test 3" in result.stdout
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["sources"]["english_text"]["splits"]["test"]["rows"] == 2
    bad = subprocess.run(
        [sys.executable, "-m", "zhlora", "download-data", "--data_dir", str(tmp_path / "e"), "--source", "smaple"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode == 2 and 'Did you mean "sample"' in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.skipif(not (samples_dir() / "ceval").is_dir(), reason="bundled samples not written yet")
def test_bundled_samples_download_offline(sample_data_dir):
    manifest = read_data_manifest(sample_data_dir)
    assert set(manifest["sources"]) >= {"belle", "ceval", "cmmlu", "mmlu", "gsm8k", "english_text"}
    assert manifest["sources"]["ceval"]["origin"]["kind"] == "sample"
    for entry in manifest["sources"].values():
        assert all(info["rows"] > 0 for split, info in entry["splits"].items() if split != "heldout")


@pytest.mark.shared_data
def test_real_release_row_counts(shared_data, tmp_path):
    manifest = download_data(tmp_path / "data", source=f"local:{shared_data}", belle_sample_size=900, belle_heldout_size=50)
    rows = {name: {split: info["rows"] for split, info in entry["splits"].items()} for name, entry in manifest["sources"].items()}
    assert rows["ceval"] == {"dev": 260, "val": 1346, "test": 12342}
    assert rows["cmmlu"] == {"dev": 335, "test": 11582}
    assert rows["mmlu"] == {"dev": 285, "val": 1531, "test": 14042}
    assert rows["gsm8k"] == {"train": 7473, "test": 1319}
    assert rows["belle"] == {"train": 900, "heldout": 50}
    assert manifest["sources"]["belle"]["details"]["rows_available"] == 1010
    assert manifest["sources"]["ceval"]["details"]["subjects"] == 52
    assert manifest["sources"]["cmmlu"]["details"]["subjects"] == 67
    assert manifest["sources"]["mmlu"]["details"]["subjects"] == 57
    assert rows["english_text"]["test"] > 50
    test_ids = [r["id"] for r in read_jsonl(tmp_path / "data" / "mmlu" / "test.jsonl")]
    assert len(set(test_ids)) == 14042 and test_ids[0] == "abstract_algebra-test-0"
    gsm8k = read_jsonl(tmp_path / "data" / "gsm8k" / "test.jsonl")
    assert gsm8k[0]["answer_number"] == "18"
