"""The records that flow between layers (see docs/architecture.md).

Each normalized data file ``data/<source>/<split>.jsonl`` holds one of these per line, as
produced by :func:`dataclasses.asdict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANSWER_LETTERS = ("A", "B", "C", "D")


@dataclass
class Instruction:
    """One supervised fine-tuning row (BELLE, alpaca replay data)."""

    instruction: str
    input: str
    output: str


@dataclass
class ChoiceQuestion:
    """One four-option multiple-choice item (C-Eval, CMMLU, MMLU).

    ``answer`` is a letter A-D, or None for C-Eval test rows (answers not released);
    ``explanation`` is only set for C-Eval rows that carry one (dev).
    """

    id: str
    subject: str
    question: str
    choices: list[str]
    answer: str | None
    explanation: str | None = None


@dataclass
class MathProblem:
    """One GSM8K problem; ``answer_text`` is the full worked solution ending in ``#### N``."""

    id: str
    question: str
    answer_text: str
    answer_number: str


@dataclass
class TextDocument:
    """A piece of held-out text for a perplexity probe."""

    text: str
    meta: dict = field(default_factory=dict)
