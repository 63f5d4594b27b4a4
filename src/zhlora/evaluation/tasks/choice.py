"""Hooks of the multiple-choice specs: template fields and the letter tokens of official scoring."""

from __future__ import annotations

from collections.abc import Callable

from zhlora.data.records import ChoiceQuestion
from zhlora.errors import ZhloraError


def subject_fields(subject: str, name_zh: str | None) -> dict[str, str]:
    """Fields of a description template: ``{subject}``, ``{name_zh}``, ``{subject_words}``."""
    return {"subject": subject, "name_zh": name_zh or subject, "subject_words": subject.replace("_", " ")}


def question_fields(question: ChoiceQuestion) -> dict[str, str]:
    """Fields of a question template: ``{question}``, ``{question_stripped}``, ``{A}``..``{D}``."""
    fields = {"question": question.question, "question_stripped": question.question.strip()}
    fields.update(zip("ABCD", question.choices))
    return fields


def _first_token(tokenizer, letter: str) -> int:
    """``encode(letter)[0]`` without special tokens: ``▁A`` for Llama (official C-Eval)."""
    return tokenizer.encode(letter, add_special_tokens=False)[0]


def _bare_piece(tokenizer, letter: str) -> int:
    """``convert_tokens_to_ids(letter)``: the bare ``A`` piece (official CMMLU)."""
    return tokenizer.convert_tokens_to_ids(letter)


LETTER_TOKEN_HOOKS: dict[str, Callable] = {"first_token": _first_token, "bare_piece": _bare_piece}


def letter_token_ids(tokenizer, hook: str, letters: tuple[str, ...]) -> list[int]:
    """The token id scored for each answer letter under ``hook`` (see :data:`LETTER_TOKEN_HOOKS`).

    Raises a ZhloraError when two letters map to one id (e.g. both to ``<unk>`` because the
    tokenizer has no bare ``A`` piece): the scores would tie and every answer would be "A".
    """
    if hook not in LETTER_TOKEN_HOOKS:
        raise ZhloraError(f'Unknown letter-token hook "{hook}"; known: {", ".join(LETTER_TOKEN_HOOKS)}.')
    ids = [LETTER_TOKEN_HOOKS[hook](tokenizer, letter) for letter in letters]
    if len(set(ids)) != len(ids) or tokenizer.unk_token_id in ids:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ZhloraError(
            f"The official prompt scores one token per answer letter ({hook}), but this tokenizer maps "
            f"{list(letters)} to {pieces}, so the options cannot be told apart. Use --protocol lm-eval."
        )
    return ids
