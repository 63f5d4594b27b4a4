#!/usr/bin/env python
"""zhlora's evaluation of whole MMLU subjects on a real model: items/s, prompt tokens/s, share of the matmul peak.

    python perf/eval_scale.py --model_dir /tmp/smol/model \
        --subjects abstract_algebra,college_chemistry,computer_security,econometrics

Each subject is evaluated whole (5-shot, lm-eval protocol) through
``zhlora.evaluation.evaluate_benchmarks``, one after another, so the cumulative figures after 1,
2 and 4 subjects come from one run. Reported per subject: items, seconds, items/s; *prompt
tokens/s* (the tokens of every item's full prompt, what a tool without prefix sharing computes,
per second); *computed tokens/s* (tokens that went through the model: the shared prefix once per
subject plus each item's own tokens); the share of the time spent inside the model's forward
passes (the rest is prompt rendering, tokenization, batching); and achieved FLOP/s
(2 x non-embedding weights x computed tokens, plus the output layer at the scored positions) as a
fraction of this machine's measured matmul peak (best of five 2048 x 2048 float32 ``torch.matmul``,
same thread count). The machine's 1-minute load average is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import SHARED, clock_calls, load_average, matmul_gflops, write_summary  # noqa: E402

# test items of the full benchmarks zhlora evaluates by default (C-Eval val, CMMLU test, MMLU test)
FULL_ITEMS = {"ceval": 1346, "cmmlu": 11582, "mmlu": 14042}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--subjects", default="abstract_algebra,college_chemistry,computer_security,econometrics")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from zhlora.data.sources import download_data
    from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items, resolve_spec
    from zhlora.evaluation.hf_model import HFEvalModel
    from zhlora.evaluation.tasks.multiple_choice import choice_requests
    from zhlora.models.loading import load_model, load_tokenizer

    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
    model, tokenizer = load_model(Path(args.model_dir), torch_dtype="float32"), load_tokenizer(Path(args.model_dir))
    config = model.config
    embedding = config.vocab_size * config.hidden_size
    body_weights = sum(p.numel() for p in model.parameters()) - embedding * (1 if config.tie_word_embeddings else 2)
    forward = clock_calls(HFEvalModel, "_hidden_states")  # an unbound function: self is its first argument
    peak = matmul_gflops("float32", 2048) * 1e9
    rows = []
    with tempfile.TemporaryDirectory(prefix="zhlora_eval_scale_") as tmp:
        data = Path(tmp) / "data"
        download_data(data, source=f"local:{SHARED}", datasets=["mmlu"])
        for subject in args.subjects.split(","):
            bench = load_benchmark_items(data, resolve_spec("mmlu"), shots=5, subjects=[subject])
            requests = choice_requests(tokenizer, bench, subject, bench.groups[subject])
            prompt_tokens = sum(len(ids) for ids in tokenizer([r.prompt.text for r in requests])["input_ids"])
            load_before = load_average()
            forward["seconds"] = 0.0
            started = time.perf_counter()
            result = evaluate_benchmarks(model, tokenizer, {"mmlu": bench}, batch_size=args.batch_size)["mmlu"]
            seconds = time.perf_counter() - started
            use = result.prefix
            computed = prompt_tokens - use.shared_tokens + (use.mean_shared_tokens if use.shared_items else 0)
            flops = 2 * body_weights * computed + 2 * embedding * len(requests)
            rows.append({
                "subject": subject, "items": len(requests), "seconds": round(seconds, 1),
                "items_per_second": round(len(requests) / seconds, 3),
                "prompt_tokens_per_second": round(prompt_tokens / seconds, 1),
                "computed_tokens_per_second": round(computed / seconds, 1),
                "forward_share": round(forward["seconds"] / seconds, 3),
                "fraction_of_matmul_peak": round(flops / seconds / peak, 3),
                "shared_prefix": use.as_dict(), "load_average_1min": [round(load_before, 2), load_average()],
            })
            print(json.dumps(rows[-1]), flush=True)
    cumulative = []
    for n in (1, 2, 4):
        if len(rows) >= n:
            items, seconds = sum(r["items"] for r in rows[:n]), sum(r["seconds"] for r in rows[:n])
            cumulative.append({"subjects": n, "items": items, "seconds": round(seconds, 1),
                               "items_per_second": round(items / seconds, 3)})
    rate = cumulative[-1]["items_per_second"]
    summary = {"matmul_peak_gflops": round(peak / 1e9, 1), "threads": os.environ["OMP_NUM_THREADS"], "subjects": rows,
               "cumulative": cumulative,
               "extrapolated_hours_at_mmlu_rate": {k: round(v / rate / 3600, 2) for k, v in FULL_ITEMS.items()}}
    write_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
