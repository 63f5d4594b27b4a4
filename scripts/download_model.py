#!/usr/bin/env python
"""Seed-compatible entry point: python scripts/download_model.py --model_name_or_path meta-llama/Llama-2-7b-hf --output_dir models

The same command as `zhlora download-model` (all its flags work here too).
"""

import sys

from zhlora.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("download-model", sys.argv[1:], prog="download_model.py"))
