"""Packed-row attention on CPUs that computes each row's causal attention alone.

With the block-diagonal mask (``sdpa`` layout) a packed sequence of ``T`` tokens costs a full
``T x T`` attention per layer: PyTorch's CPU kernels cannot skip the masked pairs of an arbitrary
mask, so a 1,024-token bin of five ~200-token rows computes ~5x the pairs it keeps. This module
registers an attention implementation, :data:`SEGMENTS`, that takes the micro-batch flattened
into one row (as flash-attention's varlen path does) plus the row boundaries
(``cu_seq_lens_q``), and runs ``scaled_dot_product_attention`` with ``is_causal=True`` on each
row's slice: the same numbers (softmax over the same keys), only the kept pairs computed. A
sliding-window layer (Gemma's local attention, ``sliding_window`` in the layer's kwargs) gets a
banded causal mask on each row longer than its window, as transformers builds for one row.

Without row boundaries (evaluation, generation, monitoring probes on the training model) it is
plain sdpa with sdpa's masks, so switching a model to it changes nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SEGMENTS = "zhlora_segments"  # the attn_implementation name registered with transformers


def segment_attention_forward(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None, **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; ``query`` ``[1, heads, tokens, head_dim]``.

    ``kwargs["cu_seq_lens_q"]`` (int tensor ``[rows + 1]``: 0, end of row 1, ..., tokens) marks the
    rows; returns ``[1, tokens, heads, head_dim]`` as transformers' attention functions do.
    """
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"segment attention takes one flattened row, got a batch of {query.shape[0]}")
    dropout = dropout if module.training else 0.0
    gqa = key.shape[1] != query.shape[1]
    window = kwargs.get("sliding_window")  # a local layer (Gemma): position i sees j when i - j < window
    edges = bounds.tolist()
    outputs = []
    for start, end in zip(edges[:-1], edges[1:]):
        if end <= start:
            continue
        band = None if not window or end - start <= window else sliding_causal_mask(end - start, window, query.device)
        outputs.append(F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], attn_mask=band,
            dropout_p=dropout, scale=scaling, is_causal=band is None, enable_gqa=gqa,
        ))
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def sliding_causal_mask(length: int, window: int, device) -> torch.Tensor:
    """``[length, length]`` boolean: ``j <= i`` and ``i - j < window`` (True = attend), transformers' sliding rule."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return causal & ~torch.ones_like(causal).tril(-window)


def row_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """``cu_seq_lens``-style row boundaries of one flattened row whose ``position_ids`` restart at 0 per row."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    return torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)


def register() -> None:
    """Make :data:`SEGMENTS` a valid ``attn_implementation`` (sdpa's mask builder for unflattened inputs)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(SEGMENTS, segment_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENTS, sdpa_mask)


def use_segment_attention(model: torch.nn.Module) -> None:
    """Switch ``model`` (a PEFT or transformers model) from sdpa to :data:`SEGMENTS`, in place."""
    register()
    model.config._attn_implementation = SEGMENTS
