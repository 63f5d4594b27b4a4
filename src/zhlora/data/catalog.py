"""The data sources zhlora knows: their names, the default set and one line on each.

The list lives in the data layer; :mod:`zhlora.config` imports it for the ``--datasets``
default and its check (never the reverse).
"""

from __future__ import annotations

ALL_DATA_SOURCES = ["belle", "ceval", "cmmlu", "mmlu", "gsm8k", "english_text"]
# Downloaded only when named (or when replay_ratio > 0): English instructions for replay.
OPTIONAL_DATA_SOURCES = ["alpaca"]

SOURCE_DESCRIPTIONS: dict[str, str] = {
    "belle": "BELLE Chinese instructions (train sample + held-out slice)",
    "ceval": "C-Eval, 52 subjects, 4-choice (dev / val / test)",
    "cmmlu": "CMMLU, 67 subjects, 4-choice (dev / test)",
    "mmlu": "MMLU, 57 subjects, 4-choice (dev / val / test)",
    "gsm8k": "GSM8K grade-school math (train / test)",
    "english_text": "WikiText-2 test articles, English perplexity probe",
    "alpaca": "Stanford Alpaca English instructions, for replay (only when asked)",
}
