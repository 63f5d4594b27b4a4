"""Seed entry point of step 2 (same as `zhlora preprocess`).

    python scripts/preprocess_data.py --data_dir data --output_dir processed_data --model_name_or_path meta-llama/Llama-2-7b-hf
"""

import sys

from zhlora.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("preprocess", sys.argv[1:], prog="scripts/preprocess_data.py"))
