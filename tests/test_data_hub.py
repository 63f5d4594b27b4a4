"""download-data --source hf, end to end against a local hub (127.0.0.1) with HF_ENDPOINT set.

The command runs in a subprocess so that huggingface_hub reads HF_ENDPOINT, HF_HOME,
HF_TOKEN and HF_HUB_OFFLINE at import, exactly as for a user; nothing of zhlora is mocked.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_release import EXPECTED_ROWS, write_hub_repos, write_release
from hub_server import HubServer

from zhlora.data.sources import download_data
from zhlora.io_utils import read_jsonl

TOKEN = "hf_zhloratestsecret123"
SOURCES = "belle,ceval,cmmlu,mmlu,gsm8k,english_text,alpaca"


def _run(data_dir: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "zhlora", "download-data", "--data_dir", str(data_dir), "--source", "hf",
               "--belle_sample_size", "20", "--belle_heldout_size", "5", "--data_seed", "7", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", **extra}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    release = write_release(root / "release")
    with HubServer() as server:
        server.release = release
        server.commits = {repo_id: server.add_repo(repo_id, folder, repo_type="dataset")
                          for repo_id, folder in write_hub_repos(release, root / "repos").items()}
        yield server


def test_hub_download_matches_the_local_release(hub, tmp_path):
    result = _run(tmp_path / "data", _env(tmp_path, hub.url, HF_TOKEN=TOKEN), "--datasets", SOURCES)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    for name, splits in EXPECTED_ROWS.items():
        assert {s: i["rows"] for s, i in manifest["sources"][name]["splits"].items()} == splits
    mmlu = manifest["sources"]["mmlu"]["origin"]
    assert mmlu == {"kind": "hf", "endpoint": hub.url, "repo_id": "cais/mmlu", "revision": hub.commits["cais/mmlu"],
                    "files": {"dev": "all/dev-00000-of-00001.parquet", "val": "all/validation-00000-of-00001.parquet",
                              "test": "all/test-00000-of-00001.parquet"}}
    assert manifest["sources"]["ceval"]["inputs_sha256"].keys() == {"ceval-exam.zip"}

    # the same content read from the release folder gives identical records, ids included
    local = tmp_path / "local"
    download_data(local, source=f"local:{hub.release}", datasets=SOURCES.split(","),
                  belle_sample_size=20, belle_heldout_size=5, seed=7)
    for name, splits in {**EXPECTED_ROWS, "belle": {"train": 20, "heldout": 5}}.items():
        for split in splits:
            assert read_jsonl(tmp_path / "data" / name / f"{split}.jsonl") == read_jsonl(local / name / f"{split}.jsonl"), (name, split)

    # the token was sent to the hub, and never written anywhere
    assert any(r["headers"].get("authorization") == f"Bearer {TOKEN}" or r["headers"].get("Authorization") == f"Bearer {TOKEN}"
               for r in hub.requests)
    assert TOKEN not in result.stdout + result.stderr
    assert TOKEN not in (tmp_path / "data" / "manifest.json").read_text()

    # offline, the hub cache is enough: --force redoes everything from cached files
    offline = _run(tmp_path / "data", _env(tmp_path, hub.url, HF_HUB_OFFLINE="1"), "--datasets", "mmlu,ceval", "--force")
    assert offline.returncode == 0, offline.stderr[-3000:]


def test_offline_without_cache_fails_fast_with_the_alternatives(tmp_path, hub):
    started = time.perf_counter()
    result = _run(tmp_path / "data", _env(tmp_path, hub.url, HF_HUB_OFFLINE="1"), "--datasets", "gsm8k")
    assert time.perf_counter() - started < 15  # hf_hub_download alone retries for ~25 s
    assert result.returncode == 2
    assert "HF_HUB_OFFLINE" in result.stderr and "--source sample" in result.stderr
    assert "--source local:DIR" in result.stderr and "HF_ENDPOINT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "gsm8k").exists()


def test_unreachable_hub_fails_fast_with_the_alternatives(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    result = _run(tmp_path / "data", _env(tmp_path, f"http://127.0.0.1:{port}"), "--datasets", "ceval")
    assert time.perf_counter() - started < 15  # hf_hub_download alone retries for ~25 s
    assert result.returncode == 2, result.stderr
    assert "Cannot reach" in result.stderr and "--source sample" in result.stderr and "Traceback" not in result.stderr


def test_missing_repo_file_points_at_the_file_table(tmp_path, hub):
    empty = tmp_path / "empty_repo"
    (empty / "main").mkdir(parents=True)
    (empty / "main" / "README.md").write_text("moved")
    with HubServer() as other:
        other.add_repo("openai/gsm8k", empty, repo_type="dataset")
        result = _run(tmp_path / "data", _env(tmp_path, other.url), "--datasets", "gsm8k,ceval")
    assert result.returncode == 2
    assert "main/train-00000-of-00001.parquet" in result.stderr and "HUB_FILES" in result.stderr
    assert "Traceback" not in result.stderr
