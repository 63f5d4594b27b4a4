#!/usr/bin/env python
"""float32 vs bfloat16 vs bfloat16 autocast on this CPU: evaluation and LoRA training, same model, same items.

    python perf/cpu_dtype.py --model_dir /tmp/smol/model          # a saved model folder (e.g. SmolLM2-135M)
    python perf/cpu_dtype.py --model_dir tiny                     # the built-in tiny Llama

Modes: ``fp32`` (float32 weights and compute), ``bf16`` (bfloat16 weights, LoRA adapter in
float32 as PEFT keeps it), ``autocast`` (float32 weights, matmuls in bfloat16 under
``torch.autocast("cpu")``). Rounds are interleaved (fp32, bf16, autocast, fp32, ...), one
thread unless ``OMP_NUM_THREADS`` says otherwise, and the 1-minute load average is printed beside
every figure because the machine may be shared.

Evaluation: 5-shot MMLU items of ``../shared/data`` (``--subjects``, ``--items``) through
``zhlora.evaluation.evaluate_benchmarks``; reports items/s, predictions that differ from float32
and whether each differing item was a near-tie in float32 (top-two log-likelihood gap below
``--near_tie`` nats). Training: ``--steps`` LoRA steps (r 16, alpha 32, all linear layers,
AdamW 2e-4) on one packed ``--seq_len``-token row of real BELLE text, through zhlora's loss;
reports tokens/s and the loss of every step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import SHARED, load_average, matmul_gflops, write_summary  # noqa: E402

MODES = ("fp32", "bf16", "autocast")


def _model(model_dir: Path, mode: str):
    from zhlora.models.loading import load_model

    return load_model(model_dir, torch_dtype="bfloat16" if mode == "bf16" else "float32")


def _compute(mode: str):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()


def eval_round(model_dir: Path, tokenizer, benches, mode: str) -> dict:
    from zhlora.evaluation import evaluate_benchmarks

    model = _model(model_dir, mode)
    started = time.perf_counter()
    with _compute(mode):
        result = evaluate_benchmarks(model, tokenizer, benches, batch_size=8)["mmlu"]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "items_per_second": len(result.predictions) / seconds,
            "loglikelihoods": {row["id"]: row["loglikelihoods"] for row in result.predictions}}


def train_round(model_dir: Path, tokenizer, text: str, mode: str, steps: int, seq_len: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from zhlora.training.loss import token_loss_sum

    torch.manual_seed(0)
    model = get_peft_model(_model(model_dir, mode), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    model.train()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = (ids * (seq_len // max(len(ids), 1) + 1))[: seq_len + 1]
    inputs, targets = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    losses, started = [], time.perf_counter()
    for _ in range(steps):
        with _compute(mode):
            logits = model(input_ids=inputs, use_cache=False).logits
        loss_sum, count = token_loss_sum(logits, targets)
        (loss_sum / count).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss_sum.item() / count, 5))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens_per_second": steps * seq_len / seconds, "losses": losses}


def _argmax(values):
    return max(range(len(values)), key=lambda k: (values[k], -k))


def changed_predictions(reference: dict, other: dict, near_tie: float) -> dict:
    """Items whose predicted option differs from float32's, and how many of those were near-ties there."""
    changed = near = 0
    largest = 0.0
    for item, ref in reference.items():
        got = other[item]
        largest = max(largest, *(abs(a - b) for a, b in zip(ref, got)))
        if _argmax(ref) != _argmax(got):
            changed += 1
            top = sorted(ref, reverse=True)
            near += (top[0] - top[1]) < near_tie
    return {"changed": changed, "changed_near_ties": near, "max_abs_loglikelihood_difference": round(largest, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True, help="A saved model folder, or 'tiny' (built here).")
    parser.add_argument("--subjects", default="astronomy,high_school_geography")
    parser.add_argument("--items", type=int, default=20, help="MMLU test items per subject.")
    parser.add_argument("--steps", type=int, default=3, help="LoRA training steps per round.")
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--near_tie", type=float, default=0.05, help="Top-two gap (nats) below which a flip is a near-tie.")
    parser.add_argument("--skip", default="", help="Comma-separated parts to skip: eval, train (both: only the matmul peaks).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from zhlora.data.sources import download_data
    from zhlora.evaluation import load_benchmark_items, resolve_spec
    from zhlora.io_utils import read_jsonl
    from zhlora.models.loading import load_tokenizer
    from zhlora.models.tiny import build_tiny_model

    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
    peaks = {name: round(matmul_gflops(name), 2) for name in ("float32", "bfloat16")}
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "matmul_gflops": peaks,
                      "load": load_average()}), flush=True)
    if args.skip == "eval,train":
        return 0
    with tempfile.TemporaryDirectory(prefix="zhlora_cpu_dtype_") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny") if args.model_dir == "tiny" else Path(args.model_dir)
        tokenizer = load_tokenizer(model_dir)
        download_data(work / "data", source=f"local:{SHARED}", datasets=["mmlu", "belle"], belle_sample_size=50)
        benches = {"mmlu": load_benchmark_items(work / "data", resolve_spec("mmlu"), shots=5,
                                                subjects=args.subjects.split(","), limit=args.items)}
        text = "\n".join(row["instruction"] + row.get("input", "") + row["output"]
                         for row in read_jsonl(work / "data" / "belle" / "train.jsonl"))
        rounds = []
        for index in range(args.rounds):
            for mode in MODES:
                entry = {"round": index, "mode": mode, "load_before": load_average()}
                if "eval" not in args.skip:
                    entry["eval"] = eval_round(model_dir, tokenizer, benches, mode)
                if "train" not in args.skip:
                    entry["train"] = train_round(model_dir, tokenizer, text, mode, args.steps, args.seq_len)
                entry["load_after"] = load_average()
                rounds.append(entry)
                brief = {k: v for k, v in entry.items() if k not in ("eval", "train")}
                if "eval" in entry:
                    brief["eval_items_per_second"] = round(entry["eval"]["items_per_second"], 3)
                    reference = next(r for r in rounds if r["round"] == index and r["mode"] == "fp32")
                    brief.update(changed_predictions(reference["eval"]["loglikelihoods"], entry["eval"]["loglikelihoods"],
                                                     args.near_tie))
                if "train" in entry:
                    brief["train_tokens_per_second"] = round(entry["train"]["tokens_per_second"], 1)
                    brief["train_losses"] = entry["train"]["losses"]
                print(json.dumps(brief), flush=True)
    summary = {"model_dir": args.model_dir, "threads": os.environ["OMP_NUM_THREADS"], "matmul_gflops": peaks, "rounds": []}
    for entry in rounds:
        reference = next(r for r in rounds if r["round"] == entry["round"] and r["mode"] == "fp32")
        row = {k: entry[k] for k in ("round", "mode", "load_before", "load_after")}
        if "eval" in entry:
            row["eval_items_per_second"] = round(entry["eval"]["items_per_second"], 3)
            row["eval_speedup_vs_fp32"] = round(reference["eval"]["seconds"] / entry["eval"]["seconds"], 2)
            row["eval_items"] = len(entry["eval"]["loglikelihoods"])
            row.update(changed_predictions(reference["eval"]["loglikelihoods"], entry["eval"]["loglikelihoods"], args.near_tie))
        if "train" in entry:
            row["train_tokens_per_second"] = round(entry["train"]["tokens_per_second"], 1)
            row["train_speedup_vs_fp32"] = round(reference["train"]["seconds"] / entry["train"]["seconds"], 2)
            row["train_losses"] = entry["train"]["losses"]
        summary["rounds"].append(row)
    write_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
