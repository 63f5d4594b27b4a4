"""The trained weights of a run, for both fine-tuning types: where they live and how they load.

- LoRA: ``adapter_model.safetensors`` + ``adapter_config.json`` (a PEFT adapter);
- full fine-tuning: a Hugging Face model folder (``config.json``, ``model.safetensors`` or
  ``model-XXXXX-of-XXXXX.safetensors`` + index, the tokenizer) with a ``zhlora_manifest.json``
  written last, so ``zhlora evaluate --model_path results/<run>`` reads it like any model.

Checkpoints hold the same files per step (``checkpoint-<step>/``), and the forgetting monitor's
snapshots too; :func:`load_trained_weights` restores either kind into the model being trained.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import ADAPTER_WEIGHTS, MODEL_MANIFEST
from zhlora.io_utils import share_per_umask

logger = logging.getLogger(__name__)

# What a full fine-tuning run writes beside its logs (besides the safetensors shards): --overwrite removes them.
FULL_MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja",
                    "added_tokens.json", MODEL_MANIFEST)


def final_weights(folder: str | Path) -> Path | None:
    """The file that says a run folder holds finished weights: the adapter, or the full model's manifest."""
    folder = Path(folder)
    for name in (ADAPTER_WEIGHTS, MODEL_MANIFEST):
        if (folder / name).is_file():
            return folder / name
    return None


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a saved state: the adapter, or every shard of a full model."""
    folder = Path(folder)
    if (folder / ADAPTER_WEIGHTS).is_file():
        return [folder / ADAPTER_WEIGHTS]
    return sorted(folder.glob("model*.safetensors"))


def load_trained_weights(model, folder: str | Path) -> None:
    """Load a saved adapter (PEFT model) or full model state (plain model) from ``folder`` into ``model``.

    Raises:
        ZhloraError: nothing to load, or the saved tensors do not fit the model (other settings).
    """
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise ZhloraError(f"{folder} holds no {ADAPTER_WEIGHTS} and no model*.safetensors to resume from; delete it "
                          "and rerun, or pass --overwrite to start over.")
    saved = {}
    for path in files:
        saved.update(load_file(str(path)))
    if (folder / ADAPTER_WEIGHTS).is_file():
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        set_peft_model_state_dict(model, saved)
        loaded = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
        unknown = sorted(set(saved) - set(state))
        if unknown:
            raise ZhloraError(f"{folder} holds tensors this model lacks ({', '.join(unknown[:3])}): it was saved from "
                              "another model. Resume with the settings of that run, or pass --overwrite.")
        model.load_state_dict(saved, strict=False)  # tied weights (lm_head = embeddings) are saved once
        loaded = model.state_dict()
    if set(saved) - set(loaded) or any(not torch.equal(loaded[k].cpu(), saved[k].cpu()) for k in saved):
        raise ZhloraError(f"The weights in {folder} do not fit this model (different --target_modules, --lora_rank or "
                          "--finetuning_type?). Resume with the settings of that run, or start over with --overwrite.")


def save_full_model(accelerator, model, tokenizer, output_dir: Path, finetuned_from: dict) -> None:
    """Write the fine-tuned model as a Hugging Face folder into ``output_dir``, manifest last (main process saves).

    Each file is written into ``.model.tmp`` and moved into place; ``zhlora_manifest.json`` (source
    ``finetune``, the base model's path and weights sha256 in ``finetuned_from``) marks it complete.
    """
    from zhlora.models.manifest import write_manifest

    tmp = output_dir / ".model.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    accelerator.unwrap_model(model).save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True,
                                                    max_shard_size="5GB")
    tokenizer.save_pretrained(str(tmp))
    share_per_umask(tmp)
    names = sorted(path.name for path in tmp.iterdir() if path.is_file())
    for name in names:
        os.replace(tmp / name, output_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
    write_manifest(output_dir, "finetune", str(output_dir), None, only=names, finetuned_from=finetuned_from)
    logger.info("Saved the fully fine-tuned model to %s (zhlora evaluate --model_path %s)", output_dir, output_dir)

