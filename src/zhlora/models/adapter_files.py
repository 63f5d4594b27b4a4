"""The files of a PEFT LoRA adapter folder, and the one check that a folder holds one.

Training writes these files, evaluation loads them unmerged and ``zhlora merge`` folds them
into the base weights; all three agree on the names and on refusing pickled weights here.
"""

from __future__ import annotations

import json
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import ADAPTER_CONFIG, ADAPTER_WEIGHTS


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
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZhloraError(
            f"{folder / ADAPTER_CONFIG} is not valid JSON ({exc}); the adapter folder is damaged. Retrain it "
            "(`zhlora train ... --overwrite`) or restore the file from a checkpoint-<step>/ folder of the run."
        ) from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ZhloraError(f"{folder / ADAPTER_CONFIG} is not a PEFT adapter config (no peft_type). Pass the folder "
                          "`zhlora train` wrote (results/<run>).")
    check_safetensors_file(folder / ADAPTER_WEIGHTS, "Retrain the adapter (`zhlora train ... --overwrite`) or use one "
                           "of the run's checkpoint-<step>/ folders.")
    return folder


def check_safetensors_file(path: Path, advice: str) -> None:
    """Raise a ZhloraError naming ``path`` when it is not a complete safetensors file (e.g. truncated).

    Reads only the header and compares the byte ranges it declares with the file's size, so
    it costs nothing even for a 13 GB shard.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ZhloraError(
            f"{path} is not a complete safetensors file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            f"it was probably truncated by an interrupted copy or a full disk. {advice}"
        ) from None
