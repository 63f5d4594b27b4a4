#!/usr/bin/env python
"""Training throughput: zhlora's packed loop vs the standard recipe (HF Trainer + PEFT, dynamic padding).

Both trainers get the same Llama-shaped model with random weights, the same LoRA adapter (r=16
on all seven projections), the same AdamW settings and the same BELLE-like rows (lognormal
lengths, median ~200 tokens, a long tail up to --max_seq_length, the first ~30% of each row a
prompt), and run the same number of optimizer steps, each in its own child process so that peak
memory is its own. Reported per trainer:

- non-pad tokens/s: real tokens (padding excluded) processed per second of the training loop;
- pad fraction: share of the positions computed that were padding;
- peak memory: the child's peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU;
- useful FLOP/s and MFU: FLOPs of the real tokens only (frozen base: forward 2N + input
  gradients 2N per token, N = weights of the linear layers incl. lm_head; causal attention
  within each row, forward and backward), divided by the loop's time and by this machine's
  measured matmul peak (a large ``torch.matmul`` timed here, fp32 and bf16).

    python perf/train_throughput.py                     # CPU, ~35M-parameter Llama, a few minutes
    python perf/train_throughput.py --preset llama2-7b --device cuda --max_seq_length 2048 ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from harness import load_average  # noqa: E402

PRESETS = {
    # Llama-2 proportions and vocabulary, small enough for a CPU: ~35M parameters (12M of them in lm_head)
    "cpu-small": {"hidden_size": 384, "intermediate_size": 1032, "num_hidden_layers": 6, "num_attention_heads": 6,
                  "num_key_value_heads": 6, "vocab_size": 32000},
    "llama2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                  "num_key_value_heads": 32, "vocab_size": 32000},
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def belle_like_rows(n: int, max_len: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` rows with lognormal lengths (median 200, sigma 0.7) clipped to [16, max_len]."""
    import numpy as np

    from zhlora.data.preprocess import IGNORE_INDEX

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(200), 0.7, size=n).astype(int), 16, max_len)
    rows = []
    for length in lengths:
        ids = rng.integers(3, vocab, size=int(length)).tolist()
        prompt = max(1, int(0.3 * length))
        rows.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return rows


def build_model(preset: str, device: str, dtype: str, attn: str, max_len: int, gradient_checkpointing: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from zhlora.training.lora import apply_lora, build_lora_config

    torch.manual_seed(0)
    config = LlamaConfig(**PRESETS[preset], max_position_embeddings=max(max_len, 4096), tie_word_embeddings=False)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    model.set_attn_implementation(attn)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, build_lora_config(16, 32, 0.05, TARGETS, False, False, True))
    return model, config


def useful_flops(lengths, config) -> float:
    """Training FLOPs of the real tokens: (2N fwd + 2N input-grad) per token + causal attention within rows."""
    d, layers = config.hidden_size, config.num_hidden_layers
    linear = layers * (4 * d * d + 3 * d * config.intermediate_size) + d * config.vocab_size
    tokens = sum(lengths)
    # QK^T and AV: 2 matmuls x 2 FLOPs x d per (query, key) pair; causal pairs ~ l^2 / 2; backward 2x forward
    attention_pairs = sum(length * (length + 1) / 2 for length in lengths)
    return 4 * linear * tokens + 3 * (4 * d * layers) * attention_pairs


def peak_matmul_flops(device: str, dtype: str, size: int) -> float:
    """FLOP/s of the best of 5 timed ``size x size`` matmuls (after a warm-up)."""
    import torch

    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    a @ b
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _warm_up(model, device: str) -> None:
    """One untimed forward/backward so allocator and kernel start-up costs hit neither trainer's clock."""
    import torch

    ids = torch.randint(3, 1000, (1, 256), device=device)
    model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)


def _peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_zhlora(args, rows) -> dict:
    """zhlora's loop exactly as `zhlora train` runs it: packed bins, block-diagonal mask or varlen."""
    import torch
    from accelerate import Accelerator

    from zhlora.training.dataset import TokenRows
    from zhlora.training.loop import LoopSettings, train_loop
    from zhlora.training.packing import pack_rows
    from zhlora.training.schedule import build_lr_scheduler, plan_steps

    attn = "flash_attention_2" if args.device == "cuda" and _has_flash_attn() else "sdpa"
    model, config = build_model(args.preset, args.device, args.dtype, attn, args.max_seq_length, args.gradient_checkpointing)
    _warm_up(model, args.device)
    import numpy as np

    ids = np.concatenate([np.asarray(r[0]) for r in rows])
    labels = np.concatenate([np.asarray(r[1]) for r in rows])
    offsets = np.concatenate([[0], np.cumsum([len(r[0]) for r in rows])])
    token_rows = TokenRows(ids, labels, offsets)
    bins = pack_rows(token_rows.lengths, args.max_seq_length)
    accelerator = Accelerator(cpu=args.device == "cpu", gradient_accumulation_steps=1)
    plan = plan_steps(len(bins), args.zhlora_batch, 1, 1, 1.0, args.steps, 0.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    scheduler = build_lr_scheduler(optimizer, "constant", 0, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    settings = LoopSettings(output_dir=args.scratch, seed=0, pad_token_id=0, max_grad_norm=1.0,
                            logging_steps=10**9, save_steps=10**9, save_total_limit=1)
    result = train_loop(accelerator, model, optimizer, scheduler, token_rows, bins, plan, settings)
    lengths = _lengths_seen(token_rows, bins, plan, args.zhlora_batch)
    return {"trainer": "zhlora", "attention": attn, "batch": f"{args.zhlora_batch} packed x {args.max_seq_length}",
            "seconds": result.seconds, "real_tokens": result.real_tokens, "total_tokens": result.total_tokens,
            "useful_flops": useful_flops(lengths, config), "peak_memory_mb": _peak_memory_mb(args.device)}


def _lengths_seen(token_rows, bins, plan, batch_size) -> list[int]:
    """Row lengths of every bin the loop trained on (for the FLOP count)."""
    from zhlora.training.packing import epoch_permutation, micro_batch_bins

    lengths = []
    for step in range(plan.total_steps):
        epoch, step_in_epoch = divmod(step, plan.steps_per_epoch)
        order = epoch_permutation(len(bins), 0, epoch)
        for b in micro_batch_bins(order, step_in_epoch, 0, 0, 1, batch_size, 1):
            lengths += [int(token_rows.lengths[i]) for i in bins[b]]
    return lengths


def run_standard(args, rows) -> dict:
    """The common recipe: transformers Trainer + PEFT, random batches padded to their longest row."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import (
        DataCollatorForSeq2Seq,
        PreTrainedTokenizerFast,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from zhlora.data.preprocess import IGNORE_INDEX

    model, config = build_model(args.preset, args.device, args.dtype, "sdpa", args.max_seq_length, args.gradient_checkpointing)
    _warm_up(model, args.device)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                        pad_token="<unk>", padding_side="right")
    collate = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)
    batches = []  # (row lengths, positions computed) of every collated batch

    def counting_collator(features):
        batch = collate(features)
        batches.append((batch["attention_mask"].sum(dim=1).tolist(), batch["attention_mask"].numel()))
        return batch

    clock = {}

    class Clock(TrainerCallback):
        """Time the training loop only, not the Trainer's set-up."""

        def on_train_begin(self, *unused, **kwargs):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *unused, **kwargs):
            if args.device == "cuda":
                torch.cuda.synchronize()
            clock["end"] = time.perf_counter()

    dataset = [{"input_ids": ids, "labels": labels} for ids, labels in rows]
    training_args = TrainingArguments(
        output_dir=args.scratch, per_device_train_batch_size=args.standard_batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=2e-4, lr_scheduler_type="constant", max_grad_norm=1.0,
        logging_steps=10**9, save_strategy="no", report_to="none", use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16", dataloader_num_workers=0, remove_unused_columns=False, seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=counting_collator,
                      callbacks=[Clock()])
    trainer.train()
    trained = batches[: args.steps]  # the dataloader may collate one batch ahead
    lengths = [length for row_lengths, _ in trained for length in row_lengths]
    return {"trainer": "standard (HF Trainer + PEFT, dynamic padding)", "attention": "sdpa",
            "batch": f"{args.standard_batch} rows padded to the longest", "seconds": clock["end"] - clock["start"],
            "real_tokens": int(sum(lengths)), "total_tokens": int(sum(total for _, total in trained)),
            "useful_flops": useful_flops(lengths, config), "peak_memory_mb": _peak_memory_mb(args.device)}


def _has_flash_attn() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def child(args) -> None:
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    rows = belle_like_rows(args.rows, args.max_seq_length, PRESETS[args.preset]["vocab_size"], seed=0)
    result = (run_zhlora if args.only == "zhlora" else run_standard)(args, rows)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default).")
    parser.add_argument("--max_seq_length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6, help="Optimizer steps per trainer.")
    parser.add_argument("--zhlora_batch", type=int, default=2, help="Packed sequences per step.")
    parser.add_argument("--standard_batch", type=int, default=8, help="Rows per step for the standard recipe.")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2, help="Alternating runs per trainer; the best is reported.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--output", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--only", choices=["zhlora", "standard"], help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default="/tmp/zhlora_bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.only:
        child(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    peaks = {dtype: peak_matmul_flops(args.device, dtype, 4096 if args.device == "cpu" else 8192)
             for dtype in ("float32", "bfloat16")}
    rounds = {"zhlora": [], "standard": []}
    for _ in range(args.rounds):  # alternate, so a change in machine load hits both trainers alike
        for which, runs in rounds.items():
            done = subprocess.run([sys.executable, *sys.argv, "--only", which], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}, check=False)
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                sys.exit(f"{which} failed:\n{done.stderr[-4000:]}")
            result = json.loads(line[0][len("RESULT "):])
            result["load_average_after"] = load_average()
            runs.append(result)
    peak = peaks[args.dtype]
    for runs in rounds.values():
        for r in runs:
            r["tokens_per_second"] = r["real_tokens"] / r["seconds"]
            r["pad_fraction"] = 1 - r["real_tokens"] / r["total_tokens"]
            r["useful_flops_per_second"] = r["useful_flops"] / r["seconds"]
            r["mfu"] = r["useful_flops_per_second"] / peak
    # each trainer's best round: the one least disturbed by other work on the machine
    results = [max(runs, key=lambda r: r["tokens_per_second"]) for runs in rounds.values()]
    ratio = results[0]["tokens_per_second"] / results[1]["tokens_per_second"]
    summary = {"preset": args.preset, "device": args.device, "dtype": args.dtype, "steps": args.steps,
               "max_seq_length": args.max_seq_length, "threads": args.threads, "load_average_before": load,
               "peak_matmul_flops": peaks, "best": results, "rounds": rounds, "speedup_tokens_per_second": ratio,
               "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    print(f"{'trainer':48} {'tokens/s':>9} {'pad':>6} {'peak MB':>8} {'GFLOP/s':>8} {'MFU':>6}")
    for r in results:
        print(f"{r['trainer']:48} {r['tokens_per_second']:9.0f} {r['pad_fraction']:6.1%} {r['peak_memory_mb']:8.0f} "
              f"{r['useful_flops_per_second'] / 1e9:8.1f} {r['mfu']:6.1%}")
    print(f"speed-up (non-pad tokens/s, best of {args.rounds} rounds each): {ratio:.2f}x; {args.dtype} matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; load average before: {load[0]:.2f}, after each round: "
          + ", ".join(f"{r['load_average_after']:.1f}" for runs in rounds.values() for r in runs))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
