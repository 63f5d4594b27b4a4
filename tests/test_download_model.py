"""download-model: the tiny model, local folders, and the hub path against a local hub server.

The hub tests run ``zhlora download-model`` in a subprocess with ``HF_ENDPOINT`` pointed at
the shared local hub (``tests/hub_server.py``: the hub's URL layout on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from hub_server import HubServer, _Handler

from zhlora.cli import run_command
from zhlora.errors import ZhloraError
from zhlora.filenames import MODEL_MANIFEST
from zhlora.models.download import download_model, select_model_files
from zhlora.models.loading import load_model
from zhlora.models.manifest import model_fingerprint, read_model_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET_TOKEN = "hf_do_not_log_me_1234567890"


class GatedHubServer(HubServer):
    """The shared local hub, answering ``status`` (401 or 403, as the hub does for a gated
    model) unless the request carries ``Bearer SECRET_TOKEN``."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status

    def __enter__(self) -> GatedHubServer:
        hub = self

        class Handler(_Handler):
            def _gated_dispatch(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {SECRET_TOKEN}":
                    hub.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                    return self._error(hub.status, "GatedRepo", "Access to this model is restricted.")
                return self._dispatch()

            do_GET = do_HEAD = _gated_dispatch

        Handler.hub = self
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self


def _repo_folder(model_dir: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    """A copy of ``model_dir`` (without zhlora's manifest) plus ``extra`` files, to serve as a repo."""
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns(MODEL_MANIFEST))
    for name, data in (extra or {}).items():
        (target / name).write_bytes(data)
    return target


def _cli(args: list[str], endpoint: str, tmp_path: Path, token: str | None = None, timeout: float = 120):
    """Run ``zhlora download-model`` in a subprocess against ``endpoint`` with a private HF_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="10", OMP_NUM_THREADS="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "zhlora", "download-model", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)


def _downloads(hub: HubServer) -> set[str]:
    return {r["path"].rsplit("/", 1)[-1] for r in hub.requests if r["method"] == "GET" and "/resolve/" in r["path"]}


# ---------------------------------------------------------------------------------------
# File selection (pure)
# ---------------------------------------------------------------------------------------
def test_select_model_files_takes_safetensors_config_tokenizer_and_licence_only():
    names = ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "pytorch_model-00001-of-00002.bin", "consolidated.safetensors",
             "tokenizer.model", "tokenizer_config.json", "LICENSE.txt", "USE_POLICY.md", "original/params.json",
             "flax_model.msgpack", ".gitattributes"]
    assert select_model_files(names, "repo") == [
        "LICENSE.txt", "USE_POLICY.md", "config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.model", "tokenizer_config.json",
    ]


def test_select_model_files_refuses_pickle_only_and_weightless_repos():
    with pytest.raises(ZhloraError, match=r"only pickled weights \(pytorch_model.bin\).*arbitrary code"):
        select_model_files(["config.json", "pytorch_model.bin"], "Hub model a/b")
    with pytest.raises(ZhloraError, match="no model.safetensors"):
        select_model_files(["config.json", "tokenizer.json"], "Folder x")
    with pytest.raises(ZhloraError, match="no config.json"):
        select_model_files(["model.safetensors"], "Folder x")


# ---------------------------------------------------------------------------------------
# tiny and local folders (in process)
# ---------------------------------------------------------------------------------------
def test_download_tiny_writes_loadable_base_model_and_reruns_skip(tmp_path, capsys):
    assert run_command("download-model", ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path / "models")]) == 0
    folder = tmp_path / "models" / "base_model"
    manifest = read_model_manifest(folder)
    assert manifest["source"] == "tiny" and manifest["model_name_or_path"] == "tiny"
    assert manifest["weights_sha256"] in capsys.readouterr().out
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert download_model("tiny", tmp_path / "models") == folder  # manifest matches: skipped
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert load_model(folder).config.model_type == "llama"
    assert not [p for p in (tmp_path / "models").iterdir() if p.name != "base_model"], "staging folders left behind"


def test_local_folder_is_copied_with_manifest_and_never_silently_replaced(tiny_model_dir, tmp_path):
    source = tmp_path / "my-llama"
    shutil.copytree(tiny_model_dir, source)
    (source / MODEL_MANIFEST).unlink()
    (source / "notes.txt").write_text("not part of a model")
    folder = download_model(str(source), tmp_path / "models", source="local")
    manifest = read_model_manifest(folder)
    assert manifest["source"] == "local" and manifest["model_name_or_path"] == str(source.resolve())
    assert set(manifest["files"]) == {p.name for p in source.iterdir()} - {"notes.txt"}
    assert manifest["files"]["model.safetensors"] == hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    assert model_fingerprint(folder) == model_fingerprint(tiny_model_dir)
    # a different model into the same folder: refused, then replaced with --force
    assert run_command("download-model", ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path / "models")]) == 2
    assert read_model_manifest(folder)["source"] == "local"
    assert run_command("download-model", ["--model_name_or_path", "tiny", "--output_dir", str(tmp_path / "models"), "--force"]) == 0
    assert read_model_manifest(folder)["source"] == "tiny"


def test_bad_local_folders_give_clear_errors(tmp_path, capsys):
    bin_only = tmp_path / "bin_only"
    bin_only.mkdir()
    (bin_only / "config.json").write_text("{}")
    (bin_only / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ZhloraError, match="only pickled weights"):
        download_model(str(bin_only), tmp_path / "models", source="local")
    with pytest.raises(ZhloraError, match="no such folder"):
        download_model(str(tmp_path / "missing"), tmp_path / "models", source="local")
    assert run_command("download-model", ["--model_name_or_path", "x", "--model_source", "ftp"]) == 2
    assert "--model_source must be hf, modelscope or local" in capsys.readouterr().err
    assert not (tmp_path / "models" / "base_model").exists()


def test_a_mistyped_folder_is_no_such_folder_and_leaves_nothing_behind(tmp_path, capsys, monkeypatch, tiny_model_dir):
    """Issue 13 finding 7: `./modles/base_model` is a typo of a folder, not a hub id to fetch."""
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "base_model")
    monkeypatch.chdir(tmp_path)
    assert run_command("download-model", ["--model_name_or_path", "./modles/base_model", "--output_dir", "out"]) == 2
    err = capsys.readouterr().err
    assert "--model_name_or_path ./modles/base_model: no such folder" in err and 'Did you mean "models/base_model"' in err
    assert "Traceback" not in err and "HFValidationError" not in err
    assert not (tmp_path / "out" / ".base_model.partial").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # the lock is gone too


def test_modelscope_without_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # behave as if not installed
    with pytest.raises(ZhloraError, match=r"pip install 'zhlora\[modelscope\]'"):
        download_model("modelscope/Llama-2-7b-ms", tmp_path / "models", source="modelscope")


def test_seed_script_accepts_the_seed_flags(tmp_path):
    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "download_model.py"), "--model_name_or_path", "tiny",
                          "--output_dir", "models"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert read_model_manifest(tmp_path / "models" / "base_model")["source"] == "tiny"


# ---------------------------------------------------------------------------------------
# Hugging Face hub, against a local server
# ---------------------------------------------------------------------------------------
def test_hub_download_fetches_safetensors_only_and_records_the_commit(tiny_model_dir, tmp_path):
    repo = "zhlora-test/tiny-llama"
    served = _repo_folder(tiny_model_dir, tmp_path / "served", {"pytorch_model.bin": b"pickle", "README.md": b"# licence"})
    leftover = tmp_path / "models" / ".base_model.partial" / "model-00001-of-00009.safetensors"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"from an interrupted download of another model")
    with HubServer() as hub:
        commit = hub.add_repo(repo, served)
        out = _cli(["--model_name_or_path", repo, "--output_dir", "models", "--revision", "main"], hub.url, tmp_path,
                   token=SECRET_TOKEN)
    assert out.returncode == 0, out.stderr
    assert SECRET_TOKEN not in out.stdout + out.stderr
    assert "pytorch_model.bin" not in _downloads(hub) and {"model.safetensors", "README.md"} <= _downloads(hub)
    auth = [{k.lower(): v for k, v in r["headers"].items()}.get("authorization") for r in hub.requests]
    assert auth and set(auth) == {f"Bearer {SECRET_TOKEN}"}, "HF_TOKEN was not sent"
    folder = tmp_path / "models" / "base_model"
    manifest = read_model_manifest(folder)
    assert manifest["source"] == "hf" and manifest["model_name_or_path"] == repo
    assert manifest["revision"] == commit and manifest["revision_requested"] == "main"
    assert manifest["files"]["model.safetensors"] == read_model_manifest(tiny_model_dir)["files"]["model.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*manifest["files"], MODEL_MANIFEST])
    assert not (folder / "pytorch_model.bin").exists() and not leftover.parent.exists()
    assert model_fingerprint(folder) == model_fingerprint(tiny_model_dir)
    assert load_model(folder).num_parameters() == load_model(tiny_model_dir).num_parameters()
    # rerun: the manifest matches, nothing is downloaded
    with HubServer() as hub:
        hub.add_repo(repo, served)
        again = _cli(["--model_name_or_path", repo, "--output_dir", "models", "--revision", "main"], hub.url, tmp_path)
    assert again.returncode == 0 and "skipping" in again.stderr and not hub.requests


@pytest.mark.parametrize("status", [401, 403])
def test_gated_hub_model_explains_licence_and_token(tiny_model_dir, tmp_path, status):
    repo = "meta-llama/Llama-2-7b-hf"
    with GatedHubServer(status) as hub:
        hub.add_repo(repo, _repo_folder(tiny_model_dir, tmp_path / "served"))
        out = _cli(["--model_name_or_path", repo, "--output_dir", "models"], hub.url, tmp_path, token="hf_wrong_token")
    assert hub.requests and out.returncode == 2, out.stderr
    assert "accept its licence on https://huggingface.co/meta-llama/Llama-2-7b-hf" in out.stderr and "HF_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr and "hf_wrong_token" not in out.stderr
    assert not (tmp_path / "models" / "base_model").exists()


def test_pickle_only_hub_model_is_refused_before_download(tiny_model_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(tiny_model_dir / "config.json", served)
    (served / "pytorch_model.bin").write_bytes(b"pickle")
    with HubServer() as hub:
        hub.add_repo("old/pickled-llama", served)
        out = _cli(["--model_name_or_path", "old/pickled-llama", "--output_dir", "models"], hub.url, tmp_path)
    assert out.returncode == 2 and "only pickled weights" in out.stderr
    assert not _downloads(hub)


def test_unknown_revision_and_unknown_repo_are_named(tiny_model_dir, tmp_path):
    repo = "zhlora-test/tiny-llama"
    with HubServer() as hub:
        hub.add_repo(repo, _repo_folder(tiny_model_dir, tmp_path / "served"))
        bad_rev = _cli(["--model_name_or_path", repo, "--revision", "v9"], hub.url, tmp_path)
        bad_repo = _cli(["--model_name_or_path", "nobody/nothing"], hub.url, tmp_path)
    assert bad_rev.returncode == 2 and 'Revision "v9"' in bad_rev.stderr
    assert bad_repo.returncode == 2 and "nobody/nothing was not found" in bad_repo.stderr


def test_corrupted_hub_download_is_rejected(tiny_model_dir, tmp_path, monkeypatch):
    from zhlora.models import download

    def fake_fill(repo_id, staging, revision, token):  # files arrive, but not with the hub's sha256
        for path in tiny_model_dir.iterdir():
            if path.name != MODEL_MANIFEST:
                shutil.copy(path, staging)
        return "f" * 40, {"model.safetensors": "0" * 64}

    monkeypatch.setattr(download, "_fill_from_hub", fake_fill)
    with pytest.raises(ZhloraError, match="model.safetensors of a/b do not match the hub's sha256"):
        download_model("a/b", tmp_path / "models")
    assert not (tmp_path / "models" / "base_model").exists()


def test_unreachable_hub_fails_fast_naming_mirror_and_alternatives(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    start = time.monotonic()
    out = _cli(["--model_name_or_path", "meta-llama/Llama-2-7b-hf"], endpoint, tmp_path, timeout=60)
    assert out.returncode == 2, out.stderr
    assert time.monotonic() - start < 30
    for hint in (endpoint, "HF_ENDPOINT=https://hf-mirror.com", "--model_source modelscope", "--model_source local"):
        assert hint in out.stderr


def test_a_hub_download_too_big_for_the_disk_is_refused_before_it_starts(tiny_model_dir, tmp_path):
    """The hub says how big the files are: a disk with less free space is refused up front, naming both sizes."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with HubServer() as hub:
            hub.add_repo("zhlora-test/tiny-llama", _repo_folder(tiny_model_dir, tmp_path / "served"))
            out = _cli(["--model_name_or_path", "zhlora-test/tiny-llama", "--output_dir", str(disk / "models")],
                       hub.url, tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert f"The disk holding {disk / 'models'}" in out.stderr and "is too full" in out.stderr
        assert "downloading zhlora-test/tiny-llama needs about" in out.stderr
        assert "model.safetensors" not in _downloads(hub)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
