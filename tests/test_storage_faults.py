"""A full disk and a read-only folder at every writing step: one paragraph, nothing that looks complete, a rerun resumes.

Two kinds of check. Fault injection: ``os.replace`` (the last act of every atomic write and folder
swap in zhlora) fails with ENOSPC or EROFS at the first, a middle and the last write of each
step, so every step is stopped before, inside and at its completion marker. Real file systems:
a small tmpfs and a read-only bind mount (root only; skipped where mounting is not allowed), where
torch, safetensors and matplotlib raise their own errors.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EVAL_FLAGS, TRAIN_FLAGS

from zhlora.cli import run_command
from zhlora.storage import storage_error


# ---------------------------------------------------------------------------------------
# The classification itself
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "words"), [
    (OSError(errno.ENOSPC, "No space left on device", "/tmp/x/results.json"), "is full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/tmp/x/results.json"), "is full"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 193216 vs 193108"), "is full"),
    (Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on "
               "device\" })"), "is full"),
    (OSError(errno.EROFS, "Read-only file system", "/tmp/x/.zhlora.lock"), "read-only file system"),
])
def test_full_and_read_only_disks_are_recognised_in_every_library_s_words(tmp_path, exc, words):
    error = storage_error(exc, [tmp_path])
    assert error is not None and words in str(error) and "rerun the same command" in str(error)


def test_other_errors_are_not_called_a_full_disk(tmp_path):
    assert storage_error(ValueError("bad value"), [tmp_path]) is None
    assert storage_error(OSError(errno.ENOENT, "No such file", "x"), [tmp_path]) is None


def test_the_message_names_the_space_a_step_announced(tmp_path):
    from zhlora.storage import note_space_needed

    note_space_needed(tmp_path, 13_500_000_000, "the model's weights")
    error = storage_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.safetensors")),
                          [tmp_path])
    assert "Writing the model's weights needs about 13.5 GB" in str(error) and str(tmp_path) in str(error)


# ---------------------------------------------------------------------------------------
# Fault injection at the first, a middle and the last write of every step
# ---------------------------------------------------------------------------------------
class FailingWrites:
    """``os.replace`` that fails with ``code`` at its ``at``-th call moving something into ``root``."""

    def __init__(self, root: Path, at: int | None = None, code: int = errno.ENOSPC):
        self.root, self.at, self.code, self.calls = str(root), at, code, 0
        self.real = os.replace

    def __call__(self, src, dst, *args, **kwargs):
        if str(Path(dst).absolute()).startswith(self.root):
            self.calls += 1
            if self.calls == self.at:
                raise OSError(self.code, os.strerror(self.code), str(dst))
        return self.real(src, dst, *args, **kwargs)


def _step(verb: str, out: Path, tiny_model_dir, sample_data_dir, processed, tiny_results) -> tuple[list[str], Path]:
    """The command line of ``verb`` writing into ``out``, and the file that marks its output complete."""
    if verb == "download-data":
        return ["--output_dir", str(out), "--source", "sample", "--belle_sample_size", "40"], out / "manifest.json"
    if verb == "preprocess":
        return (["--data_dir", str(sample_data_dir), "--output_dir", str(out), "--model_name_or_path",
                 str(tiny_model_dir), "--max_seq_length", "256"], out / "meta.json")
    if verb == "download-model":
        return (["--model_name_or_path", "tiny", "--output_dir", str(out), "--num_threads", "1"],
                out / "base_model" / "zhlora_manifest.json")
    if verb == "train":
        return (["--model_path", str(tiny_model_dir), "--dataset_path", str(processed / "train_dataset"),
                 "--output_dir", str(out), *TRAIN_FLAGS], out / "manifest.json")
    if verb == "evaluate":
        return (["--model_path", str(tiny_model_dir), "--data_dir", str(sample_data_dir), "--results_dir", str(out),
                 *EVAL_FLAGS], out / "results.json")
    if verb == "compare":
        return [str(tiny_results / "base"), str(tiny_results / "tuned"), "--output_dir", str(out)], out / "forgetting.json"
    if verb == "report":
        shutil.copy(tiny_results / "compared" / "forgetting.json", out / "forgetting.json")
        return [str(out)], out / "report.html"
    if verb == "merge":
        return (["--base_model_path", str(tiny_model_dir), "--lora_model_path", str(tiny_results / "adapter"),
                 "--output_dir", str(out / "merged"), "--num_threads", "1"], out / "merged" / "zhlora_manifest.json")
    raise AssertionError(verb)


def _complete(marker: Path) -> bool:
    """Whether the step's output says it is complete (download-data's manifest lists every source it fetches)."""
    if not marker.is_file():
        return False
    if marker.parent.name.startswith(("clean", "fault")) and marker.name == "manifest.json" and \
            (marker.parent / "belle").exists():
        import json

        return set(json.loads(marker.read_text())["sources"]) >= {"belle", "ceval", "cmmlu", "mmlu", "gsm8k", "english_text"}
    return True


VERBS = ["download-data", "preprocess", "download-model", "train", "evaluate", "compare", "report", "merge"]


@pytest.mark.parametrize("verb", VERBS)
def test_a_full_or_read_only_disk_at_any_write_is_one_paragraph_and_the_rerun_completes(
        verb, tmp_path, monkeypatch, capsys, tiny_model_dir, sample_data_dir, processed, tiny_results):
    if verb == "report" and not (tiny_results / "compared" / "forgetting.json").is_file():
        assert run_command("compare", [str(tiny_results / "base"), str(tiny_results / "tuned"), "--output_dir",
                                       str(tiny_results / "compared")]) == 0
    clean = tmp_path / "clean"
    clean.mkdir()
    argv, marker = _step(verb, clean, tiny_model_dir, sample_data_dir, processed, tiny_results)
    counter = FailingWrites(clean)
    monkeypatch.setattr(os, "replace", counter)
    assert run_command(verb, argv) == 0 and marker.is_file()
    writes = counter.calls
    assert writes >= 1
    capsys.readouterr()
    for at, code in sorted({(1, errno.EROFS), (max(1, writes // 2), errno.ENOSPC), (writes, errno.ENOSPC)}):
        out = tmp_path / f"fault-{at}-{code}"
        out.mkdir()
        argv, marker = _step(verb, out, tiny_model_dir, sample_data_dir, processed, tiny_results)
        monkeypatch.setattr(os, "replace", FailingWrites(out, at, code))
        assert run_command(verb, argv) == 2, f"{verb}: write {at} of {writes} failed but the step went on"
        err = capsys.readouterr().err
        assert "Traceback" not in err and sum(line.startswith(f"zhlora {verb}: error:") for line in err.splitlines()) == 1, err
        expected = "is on a read-only file system" if code == errno.EROFS else "is full"
        assert expected in err and str(out) in err, err
        assert not _complete(marker), f"{verb}: {marker} says complete although write {at} of {writes} failed"
        monkeypatch.setattr(os, "replace", FailingWrites(out))
        assert run_command(verb, argv) == 0, capsys.readouterr().err
        assert _complete(marker)
    capsys.readouterr()


# ---------------------------------------------------------------------------------------
# Real file systems: a small tmpfs and a read-only bind mount
# ---------------------------------------------------------------------------------------
def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode}); needs root in a mount namespace")


@pytest.fixture
def small_disk(tmp_path):
    """A 600 kB tmpfs: too small for a model or a checkpoint, enough for a lock file. Grown with ``grow()``."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _grow(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)


@pytest.mark.parametrize("verb", ["download-model", "train", "evaluate"])
def test_a_real_full_disk_is_one_paragraph_and_the_rerun_after_freeing_space_completes(
        verb, small_disk, capsys, tiny_model_dir, sample_data_dir, processed, tiny_results):
    argv, marker = _step(verb, small_disk / "out", tiny_model_dir, sample_data_dir, processed, tiny_results)
    if verb == "evaluate":  # the results are small: leave too little room for the charts
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * 500_000)
    assert run_command(verb, argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("is full" in err or "is too full" in err) and str(small_disk) in err, err
    assert not marker.exists()
    _grow(small_disk)
    assert run_command(verb, argv) == 0, capsys.readouterr().err
    assert marker.is_file()


@pytest.mark.parametrize("verb", ["train", "evaluate"])
def test_a_read_only_output_folder_is_one_paragraph(verb, tmp_path, capsys, tiny_model_dir, sample_data_dir,
                                                    processed, tiny_results):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    folder = tmp_path / "ro"
    folder.mkdir()
    _mount("--bind", str(folder), str(folder))
    try:
        _mount("-o", "remount,ro,bind", str(folder))
        argv, marker = _step(verb, folder / "out", tiny_model_dir, sample_data_dir, processed, tiny_results)
        assert run_command(verb, argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "read-only file system" in err and str(folder) in err, err
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# ---------------------------------------------------------------------------------------
# File modes follow the umask
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_file_and_folder_follows_the_umask(umask, tmp_path, tiny_model_dir, sample_data_dir, processed,
                                                        tiny_results):
    """Safetensors, atomically written files and staged folders are 0666/0777 minus the umask, never private."""
    previous = os.umask(umask)
    try:
        for verb in ("download-data", "download-model", "preprocess", "train", "evaluate", "compare", "merge"):
            out = tmp_path / verb
            out.mkdir()
            argv, marker = _step(verb, out, tiny_model_dir, sample_data_dir, processed, tiny_results)
            assert run_command(verb, argv) == 0 and marker.exists(), verb
    finally:
        os.umask(previous)
    wrong = []
    for path in tmp_path.rglob("*"):
        if path.is_symlink() or path.name == ".zhlora.lock":
            continue
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        if path.stat().st_mode & 0o777 != expected:
            wrong.append(f"{path.relative_to(tmp_path)}: {oct(path.stat().st_mode & 0o777)}")
    assert not wrong, wrong
    assert (tmp_path / "train" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "train" / "checkpoint-2").is_dir()
