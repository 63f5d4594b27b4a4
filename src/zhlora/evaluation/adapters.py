"""Apply a PEFT LoRA adapter unmerged, scale it, and prove that it is really applied.

The field's classic silent failure is an adapter that loads without error but changes
nothing (wrong key names, a freshly initialised adapter, the wrong folder). The guard here
checks both ends: every LoRA module stored in ``adapter_model.safetensors`` must hold exactly
the stored weights inside the model, and the adapter must change the model's logits on a
probe text. The outcome is recorded as ``model.adapter_check`` in ``results.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.filenames import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from zhlora.models.adapter_files import check_adapter_folder

logger = logging.getLogger(__name__)

ADAPTER_NAME = "default"
PROBE_TEXT = "The capital of France is Paris. 北京是中国的首都。"


def adapter_rank(adapter_dir: str | Path) -> int:
    """The largest LoRA rank in an adapter's config (``r`` and any ``rank_pattern`` value)."""
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])


def load_adapter(model, adapter_dir: str | Path):
    """Wrap ``model`` in a ``PeftModel`` with the adapter in ``adapter_dir``, unmerged, for inference.

    Raises a ZhloraError when the adapter does not fit the model (trained on another base).
    """
    from peft import PeftModel

    folder = check_adapter_folder(adapter_dir)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    trained_on = config.get("base_model_name_or_path") or "an unrecorded base model"
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=ADAPTER_NAME, is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = next((line for line in lines if "size mismatch" in line), lines[0])
        raise ZhloraError(
            f"The LoRA adapter in {folder} does not fit this base model ({detail[:300]}). It was trained on "
            f"{trained_on}; evaluate it with that base model (--base_model_path)."
        ) from None
    peft_model.eval()
    return peft_model


def _lora_layers(peft_model):
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in peft_model.named_modules() if isinstance(module, LoraLayer)]


def set_adapter_scale(peft_model, scale: float) -> None:
    """Scale the LoRA update of every layer: ``W + scale * (alpha / r) * B A`` (0 = base model, 1 = as trained)."""
    for _, module in _lora_layers(peft_model):
        module.set_scale(ADAPTER_NAME, scale)


@torch.no_grad()
def _max_logit_change(peft_model, tokenizer) -> float:
    """Largest absolute logit difference, adapter on vs off, over a probe text."""
    device = peft_model.get_input_embeddings().weight.device
    ids = torch.tensor([tokenizer(PROBE_TEXT)["input_ids"]], device=device)
    with_adapter = peft_model(input_ids=ids).logits.float()
    with peft_model.disable_adapter():
        without = peft_model(input_ids=ids).logits.float()
    return float((with_adapter - without).abs().max())


def check_adapter_applied(peft_model, tokenizer, adapter_dir: str | Path) -> dict:
    """Verify that the adapter's weights sit in the model and change its logits (at scale 1).

    Returns ``{expected_modules, applied_modules, max_logit_change, ok, message}``: a module is
    *applied* when the model holds LoRA A and B weights equal to those stored for it in
    ``adapter_model.safetensors``; ``ok`` needs every stored module applied and a logit change.
    """
    from safetensors import safe_open

    params = dict(peft_model.named_parameters())
    stored: dict[str, list[tuple[str, torch.Tensor]]] = {}
    with safe_open(str(Path(adapter_dir) / ADAPTER_WEIGHTS), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not dicts
            for part in (".lora_A.weight", ".lora_B.weight"):
                if key.endswith(part):
                    module = key[: -len(part)]
                    stored.setdefault(module, []).append((key[: -len(".weight")] + f".{ADAPTER_NAME}.weight", handle.get_tensor(key)))
    applied = 0
    for tensors in stored.values():
        if all(name in params and torch.equal(params[name].detach().cpu(), tensor.to(params[name].dtype)) for name, tensor in tensors):
            applied += 1
    change = _max_logit_change(peft_model, tokenizer)
    ok = bool(stored) and applied == len(stored) and change > 0.0
    if ok:
        message = f"adapter applied: {applied} LoRA modules loaded, max logit change {change:.4g}"
    elif applied < len(stored) or not stored:
        message = (f"ADAPTER NOT APPLIED: only {applied} of the {len(stored)} LoRA modules in {ADAPTER_WEIGHTS} were loaded "
                   "into the model (module names do not match this base model); these scores are not the trained adapter's")
    else:
        message = ("ADAPTER HAS NO EFFECT: its weights loaded but do not change the logits at all (an untrained adapter, "
                   "lora_B still zero?); these scores are the base model's")
    return {"expected_modules": len(stored), "applied_modules": applied, "max_logit_change": round(change, 6),
            "ok": ok, "message": message}
