"""Small file helpers shared by every step: atomic writes, hashing, provenance.

Every artefact zhlora writes goes through these functions so that an interrupted step never
leaves a half-written file that looks complete: data is written to a temporary file in the
same folder and moved into place with :func:`os.replace` (atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from zhlora import __version__


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        share_per_umask(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def share_per_umask(path: str | os.PathLike) -> Path:
    """Give ``path`` (a file, or a folder and everything in it) the modes a plain ``open``/``mkdir`` would.

    Temporary files and folders (``mkstemp``, ``mkdtemp``) are private (0600/0700) and so are the
    files safetensors writes; results on a shared cluster disk must be readable by the user's
    colleagues, so each finished artefact gets 0666/0777 minus the umask (0644/0755 by default).
    """
    path = Path(path)
    mask = _current_umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
    return path


def check_not_a_file(folder: str | os.PathLike, flag: str = "") -> None:
    """Refuse an output folder that exists as a file (``flag`` names the option it came from, for the message)."""
    from zhlora.errors import ZhloraError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ZhloraError(f"{flag + ' ' if flag else ''}{folder} is a file, not a folder, so zhlora cannot write its "
                          "outputs there. Pass a folder (it is created if missing), or move the file away.")


def staging_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A new empty folder in ``parent`` (created if missing) for a step to fill before it is renamed into place."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return share_per_umask(tempfile.mkdtemp(prefix=prefix, dir=parent))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the finished folder ``staging`` onto ``target`` with renames only; return ``target``.

    An existing ``target`` is renamed aside first and deleted only after the swap, so a crash
    leaves either the old folder or the new one, never a half-written or missing ``target``.
    ``staging`` must be on the same filesystem (make it beside ``target``).
    """
    staging, target = Path(staging), Path(target)
    share_per_umask(staging)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def dumps_json(obj: Any) -> str:
    """Serialise ``obj`` the one way zhlora writes JSON: UTF-8 text, indented, sorted keys.

    Sorted keys and a fixed float format make results byte-identical across reruns.
    """
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON (see :func:`dumps_json`) to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(obj))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one compact JSON object per line to ``path`` atomically; return the row count."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file written by zhlora (UTF-8, blank lines ignored).

    A line that is not UTF-8 or not JSON raises a DataError naming the file and line.
    """
    from zhlora.errors import DataError

    rows = []
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}, line {line_number}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                    "the file is damaged or was saved in another encoding. Delete it and rerun the step that writes it "
                    "(or re-save it as UTF-8)."
                ) from None
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {line_number}: not valid JSON ({exc.msg}, column {exc.colno}). "
                    "Fix or delete the file and rerun the step that writes it."
                ) from None
    return rows


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string with seconds precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def git_revision() -> str | None:
    """The git commit of the zhlora source tree, or None when not installed from a checkout."""
    source_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source_dir, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour affects results."""
    from importlib import metadata

    versions = {"python": platform.python_version(), "zhlora": __version__}
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def provenance() -> dict[str, Any]:
    """What produced an artefact: tool version, git hash, libraries, command line, time."""
    return {
        "tool": "zhlora",
        "tool_version": __version__,
        "git_revision": git_revision(),
        "versions": library_versions(),
        "command_line": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "created_at": utc_now(),
        "host": platform.node(),
    }
