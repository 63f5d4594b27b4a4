"""One writer per folder: a lock file that names its holder.

Every command that writes a run or results folder holds :func:`folder_lock` on it for as long
as it writes, so a process that is still saving (a SIGTERM checkpoint, say) can never write into
a folder that another run has started using. The lock is a file ``<folder>/.zhlora.lock``
created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and NFSv3+, so it also works for
sweep shards on a cluster's shared filesystem) holding the holder's pid, host, process start
time and command line.

A lock whose holder is gone is *stale* and is taken over with a log line: on the same host a
holder is gone when its pid no longer runs, or runs with a different start time (the pid was
reused). A lock held from another host cannot be checked and is never taken over silently.

``wait=True`` waits for the holder instead of refusing, logging once who it waits for: the
sweep uses it so that shards started together compute the shared baseline once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import LOCK_FILENAME
from zhlora.io_utils import check_not_a_file

logger = logging.getLogger(__name__)


# Folders this process holds, with a nesting count: `zhlora run` holds the work folder while the
# steps it calls in-process take their own locks, and a step may be called on a folder it holds.
_held: dict[Path, int] = {}


class FolderLockedError(ZhloraError):
    """Another live process holds the folder's lock; the message names it."""


def _process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its closing paren.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _holder_record() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname() or platform.node(),
        "start_ticks": _process_start_ticks(os.getpid()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
    }


def _read_holder(lock_file: Path) -> dict | None:
    """The lock's holder record; None when the file vanished; {} when it is unreadable."""
    try:
        text = lock_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}  # a holder killed between create and write, or a foreign file
    return record if isinstance(record, dict) else {}


def holder_is_alive(record: dict) -> bool | None:
    """True/False for a holder on this host; None when it cannot be known (another host)."""
    if record.get("host") != (socket.gethostname() or platform.node()):
        return None
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    recorded, current = record.get("start_ticks"), _process_start_ticks(pid)
    return recorded is None or current is None or recorded == current


def describe_holder(record: dict) -> str:
    """``pid 123 on host x since 2026-...Z (zhlora train ...)`` for messages."""
    if not record:
        return "an unknown process (the lock file is unreadable)"
    return (f"pid {record.get('pid')} on host {record.get('host')} since {record.get('started_at')} "
            f"({record.get('command', '?')})")


def _try_create(lock_file: Path) -> bool:
    try:
        fd = os.open(lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(_holder_record(), handle)
    return True


def _take_over_if_stale(lock_file: Path, record: dict) -> None:
    """Remove a stale lock file, logging whose it was; a race with another taker is harmless."""
    # A record with no pid (unreadable) is only stale once it is old: its writer may be mid-write.
    if not record:
        try:
            age = time.time() - lock_file.stat().st_mtime
        except FileNotFoundError:
            return
        if age < 10:
            return
    logger.warning("Taking over the stale lock %s left by %s, which is no longer running.",
                   lock_file, describe_holder(record))
    aside = lock_file.with_name(f"{LOCK_FILENAME}.stale-{os.getpid()}")
    try:
        os.replace(lock_file, aside)
        aside.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _refusal(folder: Path, lock_file: Path, record: dict, alive: bool | None) -> FolderLockedError:
    holder = describe_holder(record)
    if alive is None:
        advice = (f"It was taken on another host, so zhlora cannot tell whether it is still running. If you are "
                  f"sure it is not, delete {lock_file} and rerun.")
    else:
        advice = "Wait for it to finish (or stop it), then rerun; or choose another output folder."
    return FolderLockedError(f"{folder} is being written by another zhlora process: {holder}. {advice}")


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool = False, poll_seconds: float = 2.0,
                timeout_seconds: float | None = None) -> Iterator[Path]:
    """Hold the one-writer lock of ``folder`` (created if missing) for the ``with`` block.

    Refuses with :class:`FolderLockedError` naming the holder when another live process holds
    it, or with ``wait=True`` waits (polling every ``poll_seconds``; ``timeout_seconds`` None =
    forever) and logs once whom it waits for. Stale locks are taken over. Re-entrant within one
    process. Yields the folder path.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder
        finally:
            _held[folder] -= 1
        return
    check_not_a_file(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_FILENAME
    waited_since = None
    while not _try_create(lock_file):
        record = _read_holder(lock_file)
        if record is None:
            continue  # released between our create and our read: try again at once
        alive = holder_is_alive(record) if record else None
        if alive is False or not record:
            _take_over_if_stale(lock_file, record)
            if not record:
                time.sleep(min(poll_seconds, 1.0))
            continue
        if not wait:
            raise _refusal(folder, lock_file, record, alive)
        now = time.monotonic()
        if waited_since is None:
            waited_since = now
            logger.info("Waiting for %s, which %s is writing.", folder, describe_holder(record))
        elif timeout_seconds is not None and now - waited_since > timeout_seconds:
            raise _refusal(folder, lock_file, record, alive)
        time.sleep(poll_seconds)
    _held[folder] = 1
    try:
        yield folder
    finally:
        del _held[folder]
        if _is_own(_read_holder(lock_file)):  # never remove the lock of a run that took the folder over
            with contextlib.suppress(FileNotFoundError):
                lock_file.unlink()


def _is_own(record: dict | None) -> bool:
    return bool(record) and record.get("pid") == os.getpid() and record.get("start_ticks") == _process_start_ticks(os.getpid())


def check_still_held(folder: str | os.PathLike) -> None:
    """Raise :class:`FolderLockedError` when this process held ``folder`` but its lock is gone or another's.

    A late write (the checkpoint a SIGTERM asks for, say) calls this first: when the folder was
    deleted and another run started in it, the write is refused instead of landing in that run.
    A folder this process never locked (library use without the CLI) passes.
    """
    folder = Path(folder).resolve()
    if folder not in _held:
        return
    lock_file = folder / LOCK_FILENAME
    record = _read_holder(lock_file)
    if _is_own(record):
        return
    now = "gone" if record is None else f"held by {describe_holder(record)}"
    raise FolderLockedError(
        f"{folder} was deleted or taken over while this process was writing it (its lock {lock_file} is {now}), "
        "so nothing more is written there. Rerun the command if this run should continue."
    )
