#!/usr/bin/env python
"""Logits at every position vs only at the scored ones (zhlora's packed_forward), one packed row, LoRA forward+backward.

    python perf/scored_logits.py 3      # rounds, interleaved; prints seconds, loss sum and load per step

The ~35M-parameter Llama-shaped model of train_throughput.py (random weights, 32,000-token vocabulary), one
thread, BELLE-like rows (30% prompt) packed into one sequence of up to 1,024 tokens.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
import train_throughput  # noqa: E402
from harness import load_average  # noqa: E402

from zhlora.data.preprocess import IGNORE_INDEX  # noqa: E402
from zhlora.training.loop import packed_inputs  # noqa: E402
from zhlora.training.loss import token_loss_sum  # noqa: E402
from zhlora.training.packing import collate_bins  # noqa: E402


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(1)
    model, _ = train_throughput.build_model("cpu-small", "cpu", "float32", "sdpa", 1024, False)
    model.train()
    packed, total = [], 0
    for ids, labels in train_throughput.belle_like_rows(12, 1024, 32000, 0):
        if total + len(ids) > 1024:
            break
        packed.append((np.array(ids), np.array(labels)))
        total += len(ids)
    batch = collate_bins([packed], pad_token_id=0)

    def step(select: bool) -> tuple[float, float]:
        started = time.perf_counter()
        inputs = packed_inputs(batch, "sdpa", torch.float32, "cpu")
        if select:
            scored = batch.targets != IGNORE_INDEX
            loss, count = token_loss_sum(model(**inputs, logits_to_keep=scored).logits, batch.targets[scored])
        else:
            loss, count = token_loss_sum(model(**inputs).logits, batch.targets)
        (loss / count).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - started, loss.item()

    step(True)  # warm-up
    results = {"full": [], "selected": []}
    for _ in range(rounds):
        for name in ("full", "selected"):
            seconds, loss = step(name == "selected")
            results[name].append((round(seconds, 2), round(loss, 4), round(load_average(), 1)))
            print(name, results[name][-1], flush=True)
    print(json.dumps({"tokens": total, "scored": int((batch.targets != IGNORE_INDEX).sum()), **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
