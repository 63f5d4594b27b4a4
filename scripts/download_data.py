"""Seed entry point of step 1 (same as `zhlora download-data`).

    python scripts/download_data.py --output_dir data --belle_sample_size 50000 [--source sample|local:DIR|hf|modelscope]
"""

import sys

from zhlora.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("download-data", sys.argv[1:], prog="scripts/download_data.py"))
