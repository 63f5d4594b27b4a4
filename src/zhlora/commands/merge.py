"""``zhlora merge``: fold a LoRA adapter into its base model and save a full model.

Example::

    zhlora merge --base_model_path models/base_model --lora_model_path results/lora-chinese-llama \
        --output_dir models/merged_model

Memory: the merge runs in float32 on the CPU, about 4 bytes per parameter (28 GB for 7B).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the base model, the adapter, the output folder, overwrite, saved dtype."""
    parser.add_argument("--base_model_path", required=True, help="Base model folder (models/base_model).")
    parser.add_argument("--lora_model_path", required=True, help="Adapter folder with adapter_model.safetensors (results/<run>).")
    parser.add_argument("--output_dir", required=True, help="Folder for the merged full model.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output_dir.")
    parser.add_argument("--save_dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the saved weights; auto keeps the base checkpoint's dtype (default: auto).")


def main(args: argparse.Namespace) -> int:
    """Merge and report where the merged model went."""
    from zhlora.models.loading import check_model_argument
    from zhlora.models.manifest import model_fingerprint
    from zhlora.models.merge import merge_adapter

    check_model_argument(args.base_model_path, "--base_model_path")

    folder = merge_adapter(args.base_model_path, args.lora_model_path, args.output_dir,
                           overwrite=args.overwrite, save_dtype=args.save_dtype)
    print(f"{folder}: merged model (weights sha256 {model_fingerprint(folder)})")
    return 0
