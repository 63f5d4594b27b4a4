"""The reference engine: batched log-likelihoods, generation and token losses with transformers.

Three ideas make multiple-choice scoring fast without changing its numbers:

1. **Shared few-shot prefix.** Every question of a subject starts with the same description
   and shots. The token ids the items really share with that text (see
   :mod:`zhlora.evaluation.prefix`: byte-level BPE tokenizers encode the text's trailing
   ``"\n\n"`` differently once a question follows) get their key/value cache computed once,
   and each batch continues from it, so a 5-shot question costs its own ~50-100 tokens instead
   of ~600-1000. An item whose ids leave the shared ones earlier (a truncated context) is scored
   in full instead.
2. **Logits only where needed.** The decoder's hidden states are gathered at the positions
   that predict answer tokens before the vocabulary projection; the four one-token options
   " A".." D" share one position, so one forward pass scores all four.
3. **Length-sorted batches** (longest first, right-padded; padding sits after the real tokens
   of a causal model, so it changes nothing) with a batch size that halves on out-of-memory.

The numbers are lm-evaluation-harness's: log-softmax (float32) of the logits, summed over the
continuation tokens, contexts longer than the model's window truncated from the left. The
per-token log-probabilities come from the training loss's own function
(:func:`zhlora.training.loss.token_nll`).
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from zhlora.errors import ZhloraError
from zhlora.evaluation.engine import ChoiceScores
from zhlora.evaluation.prefix import PrefixUse, shared_prefix_length
from zhlora.evaluation.requests import EncodedChoice, ScoredSequence
from zhlora.training.loss import token_nll

logger = logging.getLogger(__name__)

AUTO_BATCH_START = {"cuda": 64, "cpu": 16}
LM_HEAD_CHUNK = 4096  # positions projected to the vocabulary at once (bounds float32 logits memory)
_TOKENIZER_NO_LIMIT = 10**20


@dataclass
class _Score:
    """Log-probabilities of ``targets`` at ``positions`` of a row, summed into ``owner``'s slot."""

    owner: tuple[int, int]
    positions: list[int]
    targets: list[int]


@dataclass
class _Row:
    """One input sequence of a forward pass and what to read from its logits."""

    tokens: list[int]
    scores: list[_Score]
    truncated: bool = False

    @property
    def first_position(self) -> int:
        """The first position whose hidden state is read (a shared prefix must end at or before it)."""
        return min(p for score in self.scores for p in score.positions)


def model_max_length(config, tokenizer) -> int:
    """The context window lm-eval assumes for a model: config, then tokenizer, else 2048 tokens."""
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < _TOKENIZER_NO_LIMIT else 2048


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _unwrap(model):
    """The transformers model inside a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def expanded_cache(cache, batch: int):
    """A copy of the batch-1 ``cache`` whose every layer holds its keys and values expanded to ``batch`` rows (views).

    Each layer keeps its own bookkeeping: a sliding-window layer (Gemma) stores only its last
    ``window - 1`` keys but counts every token it has seen (``cumulative_length``), from which the
    model takes the positions and masks of the tokens that follow. Rebuilding a cache from the
    tensors alone would lose that count, and every token after a prefix longer than the window
    would get the wrong position.
    """
    twin = copy.copy(cache)
    twin.layers = []
    for layer in cache.layers:
        copied = copy.copy(layer)
        copied.keys = layer.keys.expand(batch, -1, -1, -1)
        copied.values = layer.values.expand(batch, -1, -1, -1)
        twin.layers.append(copied)
    return twin


def choice_rows(requests: Sequence[EncodedChoice], max_length: int) -> list[_Row]:
    """The forward-pass rows of choice requests: one per item when every option is one token.

    For options of several tokens, one row per option: ``(context + option)[:-1]``, left-
    truncated to ``max_length`` tokens, scoring the option's tokens at its last positions.
    """
    rows = []
    for index, request in enumerate(requests):
        options = request.continuation_ids
        if all(len(option) == 1 for option in options):
            tokens = request.context_ids[-max_length:]
            scores = [_Score((index, k), [len(tokens) - 1], option) for k, option in enumerate(options)]
            rows.append(_Row(tokens, scores, truncated=len(request.context_ids) > max_length))
            continue
        for k, option in enumerate(options):
            whole = request.context_ids + option
            tokens = whole[-(max_length + 1):][:-1]
            positions = list(range(len(tokens) - len(option), len(tokens)))
            rows.append(_Row(tokens, [_Score((index, k), positions, option)], truncated=len(whole) - 1 > max_length))
    return rows


class HFEvalModel:
    """Evaluation engine over an in-memory causal LM (plain or PEFT-wrapped) and its tokenizer.

    The reference :class:`~zhlora.evaluation.engine.EvalEngine`: it answers all three kinds of request.

    Args:
        model: a transformers causal LM, or a ``PeftModel`` around one (adapter applied unmerged).
        tokenizer: its tokenizer.
        batch_size: rows per forward pass, or ``"auto"`` (start at 64 on GPU / 16 on CPU and
            halve on out-of-memory).
        max_length: context window in tokens; default from the model config, as lm-eval does.
    """

    def __init__(self, model, tokenizer, batch_size: int | str = "auto", max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.causal_lm = _unwrap(model)
        self.decoder = self.causal_lm.get_decoder()
        self.lm_head = self.causal_lm.get_output_embeddings()
        self.device = self.causal_lm.get_input_embeddings().weight.device
        self.max_length = max_length or model_max_length(self.causal_lm.config, tokenizer)
        self.auto_batch = batch_size == "auto"
        self.batch_size = AUTO_BATCH_START.get(self.device.type, 16) if self.auto_batch else int(batch_size)
        if self.batch_size <= 0:
            raise ZhloraError(f"--batch_size must be a positive integer or auto, got {batch_size}.")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"

    # ------------------------------------------------------------------ log-likelihoods
    @torch.no_grad()
    def choice_loglikelihoods(self, requests: Sequence[EncodedChoice], prefix_ids: list[int] | None = None) -> ChoiceScores:
        """Summed log-probability (nats) of every option of every request, and the prefix's use.

        ``prefix_ids`` are the token ids of the prompt text shared by all ``requests`` (a
        subject's description and shots, encoded alone); the leading ids that the requests
        really share with it (:func:`~zhlora.evaluation.prefix.shared_prefix_length`) get their
        key/value cache computed once, reused by every row that starts with them.
        """
        rows = choice_rows(requests, self.max_length)
        n = 0
        if prefix_ids:
            n = shared_prefix_length(prefix_ids, [(r.tokens, r.first_position) for r in rows if not r.truncated])
        shared = [r for r in rows if n and not r.truncated and r.first_position >= n and r.tokens[:n] == prefix_ids[:n]]
        shared_ids = {id(r) for r in shared}
        plain = [r for r in rows if id(r) not in shared_ids]
        results = [[0.0] * len(request.continuation_ids) for request in requests]
        if shared:
            self._score_rows(shared, results, offset=n, prefix_kv=self._prefix_kv(prefix_ids[:n]))
        if plain:
            self._score_rows(plain, results, offset=0, prefix_kv=None)
        unshared_items = {score.owner[0] for r in plain for score in r.scores}
        shared_items = len(requests) - len(unshared_items)
        return ChoiceScores(results, PrefixUse(len(requests), shared_items, shared_items * n))

    @torch.no_grad()
    def sequence_nll(self, sequences: Sequence[ScoredSequence]) -> list[tuple[float, int]]:
        """``(summed negative log-likelihood in nats, scored tokens)`` of each sequence.

        A sequence longer than the context window is cut to its first ``max_length`` tokens
        (the tokens cut off are not scored; a sequence left with none scores ``(0.0, 0)``).
        """
        rows = []
        for index, seq in enumerate(sequences):
            tokens = seq.input_ids[: self.max_length]
            positions = list(range(seq.first_target - 1, len(tokens) - 1))
            rows.append(_Row(tokens, [_Score((index, 0), positions, tokens[seq.first_target:])]))
        results = [[0.0] for _ in sequences]
        self._score_rows([row for row in rows if row.scores[0].targets], results, offset=0, prefix_kv=None)
        return [(-logprob[0], len(row.scores[0].targets)) for logprob, row in zip(results, rows)]

    def _prefix_kv(self, prefix_ids: list[int]):
        """The key/value cache of the shared prefix (batch dimension 1), as the model's own cache object."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.causal_lm.config)
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=self.device)
        self.decoder(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache})
        return cache

    def _hidden_states(self, token_rows: list[list[int]], prefix_kv) -> torch.Tensor:
        """Final-norm hidden states ``[batch, longest row, hidden]`` of right-padded rows."""
        longest = max(len(tokens) for tokens in token_rows)
        ids = torch.full((len(token_rows), longest), self.pad_id, dtype=torch.long)
        for b, tokens in enumerate(token_rows):
            ids[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        ids = ids.to(self.device)
        if prefix_kv is None:
            return self.decoder(input_ids=ids, use_cache=False).last_hidden_state
        cache = expanded_cache(prefix_kv, len(token_rows))
        return self.decoder(input_ids=ids, use_cache=True, **{self._cache_kwarg: cache}).last_hidden_state

    def _score_batch(self, rows: list[_Row], results: list[list[float]], offset: int, prefix_kv) -> None:
        hidden = self._hidden_states([row.tokens[offset:] for row in rows], prefix_kv)
        batch_index, position_index, targets, owners = [], [], [], []
        for b, row in enumerate(rows):
            for score in row.scores:
                batch_index.extend([b] * len(score.positions))
                position_index.extend(p - offset for p in score.positions)
                targets.extend(score.targets)
                owners.extend([score.owner] * len(score.targets))
        selected = hidden[torch.tensor(batch_index, device=hidden.device), torch.tensor(position_index, device=hidden.device)]
        head_device = self.lm_head.weight.device
        target_ids = torch.tensor(targets, dtype=torch.long, device=head_device)
        nlls = []
        for start in range(0, len(targets), LM_HEAD_CHUNK):
            logits = self.lm_head(selected[start:start + LM_HEAD_CHUNK].to(head_device))
            nlls.append(token_nll(logits, target_ids[start:start + LM_HEAD_CHUNK]))
        for (index, option), nll in zip(owners, torch.cat(nlls).tolist()):
            results[index][option] += -nll

    def _score_rows(self, rows: list[_Row], results: list[list[float]], offset: int, prefix_kv) -> None:
        ordered = sorted(rows, key=lambda r: (-len(r.tokens), r.tokens))
        self._in_batches(ordered, lambda batch: self._score_batch(batch, results, offset, prefix_kv))

    def _in_batches(self, items: list, run: Callable[[list], None]) -> None:
        """Call ``run`` on consecutive batches; with ``auto`` batch size, halve it on out-of-memory."""
        start = 0
        while start < len(items):
            size = min(self.batch_size, len(items) - start)
            try:
                run(items[start:start + size])
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
                if not self.auto_batch or size == 1:
                    raise ZhloraError(
                        f"Out of memory with {size} sequences per forward pass on {self.device}. "
                        "Pass a smaller --batch_size (or --batch_size auto), or a smaller --torch_dtype."
                    ) from None
                self.batch_size = max(1, size // 2)
                logger.warning("Out of memory at batch size %d; retrying with %d.", size, self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += size

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts``, each cut before the first of ``stop``.

        Prompts are encoded with special tokens, left-truncated to leave room for
        ``max_new_tokens``, batched longest first and left-padded (so every prompt ends at the
        last position); decoding stops at ``</s>`` or when every row has produced a stop string.
        """
        budget = self.max_length - max_new_tokens
        if budget <= 0:
            raise ZhloraError(f"--max_new_tokens {max_new_tokens} leaves no room for a prompt in the {self.max_length}-token window.")
        encoded = [ids[-budget:] for ids in self.tokenizer(list(prompts), verbose=False)["input_ids"]]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        outputs: dict[int, str] = {}

        def run(batch: list[int]) -> None:
            longest = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for b, i in enumerate(batch):
                ids[b, longest - len(encoded[i]):] = torch.tensor(encoded[i], dtype=torch.long)
                mask[b, longest - len(encoded[i]):] = 1
            generated = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, stop_strings=list(stop), tokenizer=self.tokenizer, pad_token_id=self.pad_id,
            )
            for b, i in enumerate(batch):
                text = self.tokenizer.decode(generated[b, longest:], skip_special_tokens=True)
                outputs[i] = cut_at_stop(text, stop)

        self._in_batches(order, run)
        return [outputs[i] for i in range(len(encoded))]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the first occurrence of each stop string in turn (lm-eval's post-processing)."""
    for term in stop:
        if term:
            text = text.split(term)[0]
    return text
