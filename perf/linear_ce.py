#!/usr/bin/env python
"""Output layer + cross-entropy: today's path (logits of the scored positions, then F.cross_entropy)
vs a fused chunked one that never keeps the logits (the gradient w.r.t. the hidden states is
computed chunk by chunk during the forward pass, as Liger's fused linear cross-entropy does).

    python perf/linear_ce.py --positions 700 --hidden 576 --vocab 49152 --rounds 3

SmolLM2-135M's shapes by default (576 x 49,152 tied output layer, frozen; ~700 scored positions
of a 1,024-token bin). One thread, float32, forward + backward to the hidden states, interleaved
rounds with the load; prints seconds per path, the loss difference and the gradient difference.
zhlora uses the fused path (``training.loss.fused_linear_token_loss_sum``) only for vocabularies of
200,000 tokens and more (Gemma's 262k), for memory: at SmolLM2's shapes it does not pay in speed
(perf/README.md).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from harness import load_average  # noqa: E402

from zhlora.training.loss import fused_linear_token_loss_sum


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positions", type=int, default=700)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    weight = torch.randn(args.vocab, args.hidden) * 0.05
    hidden = torch.randn(args.positions, args.hidden, requires_grad=True)
    targets = torch.randint(0, args.vocab, (args.positions,))

    def standard():
        return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")

    def fused():
        return fused_linear_token_loss_sum(hidden, weight, targets, args.chunk)[0]

    results = {}
    for name, fn in (("standard", standard), ("fused", fused)):
        hidden.grad = None
        loss = fn()
        loss.backward()
        results[name] = (loss.detach(), hidden.grad.clone())
    print(json.dumps({"loss_diff": float((results["fused"][0] - results["standard"][0]).abs()),
                      "loss": float(results["standard"][0]),
                      "max_grad_diff": float((results["fused"][1] - results["standard"][1]).abs().max()),
                      "max_grad": float(results["standard"][1].abs().max())}), flush=True)
    for index in range(args.rounds):
        for name, fn in (("standard", standard), ("fused", fused)):
            before = load_average()
            started = time.perf_counter()
            hidden.grad = None
            fn().backward()
            seconds = time.perf_counter() - started
            print(json.dumps({"round": index, "path": name, "seconds": round(seconds, 3),
                              "load_average_1min": [round(before, 2), load_average()]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
