"""Read and check a ``.gguf`` file with gguf-py (llama.cpp's own reader), and make it loadable by transformers.

transformers 5 reads GGUF with its own block dequantizer, whose list of ggml types is narrower
than what gguf-py unpacks: Q5_0, Q5_1, TQ1_0, TQ2_0, MXFP4 and NVFP4 are missing, and Q4_K_M files
of small models routinely hold Q5_0 and Q8_0 tensors (rows whose length is not a multiple of the
K-quants' 256). For such a file :func:`loadable_copy` writes a copy in which exactly those tensors
are unpacked by ``gguf.quants.dequantize`` into float32 (exact: every ggml type is a float16 scale
times small integers) and every other tensor and metadata entry is copied byte for byte; transformers
then does what it does well on that copy (config, tokenizer, tensor names, the Llama q/k permutation).

A damaged file is a :class:`~zhlora.errors.ZhloraError` naming the file and where it ends: a wrong
magic, a file cut inside its 24-byte header, inside its metadata, or inside its tensor data.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhlora.errors import ZhloraError

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
HEADER_BYTES = 24  # magic, version (uint32), tensor count and metadata count (uint64 each)
# Metadata keys the writer sets itself (GGUFWriter writes the architecture; the rest describe the file).
WRITER_KEYS = ("general.architecture", "GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")
_REDOWNLOAD = "Download or copy the file again (its sha256 should match the publisher's), then rerun."


@dataclass
class GgufFile:
    """A checked GGUF file: gguf-py's reader over it, and what the manifest records of it."""

    path: Path
    reader: Any  # gguf.GGUFReader

    @property
    def architecture(self) -> str:
        return str(self.reader.fields["general.architecture"].contents())

    def metadata(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def tensor_types(self) -> dict[str, int]:
        """``{ggml type name: tensor count}``, sorted by name."""
        return dict(sorted(Counter(tensor.tensor_type.name for tensor in self.reader.tensors).items()))

    def header(self) -> dict[str, Any]:
        """Architecture, name, llama.cpp's file type (``MOSTLY_Q4_K_M``) and the tensor count per ggml type."""
        from gguf import LlamaFileType

        file_type = self.metadata("general.file_type")
        try:
            file_type_name = None if file_type is None else LlamaFileType(int(file_type)).name
        except ValueError:
            file_type_name = str(file_type)
        return {"architecture": self.architecture, "name": self.metadata("general.name"), "file_type": file_type_name,
                "tensor_types": self.tensor_types()}


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ZhloraError(
            "Importing a .gguf file needs the `gguf` package (llama.cpp's reader, a zhlora dependency): "
            "pip install gguf"
        ) from None


def _where_truncated(path: Path, size: int) -> str:
    """``"header"``, ``"metadata"`` or ``"tensor data"``: the part of the file that a failed read ran off."""
    if size < HEADER_BYTES:
        return "header"
    try:
        from transformers.integrations.gguf.reader import read_gguf_metadata

        read_gguf_metadata(str(path))  # the metadata only, struct by struct: fails where it is cut
    except ImportError:
        return "metadata or tensor data"
    except (struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError, OverflowError):
        return "metadata"
    return "tensor data"


def open_gguf(path: str | os.PathLike) -> GgufFile:
    """Open and check ``path``: the magic, then gguf-py's parse of metadata and tensor table, then the data's extent.

    Raises a ZhloraError naming the file for a wrong magic, a truncated or damaged file (saying
    where it ends), and tensors whose ggml type this gguf-py does not know.
    """
    _require_gguf()
    from gguf import GGUFReader

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(HEADER_BYTES)
    if start[:4] != GGUF_MAGIC:
        raise ZhloraError(
            f"{path} is not a GGUF file: it starts with {start[:4]!r}, not {GGUF_MAGIC!r}. Pass a llama.cpp .gguf "
            "model file, or a Hugging Face model folder or hub id.")
    try:
        reader = GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError, OverflowError) as exc:
        part = _where_truncated(path, size)
        if "ggml" in str(exc).lower() and "type" in str(exc).lower() and part == "tensor data":
            raise ZhloraError(
                f"{path} holds a tensor of a ggml type this gguf package does not know ({exc}). Upgrade it "
                "(pip install -U gguf), or convert the file to a common type (Q8_0, Q4_K) with llama.cpp.") from None
        raise ZhloraError(
            f"{path} is truncated or damaged inside its {part} ({size:,} bytes; {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}). {_REDOWNLOAD}") from None
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ZhloraError(
                f"{path} is truncated inside its tensor data: tensor {tensor.name} ends at byte {end:,}, the file "
                f"has {size:,}. {_REDOWNLOAD}")
    if "general.architecture" not in reader.fields:
        raise ZhloraError(f"{path} has no general.architecture entry, so its model cannot be known. {_REDOWNLOAD}")
    return GgufFile(path, reader)


def transformers_ggml_types() -> set[int] | None:
    """The ggml type ids transformers' GGUF reader unpacks itself; None when it hands every type to gguf-py."""
    try:
        from transformers.integrations.gguf.dequant import GGML_BLOCK
        from transformers.integrations.gguf.reader import _TORCH_DTYPE
    except ImportError:  # transformers before its own dequantizer: it calls gguf-py for every type
        return None
    return set(GGML_BLOCK) | set(_TORCH_DTYPE)


def types_to_unpack(gguf_file: GgufFile) -> dict[str, int]:
    """``{ggml type name: tensor count}`` of the tensors transformers cannot read, which the copy unpacks."""
    readable = transformers_ggml_types()
    if readable is None:
        return {}
    counts = Counter(t.tensor_type.name for t in gguf_file.reader.tensors if int(t.tensor_type) not in readable)
    return dict(sorted(counts.items()))


def write_loadable_copy(gguf_file: GgufFile, target: Path, unpack: set[str] | None = None) -> Path:
    """Write ``gguf_file`` to ``target`` with the tensors transformers cannot read unpacked to float32.

    ``unpack``: the ggml type names to unpack instead (a test unpacks a type both readers know, to
    compare them). Metadata entries keep their value types; other tensors keep their bytes and ggml type.
    """
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, quants

    if unpack is None:
        unpack = set(types_to_unpack(gguf_file))
    reader = gguf_file.reader
    writer = GGUFWriter(str(target), gguf_file.architecture)
    alignment = reader.fields.get("general.alignment")
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    for key, field in reader.fields.items():
        if key in WRITER_KEYS:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in unpack:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        else:
            values = quants.dequantize(tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, values.astype("float32"), raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
