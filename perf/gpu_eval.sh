#!/usr/bin/env bash
# Evaluation throughput on one GPU: zhlora vs lm-evaluation-harness on a Llama-2-7B-shaped model
# with random weights (hidden 4096, 32 layers, bf16; ~6.7B parameters), 5-shot MMLU and CMMLU
# subsets of ../shared/data, the same fixed batch size for both tools.
#
#   bash perf/gpu_eval.sh                 # ~10-20 min on one A100/H100-class GPU
#   ITEMS=50 BATCH=32 bash perf/gpu_eval.sh
#
# Needs: a CUDA GPU with >= 40 GB, ../shared/data, and PyPI access for lm-eval (installed into
# perf/.venv on the first run). Writes perf/gpu_eval_result.json. bf16 rounding can
# flip a near-tie, so "identical_predictions" may fall a few items short of "items" on GPU;
# "identical_prompts" must equal "items".
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
"${PYTHON:-python3}" perf/eval_throughput.py \
  --device cuda --torch_dtype bfloat16 \
  --hidden_size 4096 --layers 32 --intermediate_size 11008 \
  --items_per_subject "${ITEMS:-40}" --batch_size "${BATCH:-16}" \
  --out perf/gpu_eval_result.json "$@"
