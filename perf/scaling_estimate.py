#!/usr/bin/env python
"""Where zhlora's training speed-up over LLaMA-Factory neat_packing comes from, and how it scales:
an operation count (an estimate, not a measurement).

    python perf/scaling_estimate.py --rows 80

For the same rows packed the same way, one optimizer pass of LoRA training costs, in multiply-adds
(x2 for FLOPs), per token of a packed sequence:

- the frozen linear layers: forward + the backward to the inputs, ``2 N_body`` (LoRA's own
  weights are negligible); the same for both tools;
- the output layer: ``2 d V`` per position whose logits are computed. LLaMA-Factory (HF models
  with labels) computes every position; zhlora only the scored (response) positions;
- attention: ``6 n_layers d k`` per query token with ``k`` keys (QK and AV forward, about twice
  that backward). With a block-diagonal mask over a packed sequence, ``sdpa`` on a CPU computes
  every (query, key) pair of the sequence, ``k`` = the sequence's length (LF neat_packing);
  zhlora's per-row attention computes the causal pairs of each row alone, ``k`` ≈ half the row.

The script tokenizes the rows with zhlora's preprocess (BELLE school_math from ../shared/data,
alpaca template, the Llama-2 tokenizer for the Llama shapes, cutoff 1,024), packs them as
zhlora does, and prints the estimated ratio for three shapes: the 35M random Llama of
``peer_llamafactory.py --model random``, SmolLM2-135M and Llama-2-7B. The first two can be held
against the measured ratios (perf/README.md) to see how far an operation count explains them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import SHARED, need_shared_data, write_summary  # noqa: E402

# name -> (hidden size d, layers, intermediate size, vocabulary V); token counts are the Llama-2 tokenizer's for all
SHAPES = {
    "random-llama-35M": (384, 6, 1024, 32000),
    "smollm2-135M": (576, 30, 1536, 49152),
    "llama-2-7b": (4096, 32, 11008, 32000),
}
CUTOFF = 1024


def body_weights(d: int, layers: int, intermediate: int, kv_fraction: float = 1.0) -> float:
    """Weights of the attention and MLP projections (embeddings and the output layer excluded)."""
    attention = d * d * (2 + 2 * kv_fraction)  # q, o full; k, v scaled by grouped-query sharing
    return layers * (attention + 3 * d * intermediate)


def costs(shape: tuple[int, int, int, int], lengths: list[int], scored: list[int], bins: list[list[int]],
          kv_fraction: float = 1.0) -> dict:
    """Multiply-adds of one pass over the rows for LF neat_packing and for zhlora (see the module docstring)."""
    d, layers, intermediate, vocab = shape
    tokens = sum(lengths)
    linear = 2 * body_weights(d, layers, intermediate, kv_fraction) * tokens
    head_all, head_scored = 2 * d * vocab * tokens, 2 * d * vocab * sum(scored)
    masked_pairs = sum(sum(lengths[i] for i in members) ** 2 for members in bins)  # every pair of each sequence
    row_pairs = sum(n * (n + 1) / 2 for n in lengths)  # causal pairs within each row
    attention_full, attention_rows = 6 * layers * d * masked_pairs, 6 * layers * d * row_pairs
    lf = linear + head_all + attention_full
    zhlora = linear + head_scored + attention_rows
    return {"ratio_estimate": round(lf / zhlora, 3),
            "share_of_lf_cost": {"linear": round(linear / lf, 3), "output_layer": round(head_all / lf, 3),
                                 "attention": round(attention_full / lf, 3)},
            "from_scored_logits_only": round(lf / (linear + head_scored + attention_full), 3),
            "from_row_attention_only": round(lf / (linear + head_all + attention_rows), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=80, help="BELLE school_math rows (the peer benchmark's sample).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not need_shared_data():
        return 2
    from datasets import load_from_disk

    from zhlora.data.sources import download_data
    from zhlora.training.packing import pack_rows

    with tempfile.TemporaryDirectory(prefix="zhlora_scaling_") as tmp:
        data, processed = Path(tmp) / "data", Path(tmp) / "processed"
        download_data(data, source=f"local:{SHARED}", datasets=["belle"], belle_dataset="BelleGroup/school_math_0.25M",
                      belle_sample_size=args.rows, belle_heldout_size=0)
        subprocess.run([sys.executable, "-m", "zhlora", "preprocess", "--data_dir", str(data), "--output_dir",
                        str(processed), "--model_name_or_path", str(SHARED / "tokenizers" / "llama2"),
                        "--max_seq_length", str(CUTOFF), "--belle_heldout_size", "0"], check=True, capture_output=True)
        rows = load_from_disk(str(processed / "train_dataset"))
        lengths = [len(ids) for ids in rows["input_ids"]]
        scored = [sum(1 for label in labels if label != -100) for labels in rows["labels"]]
    bins = pack_rows(lengths, CUTOFF)
    summary = {
        "rows": len(lengths), "tokens": sum(lengths), "scored_tokens": sum(scored),
        "scored_share": round(sum(scored) / sum(lengths), 3), "packed_sequences": len(bins),
        "mean_row_tokens": round(sum(lengths) / len(lengths), 1),
        "estimates (LF neat_packing cost / zhlora cost, same rows)": {
            name: costs(shape, lengths, scored, bins, kv_fraction=(3 / 9 if name == "smollm2-135M" else 1.0))
            for name, shape in SHAPES.items()},
        "note": "operation counts only: memory traffic, kernel efficiency and framework overhead are not modelled",
    }
    write_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
