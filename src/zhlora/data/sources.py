"""Step 1: fetch every data source and write ``data/<source>/<split>.jsonl`` + ``data/manifest.json``.

Sources come from the Hugging Face hub (``hf``, the default), ModelScope (``modelscope``), a
folder in the upstream release layout (``local:DIR``, where ``DIR/<source>/`` is laid out as
in ``docs/data.md``) or the samples bundled with zhlora (``sample``). Each source is written
to a temporary folder and moved into place only when complete, then recorded in the
manifest; a rerun skips complete sources and refuses to replace data made with other
settings unless ``force`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from zhlora.data import builders, hub
from zhlora.data.builders import SOURCE_SPLITS, BelleOptions, BuiltSource, RawFiles
from zhlora.data.catalog import ALL_DATA_SOURCES, OPTIONAL_DATA_SOURCES
from zhlora.differences import differences
from zhlora.errors import DataError, ZhloraError, did_you_mean, unknown_name_error
from zhlora.filenames import DATA_MANIFEST
from zhlora.io_utils import (
    atomic_write_json,
    atomic_write_jsonl,
    provenance,
    replace_folder,
    sha256_file,
    staging_folder,
    utc_now,
)

logger = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
SOURCE_KINDS = ("hf", "modelscope", "sample", "local:DIR")


_BUILDERS: dict[str, Callable[[RawFiles], BuiltSource]] = {
    "ceval": builders.build_ceval,
    "cmmlu": builders.build_cmmlu,
    "mmlu": builders.build_mmlu,
    "gsm8k": builders.build_gsm8k,
    "english_text": builders.build_english_text,
    "alpaca": builders.build_alpaca,
}


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source`` value: ``kind`` is hf, modelscope, sample or local; ``folder`` for the last two."""

    kind: str
    folder: Path | None = None

    def describe(self) -> str:
        return f"local:{self.folder}" if self.kind == "local" else self.kind


def samples_dir() -> Path:
    """The sample data bundled with zhlora (the release layout, a few rows per source)."""
    return Path(str(resources.files("zhlora").joinpath("samples")))


def parse_source(text: str) -> SourceSpec:
    """Parse ``--source``: ``hf``, ``modelscope``, ``sample`` or ``local:DIR``."""
    if text in ("hf", "modelscope"):
        return SourceSpec(text)
    if text == "sample":
        folder = samples_dir()
        if not folder.is_dir():
            raise ZhloraError(f"The bundled samples are missing from this installation ({folder}); reinstall zhlora.")
        return SourceSpec("sample", folder)
    if text.startswith("local:"):
        folder = Path(text[len("local:"):]).expanduser()
        if not folder.is_dir():
            raise ZhloraError(
                f"--source {text}: no such folder {folder}. It must hold one folder per source in the upstream "
                "release layout (e.g. DIR/ceval/val/law_val.csv), see docs/data.md."
            )
        return SourceSpec("local", folder.resolve())
    raise ZhloraError(
        f'Unknown data source "{text}" for --source.{did_you_mean(text, ["hf", "modelscope", "sample", "local:"])} '
        f"Use one of: {', '.join(SOURCE_KINDS)}."
    )


def _fetch_raw(name: str, spec: SourceSpec, belle_dataset: str) -> tuple[RawFiles, dict[str, Any]]:
    """Locate (and for hubs download) the upstream files of one source; also return its origin."""
    if spec.folder is not None:
        folder = spec.folder / name
        if not folder.is_dir():
            raise DataError(
                f"{folder}: missing folder for {name}. --source {spec.describe()} must hold {name}/ in the upstream "
                "release layout (see docs/data.md), or leave this source out with --datasets."
            )
        return RawFiles(folder=folder), {"kind": spec.kind, "path": str(folder)}
    repo_id = hub.belle_repo(belle_dataset) if name == "belle" else hub.SOURCE_REPOS[name]
    if spec.kind == "hf":
        from huggingface_hub import constants

        fetched, endpoint = hub.fetch_from_hf(repo_id), constants.ENDPOINT
    else:
        fetched, endpoint = hub.fetch_from_modelscope(repo_id), "modelscope"
    origin = {
        "kind": spec.kind,
        "endpoint": endpoint,
        "repo_id": repo_id,
        "revision": next((f.commit for f in fetched if f.commit), None),
        "files": {f.role: f.repo_path for f in fetched},
    }
    return RawFiles(fetched={f.role: f.local_path for f in fetched}), origin


def _request(name: str, spec: SourceSpec, belle: BelleOptions, belle_dataset: str) -> dict[str, Any]:
    """The settings that determine a source's output: a rerun with other settings must not reuse it."""
    request: dict[str, Any] = {"source": spec.describe()}
    if name == "belle":
        request.update(sample_size=belle.sample_size, heldout_size=belle.heldout_size, seed=belle.seed)
        if spec.folder is None:
            request["belle_dataset"] = belle_dataset
    return request


def read_data_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``data/manifest.json`` (an empty manifest when there is none yet)."""
    path = Path(data_dir) / DATA_MANIFEST
    if not path.is_file():
        return {"schema_version": MANIFEST_SCHEMA_VERSION, "sources": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}). Delete it and rerun download-data with --force.") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), dict):
        raise DataError(f"{path}: not a zhlora data manifest. Delete it and rerun download-data with --force.")
    return manifest


def source_is_complete(data_dir: Path, name: str, entry: dict[str, Any] | None) -> bool:
    """True when the manifest lists ``name`` and every split file is there with its recorded sha256."""
    if not entry:
        return False
    for split, info in entry.get("splits", {}).items():
        path = data_dir / name / f"{split}.jsonl"
        if not path.is_file() or sha256_file(path) != info.get("sha256"):
            return False
    return set(entry.get("splits", {})) == set(SOURCE_SPLITS[name])


def _write_source(data_dir: Path, name: str, built: BuiltSource) -> dict[str, dict[str, Any]]:
    """Write the split files of one source into place atomically; return rows and sha256 per split."""
    staging = staging_folder(data_dir, f".{name}.partial-")
    try:
        splits = {}
        for split in SOURCE_SPLITS[name]:
            path = staging / f"{split}.jsonl"
            rows = atomic_write_jsonl(path, built.splits[split])
            splits[split] = {"rows": rows, "sha256": sha256_file(path)}
        replace_folder(staging, data_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return splits


def _input_hashes(paths: list[Path], base: Path | None) -> dict[str, str]:
    hashes = {}
    for path in paths:
        key = str(path.relative_to(base)) if base is not None and path.is_relative_to(base) else path.name
        hashes[key] = sha256_file(path)
    return hashes


def resolve_datasets(datasets: list[str] | None, replay_ratio: float = 0.0) -> list[str]:
    """The sources to fetch: ``datasets`` (default: all but the optional ones), plus alpaca for replay."""
    known = ALL_DATA_SOURCES + OPTIONAL_DATA_SOURCES
    names = list(ALL_DATA_SOURCES if datasets is None else datasets)
    for name in names:
        if name not in known:
            raise unknown_name_error("data source", name, known)
    if replay_ratio > 0 and "alpaca" not in names:
        names.append("alpaca")
    return names


def download_data(
    data_dir: str | os.PathLike,
    source: str = "hf",
    datasets: list[str] | None = None,
    belle_dataset: str = "BelleGroup/train_0.5M_CN",
    belle_sample_size: int = 50000,
    belle_heldout_size: int = 500,
    seed: int = 42,
    force: bool = False,
) -> dict[str, Any]:
    """Fetch ``datasets`` from ``source`` into ``data_dir`` and return the manifest.

    Complete sources made with the same settings are skipped; a source made with other
    settings raises unless ``force`` is set, which redoes every named source.
    """
    spec = parse_source(source)
    names = resolve_datasets(datasets)
    if "belle" in names and spec.folder is None:
        hub.belle_repo(belle_dataset)
    belle = BelleOptions(sample_size=belle_sample_size, heldout_size=belle_heldout_size, seed=seed)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_data_manifest(data_dir)
    for name in names:
        request = _request(name, spec, belle, belle_dataset)
        entry = manifest["sources"].get(name)
        if not force and source_is_complete(data_dir, name, entry):
            if entry.get("request") != request:
                raise DataError(
                    f"{data_dir / name} was made with other settings ({'; '.join(differences(entry.get('request') or {}, request))})."
                    " Pass --force to replace it, or choose another --data_dir."
                )
            logger.info("%s: complete in %s, skipping (--force redoes it)", name, data_dir / name)
            continue
        started = time.perf_counter()
        logger.info("%s: reading from %s", name, spec.describe())
        raw, origin = _fetch_raw(name, spec, belle_dataset)
        built = builders.build_belle(raw, belle) if name == "belle" else _BUILDERS[name](raw)
        splits = _write_source(data_dir, name, built)
        manifest["sources"][name] = {
            "origin": origin,
            "request": request,
            "inputs_sha256": _input_hashes(built.files_read, raw.folder),
            "splits": splits,
            "details": built.details,
            "created_at": utc_now(),
            "seconds": round(time.perf_counter() - started, 3),
        }
        manifest["schema_version"] = MANIFEST_SCHEMA_VERSION
        manifest["provenance"] = provenance()
        atomic_write_json(data_dir / DATA_MANIFEST, manifest)
        counts = ", ".join(f"{split} {info['rows']:,}" for split, info in splits.items())
        logger.info("%s: wrote %s (%.1f s)", name, counts, manifest["sources"][name]["seconds"])
    return manifest
