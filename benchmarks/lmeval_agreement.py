#!/usr/bin/env python
"""Agreement of zhlora's lm-eval protocol with lm-evaluation-harness on a real model with a byte-level BPE.

    python benchmarks/lmeval_agreement.py --model_dir zhlora_work/models/base_model   # a SmolLM2-135M base_model
    python benchmarks/lmeval_agreement.py --model_dir DIR --items_per_subject 10 --out /tmp/agreement.json
    benchmarks/.venv/bin/python benchmarks/lmeval_agreement.py --model_dir DIR --tokenization_only   # ids only, minutes

The sibling of ``eval_throughput.py`` (same lm-eval venv, ``benchmarks/.venv``), for correctness
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_throughput import REPO, SHARED, _argmax, _load, ensure_lm_eval_venv  # noqa: E402

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


def prepare_data(work: Path, items_per_subject: int) -> Path:
    """Normalized data (``download-data --source local:../shared/data``), then per-subject few-shot and
    scored JSON lines files for lm-eval: the same rows, in the same order, zhlora scores."""
    from zhlora.data.sources import download_data
    from zhlora.io_utils import read_jsonl

    data = work / "data"
    download_data(data, source=f"local:{SHARED}", datasets=list(SUBJECTS))
    for benchmark, subjects in SUBJECTS.items():
        for split, name, limit in (("dev", "dev", 5), (EVAL_SPLIT[benchmark], "eval", items_per_subject)):
            rows = read_jsonl(data / benchmark / f"{split}.jsonl")
            for subject in subjects:
                chosen = [r for r in rows if r["subject"] == subject][:limit]
                path = work / "subset" / benchmark / f"{subject}_{name}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    return data


def task_config(benchmark: str, subject: str, subset: Path) -> dict:
    """An lm-eval task over local files that renders lm-eval's own ``ceval-valid`` / ``cmmlu`` / ``mmlu`` prompt."""
    from zhlora.data.categories import subject_table

    if benchmark == "mmlu":
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        cue = "Answer:"
    elif benchmark == "cmmlu":
        description = f"以下是关于{subject_table('cmmlu')[subject].name_zh}的单项选择题，请直接给出正确答案的选项。\n\n"
        cue = "答案："
    else:
        description = f"以下是中国关于{subject_table('ceval')[subject].name_zh}的单项选择题，请选出其中的正确答案。\n\n"
        cue = "答案："
    return {
        "task": f"za_{benchmark}_{subject}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {s: str(subset / benchmark / f"{subject}_{s}.jsonl") for s in ("dev", "eval")}},
        "test_split": "eval",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "description": description,
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\n"
                       + cue,
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def lm_eval_worker(model_dir: Path, subset: Path, batch_size: int, out: Path) -> None:
    """Inside the lm-eval venv: per item the context, continuations, log-likelihoods and ``_encode_pair`` ids."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tasks_dir = Path(tempfile.mkdtemp(prefix="za_tasks_"))
    names = []
    for benchmark, subjects in SUBJECTS.items():
        for subject in subjects:
            config = task_config(benchmark, subject, subset)
            (tasks_dir / f"{config['task']}.yaml").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
            names.append(config["task"])
    model, tokenizer = _load(model_dir, "float32", "cpu")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=5, task_manager=TaskManager(
        include_path=str(tasks_dir), include_defaults=False), log_samples=True, bootstrap_iters=0)
    items = {}
    for samples in results["samples"].values():
        for sample in samples:
            context = sample["arguments"][0][0]
            continuations = [arguments[1] for arguments in sample["arguments"]]
            pairs = [lm._encode_pair(context, continuation) for continuation in continuations]
            items[sample["doc"]["id"]] = {
                "context": context, "continuations": continuations,
                "loglikelihoods": [float(resp[0][0]) for resp in sample["resps"]],
                "context_ids": [pair[0] for pair in pairs], "continuation_ids": [pair[1] for pair in pairs],
            }
    out.write_text(json.dumps({"seconds": time.perf_counter() - started, "items": items, "version": lm_eval.__version__,
                               "max_length": lm.max_length}, ensure_ascii=False))


def run_zhlora(model_dir: Path, data: Path, items_per_subject: int, batch_size: int) -> dict:
    """zhlora's engine on the same items: prompts, token ids (``encode_choice``) and log-likelihoods."""
    import torch

    from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items, resolve_spec
    from zhlora.evaluation.requests import encode_choice
    from zhlora.evaluation.tasks.multiple_choice import choice_requests

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, tokenizer = _load(model_dir, "float32", "cpu")
    benches = {name: load_benchmark_items(data, resolve_spec(name), shots=5, subjects=subjects, limit=items_per_subject)
               for name, subjects in SUBJECTS.items()}
    started = time.perf_counter()
    results = evaluate_benchmarks(model, tokenizer, benches, batch_size=batch_size)
    seconds = time.perf_counter() - started
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

    model, tokenizer = _load(model_dir, "float32", "cpu")
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
        same = _argmax(mine["loglikelihoods"]) == _argmax(other["loglikelihoods"])
        counts["identical_predictions"] += same
        largest = max(largest, *(abs(a - b) for a, b in zip(mine["loglikelihoods"], other["loglikelihoods"])))
        if not same:
            disagreements.append({"id": item_id, "zhlora": mine["loglikelihoods"], "lm_eval": other["loglikelihoods"],
                                  "zhlora_top_gap": _top_gap(mine["loglikelihoods"]),
                                  "lm_eval_top_gap": _top_gap(other["loglikelihoods"])})
    n = len(ours["items"])
    gold_acc = sum(_argmax(m["loglikelihoods"]) == "ABCD".index(m["gold"]) for m in ours["items"].values()) / n
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
    parser.add_argument("--lm_eval_python", default=None, help="A python with lm-eval installed (default: benchmarks/.venv).")
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
            figures = tokenization_check(Path(args.model_dir), prepare_data(Path(tmp), args.items_per_subject),
                                         args.items_per_subject)
        print(json.dumps(figures))
        return 0 if figures["items"] == figures["identical_tokenization"] else 1
    if args.worker:
        lm_eval_worker(Path(args.model_dir), Path(args.worker[0]), args.batch_size, Path(args.worker[1]))
        return 0
    if not (SHARED / "README.md").is_file():
        print(f"{SHARED} is absent: this benchmark needs the real data folder.", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    python = None if args.lm_eval_results else Path(args.lm_eval_python) if args.lm_eval_python else ensure_lm_eval_venv()
    with tempfile.TemporaryDirectory(prefix="zhlora_lmeval_agreement_") as tmp:
        work = Path(tmp)
        data = prepare_data(work, args.items_per_subject)
        lm_eval_out = Path(args.lm_eval_results) if args.lm_eval_results else work / "lm_eval.json"
        if not args.lm_eval_results:
            subprocess.run([str(python), __file__, "--model_dir", args.model_dir, "--batch_size", str(args.batch_size),
                            "--worker", str(work / "subset"), str(lm_eval_out)],
                           check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
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
