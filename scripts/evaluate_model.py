#!/usr/bin/env python
"""Seed-compatible entry point: python scripts/evaluate_model.py --base_model_path models/base_model \
    --lora_model_path results/lora-chinese-llama --results_dir evaluation_results/lora

The same command as `zhlora evaluate` with an adapter (all its flags work here too, e.g.
--adapter_scale 0.5). When evaluation_results/baseline/results.json exists beside the results
folder (or --baseline_results names one), the forgetting comparison is written as well.
"""

import sys

from zhlora.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate", sys.argv[1:], prog="evaluate_model.py"))
