"""The data layer: sources -> normalized records (step 1) and tokenized training sets (step 2).

- ``sources``: ``download_data`` (step 1), the ``--source`` kinds, the manifest.
- ``hub``: the table of upstream hub files and the hub / ModelScope downloads.
- ``builders`` / ``normalize`` / ``readers``: upstream files -> records, with strict checks.
- ``categories``: subject -> category tables of C-Eval, CMMLU and MMLU.
- ``templates``: ``render_prompt``; ``preprocess``: ``preprocess_data`` (step 2).
"""
