"""Benchmark specs, prompt rendering, answer extraction and scoring (no model needed)."""

from __future__ import annotations

import math
import random

import pytest

from zhlora.data.benchmarks import BENCHMARKS, resolve_spec
from zhlora.data.benchmarks.gsm8k import GSM8K_COT_EXEMPLARS
from zhlora.data.categories import subject_table
from zhlora.data.records import ChoiceQuestion, MathProblem
from zhlora.errors import ZhloraError
from zhlora.evaluation.items import ALL, BenchmarkItems
from zhlora.evaluation.prompts import fewshot_prompt
from zhlora.evaluation.requests import ChoiceRequest, document_windows, encode_choice
from zhlora.evaluation.scoring import (
    predicted_letter,
    summarize_choice,
    summarize_perplexity,
)
from zhlora.evaluation.tasks.generation import (
    extract_answer,
    generate_prompts,
    normalize_answer,
    random_shot_indices,
    reference_answer,
)
from zhlora.evaluation.tasks.multiple_choice import choice_requests


class LetterTokenizer:
    """A stand-in tokenizer for the request-building code: one id per character, <s> = 1."""

    unk_token_id = 0

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens else []) + [ord(c) for c in text]

    def __call__(self, texts, add_special_tokens=True, verbose=False):
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in texts]}

    def convert_tokens_to_ids(self, token):
        return ord(token)

    def convert_ids_to_tokens(self, ids):
        return [chr(i) for i in ids]


def _question(subject, n, answer="B"):
    return ChoiceQuestion(id=f"{subject}-{n}", subject=subject, question=f" 问题{n} ", choices=["甲", "乙", "丙", "丁"], answer=answer)


def _choice_items(benchmark, protocol, subject, shots):
    spec = resolve_spec(benchmark, protocol)
    pool = [_question(subject, i, "ABCD"[i % 4]) for i in range(5)]
    return BenchmarkItems(spec=spec, groups={subject: [_question(subject, 9)]}, shots=shots,
                          fewshot={subject: pool}, subjects=subject_table(benchmark))


def test_ceval_lm_eval_prompt_is_lm_evaluation_harness_string():
    bench = _choice_items("ceval", "lm-eval", "law", shots=2)
    (request,) = choice_requests(LetterTokenizer(), bench, "law", bench.groups["law"])
    assert request.prompt.text == (
        "以下是中国关于法学的单项选择题，请选出其中的正确答案。\n\n"
        "问题0\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案： A\n\n"
        "问题1\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案： B\n\n"
        "问题9\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    assert request.continuations == (" A", " B", " C", " D")
    assert request.prompt.prefix.endswith("答案： B\n\n") and request.prompt.query.startswith("问题9")


def test_official_prompts_follow_the_upstream_scripts():
    ceval = _choice_items("ceval", "official", "law", shots=1)
    (request,) = choice_requests(LetterTokenizer(), ceval, "law", ceval.groups["law"])
    assert request.prompt.text == (
        "以下是中国关于law考试的单项选择题，请选出其中的正确答案。\n\n"
        " 问题0 \nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：A\n\n"
        " 问题9 \nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案："
    )
    assert request.letter_token_ids == tuple(ord(c) for c in "ABCD") and not request.continuations
    cmmlu = _choice_items("cmmlu", "official", "agronomy", shots=1)
    (request,) = choice_requests(LetterTokenizer(), cmmlu, "agronomy", cmmlu.groups["agronomy"])
    assert request.prompt.text == (
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n"
        "题目： 问题0 \nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是：A\n\n"
        "题目： 问题9 \nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案是："
    )
    mmlu = _choice_items("mmlu", "official", "abstract_algebra", shots=0)
    (request,) = choice_requests(LetterTokenizer(), mmlu, "abstract_algebra", mmlu.groups["abstract_algebra"])
    assert request.prompt.text.startswith("The following are multiple choice questions (with answers) about  abstract algebra.\n\n")
    assert request.continuations == (" A", " B", " C", " D")


def test_mmlu_category_schemes_differ_on_anatomy():
    rows = [{"id": "1", "subject": "anatomy", "correct": True}]
    lm_eval = summarize_choice(rows, subject_table("mmlu"), resolve_spec("mmlu", "lm-eval").category_scheme)
    official = summarize_choice(rows, subject_table("mmlu"), resolve_spec("mmlu", "official").category_scheme)
    assert list(lm_eval["categories"]) == ["stem"]
    assert list(official["categories"]) == ["other (business, health, misc.)"]


def test_gsm8k_prompts_cot_and_random_shots():
    cot = resolve_spec("gsm8k", "lm-eval", "gsm8k_cot")
    problem = MathProblem(id="t0", question="How many?", answer_text="1+1=2\n#### 2", answer_number="2")
    bench = BenchmarkItems(spec=cot, groups={ALL: [problem]}, shots=8)
    (prompt,) = generate_prompts(bench, 0, [problem])
    first_q, first_a = GSM8K_COT_EXEMPLARS[0]
    assert prompt.startswith(f"Q: {first_q}\nA: {first_a}\n\nQ: ") and prompt.endswith("\n\nQ: How many?\nA:")
    assert prompt.count("Q: ") == 9
    plain = resolve_spec("gsm8k", "lm-eval", "gsm8k")
    pool = [MathProblem(id=f"p{i}", question=f"q{i}", answer_text=f"w{i}\n#### {i}", answer_number=str(i)) for i in range(30)]
    bench = BenchmarkItems(spec=plain, groups={ALL: [problem] * 3}, shots=5, fewshot={ALL: pool})
    prompts = generate_prompts(bench, 0, [problem] * 3)
    rnd = random.Random(1234)  # lm-eval: one Random(1234) per task, one sample() per document in order
    for prompt in prompts:
        expected = "".join(f"Question: {d.question}\nAnswer: {d.answer_text}\n\n" for d in rnd.sample(pool, 5))
        assert prompt == expected + "Question: How many?\nAnswer:"
    assert generate_prompts(bench, 2, [problem]) == prompts[2:]  # resumable units draw the same shots


def test_random_shot_indices_match_random_sample_sequence():
    rnd = random.Random(7)
    assert random_shot_indices(100, 4, 3, 7) == [rnd.sample(range(100), 3) for _ in range(4)]


@pytest.mark.parametrize(
    ("text", "pattern", "group", "expected"),
    [
        ("so 5 + 4 = 9. The answer is 9.", r"The answer is (\-?[0-9\.\,]+).", 0, "9"),
        ("The answer is 1,000. The answer is 7.", r"The answer is (\-?[0-9\.\,]+).", 0, "1,000."),  # as lm-eval: greedy
        ("no number here", r"The answer is (\-?[0-9\.\,]+).", 0, "[invalid]"),
        ("a 12 then $3,400.", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1, "$3,400."),
        ("only 7", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1, "7"),
        ("x\n#### -42", r"#### (\-?[0-9\.\,]+)", 0, "-42"),
    ],
)
def test_extract_answer_has_lm_eval_regex_semantics(text, pattern, group, expected):
    assert extract_answer(text, pattern, group) == expected


def test_normalize_answer_and_reference():
    ignore = resolve_spec("gsm8k").ignore_regexes
    assert normalize_answer("$3,400.", ignore) == "3400"
    assert normalize_answer("Janet sells 9.\n#### 18", ignore) == "18"
    assert reference_answer("steps <<1+1=2>>2\n#### 1,000") == "1,000"
    assert normalize_answer(reference_answer("x\n#### 1,000"), ignore) == normalize_answer("1000", ignore)


def test_summarize_choice_micro_macro_and_multilabel_categories():
    rows = ([{"id": f"a{i}", "subject": "ancient_chinese", "correct": i < 3} for i in range(4)]
            + [{"id": f"b{i}", "subject": "anatomy", "correct": i < 1} for i in range(2)])
    summary = summarize_choice(rows, subject_table("cmmlu"))
    assert summary["n"] == 6
    assert summary["accuracy_micro"] == round(4 / 6, 6)
    assert summary["accuracy_macro"] == round((3 / 4 + 1 / 2) / 2, 6)
    cats = summary["categories"]
    assert set(cats) == {"Social Science", "China specific", "STEM"}  # ancient_chinese counts twice
    assert cats["China specific"] == {"n": 4, "accuracy_micro": 0.75, "accuracy_macro": 0.75}
    assert summary["subjects"]["ancient_chinese"]["name_zh"] == "古汉语"


def test_summarize_perplexity_is_token_weighted():
    summary = summarize_perplexity([{"id": "a", "nll": 10.0, "n_tokens": 5}, {"id": "b", "nll": 2.0, "n_tokens": 1}])
    assert summary["loss"] == 2.0 and summary["n_tokens"] == 6
    assert summary["perplexity"] == round(math.exp(2.0), 6)


def test_predicted_letter_breaks_ties_towards_the_first_option():
    assert predicted_letter([-1.0, -0.5, -0.5, -2.0], "ABCD") == "B"


def test_encode_choice_moves_trailing_space_into_the_continuation():
    tok = LetterTokenizer()
    encoded = encode_choice(tok, ChoiceRequest(fewshot_prompt("", [], "Q: x ", " ", "\n\n"), continuations=("A", "BC")))
    assert encoded.context_ids == tok.encode("Q: x")
    assert encoded.continuation_ids == [[ord(" "), ord("A")], [ord(" "), ord("B"), ord("C")]]


def test_document_windows_score_every_token_once():
    tok = LetterTokenizer()
    tok.bos_token_id, tok.eos_token_id = 1, 2
    windows = document_windows(tok, "abcdefg", window_tokens=3)
    scored = [t for w in windows for t in w.input_ids[w.first_target:]]
    assert scored == [ord(c) for c in "abcdefg"]
    assert windows[0].input_ids[0] == 1 and windows[1].input_ids[0] == ord("c")


def test_unknown_names_get_did_you_mean():
    with pytest.raises(ZhloraError, match='Did you mean "cmmlu"'):
        resolve_spec("cmmmlu")
    with pytest.raises(ZhloraError, match="Known protocols"):
        resolve_spec("mmlu", "offical")
    assert set(BENCHMARKS) == {"ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en"}


def test_tokenizer_independent_perplexity_units_by_hand():
    """Bytes, characters and lm-eval wikitext words of a scored text, and the per-unit figures."""
    from zhlora.evaluation.scoring import summarize_perplexity, text_units

    assert text_units("中文 ok") == {"n_bytes": 9, "n_characters": 5, "n_words": 2}
    assert text_units(" a  b\nc") == {"n_bytes": 7, "n_characters": 7, "n_words": 4}  # leading space: "" counts, as in lm-eval
    rows = [{"id": "d0", "nll": 6.0, "n_tokens": 3, **text_units("中文")}, {"id": "d1", "nll": 2.0, "n_tokens": 1, **text_units("ab")}]
    zh = summarize_perplexity(rows, ("bytes", "characters"))
    assert zh["n_bytes"] == 8 and zh["bits_per_byte"] == pytest.approx(8.0 / 8 / math.log(2), abs=1e-6)
    assert zh["n_characters"] == 4 and zh["bits_per_character"] == pytest.approx(8.0 / 4 / math.log(2), abs=1e-6)
    assert zh["loss"] == pytest.approx(2.0) and "word_perplexity" not in zh
    en = summarize_perplexity(rows, ("bytes", "words"))
    assert en["n_words"] == 2 and en["word_perplexity"] == pytest.approx(math.exp(4.0), rel=1e-6)
