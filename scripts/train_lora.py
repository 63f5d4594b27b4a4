#!/usr/bin/env python
"""Seed-compatible entry point: python scripts/train_lora.py --model_path models/base_model \
    --dataset_path processed_data/train_dataset --output_dir results/lora-chinese-llama --lora_rank 16

The same command as `zhlora train` (all its flags work here too, and so does
`accelerate launch ... scripts/train_lora.py ...`).
"""

import sys

from zhlora.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:], prog="train_lora.py"))
