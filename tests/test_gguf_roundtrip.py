"""GGUF import for every ggml type gguf-py unpacks, on tiny files of five architectures, and damaged files.

Each case writes the same tiny model twice with gguf-py's ``GGUFWriter`` (``tests/gguf_files.py``):
once with its matrices in a quantized type, once with gguf-py's own dequantization of those bytes as
float32. Importing both must give identical weights: the import unpacks every type exactly as
llama.cpp's reader does, whether transformers unpacks it (Q8_0, Q4_K, ...) or gguf-py does (Q5_0,
Q5_1, ...), with transformers' names and the Llama q/k permutation applied alike.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf_files import write_tiny_gguf

from zhlora.cli import run_command
from zhlora.errors import ZhloraError
from zhlora.models.download import download_model
from zhlora.models.gguf import import_gguf
from zhlora.models.gguf_file import open_gguf, types_to_unpack
from zhlora.models.loading import load_model

CASES = [("llama", q) for q in (T.F16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q4_K, T.Q5_K, T.Q6_K)] + [
    (arch, q) for arch in ("qwen2", "gemma3") for q in (T.Q5_0, T.Q4_K, T.Q8_0)] + [
    ("qwen3", T.Q5_0), ("gemma2", T.Q8_0)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in load_model(folder, torch_dtype="float32").state_dict().items()}


@pytest.mark.parametrize(("arch", "qtype"), CASES, ids=[f"{a}-{q.name}" for a, q in CASES])
def test_a_quantized_file_imports_to_gguf_py_s_own_dequantization(arch, qtype, tmp_path):
    quantized = write_tiny_gguf(tmp_path / "q.gguf", arch, qtype)
    reference = write_tiny_gguf(tmp_path / "f32.gguf", arch, qtype, unpacked=True)
    manifest = import_gguf(quantized, tmp_path / "q", model_name_or_path="q")
    import_gguf(reference, tmp_path / "f32", model_name_or_path="f32")
    assert manifest["gguf"]["architecture"] == arch and manifest["gguf"]["tensor_types"][qtype.name] == 15
    by_gguf_py = qtype in (T.Q5_0, T.Q5_1)  # the types transformers' own reader lacks
    assert manifest["gguf"]["unpacked_by_gguf_py"] == ({qtype.name: 15} if by_gguf_py else {})
    ours, expected = _weights(tmp_path / "q"), _weights(tmp_path / "f32")
    assert ours.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(ours[name], expected[name], rtol=0, atol=0, msg=name)
    assert any(value.abs().sum() > 0 for name, value in ours.items() if "q_proj" in name)


def test_transformers_types_are_not_rewritten(tmp_path):
    assert types_to_unpack(open_gguf(write_tiny_gguf(tmp_path / "a.gguf", "llama", T.Q4_K))) == {}
    assert types_to_unpack(open_gguf(write_tiny_gguf(tmp_path / "b.gguf", "llama", T.Q5_1))) == {"Q5_1": 15}


# ---------------------------------------------------------------------------------------
# Damaged files: one paragraph naming the file and where it ends; no base_model left behind
# ---------------------------------------------------------------------------------------
def _tensor_type_offset(data: bytes, name: str) -> int:
    """Byte offset of the ggml type id in the tensor table entry of ``name``."""
    start = data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, start)
    return start + 4 + 8 * n_dims


@pytest.mark.parametrize("damage", ["header", "metadata", "tensor_data", "magic", "unknown_type"])
def test_a_damaged_gguf_file_is_one_paragraph_and_leaves_nothing(damage, tmp_path, capsys):
    path = write_tiny_gguf(tmp_path / "model.gguf", "llama", T.Q8_0)
    data = bytearray(path.read_bytes())
    if damage == "header":
        data = data[:12]
    elif damage == "metadata":
        data = data[:600]
    elif damage == "tensor_data":
        data = data[:-1000]
    elif damage == "magic":
        data[:4] = b"GGML"
    else:
        offset = _tensor_type_offset(bytes(data), "blk.0.attn_q.weight")
        data[offset:offset + 4] = struct.pack("<I", 99)
    path.write_bytes(bytes(data))
    expected = {"header": "is truncated or damaged inside its header",
                "metadata": "is truncated or damaged inside its metadata",
                "tensor_data": "inside its tensor data",
                "magic": "is not a GGUF file: it starts with b'GGML'",
                "unknown_type": "ggml type"}[damage]
    assert run_command("download-model", ["--model_name_or_path", str(path), "--output_dir", str(tmp_path / "models"),
                                          "--num_threads", "1"]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "Traceback" not in err, err
    assert not (tmp_path / "models" / "base_model").exists()


def test_an_unknown_architecture_names_the_supported_ones(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", "llama", T.Q8_0)
    data = path.read_bytes().replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00zzzzz", 1)
    path.write_bytes(data)
    with pytest.raises(ZhloraError, match=r"holds a zzzzz model; transformers' GGUF loader supports .*gemma3.*llama"):
        download_model(str(path), tmp_path / "models")
    assert not (tmp_path / "models" / "base_model").exists()
