"""The one interface every evaluation engine offers, modelled on lm-evaluation-harness's ``LM``.

lm-eval asks a model for three things: ``loglikelihood`` (of continuations after a context),
``loglikelihood_rolling`` (of whole texts) and ``generate_until`` (greedy text up to a stop
string). zhlora's tasks (:mod:`zhlora.evaluation.tasks`) ask an :class:`EvalEngine` for the
same three, already tokenized where the numbers depend on tokenization:

- :meth:`~EvalEngine.choice_loglikelihoods`: the summed log-probability (nats) of each option
  of each multiple-choice request, given the token ids of the text the requests share (so an
  engine may compute that prefix once);
- :meth:`~EvalEngine.sequence_nll`: the summed negative log-likelihood (nats) and token count
  of the scored tail of each sequence (perplexity windows, held-out responses);
- :meth:`~EvalEngine.generate`: greedy continuations of prompts, cut before the first stop string.

:class:`~zhlora.evaluation.hf_model.HFEvalModel` (transformers) answers all three and is the
reference; :class:`~zhlora.evaluation.vllm_backend.VllmGenerator` answers generation only and
is paired with it by :class:`GenerationRouted`. A new engine is one new module with a class
that has these members.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from zhlora.evaluation.prefix import PrefixUse
from zhlora.evaluation.requests import EncodedChoice, ScoredSequence


@dataclass
class ChoiceScores:
    """Per-request option log-likelihoods (nats) and how the shared prefix was used."""

    loglikelihoods: list[list[float]]
    prefix: PrefixUse


class EvalEngine(Protocol):
    """What a task may ask of a model (see the module docstring).

    ``tokenizer`` is the model's tokenizer (tasks tokenize requests with it); ``max_length``
    is its context window in tokens.
    """

    tokenizer: Any
    max_length: int

    def choice_loglikelihoods(self, requests: Sequence[EncodedChoice], prefix_ids: list[int] | None = None) -> ChoiceScores:
        """Summed log-probability (nats) of every option of every request, and the shared prefix's use."""
        ...

    def sequence_nll(self, sequences: Sequence[ScoredSequence]) -> list[tuple[float, int]]:
        """``(summed negative log-likelihood in nats, scored tokens)`` of each sequence."""
        ...

    def generate(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` (at most ``max_new_tokens`` each), cut before the first of ``stop``."""
        ...


class GenerationRouted:
    """An engine that answers generation with ``generator`` (e.g. vLLM) and scoring with ``scorer``."""

    def __init__(self, scorer: EvalEngine, generator):
        self.scorer = scorer
        self.generator = generator
        self.tokenizer = scorer.tokenizer
        self.max_length = scorer.max_length

    def choice_loglikelihoods(self, requests: Sequence[EncodedChoice], prefix_ids: list[int] | None = None) -> ChoiceScores:
        return self.scorer.choice_loglikelihoods(requests, prefix_ids)

    def sequence_nll(self, sequences: Sequence[ScoredSequence]) -> list[tuple[float, int]]:
        return self.scorer.sequence_nll(sequences)

    def generate(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[str]:
        return self.generator.generate(prompts, stop, max_new_tokens)
