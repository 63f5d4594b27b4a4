#!/usr/bin/env python
"""Logits at every position vs only at the scored ones (zhlora's packed_forward), one packed row, LoRA forward+backward.

    python benchmarks/scored_logits.py 3      # rounds, interleaved; prints seconds, loss sum and load per step

The ~35M-parameter Llama-shaped model of train_throughput.py (random weights, 32,000-token vocabulary), one
thread, BELLE-like rows (30% prompt) packed into one sequence of up to 1,024 tokens.
"""
import os, sys, time, json, torch, numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_throughput as tt
from zhlora.training.packing import collate_bins, IGNORE_INDEX
from zhlora.training.loop import packed_inputs
from zhlora.training.loss import token_loss_sum
torch.set_num_threads(1)
model, config = tt.build_model("cpu-small", "cpu", "float32", "sdpa", 1024, False)
model.train()
rows = tt.belle_like_rows(12, 1024, 32000, 0)
bin_rows, total = [], 0
for ids, labels in rows:
    if total + len(ids) > 1024: break
    bin_rows.append((np.array(ids), np.array(labels))); total += len(ids)
batch = collate_bins([bin_rows], pad_token_id=0)
def step(select):
    t = time.perf_counter()
    targets = batch.targets
    if select:
        scored = targets != IGNORE_INDEX
        logits = model(**packed_inputs(batch, "sdpa", torch.float32, "cpu"), logits_to_keep=scored).logits
        loss, n = token_loss_sum(logits, targets[scored])
    else:
        logits = model(**packed_inputs(batch, "sdpa", torch.float32, "cpu")).logits
        loss, n = token_loss_sum(logits, targets)
    (loss / n).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t, loss.item()
step(True)
res = {"full": [], "selected": []}
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for name in ("full", "selected"):
        s, l = step(name == "selected"); res[name].append((round(s, 2), round(l, 4), round(os.getloadavg()[0], 1)))
        print(name, res[name][-1], flush=True)
print(json.dumps({"tokens": total, "scored": int((batch.targets != IGNORE_INDEX).sum()), **res}))
