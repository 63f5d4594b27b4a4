"""What ``eval_throughput.py`` and ``lmeval_agreement.py`` share: the data subset both tools score,
lm-evaluation-harness's side of the comparison (task files rendering lm-eval's own ``ceval-valid`` /
``cmmlu`` / ``mmlu`` prompts over local files, run inside a python that has lm-eval), and the
model loading both sides use.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import venv
from pathlib import Path

from harness import REPO, SHARED, clock_calls, load_model  # noqa: E402

VENV = REPO / "perf" / ".venv"
LM_EVAL_VERSION = "0.4.13"
LETTERS = ["A", "B", "C", "D"]


def write_subset(work: Path, subjects: dict[str, list[str]], eval_split: dict[str, str], items_per_subject: int) -> Path:
    """Normalize ``../shared/data`` (``download-data --source local:...``) into ``work/data`` and write, per
    subject, the 5 few-shot rows (``<subject>_dev.jsonl``) and the first ``items_per_subject`` scored rows
    (``<subject>_eval.jsonl``) for lm-eval: the same rows, in the same order, zhlora scores. Returns the data folder."""
    from zhlora.data.sources import download_data
    from zhlora.io_utils import read_jsonl

    data = work / "data"
    download_data(data, source=f"local:{SHARED}", datasets=list(subjects))
    for benchmark, names in subjects.items():
        for split, name, limit in (("dev", "dev", 5), (eval_split[benchmark], "eval", items_per_subject)):
            rows = read_jsonl(data / benchmark / f"{split}.jsonl")
            for subject in names:
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
        "task": f"zb_{benchmark}_{subject}",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {s: str(subset / benchmark / f"{subject}_{s}.jsonl") for s in ("dev", "eval")}},
        "test_split": "eval",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": "multiple_choice",
        "description": description,
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\n"
                       + cue,
        "doc_to_choice": LETTERS,
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def run_lm_eval(model_dir: Path, subset: Path, subjects: dict[str, list[str]], batch_size: int, torch_dtype: str,
                device: str, with_token_ids: bool) -> dict:
    """Inside a python with lm-eval: 5-shot ``simple_evaluate`` over every subject task. Per item the
    context, continuations and log-likelihoods (and ``HFLM._encode_pair``'s token ids if asked); the
    seconds spent in ``loglikelihood`` (tokenization + forward passes, as zhlora's timing) and in total."""
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    tasks_dir = Path(tempfile.mkdtemp(prefix="zb_tasks_"))
    names = []
    for benchmark, subject_names in subjects.items():
        for subject in subject_names:
            config = task_config(benchmark, subject, subset)
            (tasks_dir / f"{config['task']}.yaml").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
            names.append(config["task"])
    model, tokenizer = load_model(model_dir, torch_dtype, device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    scoring = clock_calls(lm, "loglikelihood")
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=5, task_manager=manager, log_samples=True,
                                      bootstrap_iters=0)
    total_seconds = time.perf_counter() - started
    items = {}
    for samples in results["samples"].values():
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            context = sample["arguments"][0][0]
            item = {"context": context, "continuations": [arguments[1] for arguments in sample["arguments"]],
                    "loglikelihoods": [float(resp[0][0]) for resp in sample["resps"]]}
            if with_token_ids:
                pairs = [lm._encode_pair(context, continuation) for continuation in item["continuations"]]
                item.update(context_ids=[pair[0] for pair in pairs], continuation_ids=[pair[1] for pair in pairs])
            items[sample["doc"]["id"]] = item
    return {"seconds": scoring["seconds"], "total_seconds": total_seconds, "items": items,
            "version": lm_eval.__version__, "max_length": lm.max_length}


def ensure_lm_eval_venv() -> Path:
    """``perf/.venv`` with lm-eval installed on top of this interpreter's packages."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} (--system-site-packages) and installing lm-eval=={LM_EVAL_VERSION} ...")
        venv.EnvBuilder(system_site_packages=True, with_pip=True).create(VENV)
    check = subprocess.run([str(python), "-c", "import lm_eval"], capture_output=True, check=False)
    if check.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"lm-eval=={LM_EVAL_VERSION}"], check=True)
    return python


def worker_env() -> dict:
    """The environment of the lm-eval child: zhlora's sources first, then whatever PYTHONPATH already holds
    (e.g. wheels unpacked on an offline GPU machine)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}


def argmax(values: list[float]) -> int:
    """Index of the largest value; ties go to the first, as both tools break them."""
    return max(range(len(values)), key=lambda k: (values[k], -k))
