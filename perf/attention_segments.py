#!/usr/bin/env python
"""One SmolLM2-shaped attention layer over a packed sequence: block-diagonal mask vs each row alone.

    OMP_NUM_THREADS=1 python perf/attention_segments.py

9 query / 3 key-value heads, head_dim 64, 1,024 tokens in five rows (300/250/200/150/124),
forward + backward, one thread: sdpa with the boolean block-diagonal causal mask (what zhlora's
``sdpa`` layout passes; key/value heads repeated as transformers does with a mask), each row's
causal sdpa alone (repeated heads), and each row alone with GQA inside the kernel (what
:mod:`zhlora.training.segment_attention` runs). Prints the largest output/gradient differences,
then milliseconds per layer for three interleaved rounds with the 1-minute load.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from harness import load_average  # noqa: E402

LENGTHS = [300, 250, 200, 150, 124]
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = sum(LENGTHS)
    segment = torch.cat([torch.full((n,), i) for i, n in enumerate(LENGTHS)])
    mask = ((segment[:, None] == segment[None, :]) & torch.ones(tokens, tokens, dtype=torch.bool).tril())[None, None]

    def repeat(x):
        return x.repeat_interleave(HEADS // KV_HEADS, dim=1)

    def masked(q, k, v):
        return F.scaled_dot_product_attention(q, repeat(k), repeat(v), attn_mask=mask)

    def per_row(q, k, v, gqa=False):
        outputs, start = [], 0
        for n in LENGTHS:
            s = slice(start, start + n)
            kk, vv = (k[:, :, s], v[:, :, s]) if gqa else (repeat(k[:, :, s]), repeat(v[:, :, s]))
            outputs.append(F.scaled_dot_product_attention(q[:, :, s], kk, vv, is_causal=True, enable_gqa=gqa))
            start += n
        return torch.cat(outputs, 2)

    q = torch.randn(1, HEADS, tokens, HEAD_DIM, requires_grad=True)
    k = torch.randn(1, KV_HEADS, tokens, HEAD_DIM, requires_grad=True)
    v = torch.randn(1, KV_HEADS, tokens, HEAD_DIM, requires_grad=True)
    upstream = torch.randn(1, HEADS, tokens, HEAD_DIM)
    variants = {"mask": masked, "rows": per_row, "rows_gqa": lambda q, k, v: per_row(q, k, v, gqa=True)}

    results = {}
    for name, fn in variants.items():
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v)
        out.backward(upstream)
        results[name] = [out.detach(), *(t.grad.clone() for t in (q, k, v))]
    for name in ("rows", "rows_gqa"):
        print(name, "max |diff| output, dq, dk, dv:",
              [float((a - b).abs().max()) for a, b in zip(results[name], results["mask"])])
    for index in range(3):
        for name, fn in variants.items():
            started = time.perf_counter()
            for _ in range(5):
                for t in (q, k, v):
                    t.grad = None
                fn(q, k, v).backward(upstream)
            print(index, name, f"{(time.perf_counter() - started) / 5 * 1000:.1f} ms per layer (forward + backward)",
                  f"load {load_average():.2f}", flush=True)


if __name__ == "__main__":
    main()
