"""Safe extraction of release archives (the C-Eval and CMMLU zips).

A member whose path would land outside the target folder (``../x``, an absolute path, a
drive letter) or that is a link is refused before anything is written, so a hostile or
broken archive cannot overwrite files elsewhere ("zip slip").
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from zhlora.errors import DataError


def _safe_member_path(target: Path, name: str, archive: Path) -> Path:
    normalized = name.replace("\\", "/")
    posix = PurePosixPath(normalized)
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]):
        raise DataError(
            f'{archive}: member "{name}" has an absolute path; refusing to extract an archive whose members '
            "would land outside the target folder. Re-download the archive from its official source."
        )
    destination = (target / normalized).resolve()
    if destination != target and target not in destination.parents:
        raise DataError(
            f'{archive}: member "{name}" would be written outside {target}; refusing to extract it. '
            "Re-download the archive from its official source."
        )
    return destination


def extract_zip(archive: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Extract ``archive`` into ``target`` after checking every member; return the files written.

    Raises DataError for a corrupt archive, or for a member that would land outside
    ``target`` or is a symbolic link (checked for all members before extracting any).
    """
    archive, target = Path(archive), Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        handle = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a valid zip archive ({exc}). Re-download it (download-data --force).") from None
    written = []
    with handle:
        members = handle.infolist()
        destinations = []
        for member in members:
            destination = _safe_member_path(target, member.filename, archive)
            is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
            if is_link:
                raise DataError(f'{archive}: member "{member.filename}" is a symbolic link; refusing to extract it.')
            destinations.append(destination)
        for member, destination in zip(members, destinations):
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with handle.open(member) as source, open(destination, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)
            written.append(destination)
    return written
