#!/usr/bin/env bash
# Every GPU measurement of perf/README.md in one prepared script, sized for a ~9-minute lease of
# one H100/H200-class GPU (7B-shaped model with random weights; no weights or network needed):
#
#   1. the bf16 and fp32 matmul peak of this GPU (the MFU denominator) — inside step 2;
#   2. gpu_train.sh: zhlora's packed loop vs HF Trainer + PEFT, gradient checkpointing on for both;
#   3. zhlora alone without gradient checkpointing (its memory allows it on a 141 GB card);
#   4. gpu_eval.sh: zhlora vs lm-evaluation-harness, 5-shot MMLU + CMMLU subsets.
#
#   bash perf/gpu_session.sh [OUTPUT_FOLDER]      # results and logs go to OUTPUT_FOLDER (default perf/gpu_out)
#
# Offline machines: wheels in .whl/ (lm-eval and the packages the machine lacks) are installed into
# /tmp/site first, and a copy of the data folder in .gpudata/ (mmlu, cmmlu, tokenizers/llama2,
# README.md) stands in for ../shared/data. Each step has its own time limit, so one failing step
# still leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-perf/gpu_out}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
[ -d .gpudata ] && export ZHLORA_SHARED_DATA="$PWD/.gpudata"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
  "$PY" -c "import lm_eval, datasets, pyarrow; print('lm_eval', lm_eval.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
} 2>&1 | tee "$OUT_DIR/environment.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s) $(date -u +%T)"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1
  echo "   exit $? $(date -u +%T)"; tail -n 6 "$OUT_DIR/$name.log"
}

step train_checkpointing "${TRAIN_LIMIT:-210}" env STEPS="${STEPS:-8}" STANDARD_BATCH="${STANDARD_BATCH:-8}" \
  bash perf/gpu_train.sh --output "$OUT_DIR/gpu_train_result.json"
step train_zhlora_no_checkpointing "${NOCKPT_LIMIT:-100}" "$PY" perf/train_throughput.py --preset llama2-7b \
  --device cuda --dtype bfloat16 --max_seq_length 2048 --steps "${STEPS:-8}" --zhlora_batch 2 --rows 20000 --only zhlora
step eval "${EVAL_LIMIT:-240}" env ITEMS="${ITEMS:-25}" BATCH="${BATCH:-16}" \
  bash perf/gpu_eval.sh --lm_eval_python "$PY" --out "$OUT_DIR/gpu_eval_result.json"
ls -la "$OUT_DIR"
