"""A full disk or a read-only folder, said as one paragraph instead of a library's traceback.

Writing fails in many libraries, each in its own words: Python raises ``OSError(ENOSPC)``,
torch's zip writer ``RuntimeError: … unexpected pos 193216 vs 193108``, safetensors
``SafetensorError … No space left on device``, matplotlib the ``OSError`` of its PNG writer.
:func:`storage_error` recognises all of them and names the folder, what it holds and what is
free, and what the step needs when the step said so (:func:`note_space_needed`). The CLI turns
any such failure into that paragraph (exit status 2); every step writes through temporary files
and renames, so the rerun after freeing space resumes from what was complete.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from zhlora.errors import ZhloraError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# Words of the libraries that report a full disk without an errno (torch's zip writer, safetensors, tokenizers).
DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "unexpected pos", "file too large")
READ_ONLY_WORDS = ("read-only file system",)

# Space a step announced before writing into a folder: folder -> (bytes, what).
_needed: dict[Path, tuple[int, str]] = {}


class StorageError(ZhloraError):
    """The disk is full or the folder cannot be written; the message names the folder and what to do."""


def note_space_needed(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Record that writing ``what`` into ``folder`` needs about ``needed_bytes``, for the disk-full message."""
    _needed[Path(folder).resolve()] = (int(needed_bytes), what)


def check_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Note what writing ``what`` into ``folder`` needs, and refuse at once when the disk has less free.

    Refusing before a 13 GB download or an hour of training beats failing at its end.
    """
    folder = Path(folder)
    note_space_needed(folder, needed_bytes, what)
    free = shutil.disk_usage(_existing(folder)).free
    if free < needed_bytes:
        raise StorageError(
            f"The disk holding {folder} is too full: {human_bytes(free)} free, but {what} needs about "
            f"{human_bytes(needed_bytes)}. Free space there (or choose a folder on another disk), then rerun.")


def checkpoint_bytes(trainable_parameters: int, kept: int) -> int:
    """Disk a training run needs for its checkpoints and final weights, in bytes (float32 everywhere).

    A checkpoint holds the trained weights and AdamW's two moments (3 x 4 bytes per trainable
    parameter); ``kept`` checkpoints exist at once, plus one being written and the final weights.
    """
    per_checkpoint = 12 * trainable_parameters
    return per_checkpoint * (kept + 1) + 4 * trainable_parameters


def human_bytes(count: float) -> str:
    """``1.5 GB``, ``12.0 MB``, ``512 B``: decimal units, as ``df -H`` and the hub show sizes."""
    if abs(count) < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if abs(count) < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} TB"


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (where the file system can be asked)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _kind(exc: BaseException, folder: Path) -> str | None:
    """``"full"``, ``"read-only"``, ``"denied"`` or None when ``exc`` is not a storage failure."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 5:  # libraries re-raise OSErrors inside their own errors
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for item in chain:
        if isinstance(item, OSError) and item.errno is not None:
            if item.errno in DISK_FULL_ERRNOS:
                return "full"
            if item.errno == errno.EROFS:
                return "read-only"
            if item.errno in (errno.EACCES, errno.EPERM) and not os.access(_existing(folder), os.W_OK):
                return "denied"
    text = " ".join(str(item) for item in chain).lower()
    if any(words in text for words in READ_ONLY_WORDS):
        return "read-only"
    if any(words in text for words in DISK_FULL_WORDS):
        return "full"
    return None


def _folder_of(exc: BaseException, candidates: list[Path]) -> Path:
    """The folder the failed write was for: the OSError's file when it names one, else the step's output folder."""
    for item in (exc, exc.__cause__, exc.__context__):
        name = getattr(item, "filename", None)
        if isinstance(name, (str, os.PathLike)) and str(name):
            path = Path(name).absolute()
            # a folder being created (mkdir) is named itself; a file being written, by its folder
            return path if path.is_dir() or (not path.exists() and not path.suffix) else path.parent
    return candidates[0] if candidates else Path.cwd()


def storage_error(exc: BaseException, output_folders: list[Path]) -> StorageError | None:
    """The :class:`StorageError` that says what ``exc`` means, or None when it is not a full or read-only disk.

    ``output_folders``: the folders the step writes (its ``--output_dir`` and the like), the first
    one named when the exception does not carry a file name.
    """
    if isinstance(exc, ZhloraError):
        return None
    folder = _folder_of(exc, output_folders)
    kind = _kind(exc, folder)
    if kind is None:
        return None
    if kind == "read-only":
        return StorageError(
            f"{folder} is on a read-only file system, so nothing can be written there. Choose a writable folder "
            "(--output_dir, --results_dir or --work_dir), or remount it read-write, then rerun the same command.")
    if kind == "denied":
        return StorageError(
            f"{folder} cannot be written: permission denied for this user. Choose a folder you may write "
            "(--output_dir, --results_dir or --work_dir), or ask its owner, then rerun the same command.")
    usage = shutil.disk_usage(_existing(folder))
    needed = next((need for path, need in _needed.items() if folder == path or path in folder.parents
                   or folder in path.parents), None)
    need_text = f" Writing {needed[1]} needs about {human_bytes(needed[0])}." if needed else ""
    return StorageError(
        f"The disk holding {folder} is full ({human_bytes(usage.free)} free of {human_bytes(usage.total)}), "
        f"so the step stopped before its output was complete; nothing half-written was kept.{need_text} "
        "Free space there (or choose a folder on another disk), then rerun the same command: it resumes from "
        "what was already saved.")
