"""Tiny random GGUF files written with gguf-py's ``GGUFWriter``, as llama.cpp lays them out, for import tests.

``write_tiny_gguf(path, arch, qtype)`` writes a 2-layer model of ``arch`` (llama, qwen2, qwen3, gemma2,
gemma3) whose
matrices are stored as ``qtype`` and whose norms and biases stay float32, with a small SentencePiece
(llama, gemma3) or byte-level BPE (qwen2) vocabulary. ``unpacked=True`` writes the same model with every
matrix replaced by gguf-py's own dequantization of those bytes, stored as float32: the reference an
import of the quantized file must reproduce exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 512, 2, 4, 2, 64
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]  # gemma's order; llama's ids are set from the list below
WORDS = ["▁the", "▁capital", "▁of", "▁France", "▁is", "▁Paris", "▁中国", "▁首都", "北京", "的", "。", "▁a", "▁b", "▁c"]


def _raw_k_blocks(rng: np.random.Generator, rows: int, cols: int, qtype) -> np.ndarray:
    """Random bytes of a K-quant tensor with small, finite float16 scales (gguf-py cannot quantize K-quants)."""
    import gguf

    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // block_elems, block_bytes), dtype=np.uint8)
    scale = np.full(len(blocks), 0.002, dtype=np.float16).view(np.uint8).reshape(-1, 2)
    if qtype.name == "Q6_K":  # d is the block's last two bytes
        blocks[:, -2:] = scale
    else:  # Q4_K, Q5_K, Q2_K, Q3_K: d (and dmin) lead the block
        blocks[:, 0:2] = scale
        blocks[:, 2:4] = scale
    return blocks.reshape(rows, -1)


def _matrix(rng: np.random.Generator, rows: int, cols: int, qtype, unpacked: bool):
    """``(array, raw_dtype)`` of one weight matrix stored as ``qtype`` (or its float32 dequantization)."""
    import gguf
    from gguf import GGMLQuantizationType as T

    if qtype in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
        data = _raw_k_blocks(rng, rows, cols, qtype)
    elif qtype == T.F32:
        data = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    else:
        data = gguf.quants.quantize((rng.standard_normal((rows, cols)) * 0.05).astype(np.float32), qtype)
    if unpacked:
        return gguf.quants.dequantize(data, qtype).astype(np.float32).reshape(rows, cols), T.F32
    return data, qtype


def write_tiny_gguf(path: Path, arch: str, qtype, *, unpacked: bool = False, seed: int = 0) -> Path:
    """A 2-layer ``arch`` model with its matrices in ``qtype``; see the module docstring."""
    import gguf
    from gguf import GGMLQuantizationType as T

    rng = np.random.default_rng(seed)
    head_dim = 128 if arch == "qwen3" else HEAD_DIM  # transformers reads no key_length for qwen3: its default 128
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(512)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(int(qtype) if qtype != T.F32 else 0)
    if arch in ("gemma2", "gemma3", "qwen3"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if arch in ("gemma2", "gemma3"):
        writer.add_sliding_window(64)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(50.0)
        writer.add_final_logit_softcapping(30.0)
    if arch in ("qwen2", "qwen3"):
        tokens = [*(chr(c) for c in range(33, 127)), "Ġ", "Ġt", "he", "Ġthe", "Ġo", "Ġof",
                  "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * (len(tokens) - 3) + [3, 3, 3])
        writer.add_token_merges(["Ġ t", "h e", "Ġt he", "Ġ o", "Ġo f"])
        writer.add_eos_token_id(len(tokens) - 3)
        writer.add_bos_token_id(len(tokens) - 3)
    else:
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        tokens = [*SPECIAL, *byte_tokens, *WORDS]
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * len(SPECIAL) + [0.0] * 256 + [-float(i) for i in range(len(WORDS))])
        writer.add_token_types([3, 3, 3, 2] + [6] * 256 + [1] * len(WORDS))
        writer.add_pad_token_id(0)
        writer.add_eos_token_id(1)
        writer.add_bos_token_id(2)
        writer.add_unk_token_id(3)
    vocab = len(tokens)

    def add(name: str, rows: int, cols: int) -> None:
        data, raw_dtype = _matrix(rng, rows, cols, qtype, unpacked)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)

    def add_vector(name: str, size: int, value: float | None = None) -> None:
        data = np.full(size, value, dtype=np.float32) if value is not None else (rng.standard_normal(size) * 0.05).astype(np.float32)
        writer.add_tensor(name, data)

    q_dim, kv_dim = HEADS * head_dim, KV_HEADS * head_dim
    add("token_embd.weight", vocab, HIDDEN)
    for layer in range(LAYERS):
        prefix = f"blk.{layer}."
        add_vector(prefix + "attn_norm.weight", HIDDEN, 1.0)
        add(prefix + "attn_q.weight", q_dim, HIDDEN)
        add(prefix + "attn_k.weight", kv_dim, HIDDEN)
        add(prefix + "attn_v.weight", kv_dim, HIDDEN)
        add(prefix + "attn_output.weight", HIDDEN, q_dim)
        add_vector(prefix + "ffn_norm.weight", HIDDEN, 1.0)
        add(prefix + "ffn_gate.weight", FFN, HIDDEN)
        add(prefix + "ffn_up.weight", FFN, HIDDEN)
        add(prefix + "ffn_down.weight", HIDDEN, FFN)
        if arch == "qwen2":
            for name, size in (("attn_q.bias", q_dim), ("attn_k.bias", kv_dim), ("attn_v.bias", kv_dim)):
                add_vector(prefix + name, size)
        if arch in ("gemma3", "qwen3"):  # QK-norm
            add_vector(prefix + "attn_q_norm.weight", head_dim, 1.0)
            add_vector(prefix + "attn_k_norm.weight", head_dim, 1.0)
        if arch in ("gemma2", "gemma3"):
            add_vector(prefix + "post_attention_norm.weight", HIDDEN, 1.0)
            add_vector(prefix + "post_ffw_norm.weight", HIDDEN, 1.0)
    add_vector("output_norm.weight", HIDDEN, 1.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
