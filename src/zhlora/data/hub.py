"""Where each data source lives on the Hugging Face hub (and ModelScope), and how to fetch it.

``HUB_FILES`` is the one table of upstream file names; when a dataset repository moves a
file, fixing this table is all it takes. Downloads go through ``huggingface_hub`` (its
cache, its progress bars, ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` / ``HF_TOKEN``), or through
the optional ``modelscope`` package for ``--source modelscope``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from zhlora.errors import ZhloraError, unknown_name_error

logger = logging.getLogger(__name__)

# Upstream dataset repositories: repo id -> {role: path in the repo}. A role is a split name,
# or "archive" for a zip of the release CSVs ({dev,val,test}/...).
HUB_FILES: dict[str, dict[str, str]] = {
    "BelleGroup/train_0.5M_CN": {"train": "Belle_open_source_0.5M.json"},
    "BelleGroup/train_1M_CN": {"train": "Belle_open_source_1M.json"},
    "BelleGroup/train_2M_CN": {"train": "train_2M_CN.json"},
    "BelleGroup/school_math_0.25M": {"train": "school_math_0.25M.json"},
    "ceval/ceval-exam": {"archive": "ceval-exam.zip"},
    "haonan-li/cmmlu": {"archive": "cmmlu_v1_0_1.zip"},
    "cais/mmlu": {
        "dev": "all/dev-00000-of-00001.parquet",
        "val": "all/validation-00000-of-00001.parquet",
        "test": "all/test-00000-of-00001.parquet",
    },
    "openai/gsm8k": {"train": "main/train-00000-of-00001.parquet", "test": "main/test-00000-of-00001.parquet"},
    "Salesforce/wikitext": {"test": "wikitext-2-raw-v1/test-00000-of-00001.parquet"},
    "tatsu-lab/alpaca": {"train": "data/train-00000-of-00001-a09b74b3ef9c3b56.parquet"},
}

# The repository each source reads; BELLE's is chosen with --belle_dataset.
SOURCE_REPOS: dict[str, str] = {
    "ceval": "ceval/ceval-exam",
    "cmmlu": "haonan-li/cmmlu",
    "mmlu": "cais/mmlu",
    "gsm8k": "openai/gsm8k",
    "english_text": "Salesforce/wikitext",
    "alpaca": "tatsu-lab/alpaca",
}
BELLE_REPOS = tuple(repo for repo in HUB_FILES if repo.startswith("BelleGroup/"))

# ModelScope dataset ids for the same repositories, assumed to mirror the hub's file layout.
# Not verified against modelscope.cn from this project's CI (no network); fix here if needed.
MODELSCOPE_REPOS: dict[str, str] = {repo: repo for repo in HUB_FILES}

# Seconds to wait for the hub's answer to the metadata request before giving up (no hang
# when the network silently drops packets).
HUB_METADATA_TIMEOUT_S = 10

OFFLINE_HINT = (
    "Use the bundled samples (--source sample), a folder with the release files "
    "(--source local:DIR, layout in docs/data.md), or a reachable hub mirror "
    "(export HF_ENDPOINT=https://hf-mirror.com)."
)


@dataclass(frozen=True)
class FetchedFile:
    """A file fetched from a hub: its local path and the commit it was read at."""

    role: str
    repo_path: str
    local_path: Path
    commit: str | None


def belle_repo(belle_dataset: str) -> str:
    """Validate a --belle_dataset value (a BelleGroup hub id) and return it."""
    if belle_dataset not in BELLE_REPOS:
        raise unknown_name_error("BELLE dataset", belle_dataset, BELLE_REPOS)
    return belle_dataset


def _commit_from_cache_path(local_path: str, repo_path: str) -> str | None:
    """The commit hash in a hub cache path ``.../snapshots/<commit>/<repo_path>``."""
    parts = Path(local_path).parts
    depth = len(PurePosixPath(repo_path).parts)
    if len(parts) > depth + 1 and parts[-depth - 2] == "snapshots":
        return parts[-depth - 1]
    return None


def _friendly_hub_error(exc: Exception, repo_id: str, filename: str, endpoint: str) -> ZhloraError:
    """Turn a huggingface_hub exception into one paragraph that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}/{filename}"
    if constants.HF_HUB_OFFLINE or isinstance(exc, OfflineModeIsEnabled):
        return ZhloraError(f"HF_HUB_OFFLINE is set and {where} is not in the hub cache. {OFFLINE_HINT}")
    if isinstance(exc, GatedRepoError):
        return ZhloraError(
            f"The dataset {repo_id} on {endpoint} is gated: accept its terms on the website, then log in "
            "(`hf auth login`) or set HF_TOKEN. " + OFFLINE_HINT
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ZhloraError(
            f"The dataset repository {repo_id} was not found on {endpoint} (or it is private and no valid token "
            "was sent; set HF_TOKEN). " + OFFLINE_HINT
        )
    if isinstance(exc, RevisionNotFoundError):
        return ZhloraError(f"{endpoint} has no such revision of {repo_id}. " + OFFLINE_HINT)
    if isinstance(exc, RemoteEntryNotFoundError):
        return ZhloraError(
            f"{endpoint} has no file {filename} in {repo_id}: the upstream layout may have changed; the file "
            "names are in HUB_FILES in zhlora/data/hub.py. " + OFFLINE_HINT
        )
    if isinstance(exc, LocalEntryNotFoundError):
        return ZhloraError(f"Cannot reach {endpoint} to download {where} (no network?). {OFFLINE_HINT}")
    return ZhloraError(f"Downloading {where} from {endpoint} failed ({type(exc).__name__}: {exc}). {OFFLINE_HINT}")


def _probe_hub(repo_id: str, filename: str, revision: str, endpoint: str) -> None:
    """One metadata request without retries: fail in seconds when the hub cannot be reached.

    ``hf_hub_download`` retries a refused connection for about 25 s before giving up; this
    probe runs first for files that are not cached, so a machine without network gets the
    alternatives at once. HTTP errors (the hub answered) are left to ``hf_hub_download``.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(repo_id, filename, repo_type="dataset", revision=revision)
    try:
        get_hf_file_metadata(url, timeout=HUB_METADATA_TIMEOUT_S)
    except HfHubHTTPError:
        return
    except Exception as exc:  # connection refused, DNS failure, timeout, offline mode
        if constants.HF_HUB_OFFLINE:
            raise _friendly_hub_error(exc, repo_id, filename, endpoint) from None
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise ZhloraError(
            f"Cannot reach {endpoint} to download {repo_id}/{filename} ({type(exc).__name__}: {reason}). {OFFLINE_HINT}"
        ) from None


def fetch_from_hf(repo_id: str, roles: list[str] | None = None) -> list[FetchedFile]:
    """Download ``repo_id``'s files from ``HUB_FILES`` (all roles, or ``roles``) via the hub cache.

    The first file resolves ``main`` to a commit; the others are read at that same commit,
    so one source never mixes two versions. Cached files are reused (and used offline).
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    files = HUB_FILES[repo_id]
    roles = list(files) if roles is None else roles
    endpoint = constants.ENDPOINT
    revision = "main"
    fetched = []
    probed = False
    for role in roles:
        filename = files[role]
        if not probed and not isinstance(try_to_load_from_cache(repo_id, filename, revision=revision, repo_type="dataset"), str):
            _probe_hub(repo_id, filename, revision, endpoint)
            probed = True
        logger.info("downloading %s/%s from %s", repo_id, filename, endpoint)
        try:
            local_path = hf_hub_download(
                repo_id, filename, repo_type="dataset", revision=revision, etag_timeout=HUB_METADATA_TIMEOUT_S
            )
        except Exception as exc:  # network, HTTP and cache errors of several libraries: all reported alike
            raise _friendly_hub_error(exc, repo_id, filename, endpoint) from None
        commit = _commit_from_cache_path(local_path, filename)
        if commit:
            revision = commit
        fetched.append(FetchedFile(role=role, repo_path=filename, local_path=Path(local_path), commit=commit))
    return fetched


def fetch_from_modelscope(repo_id: str, roles: list[str] | None = None) -> list[FetchedFile]:
    """Download the same files from ModelScope (needs ``pip install zhlora[modelscope]``)."""
    try:
        from modelscope.hub.file_download import dataset_file_download
    except ImportError:
        raise ZhloraError(
            "--source modelscope needs the modelscope package: pip install 'zhlora[modelscope]' "
            "(or pip install modelscope). " + OFFLINE_HINT
        ) from None
    ms_repo = MODELSCOPE_REPOS[repo_id]
    files = HUB_FILES[repo_id]
    roles = list(files) if roles is None else roles
    fetched = []
    for role in roles:
        filename = files[role]
        logger.info("downloading %s/%s from ModelScope", ms_repo, filename)
        try:
            local_path = dataset_file_download(ms_repo, filename)
        except Exception as exc:  # modelscope raises many unrelated types; report them all the same way
            raise ZhloraError(
                f"Downloading {ms_repo}/{filename} from ModelScope failed ({type(exc).__name__}: {exc}). "
                "The ModelScope ids are in MODELSCOPE_REPOS in zhlora/data/hub.py. " + OFFLINE_HINT
            ) from None
        fetched.append(FetchedFile(role=role, repo_path=filename, local_path=Path(local_path), commit=None))
    return fetched
