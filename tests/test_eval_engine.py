"""The HF engine: shared-prefix batched log-likelihoods equal a plain one-question-at-a-time computation.

The reference below is deliberately naive: one full forward pass of ``(context + option)[:-1]``
per option through ``model(...).logits``, as lm-evaluation-harness computes it.
"""

from __future__ import annotations

import pytest
import torch

from zhlora.data.benchmarks import resolve_spec
from zhlora.errors import ZhloraError
from zhlora.evaluation.hf_model import HFEvalModel, cut_at_stop
from zhlora.evaluation.items import load_benchmark_items
from zhlora.evaluation.prompts import fewshot_prompt
from zhlora.evaluation.requests import ChoiceRequest, ScoredSequence, encode_choice
from zhlora.evaluation.runner import evaluate_benchmarks
from zhlora.evaluation.tasks.multiple_choice import choice_requests

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from zhlora.models.loading import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(tiny_model_dir, torch_dtype="float32"), load_tokenizer(tiny_model_dir)


@torch.no_grad()
def plain_loglikelihoods(model, encoded, max_length):
    """lm-eval's computation: a full forward pass of ``(context + option)[:-1]``, no cache, no batching.

    Options whose input is the same sequence (single-token options) share that one pass, as
    lm-eval's one-token-continuation cache does.
    """
    out = []
    for request in encoded:
        scores, passes = [], {}
        for option in request.continuation_ids:
            whole = request.context_ids + option
            tokens = tuple(whole[-(max_length + 1):][:-1])
            if tokens not in passes:
                passes[tokens] = torch.log_softmax(model(input_ids=torch.tensor([tokens])).logits[0].float(), dim=-1)
            first = len(tokens) - len(option)
            scores.append(sum(passes[tokens][first + j, t].item() for j, t in enumerate(option)))
        out.append(scores)
    return out


def _max_difference(a, b):
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def _synthetic_requests(options=(" A", " B", " C", " D")):
    description = "The following are multiple choice questions (with answers) about law.\n\n"
    shots = [(f"Question {i}: which court hears case {i}?\nA. one\nB. two\nC. three\nD. four\nAnswer:", "ABCD"[i % 4])
             for i in range(5)]
    queries = [f"Question {q}: {'why ' * q}is {q} odd?\nA. yes\nB. no\nC. maybe\nD. never\nAnswer:" for q in range(7)]
    return [ChoiceRequest(fewshot_prompt(description, shots, q, " ", "\n\n"), continuations=options) for q in queries]


def test_prefix_sharing_and_batching_match_plain_computation(tiny):
    model, tokenizer = tiny
    requests = _synthetic_requests()
    requests.append(ChoiceRequest(requests[0].prompt, continuations=(" Apple pie", " B", " two words", " D")))
    encoded = [encode_choice(tokenizer, r) for r in requests]
    prefix_ids = tokenizer(requests[0].prompt.prefix)["input_ids"]
    engine = HFEvalModel(model, tokenizer, batch_size=3)
    calls = []
    original = engine._prefix_kv
    engine._prefix_kv = lambda ids: calls.append(len(ids)) or original(ids)
    scores = engine.choice_loglikelihoods(encoded, prefix_ids)
    assert calls == [len(prefix_ids)]  # the prefix is computed exactly once
    assert all(r.context_ids[: len(prefix_ids)] == prefix_ids for r in encoded)  # ... and shared by every item
    assert (scores.prefix.items, scores.prefix.shared_items) == (len(encoded), len(encoded))
    assert _max_difference(scores.loglikelihoods, plain_loglikelihoods(model, encoded, engine.max_length)) < TOLERANCE


def test_items_whose_tokens_do_not_start_with_the_prefix_fall_back(tiny):
    model, tokenizer = tiny
    encoded = [encode_choice(tokenizer, r) for r in _synthetic_requests()]
    other = encode_choice(tokenizer, ChoiceRequest(fewshot_prompt("Another subject.\n\n", [], "Q?\nAnswer:", " ", "\n\n"),
                                                   continuations=(" A", " B", " C", " D")))
    encoded.insert(2, other)
    engine = HFEvalModel(model, tokenizer, batch_size=4)
    prefix_ids = encoded[0].context_ids[:40]
    assert other.context_ids[:40] != prefix_ids
    scores = engine.choice_loglikelihoods(encoded, prefix_ids)
    assert (scores.prefix.items, scores.prefix.shared_items) == (len(encoded), len(encoded) - 1)
    assert _max_difference(scores.loglikelihoods, plain_loglikelihoods(model, encoded, engine.max_length)) < TOLERANCE


def test_contexts_longer_than_the_window_are_truncated_from_the_left(tiny):
    model, tokenizer = tiny
    requests = _synthetic_requests(options=(" A", " B", " two words", " D"))[:4]
    encoded = [encode_choice(tokenizer, r) for r in requests]
    engine = HFEvalModel(model, tokenizer, batch_size=2, max_length=48)
    assert all(len(r.context_ids) > 48 for r in encoded)
    scores = engine.choice_loglikelihoods(encoded, tokenizer(requests[0].prompt.prefix)["input_ids"])
    assert scores.prefix.shared_items == 0
    assert _max_difference(scores.loglikelihoods, plain_loglikelihoods(model, encoded, 48)) < TOLERANCE


@pytest.mark.shared_data
@pytest.mark.parametrize("protocol", ["lm-eval", "official"])
def test_real_benchmark_items_match_plain_computation(tiny, shared_eval_data, protocol):
    """Real C-Eval / CMMLU / MMLU items, 5-shot: shared-prefix batched scores = plain scores."""
    model, tokenizer = tiny
    engine = HFEvalModel(model, tokenizer, batch_size=3)
    checked = 0
    for benchmark, subject in (("ceval", "computer_network"), ("cmmlu", "agronomy"), ("mmlu", "astronomy")):
        bench = load_benchmark_items(shared_eval_data, resolve_spec(benchmark, protocol), subjects=[subject], limit=3)
        requests = choice_requests(tokenizer, bench, subject, bench.groups[subject])
        encoded = [encode_choice(tokenizer, r) for r in requests]
        prefix_ids = tokenizer(requests[0].prompt.prefix)["input_ids"]
        shared = [r for r in encoded if r.context_ids[: len(prefix_ids)] == prefix_ids and len(r.context_ids) <= engine.max_length]
        assert shared, f"{benchmark}/{subject}: no item could use the shared prefix"
        got = engine.choice_loglikelihoods(encoded, prefix_ids).loglikelihoods
        assert _max_difference(got, plain_loglikelihoods(model, encoded, engine.max_length)) < TOLERANCE
        checked += len(encoded)
    assert checked == 9


def test_sequence_nll_matches_cross_entropy(tiny):
    model, tokenizer = tiny
    texts = ["北京是中国的首都。", "The quick brown fox jumps over the lazy dog.", "短"]
    sequences = [ScoredSequence(tokenizer(t)["input_ids"], first_target=2) for t in texts]
    engine = HFEvalModel(model, tokenizer, batch_size=2)
    for (nll, count), seq in zip(engine.sequence_nll(sequences), sequences):
        ids = torch.tensor([seq.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, seq.first_target - 1:-1].float()
        expected = torch.nn.functional.cross_entropy(logits, ids[0, seq.first_target:], reduction="sum").item()
        assert count == len(seq.input_ids) - seq.first_target
        assert abs(nll - expected) < TOLERANCE * max(1.0, abs(expected))


def test_batched_generation_matches_one_prompt_at_a_time(tiny):
    model, tokenizer = tiny
    prompts = ["Q: 1 + 1?\nA:", "Q: What is the capital of a country with a very long name?\nA:", "Q: 你好\nA:"]
    engine = HFEvalModel(model, tokenizer, batch_size=3)
    got = engine.generate(prompts, stop=("Q:",), max_new_tokens=8)
    for prompt, text in zip(prompts, got):
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        assert text == cut_at_stop(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), ("Q:",))


def test_auto_batch_size_backs_off_on_out_of_memory(tiny):
    model, tokenizer = tiny
    encoded = [encode_choice(tokenizer, r) for r in _synthetic_requests()]
    reference = HFEvalModel(model, tokenizer, batch_size=8).choice_loglikelihoods(encoded).loglikelihoods

    def limited(engine):
        real = engine._score_batch

        def score_batch(rows, *args):
            if len(rows) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(rows, *args)

        engine._score_batch = score_batch
        return engine

    auto = limited(HFEvalModel(model, tokenizer, batch_size="auto"))
    assert _max_difference(auto.choice_loglikelihoods(encoded).loglikelihoods, reference) < TOLERANCE
    assert auto.batch_size <= 2
    with pytest.raises(ZhloraError, match="smaller --batch_size"):
        limited(HFEvalModel(model, tokenizer, batch_size=4)).choice_loglikelihoods(encoded)


def test_evaluate_benchmarks_restores_training_mode(tiny, sample_data_dir):
    model, tokenizer = tiny
    bench = load_benchmark_items(sample_data_dir, resolve_spec("ceval"), limit=1, shots=1)
    model.train()
    try:
        result = evaluate_benchmarks(model, tokenizer, {"ceval": bench}, batch_size=4)["ceval"]
        assert model.training
    finally:
        model.eval()
    assert result.summary["n"] == len(bench.groups) and len(result.predictions) == result.summary["n"]
    assert {row["subject"] for row in result.predictions} == set(bench.groups)


def test_official_letter_scoring_rejects_tokenizers_without_letter_pieces(tiny):
    _, tokenizer = tiny

    class NoBarePieces:
        unk_token_id = tokenizer.unk_token_id

        def convert_tokens_to_ids(self, token):
            return self.unk_token_id

        def convert_ids_to_tokens(self, ids):
            return ["<unk>"] * len(ids)

    from zhlora.evaluation.tasks.choice import letter_token_ids

    assert len(set(letter_token_ids(tokenizer, "bare_piece", tuple("ABCD")))) == 4
    with pytest.raises(ZhloraError, match="--protocol lm-eval"):
        letter_token_ids(NoBarePieces(), "bare_piece", tuple("ABCD"))


def test_a_generation_engine_answers_generation_and_the_hf_engine_the_rest(tiny, sample_data_dir):
    """The vLLM path: ``generator=`` (any object with ``generate``) is paired with the HF engine by GenerationRouted."""

    class Canned:
        def __init__(self):
            self.calls = []

        def generate(self, prompts, stop, max_new_tokens):
            self.calls.append(len(prompts))
            return ["So 2 + 2 = 4. The answer is 4."] * len(prompts)

    model, tokenizer = tiny
    items = {"gsm8k": load_benchmark_items(sample_data_dir, resolve_spec("gsm8k"), limit=2),
             "ppl_en": load_benchmark_items(sample_data_dir, resolve_spec("ppl_en"), limit=2)}
    generator = Canned()
    routed = evaluate_benchmarks(model, tokenizer, items, batch_size=4, generator=generator)
    plain = evaluate_benchmarks(model, tokenizer, {"ppl_en": items["ppl_en"]}, batch_size=4)
    assert generator.calls == [2]
    assert [row["predicted"] for row in routed["gsm8k"].predictions] == ["4", "4"]
    assert routed["ppl_en"].predictions == plain["ppl_en"].predictions  # scored by the HF engine


@pytest.mark.parametrize("window", [16, 4096])
def test_a_shared_prefix_longer_than_the_sliding_window_scores_like_the_full_prompt(tiny, window):
    """Gemma's local layers keep only the last window - 1 keys of the prefix; the items after it must still get
    their true positions and a banded mask, as the full prompt computed at once gives them."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tokenizer = tiny
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=window,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=4096, attn_implementation="sdpa")
    model = Gemma3ForCausalLM(config).eval()
    requests = _synthetic_requests()
    encoded = [encode_choice(tokenizer, r) for r in requests]
    prefix_ids = tokenizer(requests[0].prompt.prefix)["input_ids"]
    assert len(prefix_ids) > 3 * 16  # the prefix alone is several windows long
    scores = HFEvalModel(model, tokenizer, batch_size=3).choice_loglikelihoods(encoded, prefix_ids)
    assert scores.prefix.shared_items == len(encoded)
    assert _max_difference(scores.loglikelihoods, plain_loglikelihoods(model, encoded, 4096)) < TOLERANCE
