"""Merging a LoRA adapter into its base model: ``W' = W + (alpha / r) * B @ A``, saved as a full model.

A merged model runs without PEFT at inference speed and can be served or evaluated like any
base model. The merge is computed in float32 (bf16 rounding of the update would otherwise
change logits), then saved in the base model's own stored dtype unless asked otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from zhlora.io_utils import check_not_a_file, replace_folder, sha256_file, staging_folder
from zhlora.models.adapter_files import check_adapter_folder

logger = logging.getLogger(__name__)

SAVE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _stored_dtype(base_model_path: Path) -> str:
    """The dtype a checkpoint's config.json says its weights are stored in (float32 if unsaid)."""
    config = json.loads((base_model_path / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return name if name in SAVE_DTYPES else "float32"


def check_not_an_input(output_dir: Path, inputs: dict[str, Path]) -> None:
    """Refuse (even with ``--overwrite``) an output folder that is, or contains, one of the merge's inputs.

    Replacing it would destroy the base model or the adapter the merged model is made from.
    """
    target = output_dir.resolve()
    for flag, path in inputs.items():
        source = Path(path).resolve()
        if target == source or target in source.parents:
            where = "is" if target == source else "contains"
            raise ZhloraError(
                f"--output_dir {output_dir} {where} {flag} {path}: writing the merged model there would replace the "
                f"{'base model' if 'base' in flag else 'adapter'} it is made from, so zhlora refuses it even with "
                f"--overwrite. Choose a new folder, for example --output_dir {output_dir.parent / 'merged_model'}.")


def merge_adapter(
    base_model_path: str | Path,
    lora_model_path: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    save_dtype: str = "auto",
) -> Path:
    """Merge the adapter at ``lora_model_path`` into the base model; write a full model folder.

    The folder gets the merged ``model.safetensors``, the base model's tokenizer and licence
    files (copied unchanged) and a ``zhlora_manifest.json`` naming the base weights and the
    adapter by sha256. ``save_dtype="auto"`` keeps the base checkpoint's stored dtype.
    A non-empty ``output_dir`` is replaced only with ``overwrite``.
    """
    import torch
    from peft import PeftModel

    from zhlora.models.download import LICENCE_PATTERNS, TOKENIZER_FILES
    from zhlora.models.loading import load_model
    from zhlora.models.manifest import model_fingerprint, write_manifest

    base_model_path, lora_model_path, output_dir = Path(base_model_path), Path(lora_model_path), Path(output_dir)
    if save_dtype not in SAVE_DTYPES:
        raise ZhloraError(f'--save_dtype must be one of {", ".join(SAVE_DTYPES)}, got "{save_dtype}".')
    check_not_an_input(output_dir, {"--base_model_path": base_model_path, "--lora_model_path": lora_model_path})
    check_not_a_file(output_dir, "--output_dir")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise ZhloraError(f"{output_dir} is not empty; pass --overwrite to replace it, or choose another --output_dir.")
    check_adapter_folder(lora_model_path)
    base = load_model(base_model_path, torch_dtype="float32")
    try:
        merged = PeftModel.from_pretrained(base, lora_model_path).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ZhloraError(
            f"The adapter in {lora_model_path} does not fit the base model in {base_model_path} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Merge it into the model it was trained on."
        ) from None
    dtype_name = _stored_dtype(base_model_path) if save_dtype == "auto" else save_dtype
    merged = merged.to(getattr(torch, dtype_name))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = staging_folder(output_dir.parent, f".{output_dir.name}.")
    staging = scratch / output_dir.name
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        for source in sorted(base_model_path.iterdir()):
            if source.is_file() and (source.name in TOKENIZER_FILES or any(source.match(p) for p in LICENCE_PATTERNS)):
                shutil.copy2(source, staging / source.name)
        write_manifest(
            staging, source="merge", model_name_or_path=str(base_model_path.resolve()), revision=None,
            revision_requested=None, dtype=dtype_name,
            base_model={"path": str(base_model_path.resolve()), "weights_sha256": model_fingerprint(base_model_path)},
            adapter={"path": str(lora_model_path.resolve()),
                     "adapter_sha256": sha256_file(lora_model_path / ADAPTER_WEIGHTS),
                     "config": json.loads((lora_model_path / ADAPTER_CONFIG).read_text(encoding="utf-8"))},
        )
        replace_folder(staging, output_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("Merged %s into %s -> %s (%s)", lora_model_path, base_model_path, output_dir, dtype_name)
    return output_dir
