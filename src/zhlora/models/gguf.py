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
from collections import Counter
from pathlib import Path
from typing import Any

from zhlora.errors import ZhloraError
from zhlora.io_utils import sha256_file

logger = logging.getLogger(__name__)

GGUF_SUFFIX = ".gguf"


def is_gguf_path(name: str) -> bool:
    """True when ``name`` names a ``.gguf`` file (existing or not): the import applies."""
    return str(name).lower().endswith(GGUF_SUFFIX)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ZhloraError(
            "Importing a .gguf file needs the `gguf` package (llama.cpp's reader, a zhlora dependency): "
            "pip install gguf"
        ) from None


def read_gguf_header(path: Path) -> dict[str, Any]:
    """Architecture and quantization of a GGUF file, from its metadata (no tensor is unpacked).

    Returns ``{architecture, name, file_type, tensor_types: {ggml type: count}}``; ``file_type``
    is llama.cpp's name for the file's dominant quantization (``MOSTLY_Q4_1``), or None when
    the file does not say. Uses transformers' struct-based reader (well under a second);
    the ``gguf`` package's reader takes ~8 s on a 49k-token vocabulary.
    """
    _require_gguf()
    from gguf import GGMLQuantizationType, LlamaFileType
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    try:
        metadata, _ = read_gguf_metadata(str(path))
        header = GgufHeader.from_file(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise ZhloraError(f"{path} is not a readable GGUF model file ({type(exc).__name__}: {exc}).") from None

    def type_name(enum, value) -> str:
        try:
            return enum(int(value)).name
        except ValueError:
            return str(value)

    file_type = metadata.get("general.file_type")
    return {
        "architecture": str(header.architecture),
        "name": metadata.get("general.name"),
        "file_type": None if file_type is None else type_name(LlamaFileType, file_type),
        "tensor_types": dict(sorted(Counter(type_name(GGMLQuantizationType, t.ggml_type) for t in header.tensors).items())),
    }


def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values transformers can load (legacy and new loader)."""
    from transformers.integrations.gguf import GGUF_ARCHS
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) | set(GGUF_ARCHS))


def _load_dequantized(path: Path, architecture: str):
    """transformers' own GGUF load, every weight unpacked to float32; the model and tokenizer.

    The config is parsed once and handed to the model load: each parse of the metadata by
    transformers' legacy loader costs several seconds.
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
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ZhloraError(
            f"transformers cannot import {path} (architecture {architecture}): {str(exc).splitlines()[0]} "
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


def import_gguf(path: str | Path, output_dir: str | Path, *, model_name_or_path: str, origin: dict | None = None) -> dict:
    """Write the model of the GGUF file ``path`` into the new folder ``output_dir``; return its manifest.

    ``model_name_or_path`` is what the manifest records as the model's name (the file's path,
    or a built-in name such as ``smollm2-135m``); ``origin`` says how the file was obtained
    (e.g. the PyPI wheel). The manifest's ``gguf`` section holds the file name, its sha256 and
    size, its architecture and quantization (``file_type`` and the count of tensors per
    type). Memory: about 8 bytes per parameter while converting (1.1 GB for 135M).
    """
    from zhlora.models.manifest import write_manifest

    path, output_dir = Path(path), Path(output_dir)
    if not path.is_file():
        raise ZhloraError(f"--model_name_or_path {path}: no such .gguf file.")
    header = read_gguf_header(path)
    if header["architecture"] not in supported_architectures():
        raise ZhloraError(
            f"{path} holds a {header['architecture']} model; transformers' GGUF loader supports "
            f"{', '.join(supported_architectures())}. Use the model's safetensors release from the hub instead."
        )
    logger.info("Importing %s (%s, %s): dequantizing to float32", path, header["architecture"], header["file_type"])
    loaded, tokenizer = _load_dequantized(path, header["architecture"])
    model = plain_model_from(loaded)
    del loaded
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return write_manifest(
        output_dir, source="gguf", model_name_or_path=model_name_or_path, revision=None, revision_requested=None,
        dtype="float32",
        gguf={"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size, **header,
              "origin": origin or {"kind": "file", "path": str(path.resolve())}},
    )
