#!/usr/bin/env bash
# LoRA training throughput on one GPU: zhlora's packed loop vs the standard recipe (HF Trainer + PEFT,
# random batches padded to their longest row) on a Llama-2-7B-shaped model with random weights
# (hidden 4096, 32 layers, bf16 base, float32 LoRA r=16 on all seven projections), BELLE-like rows
# (median ~200 tokens, long tail) and sequence length 2048. Reports non-pad tokens/s, pad fraction,
# peak GPU memory and MFU against the bf16 matmul peak measured on this GPU.
#
#   bash perf/gpu_train.sh                     # ~10 min on one A100/H100-class GPU (>= 40 GB)
#   STEPS=20 ZHLORA_BATCH=2 STANDARD_BATCH=16 bash perf/gpu_train.sh
#
# zhlora uses flash-attention varlen when flash_attn is installed (pip install flash-attn), else sdpa with
# a block-diagonal mask. Gradient checkpointing is on for both trainers (a padded batch of 16 rows up
# to 2048 tokens does not fit otherwise). Writes perf/gpu_train_result.json.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
"${PYTHON:-python3}" perf/train_throughput.py \
  --preset llama2-7b --device cuda --dtype bfloat16 --max_seq_length 2048 \
  --steps "${STEPS:-10}" --zhlora_batch "${ZHLORA_BATCH:-2}" --standard_batch "${STANDARD_BATCH:-16}" \
  --rows 20000 --rounds 1 --gradient_checkpointing \
  --output perf/gpu_train_result.json "$@"
