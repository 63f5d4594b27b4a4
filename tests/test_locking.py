"""One writer per folder: refusal naming the holder, stale takeover, waiting, re-entrance."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from zhlora.filenames import LOCK_FILENAME
from zhlora.locking import FolderLockedError, folder_lock

HOLD = """
import sys, time
from zhlora.locking import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _start_holder(folder, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    holder = _start_holder(tmp_path / "run", 30)
    try:
        with pytest.raises(FolderLockedError) as info, folder_lock(tmp_path / "run"):
            pass
        assert f"pid {holder.pid}" in str(info.value)
        assert "being written by another zhlora process" in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    holder = _start_holder(tmp_path / "run", 30)
    holder.kill()  # SIGKILL: the lock file stays behind
    holder.wait()
    assert (tmp_path / "run" / LOCK_FILENAME).exists()
    with caplog.at_level(logging.WARNING, logger="zhlora.locking"), folder_lock(tmp_path / "run"):
        record = json.loads((tmp_path / "run" / LOCK_FILENAME).read_text())
        assert record["pid"] != holder.pid
    assert "stale lock" in caplog.text and f"pid {holder.pid}" in caplog.text
    assert not (tmp_path / "run" / LOCK_FILENAME).exists()  # released on exit


def test_lock_from_another_host_is_never_taken_over(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILENAME).write_text(json.dumps({"pid": 1, "host": "gpu-node-17", "started_at": "x", "command": "zhlora sweep"}))
    with pytest.raises(FolderLockedError, match="another host.*delete"), folder_lock(folder):
        pass
    assert (folder / LOCK_FILENAME).exists()


def test_waiting_writer_gets_the_lock_when_the_holder_finishes(tmp_path, caplog):
    holder = _start_holder(tmp_path / "run", 1.5)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="zhlora.locking"), folder_lock(tmp_path / "run", wait=True, poll_seconds=0.1):
        waited = time.monotonic() - start
    holder.wait()
    assert waited > 0.5
    assert caplog.text.count("Waiting for") == 1 and f"pid {holder.pid}" in caplog.text


def test_lock_is_reentrant_within_one_process(tmp_path):
    with folder_lock(tmp_path / "run"), folder_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_FILENAME).exists()
    assert not (tmp_path / "run" / LOCK_FILENAME).exists()


def test_a_late_write_into_a_folder_deleted_and_taken_by_another_run_is_refused(tmp_path):
    """Issue 13: a SIGTERM checkpoint must not land in the new run started in the deleted folder."""
    import shutil

    from zhlora.locking import check_still_held

    folder = tmp_path / "run"
    with folder_lock(folder):
        check_still_held(folder)  # still ours
        shutil.rmtree(folder)
        with pytest.raises(FolderLockedError, match="deleted or taken over.*lock .* is gone"):
            check_still_held(folder)
        folder.mkdir()
        (folder / LOCK_FILENAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}), encoding="utf-8")
        with pytest.raises(FolderLockedError, match="held by pid 1 on host elsewhere"):
            check_still_held(folder)
    check_still_held(tmp_path / "never-locked")  # library use without a lock passes


def test_a_second_zhlora_run_of_the_same_run_is_refused_at_once_naming_the_first(tmp_path, capsys):
    """docs/errors.md: two `zhlora run`s of one run name in one work folder — the second is refused (never
    interleaved, never waiting silently); sweep shards and runs of other names share steps and wait instead."""
    from zhlora.cli import main

    holder = _start_holder(tmp_path / "work" / "results" / "lora-demo", 60)
    try:
        started = time.monotonic()
        assert main(["run", "--work_dir", str(tmp_path / "work")]) == 2
        assert time.monotonic() - started < 30
        err = capsys.readouterr().err
        assert f"is being written by another zhlora process: pid {holder.pid}" in err and "Traceback" not in err
        assert not (tmp_path / "work" / "models").exists()  # refused before any step ran
    finally:
        holder.kill()
        holder.wait()
