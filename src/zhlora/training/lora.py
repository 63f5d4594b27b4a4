"""The LoRA adapter: a thin, checked wrapper over PEFT's ``LoraConfig`` and ``get_peft_model``."""

from __future__ import annotations

import re

import torch

from zhlora.errors import ConfigError

# init_lora_weights values zhlora can train with. Data-driven (eva, corda) and quantization-aware
# (loftq) initialisations need extra inputs PEFT takes from elsewhere; they are refused, not ignored.
_PLAIN_INITS = ("true", "false", "gaussian", "orthogonal")
# These rewrite the base weights at initialisation; the final adapter is converted back to a
# standard LoRA against the original base (PEFT's path_initial_model_for_weight_conversion).
MUTATING_INITS = ("pissa", "olora")


def parse_init_lora_weights(value: str) -> bool | str:
    """``--init_lora_weights`` as PEFT takes it: True/False or a method name."""
    text = str(value).strip().lower()
    if text in ("true", "false"):
        return text == "true"
    if text in _PLAIN_INITS or text in MUTATING_INITS or re.fullmatch(r"pissa_niter_\d+", text):
        return text
    raise ConfigError(
        f'--init_lora_weights "{value}" is not supported. Use one of: true (B=0, the LoRA paper), false, '
        "gaussian, orthogonal, pissa, pissa_niter_<N> (fast SVD) or olora."
    )


def is_mutating_init(init: bool | str) -> bool:
    """True when the initialisation changes the base weights (PiSSA, OLoRA)."""
    return isinstance(init, str) and init.split("_niter_")[0] in MUTATING_INITS


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last-name components of the model's ``nn.Linear`` layers (what LoRA can target)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)})


def check_target_modules(model: torch.nn.Module, target_modules: list[str]) -> None:
    """Raise a ConfigError naming every requested module the model does not have, and listing those it has."""
    available = linear_module_names(model)
    missing = [name for name in target_modules if name not in available]
    if missing:
        raise ConfigError(
            f"--target_modules: the model has no linear layer named {', '.join(missing)}. "
            f"Layers LoRA can adapt in this model: {', '.join(available)}."
        )


def build_lora_config(
    rank: int, alpha: float, dropout: float, target_modules: list[str],
    use_rslora: bool, use_dora: bool, init_lora_weights: bool | str,
):
    """PEFT's ``LoraConfig`` for a causal LM (no bias training, the paper's recipe)."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        use_rslora=use_rslora,
        use_dora=use_dora,
        init_lora_weights=init_lora_weights,
    )


def apply_lora(model: torch.nn.Module, lora_config) -> torch.nn.Module:
    """Freeze ``model`` and wrap it with the adapter; adapter weights are float32 (PEFT's autocast)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config, autocast_adapter_dtype=True)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
