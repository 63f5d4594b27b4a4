"""Import a ``.gguf`` file (llama.cpp's format) into a normal ``base_model`` folder.

transformers reads GGUF files (``from_pretrained(folder, gguf_file=name)``) and can unpack
their quantized blocks into float tensors, but the model it returns carries a GGUF
``quantization_config`` and ``save_pretrained`` refuses it (the quantizer is not
serializable). So the import loads the file fully dequantized, builds a *plain* model of the
same architecture from the config without that entry, copies the state dict over, and saves
that: float32 safetensors (the dequantized values exactly, ~4 bytes per parameter), the
tokenizer (with the chat template the file carries), and ``zhlora_manifest.json`` recording
the source file, its sha256 and its quantization type. Everything downstream then loads the
folder like any downloaded model.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zhlora.errors import ZhloraError
from zhlora.io_utils import sha256_file
from zhlora.models.gguf_file import open_gguf, types_to_unpack, write_loadable_copy

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"


def is_gguf_path(name: str) -> bool:
    """True when ``name`` names a ``.gguf`` file (existing or not): the import applies."""
    return str(name).lower().endswith(GGUF_SUFFIX)


def read_gguf_header(path: Path) -> dict[str, Any]:
    """Architecture and quantization of a checked GGUF file (see :func:`zhlora.models.gguf_file.open_gguf`).

    Returns ``{architecture, name, file_type, tensor_types: {ggml type: count}}``; ``file_type``
    is llama.cpp's name for the file's dominant quantization (``MOSTLY_Q4_1``), or None when
    the file does not say.
    """
    return open_gguf(path).header()


def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values transformers can load (legacy and new loader)."""
    from transformers.integrations.gguf import GGUF_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) | set(GGUF_ARCHS))


def _load_dequantized(path: Path, architecture: str, named: Path | None = None):
    """transformers' own GGUF load, every weight unpacked to float32; the model and tokenizer.

    The config is parsed once and handed to the model load: each parse of the metadata by
    transformers' legacy loader costs several seconds. ``named``: the user's file, for messages
    (``path`` may be the copy with unpacked tensors).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, config=config, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=name, dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:  # RuntimeError: tensors that do not fit
        raise ZhloraError(
            f"transformers cannot import {named or path} (architecture {architecture}): {str(exc).splitlines()[0]} "
            "Use the model's safetensors release from the hub instead."
        ) from None
    return model, tokenizer


def plain_model_from(loaded):
    """A model of ``loaded``'s class without the GGUF ``quantization_config``, holding its weights.

    ``save_pretrained`` refuses a model that still carries the GGUF quantizer, so the weights
    move to a fresh model built from the same config minus that entry (strict: every tensor
    must find its place).
    """
    import copy

    import torch

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.eval()
    return plain


def import_gguf(path: str | Path, output_dir: str | Path, *, model_name_or_path: str, origin: dict | None = None,
                licence: dict | None = None, chat_template: str | None = None) -> dict:
    """Write the model of the GGUF file ``path`` into the new folder ``output_dir``; return its manifest.

    ``model_name_or_path`` is what the manifest records as the model's name (the file's path,
    or a built-in name such as ``smollm2-135m``); ``origin`` says how the file was obtained
    (e.g. the PyPI wheel). The manifest's ``gguf`` section holds the file name, its sha256 and
    size, its architecture and quantization (``file_type`` and the count of tensors per
    type), the types gguf-py unpacked, and where the chat template came from; ``licence`` (the
    model's terms) is recorded beside it. ``chat_template`` is used when the file carries none.
    Memory: about 8 bytes per parameter while converting (1.1 GB for 135M).
    """
    from zhlora.models.manifest import write_manifest

    path, output_dir = Path(path), Path(output_dir)
    if not path.is_file():
        raise ZhloraError(f"--model_name_or_path {path}: no such .gguf file.")
    gguf_file = open_gguf(path)
    header = gguf_file.header()
    if header["architecture"] not in supported_architectures():
        raise ZhloraError(
            f"{path} holds a {header['architecture']} model; transformers' GGUF loader supports "
            f"{', '.join(supported_architectures())}. Use the model's safetensors release from the hub instead."
        )
    unpack = types_to_unpack(gguf_file)
    logger.info("Importing %s (%s, %s): dequantizing to float32", path, header["architecture"], header["file_type"])
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".gguf-unpacked-", dir=output_dir.parent))
    try:
        source = path
        if unpack:  # types transformers' reader lacks: gguf-py unpacks them into a copy transformers reads
            logger.info("Unpacking %s tensors with gguf-py (transformers' GGUF reader lacks these types)",
                        ", ".join(f"{count} {name}" for name, count in unpack.items()))
            source = write_loadable_copy(gguf_file, scratch / path.name)
        del gguf_file
        loaded, tokenizer = _load_dequantized(source, header["architecture"], named=path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model = plain_model_from(loaded)
    del loaded
    template_source = "the GGUF file" if tokenizer.chat_template else None
    if not tokenizer.chat_template and chat_template:
        tokenizer.chat_template, template_source = chat_template, "zhlora's built-in template for this model"
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return write_manifest(
        output_dir, source="gguf", model_name_or_path=model_name_or_path, revision=None, revision_requested=None,
        dtype="float32",
        gguf={"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, **header,
              "unpacked_by_gguf_py": unpack, "chat_template": template_source,
              "origin": origin or {"kind": "file", "path": str(path.resolve())}},
        **({"licence": licence} if licence else {}),
    )
