#!/usr/bin/env python
"""Agreement of zhlora's lm-eval protocol with lm-evaluation-harness on a real model with a byte-level BPE.

    python perf/lmeval_agreement.py --model_dir zhlora_work/models/base_model   # a SmolLM2-135M base_model
    python perf/lmeval_agreement.py --model_dir DIR --items_per_subject 10 --out /tmp/agreement.json
    perf/.venv/bin/python perf/lmeval_agreement.py --model_dir DIR --tokenization_only   # ids only, minutes

The sibling of ``eval_throughput.py`` (same lm-eval venv, ``perf/.venv``), for correctness
rather than speed: the real SmolLM2-135M-Instruct (Llama architecture, 49,152-token byte-level
BPE, imported from its GGUF by ``zhlora download-model --model_name_or_path smollm2-135m``) scores
real 5-shot C-Eval, CMMLU and MMLU items of ``../shared/data`` with both tools, float32 on the CPU.

For every item it checks:

1. the prompt (context string) is byte-identical;
2. zhlora's token ids of context and each continuation (``encode_choice``) are exactly lm-eval's
   ``HFLM._encode_pair`` output for the same strings (lm-eval moves trailing context whitespace
   into the continuation, encodes ``context + continuation`` and splits it after
   ``len(encode(context))`` tokens: with a byte-level BPE a joint encoding may merge across the
   boundary, so this is a choice, and zhlora must make lm-eval's);
3. the predicted option is the same, and how far the four log-likelihoods differ.

Every item whose prediction differs is listed with both tools' log-likelihoods and the gap
between its two best options, so a disagreement can be traced to a near-tie (a float
summation-order effect) or to a real difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import load_model, need_shared_data, score_choice_subjects  # noqa: E402
from lmeval_side import argmax, ensure_lm_eval_venv, run_lm_eval, worker_env, write_subset  # noqa: E402

# 8 subjects per benchmark across STEM, humanities and social science; the first N scored items of each.
SUBJECTS = {
    "ceval": ["computer_network", "operating_system", "high_school_mathematics", "college_physics", "marxism",
              "law", "basic_medicine", "high_school_chinese"],
    "cmmlu": ["agronomy", "anatomy", "ancient_chinese", "arts", "chinese_history", "college_law",
              "elementary_mathematics", "journalism"],
    "mmlu": ["abstract_algebra", "astronomy", "college_biology", "high_school_geography", "formal_logic",
             "marketing", "world_religions", "professional_accounting"],
}
EVAL_SPLIT = {"ceval": "val", "cmmlu": "test", "mmlu": "test"}


def run_zhlora(model_dir: Path, data: Path, items_per_subject: int, batch_size: int) -> dict:
    """zhlora's engine on the same items: prompts, token ids (``encode_choice``) and log-likelihoods."""
    from zhlora.evaluation.requests import encode_choice
    from zhlora.evaluation.tasks.multiple_choice import choice_requests

    tokenizer, benches, results, seconds = score_choice_subjects(model_dir, data, SUBJECTS, items_per_subject, batch_size)
    items = {}
    for name, bench in benches.items():
        requests = {q.id: r for subject, questions in bench.groups.items()
                    for q, r in zip(questions, choice_requests(tokenizer, bench, subject, questions))}
        for row in results[name].predictions:
            request = requests[row["id"]]
            encoded = encode_choice(tokenizer, request)
            items[row["id"]] = {"context": request.prompt.text, "continuations": list(request.continuations),
                                "loglikelihoods": row["loglikelihoods"], "context_ids": encoded.context_ids,
                                "continuation_ids": encoded.continuation_ids, "subject": row["subject"], "gold": row["gold"]}
    return {"seconds": seconds, "items": items}


def tokenization_check(model_dir: Path, data: Path, items_per_subject: int) -> dict:
    """Inside the lm-eval venv, without forward passes: zhlora's ``encode_choice`` ids against
    lm-eval's ``HFLM._encode_pair`` on zhlora's prompts, for every item and option."""
    from lm_eval.models.huggingface import HFLM

    from zhlora.evaluation import load_benchmark_items, resolve_spec
    from zhlora.evaluation.requests import encode_choice
    from zhlora.evaluation.tasks.multiple_choice import choice_requests

    model, tokenizer = load_model(model_dir, "float32", "cpu")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    items = identical = 0
    for name, subjects in SUBJECTS.items():
        bench = load_benchmark_items(data, resolve_spec(name), shots=5, subjects=subjects, limit=items_per_subject)
        for subject, questions in bench.groups.items():
            for request in choice_requests(tokenizer, bench, subject, questions):
                ours = encode_choice(tokenizer, request)
                theirs = [lm._encode_pair(request.prompt.text, c) for c in request.continuations]
                items += 1
                identical += all(ours.context_ids == context and ids == continuation
                                 for (context, continuation), ids in zip(theirs, ours.continuation_ids))
    return {"items": items, "identical_tokenization": identical}


def _top_gap(values: list[float]) -> float:
    """Log-likelihood gap between the best and the second-best option (a near-tie is < ~1e-4)."""
    best, second = sorted(values, reverse=True)[:2]
    return best - second


def compare(ours: dict, theirs: dict) -> dict:
    """Per-item agreement of prompts, tokenization and predictions; every disagreement listed."""
    if set(ours["items"]) != set(theirs["items"]):
        raise SystemExit(f"the two tools scored different items: {sorted(set(ours['items']) ^ set(theirs['items']))[:5]}")
    counts = {"identical_prompts": 0, "identical_tokenization": 0, "identical_predictions": 0}
    largest, disagreements, subjects = 0.0, [], set()
    for item_id, mine in ours["items"].items():
        other = theirs["items"][item_id]
        subjects.add(mine["subject"])
        counts["identical_prompts"] += mine["context"] == other["context"] and mine["continuations"] == other["continuations"]
        counts["identical_tokenization"] += all(
            mine["context_ids"] == context and ids == continuation
            for context, continuation, ids in zip(other["context_ids"], other["continuation_ids"], mine["continuation_ids"])
        )
        same = argmax(mine["loglikelihoods"]) == argmax(other["loglikelihoods"])
        counts["identical_predictions"] += same
        largest = max(largest, *(abs(a - b) for a, b in zip(mine["loglikelihoods"], other["loglikelihoods"])))
        if not same:
            disagreements.append({"id": item_id, "zhlora": mine["loglikelihoods"], "lm_eval": other["loglikelihoods"],
                                  "zhlora_top_gap": _top_gap(mine["loglikelihoods"]),
                                  "lm_eval_top_gap": _top_gap(other["loglikelihoods"])})
    n = len(ours["items"])
    gold_acc = sum(argmax(m["loglikelihoods"]) == "ABCD".index(m["gold"]) for m in ours["items"].values()) / n
    return {"items": n, "subjects": len(subjects), **counts, "max_abs_loglikelihood_difference": largest,
            "disagreements": disagreements, "zhlora_accuracy": round(gold_acc, 4),
            "zhlora_seconds": round(ours["seconds"], 1), "lm_eval_seconds": round(theirs["seconds"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True,
                        help="A zhlora base_model folder of SmolLM2-135M (`zhlora download-model --model_name_or_path "
                             "smollm2-135m --output_dir models`), or any causal LM folder.")
    parser.add_argument("--items_per_subject", type=int, default=10, help="Scored items per subject (24 subjects).")
    parser.add_argument("--batch_size", type=int, default=8, help="Same fixed batch size for both tools.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each tool (OMP_NUM_THREADS overrides).")
    parser.add_argument("--lm_eval_python", default=None, help="A python with lm-eval installed (default: perf/.venv).")
    parser.add_argument("--out", default=None,
                        help="Write the figures as JSON here (and lm-eval's per-item output beside it, <out>.lm_eval.json).")
    parser.add_argument("--lm_eval_results", default=None,
                        help="Reuse a saved <out>.lm_eval.json of the same settings instead of running lm-eval again.")
    parser.add_argument("--tokenization_only", action="store_true",
                        help="Run in a python with lm-eval: compare only the token ids (no forward pass; seconds).")
    parser.add_argument("--worker", nargs=2, metavar=("SUBSET", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tokenization_only:
        with tempfile.TemporaryDirectory(prefix="zhlora_lmeval_tokens_") as tmp:
            figures = tokenization_check(Path(args.model_dir), write_subset(Path(tmp), SUBJECTS, EVAL_SPLIT, args.items_per_subject),
                                         args.items_per_subject)
        print(json.dumps(figures))
        return 0 if figures["items"] == figures["identical_tokenization"] else 1
    if args.worker:
        figures = run_lm_eval(Path(args.model_dir), Path(args.worker[0]), SUBJECTS, args.batch_size, "float32", "cpu",
                              with_token_ids=True)
        Path(args.worker[1]).write_text(json.dumps(figures, ensure_ascii=False), encoding="utf-8")
        return 0
    if not need_shared_data():
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    python = None if args.lm_eval_results else Path(args.lm_eval_python) if args.lm_eval_python else ensure_lm_eval_venv()
    with tempfile.TemporaryDirectory(prefix="zhlora_lmeval_agreement_") as tmp:
        work = Path(tmp)
        data = write_subset(work, SUBJECTS, EVAL_SPLIT, args.items_per_subject)
        lm_eval_out = Path(args.lm_eval_results) if args.lm_eval_results else work / "lm_eval.json"
        if not args.lm_eval_results:
            subprocess.run([str(python), __file__, "--model_dir", args.model_dir, "--batch_size", str(args.batch_size),
                            "--worker", str(work / "subset"), str(lm_eval_out)],
                           check=True, env=worker_env())
            if args.out:
                Path(f"{args.out}.lm_eval.json").write_bytes(lm_eval_out.read_bytes())
        theirs = json.loads(lm_eval_out.read_text(encoding="utf-8"))
        ours = run_zhlora(Path(args.model_dir), data, args.items_per_subject, args.batch_size)
    figures = compare(ours, theirs)
    figures.update(lm_eval_version=theirs["version"], lm_eval_max_length=theirs["max_length"],
                   batch_size=args.batch_size, items_per_subject=args.items_per_subject,
                   omp_num_threads=os.environ["OMP_NUM_THREADS"], subject_names=SUBJECTS)
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    ok = figures["items"] == figures["identical_prompts"] == figures["identical_tokenization"] == figures["identical_predictions"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
