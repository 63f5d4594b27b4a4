#!/usr/bin/env python
"""Seed-compatible entry point: python scripts/evaluate_baseline.py --model_path models/base_model --results_dir evaluation_results/baseline

The same command as `zhlora evaluate` (all its flags work here too: --benchmarks, --shots,
--limit, --batch_size, --data_dir, --protocol, ...).
"""

import sys

from zhlora.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate", sys.argv[1:], prog="evaluate_baseline.py"))
