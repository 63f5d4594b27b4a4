"""What changed between two settings dicts, in the one phrasing every refusal and log line uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": value}``; an empty mapping stays a value of its own."""
    if isinstance(values, Mapping) and values:
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


def differences(old: Mapping, new: Mapping) -> list[str]:
    """``"key: old -> new"`` for every (dotted, nested) key whose value differs, sorted by key.

    A key missing on one side reads as ``None`` there. Used wherever zhlora refuses to reuse
    an output made with other settings, or logs why a step is redone.
    """
    before, after = _flatten(dict(old)), _flatten(dict(new))
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
