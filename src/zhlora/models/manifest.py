"""``zhlora_manifest.json``: what a model folder holds and where it came from.

Every model folder zhlora writes (``download-model``, the tiny model, ``merge``) carries a
manifest with the sha256 of each file, so that results can name the exact weights they were
computed with (``model_fingerprint``) without re-hashing gigabytes on every evaluation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from zhlora.errors import ZhloraError
from zhlora.filenames import MODEL_MANIFEST
from zhlora.io_utils import atomic_write_json, provenance, sha256_file, utc_now

MANIFEST_SCHEMA_VERSION = 1


def is_weight_file(name: str) -> bool:
    """True for the files that hold weights (safetensors shards; never pickles)."""
    return name.endswith(".safetensors")


def hash_folder_files(folder: Path, only: Collection[str] | None = None) -> tuple[dict[str, str], dict[str, int]]:
    """sha256 and size in bytes of every regular file under ``folder`` except the manifest.

    Names are POSIX paths relative to ``folder``; hidden entries (``.cache`` of the hub
    client) are skipped; ``only`` limits it to those names (a fine-tuning run's model files, not
    its logs and checkpoints). Returns ``(sha256 by name, bytes by name)``, sorted by name.
    """
    hashes: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel == MODEL_MANIFEST or any(part.startswith(".") for part in rel.split("/")):
            continue
        if only is not None and rel not in only:
            continue
        hashes[rel] = sha256_file(path)
        sizes[rel] = path.stat().st_size
    return hashes, sizes


def weights_digest(file_hashes: dict[str, str]) -> str:
    """One sha256 over the weight files' hashes: ``sha256("name:hash\\n" for each, sorted)``.

    It identifies the weights only, so re-saving a tokenizer or a README does not change it.
    """
    lines = [f"{name}:{digest}\n" for name, digest in sorted(file_hashes.items()) if is_weight_file(name)]
    if not lines:
        raise ZhloraError("No *.safetensors weight file to fingerprint.")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def write_manifest(folder: Path, source: str, model_name_or_path: str, revision: str | None, *,
                   only: Collection[str] | None = None, **extra: Any) -> dict:
    """Hash every file of ``folder`` and write its manifest; return the manifest dict.

    ``revision`` is the resolved revision (a hub commit sha) or None when there is none.
    ``extra`` holds source-specific facts (requested revision, tiny-model spec, merge inputs).
    """
    hashes, sizes = hash_folder_files(folder, only)
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "source": source,
        "model_name_or_path": model_name_or_path,
        "revision": revision,
        "files": hashes,
        "file_sizes": sizes,
        "weights_sha256": weights_digest(hashes),
        "created_at": utc_now(),
        "provenance": provenance(),
        **extra,
    }
    atomic_write_json(folder / MODEL_MANIFEST, manifest)
    return manifest


def read_model_manifest(folder: Path) -> dict | None:
    """The manifest of ``folder``, or None when it has none (or an unreadable one)."""
    path = Path(folder) / MODEL_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def manifest_files_present(folder: Path, manifest: dict) -> bool:
    """True when every file the manifest lists exists with its recorded size (a cheap check)."""
    sizes = manifest.get("file_sizes") or {}
    for name in manifest["files"]:
        path = Path(folder) / name
        if not path.is_file() or (name in sizes and path.stat().st_size != sizes[name]):
            return False
    return True


def model_fingerprint(model_dir: str | Path) -> str:
    """The sha256 identity of a model folder's weights (see :func:`weights_digest`).

    Read from ``zhlora_manifest.json`` when present and its files still have their recorded
    sizes (hashing 13 GB per evaluation would cost minutes); computed from the files otherwise.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ZhloraError(f"Model folder {folder} does not exist. Create it with `zhlora download-model`.")
    manifest = read_model_manifest(folder)
    if manifest is not None and manifest_files_present(folder, manifest):
        return weights_digest(manifest["files"])
    weight_files = sorted(p for p in folder.iterdir() if p.is_file() and is_weight_file(p.name))
    if not weight_files:
        raise ZhloraError(f"{folder} holds no *.safetensors weight file, so it has no fingerprint.")
    return weights_digest({p.name: sha256_file(p) for p in weight_files})
