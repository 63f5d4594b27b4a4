"""Models and tokenizers: build the tiny Llama, download, import, load, fingerprint, merge.

Import each function from its module (no re-exports, one name per function):

- :mod:`zhlora.models.loading`: ``load_model``, ``load_tokenizer``, ``resolve_dtype``;
- :mod:`zhlora.models.download`: ``download_model``, ``BASE_MODEL_DIRNAME``;
- :mod:`zhlora.models.manifest`: ``model_fingerprint``, ``read_model_manifest``;
- :mod:`zhlora.models.merge`: ``merge_adapter``; :mod:`zhlora.models.tiny`: ``build_tiny_model``;
- :mod:`zhlora.models.gguf` and :mod:`zhlora.models.builtin`: ``.gguf`` imports, ``smollm2-135m``, ``gemma3-270m``.

Every model the experiment touches goes through ``load_model`` and ``load_tokenizer``, so
training and evaluation can never disagree about dtype, padding, BOS handling or which
weight files are trusted.
"""
