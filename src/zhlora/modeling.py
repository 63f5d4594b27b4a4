"""Models and tokenizers: build the tiny Llama, download, load, fingerprint, merge.

This is the public API the other layers import; the code lives in :mod:`zhlora.models`.
Every model the experiment touches goes through :func:`load_model` and
:func:`load_tokenizer`, so training and evaluation can never disagree about dtype,
padding, BOS handling or which weight files are trusted.
"""

from __future__ import annotations

from zhlora.models.download import BASE_MODEL_DIRNAME, download_model
from zhlora.models.loading import load_model, load_tokenizer, resolve_dtype
from zhlora.models.manifest import MANIFEST_NAME, model_fingerprint, read_manifest
from zhlora.models.merge import merge_adapter
from zhlora.models.tiny import TINY_MODEL_NAME, build_tiny_model

__all__ = [
    "BASE_MODEL_DIRNAME",
    "MANIFEST_NAME",
    "TINY_MODEL_NAME",
    "build_tiny_model",
    "download_model",
    "load_model",
    "load_tokenizer",
    "merge_adapter",
    "model_fingerprint",
    "read_manifest",
    "resolve_dtype",
]
