"""Typed requests between benchmark specs and model engines, and their tokenization.

Tasks build requests, engines answer batches of them, scoring turns answers into numbers.
Tokenization follows lm-evaluation-harness so that log-likelihoods are comparable with it:
trailing whitespace of the context moves into the continuation, then
``encode(context + continuation)`` is split after ``len(encode(context))`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from zhlora.data.preprocess import IGNORE_INDEX, encode_instructions
from zhlora.errors import ZhloraError
from zhlora.evaluation.prompts import Prompt


@dataclass(frozen=True)
class ChoiceRequest:
    """Score each option of one multiple-choice item given ``prompt``.

    Exactly one of the two is set:
    ``continuations`` — strings scored by their summed log-probability after the prompt
    (lm-eval's ``" A"`` .. ``" D"``); ``letter_token_ids`` — token ids whose next-token
    log-probability at the last prompt position is the score (official C-Eval/CMMLU).
    """

    prompt: Prompt
    continuations: tuple[str, ...] = ()
    letter_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class EncodedChoice:
    """A :class:`ChoiceRequest` as tokens: the context and one token list per option."""

    context_ids: list[int]
    continuation_ids: list[list[int]]


@dataclass(frozen=True)
class ScoredSequence:
    """A token sequence whose tail ``input_ids[first_target:]`` is scored, token by token.

    Token ``t`` (``t >= first_target >= 1``) is predicted from ``input_ids[:t]``; the engine
    returns the summed negative log-likelihood (nats) and the number of scored tokens.
    """

    input_ids: list[int]
    first_target: int


def _encode(tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    # verbose=False: long few-shot prompts are expected; the engine truncates them itself.
    return tokenizer(texts, add_special_tokens=add_special_tokens, verbose=False)["input_ids"]


def encode_choice(tokenizer, request: ChoiceRequest) -> EncodedChoice:
    """Tokenize a choice request the way lm-eval's HF backend does (``_encode_pair``).

    Example: context ``"...答案："`` and continuation ``" A"`` encode as
    ``encode("...答案： A")`` split after ``len(encode("...答案："))`` tokens, so the
    continuation is ``[▁A]`` with the Llama tokenizer.
    """
    context = request.prompt.text
    if request.letter_token_ids:
        return EncodedChoice(_encode(tokenizer, [context])[0], [[token] for token in request.letter_token_ids])
    stripped = context.rstrip()
    moved = context[len(stripped):]
    encoded = _encode(tokenizer, [stripped] + [stripped + moved + c for c in request.continuations])
    context_ids = encoded[0]
    continuations = [whole[len(context_ids):] for whole in encoded[1:]]
    if any(not c for c in continuations):
        raise ZhloraError(
            f"With this tokenizer an answer option of {request.continuations} adds no token after the prompt "
            f"(it merges into the prompt's last token, ...{context[-20:]!r}), so it cannot be scored. "
            "Use --protocol official (which scores letter tokens) or a different tokenizer."
        )
    return EncodedChoice(context_ids, continuations)


def response_sequence(tokenizer, prompt: str, response: str) -> ScoredSequence:
    """``prompt + response + EOS`` encoded as training rows are, with the response and EOS scored.

    The encoding is preprocessing's own (:func:`zhlora.data.preprocess.encode_instructions`:
    prompt with the tokenizer's special tokens, response without), so this loss is the
    fine-tuning loss on held-out rows. No length rule is applied here: a row longer than the
    model's window is cut by the engine; an empty response scores its EOS alone.
    """
    (row,) = encode_instructions(tokenizer, [prompt], [response], max_seq_length=None, drop_empty=False)
    return ScoredSequence(input_ids=row.input_ids, first_target=row.labels.count(IGNORE_INDEX))


def document_windows(tokenizer, text: str, window_tokens: int) -> list[ScoredSequence]:
    """Split a document into disjoint windows that together score every token exactly once.

    The first window starts with ``<s>`` (or ``</s>`` when there is no BOS) as its only
    context; each later window is conditioned on the one token before it, as lm-eval's
    ``loglikelihood_rolling`` does. Example with ``window_tokens=3`` and tokens ``t0..t4``:
    ``[<s> t0 t1 t2]`` scores ``t0 t1 t2``, ``[t2 t3 t4]`` scores ``t3 t4``.
    """
    tokens = _encode(tokenizer, [text], add_special_tokens=False)[0]
    start_token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    windows = []
    for start in range(0, len(tokens), window_tokens):
        context = [start_token] if start == 0 else [tokens[start - 1]]
        windows.append(ScoredSequence(input_ids=context + tokens[start:start + window_tokens], first_target=1))
    return windows
