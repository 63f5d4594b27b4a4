"""The files of a PEFT LoRA adapter folder, and the one check that a folder holds one.

Training writes these files, evaluation loads them unmerged and ``zhlora merge`` folds them
into the base weights; all three agree on the names and on refusing pickled weights here.
"""

from __future__ import annotations

from pathlib import Path

from zhlora.errors import ZhloraError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def check_adapter_folder(adapter_dir: str | Path) -> Path:
    """Validate a PEFT adapter folder (``adapter_config.json`` + safetensors weights) and return it."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ZhloraError(
            f"--lora_model_path {folder} does not exist or is not a folder. "
            "Pass the folder `zhlora train` wrote (results/<run>)."
        )
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ZhloraError(
            f"{folder} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter folder. Pass the folder `zhlora train` "
            "wrote (results/<run>, or one of its checkpoint-<step>/ folders)."
        )
    if not (folder / ADAPTER_WEIGHTS).is_file():
        found = "adapter_model.bin (pickled)" if (folder / "adapter_model.bin").is_file() else "no weight file"
        raise ZhloraError(
            f"{folder} holds {found}, not {ADAPTER_WEIGHTS}. zhlora loads safetensors only (pickles can run code): "
            "re-save the adapter with `model.save_pretrained(folder, safe_serialization=True)`."
        )
    return folder
