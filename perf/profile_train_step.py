#!/usr/bin/env python
"""Where one zhlora LoRA training step's time goes, and the A/B of its CPU attention layouts.

    python perf/profile_train_step.py --model_dir /tmp/smol/base_model --rounds 3

One thread, float32, the model's LoRA exactly as ``zhlora train`` builds it (r 16, alpha 32,
dropout 0.05, all linear layers, AdamW 2e-4), one packed 1,024-token bin of real BELLE
``school_math`` rows (tokenized by ``zhlora preprocess`` with the model's tokenizer) per step.
Each step is timed in four phases (collation, forward incl. loss, backward, clip + optimizer)
and one step per layout is run under ``torch.profiler``; its operators' self times are grouped
into: attention (sdpa kernels, forward and backward), matmuls split by their shapes into the
output layer (a dimension equal to the vocabulary), LoRA (a dimension equal to the rank) and
the frozen base linears, cross-entropy (log-softmax + NLL), and everything else (norms, RoPE,
SiLU, dropout, copies, adds). Layouts: ``sdpa`` (the block-diagonal boolean mask, every
masked pair computed) and ``segments`` (each row's causal attention alone,
:mod:`zhlora.training.segment_attention`); timed rounds alternate between them, with the
1-minute load average per step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from harness import load_average  # noqa: E402

CATEGORIES = ("attention", "output layer matmul", "cross-entropy", "LoRA matmuls", "base matmuls", "other ops")


def packed_bin(model_dir: Path, work: Path, rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The fullest 1,024-token bin of the first ``rows`` BELLE school_math rows, tokenized by zhlora."""
    import subprocess

    import peer_llamafactory

    from zhlora.training.dataset import load_token_rows
    from zhlora.training.packing import pack_rows

    data, _ = peer_llamafactory.prepare_rows(work, rows)
    processed = work / "processed"
    subprocess.run([sys.executable, "-m", "zhlora", "preprocess", "--data_dir", str(data), "--output_dir", str(processed),
                    "--model_name_or_path", str(model_dir), "--max_seq_length", "1024", "--belle_heldout_size", "0"],
                   check=True, capture_output=True)
    token_rows = load_token_rows(processed / "train_dataset")
    bins = pack_rows(token_rows.lengths, 1024)
    fullest = max(bins, key=lambda b: sum(int(token_rows.lengths[i]) for i in b))
    return [token_rows.row(i) for i in fullest]


def build(model_dir: Path):
    from zhlora.models.loading import load_model
    from zhlora.training.lora import apply_lora, build_lora_config

    torch.manual_seed(0)
    model = load_model(model_dir, torch_dtype="float32")
    model.set_attn_implementation("sdpa")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = apply_lora(model, build_lora_config(16, 32, 0.05, targets, False, False, True))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    return model, optimizer


def step(model, optimizer, rows, layout: str, mark=None, compiled=None) -> dict:
    """One optimizer step of one packed bin; seconds per phase and the loss (nats per scored token).

    ``compiled`` layout: ``segments`` through ``compiled`` (``torch.compile`` of the same model).
    """
    from contextlib import nullcontext

    from zhlora.training.loop import packed_forward
    from zhlora.training.packing import collate_bins
    from zhlora.training.segment_attention import use_segment_attention

    scope = mark or (lambda name: nullcontext())
    runner = compiled if layout == "compiled" else model
    layout = "segments" if layout == "compiled" else layout
    if layout == "segments":
        use_segment_attention(model)
    else:
        model.config._attn_implementation = "sdpa"
    seconds = {}
    started = time.perf_counter()
    with scope("collate"):
        batch = collate_bins([rows], pad_token_id=0, flatten=layout == "segments")
    seconds["collate"] = time.perf_counter() - started
    with scope("forward"):
        loss_sum, count = packed_forward(runner, batch, layout, torch.float32, "cpu")
        loss = loss_sum / count
    seconds["forward"] = time.perf_counter() - started - sum(seconds.values())
    with scope("backward"):
        loss.backward()
    seconds["backward"] = time.perf_counter() - started - sum(seconds.values())
    with scope("optimizer"):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds["optimizer"] = time.perf_counter() - started - sum(seconds.values())
    return {"seconds": {k: round(v, 3) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 2),
            "loss": round(float(loss.detach()), 6)}


def categorize(name: str, shapes, vocab: int, rank: int) -> str:
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::bmm"):
        dims = {d for shape in shapes for d in shape}
        if vocab in dims:
            return "output layer matmul"
        return "LoRA matmuls" if rank in dims else "base matmuls"
    if "log_softmax" in name or "nll_loss" in name:
        return "cross-entropy"
    return "other ops"


def profile_step(model, optimizer, rows, layout: str, vocab: int) -> dict:
    """Self CPU seconds per category (forward + backward), and per phase, of one profiled step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        timed = step(model, optimizer, rows, layout, mark=lambda name: record_function(f"zhlora::{name}"))
    by_category: dict[str, float] = defaultdict(float)
    other: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith("zhlora::") or event.self_cpu_time_total <= 0:
            continue
        phase, parent = None, event.cpu_parent
        while parent is not None:
            if parent.name.startswith("zhlora::"):
                phase = parent.name.split("::")[1]
            parent = parent.cpu_parent
        key = phase if phase in ("collate", "optimizer") else categorize(event.name, event.input_shapes or [], vocab, 16)
        by_category[key] += event.self_cpu_time_total / 1e6
        if key == "other ops":
            other[event.name] += event.self_cpu_time_total / 1e6
    top_other = dict(sorted(((k, round(v, 3)) for k, v in other.items()), key=lambda kv: -kv[1])[:8])
    return {"profiled_step": timed, "self_seconds": {k: round(v, 3) for k, v in sorted(by_category.items())},
            "top_other_ops": top_other}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="A saved model folder (e.g. SmolLM2's base_model).")
    parser.add_argument("--rows", type=int, default=40, help="BELLE school_math rows to pack the bin from.")
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds, each one step per layout.")
    parser.add_argument("--layouts", default="sdpa,segments",
                        help="Comma-separated: sdpa, segments, compiled (segments through torch.compile).")
    parser.add_argument("--no_profile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    layouts = args.layouts.split(",")
    with tempfile.TemporaryDirectory(prefix="zhlora_profile_") as tmp:
        rows = packed_bin(Path(args.model_dir), Path(tmp), args.rows)
    model, optimizer = build(Path(args.model_dir))
    vocab = model.get_input_embeddings().weight.shape[0]
    lengths = [len(ids) for ids, _ in rows]
    result = {"model_dir": args.model_dir, "row_lengths": lengths, "tokens": sum(lengths),
              "scored": int(sum(int((labels[1:] != -100).sum()) for _, labels in rows)), "threads": 1,
              "profiles": {}, "rounds": []}
    print(json.dumps({k: result[k] for k in ("row_lengths", "tokens", "scored")}), flush=True)
    compiled = torch.compile(model) if "compiled" in layouts else None
    step(model, optimizer, rows, layouts[0], compiled=compiled)  # warm-up (allocator, first-call overheads)
    if compiled is not None:
        before = load_average()
        result["compile_step"] = step(model, optimizer, rows, "compiled", compiled=compiled)  # compiles
        result["compile_step"]["load_average_1min"] = [round(before, 2), load_average()]
        print("first compiled step", json.dumps(result["compile_step"]), flush=True)
    if not args.no_profile:
        for layout in layouts:
            result["profiles"][layout] = profile_step(model, optimizer, rows, layout, vocab)
            print(layout, json.dumps(result["profiles"][layout]), flush=True)
    for index in range(args.rounds):
        for layout in layouts:
            before = load_average()
            timed = step(model, optimizer, rows, layout, compiled=compiled)
            timed.update(round=index, layout=layout, load_average_1min=[round(before, 2), load_average()])
            print(json.dumps(timed), flush=True)
            result["rounds"].append(timed)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
