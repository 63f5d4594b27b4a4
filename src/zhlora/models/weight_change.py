"""The weight-change spectrum of a fine-tuning run: how many directions the update ΔW really uses.

For every adapted linear layer, ΔW is

- LoRA: (α/r)·B·A (rank-stabilised LoRA: α/√r), read from the PEFT adapter's safetensors;
- full fine-tuning: W_tuned − W_base, read from the two model folders.

Per layer we report the *rank at 90%*, the fewest singular directions whose squared singular
values hold 90% of ‖ΔW‖²_F (an "effective rank" as in Biderman et al. 2024, who find full
fine-tuning needs 10–100× the rank of typical LoRA), and ‖ΔW‖_F / ‖W_base‖_F, then summarise per
module type (q, k, v, o, gate, up, down). A LoRA ΔW has rank ≤ r, so its singular values come from
the small r×r core of two QR factorisations; a full ΔW takes one SVD per matrix (SmolLM2-135M:
210 matrices, seconds on a CPU). DoRA rescales columns by learned magnitudes, so its ΔW is not
B·A alone: it is refused here rather than reported wrongly.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import ADAPTER_CONFIG, ADAPTER_WEIGHTS

ENERGY = 0.9  # the share of ‖ΔW‖² the reported rank explains
MODULE_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])\.weight$")


def rank_at(singular_values, energy: float = ENERGY) -> int:
    """The fewest leading singular values whose squares sum to at least ``energy`` of all squares (0 for ΔW = 0)."""
    import torch

    squares = torch.as_tensor(singular_values, dtype=torch.float64) ** 2
    total = float(squares.sum())
    if total == 0.0:
        return 0
    cumulative = torch.cumsum(torch.sort(squares, descending=True).values, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=torch.float64)).item()) + 1


def lora_singular_values(a, b, scale: float):
    """Singular values of scale·B·A (B: out×r, A: r×in) from the r×r core R_B·R_Aᵀ of two QRs."""
    import torch

    _, r_b = torch.linalg.qr(b.double())
    _, r_a = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(scale * (r_b @ r_a.T))


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ZhloraError(f"{model_dir} holds no *.safetensors weights; pass a model folder written by download-model "
                          "or by a full fine-tuning run.")
    return files


def _tensor_index(model_dir: Path) -> dict[str, Path]:
    from safetensors import safe_open

    index = {}
    for path in _weight_files(model_dir):
        with safe_open(str(path), framework="pt") as handle:
            index.update({key: path for key in handle.keys()})
    return index


def _read(index: dict[str, Path], key: str):
    from safetensors import safe_open

    with safe_open(str(index[key]), framework="pt") as handle:
        return handle.get_tensor(key)


def _module_type(module: str) -> str | None:
    last = module.rsplit(".", 1)[-1]
    return last if last in MODULE_TYPES else None


def lora_weight_change(base_model_dir: str | Path, adapter_dir: str | Path) -> list[dict]:
    """One row per adapted matrix: ``{module, type, rank90, singular_values, relative_norm}``."""
    import torch
    from safetensors import safe_open

    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if config.get("use_dora"):
        raise ZhloraError(f"{adapter_dir} is a DoRA adapter: its update rescales columns by learned magnitudes, so "
                          "the spectrum of B·A alone would misstate it. Merge it (zhlora merge) and compare the merged "
                          "model with the base model instead.")
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    pairs: dict[str, dict] = {}
    with safe_open(str(adapter_dir / ADAPTER_WEIGHTS), framework="pt") as handle:
        for key in handle.keys():
            match = _LORA_KEY.match(key)
            if match:
                pairs.setdefault(match["module"], {})[match["side"]] = handle.get_tensor(key)
    base = _tensor_index(base_model_dir)
    rows = []
    for module, sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            continue
        if not all(bool(torch.isfinite(t).all()) for t in sides.values()):
            rows.append(_diverged(module))
            continue
        values = lora_singular_values(sides["A"], sides["B"], scale)
        weight_key = f"{module}.weight"
        base_norm = float(_read(base, weight_key).double().norm()) if weight_key in base else None
        rows.append(_row(module, values, base_norm))
    return rows


def full_weight_change(base_model_dir: str | Path, tuned_model_dir: str | Path) -> list[dict]:
    """One row per linear matrix of the module types that changed between two model folders."""
    import torch

    base, tuned = _tensor_index(Path(base_model_dir)), _tensor_index(Path(tuned_model_dir))
    rows = []
    for key in sorted(base):
        module = key.removesuffix(".weight")
        if not key.endswith(".weight") or _module_type(module) is None or key not in tuned:
            continue
        before = _read(base, key).double()
        delta = _read(tuned, key).double() - before
        if not bool(torch.isfinite(delta).all()):
            rows.append(_diverged(module))
            continue
        rows.append(_row(module, torch.linalg.svdvals(delta), float(before.norm())))
    return rows


def _diverged(module: str) -> dict:
    """A matrix whose update holds NaN or inf (a diverged run): no spectrum."""
    return {"module": module, "type": _module_type(module) or module.rsplit(".", 1)[-1], "rank90": None,
            "max_rank": None, "delta_norm": None, "relative_norm": None, "non_finite": True}


def _row(module: str, values, base_norm: float | None) -> dict:
    delta_norm = float((values.double() ** 2).sum().sqrt())
    return {"module": module, "type": _module_type(module) or module.rsplit(".", 1)[-1], "rank90": rank_at(values),
            "max_rank": int(values.numel()), "delta_norm": delta_norm,
            "relative_norm": delta_norm / base_norm if base_norm else None}


def summarize(rows: list[dict], method: str, lora_rank: int | None) -> dict:
    """Per module type: median and max rank at 90%, mean ‖ΔW‖/‖W‖; the run's overall median."""
    diverged = sum(1 for r in rows if r.get("non_finite"))
    rows_ok = [r for r in rows if not r.get("non_finite")]
    by_type = {}
    for kind in [t for t in MODULE_TYPES if any(r["type"] == t for r in rows_ok)]:
        members = [r for r in rows_ok if r["type"] == kind]
        norms = [r["relative_norm"] for r in members if r["relative_norm"] is not None]
        by_type[kind] = {"matrices": len(members), "rank90_median": statistics.median(r["rank90"] for r in members),
                         "rank90_max": max(r["rank90"] for r in members),
                         "relative_norm_mean": statistics.fmean(norms) if norms else None}
    return {"method": method, "lora_rank": lora_rank, "energy": ENERGY, "matrices": len(rows_ok),
            "non_finite_matrices": diverged,
            "rank90_median": statistics.median(r["rank90"] for r in rows_ok) if rows_ok else None,
            "by_type": by_type, "rows": rows}
