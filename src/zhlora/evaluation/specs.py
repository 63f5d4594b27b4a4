"""Declarative benchmark specs: what to read, how to prompt, how to score, and a version.

A spec is data, not code. The engine reads the fields below and never branches on a
benchmark's name, so a new benchmark is a new spec instance in :data:`SPECS` (plus, only if
it needs branching logic, a small named hook in :mod:`zhlora.evaluation.tasks`). Bump a
spec's ``version`` whenever its prompt, shots or scoring change; the version is written next
to every score in ``results.json``.

Prompt templates are plain :meth:`str.format` strings. Fields available:

- description (per subject): ``{subject}`` (handle, e.g. ``computer_network``), ``{name_zh}``
  (计算机网络), ``{subject_words}`` (``computer network``);
- multiple-choice questions: ``{question}`` (as in the data file), ``{question_stripped}``,
  ``{A}`` .. ``{D}`` (option texts);
- GSM8K: ``{question}``.

The exact strings each spec produces are shown in ``docs/evaluation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zhlora.errors import unknown_name_error

PROTOCOLS = ("lm-eval", "official")
GSM8K_VARIANTS = ("gsm8k_cot", "gsm8k")

# lm-eval's exact_match settings for GSM8K: applied to prediction and reference alike.
GSM8K_IGNORE_REGEXES = (",", r"\$", r"(?s).*#### ", r"\.$")
GSM8K_FLEXIBLE_REGEX = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"


@dataclass(frozen=True)
class ChoiceSpec:
    """A four-option multiple-choice benchmark scored by log-likelihood.

    Rendering (lm-eval's, plain text): ``description + Σ_shots(doc_to_text + target_delimiter
    + letter + fewshot_delimiter) + doc_to_text``; shots are the first ``shots`` rows of the
    subject's ``fewshot_split``. ``scoring`` says what is compared:

    - ``continuation``: the summed log-probability of the continuation
      ``target_delimiter + letter`` (lm-eval's ``multiple_choice``; `` A`` .. `` D``).
    - ``letter_token:<hook>``: the next-token log-probability, at the last prompt position, of
      one token per letter chosen by a hook in :mod:`zhlora.evaluation.tasks.choice` (the
      official C-Eval and CMMLU scripts compare the logits of letter tokens).
    """

    name: str
    protocol: str
    version: str
    reference: str
    source: str
    eval_split: str
    fewshot_split: str
    description: str
    doc_to_text: str
    target_delimiter: str
    fewshot_delimiter: str = "\n\n"
    choices: tuple[str, ...] = ("A", "B", "C", "D")
    scoring: str = "continuation"
    category_scheme: str = "default"
    default_shots: int = 5
    kind: str = field(default="multiple_choice", init=False)


@dataclass(frozen=True)
class GenerateSpec:
    """A generate-then-extract benchmark (GSM8K): greedy decoding, stop strings, regex answers.

    Shots are ``fewshot_samples`` (fixed ``(question, target)`` pairs, first n) or, when that
    is empty, drawn from ``fewshot_split`` with lm-eval's sampler: one ``random.Random(seed)``
    whose successive ``sample(pool, shots)`` calls give the shots of successive items.
    A shot renders as ``doc_to_text + target_delimiter + target + fewshot_delimiter``; the
    target of a drawn shot is its full worked solution. Predictions are extracted with
    ``strict_regex`` (first match) and ``flexible_regex`` (last match), then compared by
    exact match after removing ``ignore_regexes`` (case-insensitively) from both sides.
    """

    name: str
    variant: str
    version: str
    reference: str
    source: str
    eval_split: str
    doc_to_text: str
    default_shots: int
    stop: tuple[str, ...]
    strict_regex: str
    fewshot_split: str | None = None
    fewshot_seed: int = 1234
    fewshot_samples: tuple[tuple[str, str], ...] = ()
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    flexible_regex: str = GSM8K_FLEXIBLE_REGEX
    ignore_regexes: tuple[str, ...] = GSM8K_IGNORE_REGEXES
    protocol: str = "lm-eval"
    kind: str = field(default="generate", init=False)


@dataclass(frozen=True)
class PerplexitySpec:
    """A loss/perplexity probe over held-out text (nats per predicted token).

    ``target`` is ``response`` (instruction rows: the prompt is rendered with the training
    template and only the response tokens are scored, the held-out loss of fine-tuning) or
    ``document`` (plain text: every token after the first is scored, in disjoint windows of
    at most ``window_tokens`` predicted tokens, each window conditioned only on itself).
    """

    name: str
    version: str
    reference: str
    source: str
    eval_split: str
    target: str
    window_tokens: int = 1024
    protocol: str = "lm-eval"
    units: tuple[str, ...] = ("bytes",)  # tokenizer-independent units reported beside tokens (bytes, characters, words)
    kind: str = field(default="perplexity", init=False)


Spec = ChoiceSpec | GenerateSpec | PerplexitySpec

_CEVAL_QUESTION = "{question_stripped}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案："
_MMLU_QUESTION = "{question_stripped}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:"

# Wei et al. (2022) chain-of-thought exemplars, verbatim as in lm-eval's gsm8k-cot.yaml.
GSM8K_COT_EXEMPLARS: tuple[tuple[str, str], ...] = (
    (
        ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
         "done, there will be 21 trees. How many trees did the grove workers plant today?"),
        ("There are 15 trees originally. Then there were 21 trees after some more were planted. So there must "
         "have been 21 - 15 = 6. The answer is 6."),
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in "
         "total?"),
        ("Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After "
         "eating 35, they had 74 - 35 = 39. The answer is 39."),
    ),
    (
        ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops"
         " did Jason give to Denny?"),
        ("Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12"
         " = 8. The answer is 8."),
    ),
    (
        ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he"
         " have now?"),
        ("Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 +"
         " 4 = 9. The answer is 9."),
    ),
    (
        ("There were nine computers in the server room. Five more computers were installed each day, from "
         "monday to thursday. How many computers are now in the server room?"),
        ("There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
         "computers were added. 9 + 20 is 29. The answer is 29."),
    ),
    (
        ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many"
         " golf balls did he have at the end of wednesday?"),
        ("Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 "
         "more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        ("Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
         "dollars left. 23 - 15 is 8. The answer is 8."),
    ),
)

SPECS: dict[str, dict[str, Spec]] = {
    "ceval": {
        "lm-eval": ChoiceSpec(
            name="ceval", protocol="lm-eval", version="1", reference="lm-evaluation-harness ceval-valid v2.0",
            source="ceval", eval_split="val", fewshot_split="dev",
            description="以下是中国关于{name_zh}的单项选择题，请选出其中的正确答案。\n\n",
            doc_to_text=_CEVAL_QUESTION, target_delimiter=" ",
        ),
        # hkust-nlp/ceval code/evaluator_series (LLaMA evaluator): the English handle in the
        # header, no space before the letter, logits of the token of encode("A")[0] (▁A).
        "official": ChoiceSpec(
            name="ceval", protocol="official", version="1", reference="hkust-nlp/ceval evaluator_series (llama.py)",
            source="ceval", eval_split="val", fewshot_split="dev",
            description="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
            doc_to_text="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：", target_delimiter="",
            scoring="letter_token:first_token",
        ),
    },
    "cmmlu": {
        "lm-eval": ChoiceSpec(
            name="cmmlu", protocol="lm-eval", version="1", reference="lm-evaluation-harness cmmlu v1.0",
            source="cmmlu", eval_split="test", fewshot_split="dev",
            description="以下是关于{name_zh}的单项选择题，请直接给出正确答案的选项。\n\n",
            doc_to_text=_CEVAL_QUESTION, target_delimiter=" ",
        ),
        # haonan-li/CMMLU src/mp_utils.py + hf_causal_model.py: 题目：/答案是：, logits of the
        # bare "A".."D" pieces (convert_tokens_to_ids).
        "official": ChoiceSpec(
            name="cmmlu", protocol="official", version="1", reference="haonan-li/CMMLU src/mp_utils.py",
            source="cmmlu", eval_split="test", fewshot_split="dev",
            description="以下是关于{name_zh}的单项选择题，请直接给出正确答案的选项。\n\n",
            doc_to_text="题目：{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案是：", target_delimiter="",
            scoring="letter_token:bare_piece",
        ),
    },
    "mmlu": {
        "lm-eval": ChoiceSpec(
            name="mmlu", protocol="lm-eval", version="1", reference="lm-evaluation-harness mmlu v2 (subtasks v1.0)",
            source="mmlu", eval_split="test", fewshot_split="dev",
            description="The following are multiple choice questions (with answers) about {subject_words}.\n\n",
            doc_to_text=_MMLU_QUESTION, target_delimiter=" ",
        ),
        # hendrycks/test evaluate.py: format_subject() leaves two spaces after "about", the
        # question is not stripped, and the original categories.py groups are used.
        "official": ChoiceSpec(
            name="mmlu", protocol="official", version="1", reference="hendrycks/test evaluate.py",
            source="mmlu", eval_split="test", fewshot_split="dev",
            description="The following are multiple choice questions (with answers) about  {subject_words}.\n\n",
            doc_to_text="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:", target_delimiter=" ",
            category_scheme="original",
        ),
    },
    "gsm8k": {
        "gsm8k_cot": GenerateSpec(
            name="gsm8k", variant="gsm8k_cot", version="1", reference="lm-evaluation-harness gsm8k_cot v3.0",
            source="gsm8k", eval_split="test", doc_to_text="Q: {question}\nA:", default_shots=8,
            fewshot_samples=GSM8K_COT_EXEMPLARS, stop=("Q:", "</s>", "<|im_end|>"),
            strict_regex=r"The answer is (\-?[0-9\.\,]+).",
        ),
        "gsm8k": GenerateSpec(
            name="gsm8k", variant="gsm8k", version="1", reference="lm-evaluation-harness gsm8k v3.0",
            source="gsm8k", eval_split="test", doc_to_text="Question: {question}\nAnswer:", default_shots=5,
            fewshot_split="train", fewshot_seed=1234, stop=("Question:", "</s>", "<|im_end|>"),
            strict_regex=r"#### (\-?[0-9\.\,]+)",
        ),
    },
    "ppl_zh": {
        "default": PerplexitySpec(
            name="ppl_zh", version="2", reference="zhlora: held-out BELLE response loss",
            source="belle", eval_split="heldout", target="response", units=("bytes", "characters"),
        ),
    },
    "ppl_en": {
        "default": PerplexitySpec(
            name="ppl_en", version="2", reference="zhlora: English text loss, disjoint windows",
            source="english_text", eval_split="test", target="document", units=("bytes", "words"),
        ),
    },
}


def benchmark_names() -> list[str]:
    """Every benchmark with a spec, in the registry's order."""
    return list(SPECS)


def resolve_spec(name: str, protocol: str = "lm-eval", gsm8k_variant: str = "gsm8k_cot") -> Spec:
    """The spec of benchmark ``name`` under ``protocol`` (multiple choice) or ``gsm8k_variant``.

    GSM8K has no official few-shot prompt of its own; both protocols use ``gsm8k_variant``
    (the default ``gsm8k_cot`` is the 8-shot chain-of-thought prompt the Llama 2 paper reports).
    The perplexity probes have one spec each.
    """
    if name not in SPECS:
        raise unknown_name_error("benchmark", name, SPECS)
    variants = SPECS[name]
    if protocol not in PROTOCOLS:
        raise unknown_name_error("protocol", protocol, PROTOCOLS)
    if "default" in variants:
        return variants["default"]
    if set(variants) <= set(PROTOCOLS):
        if protocol not in variants:
            raise unknown_name_error(f"{name} protocol", protocol, variants)
        return variants[protocol]
    if gsm8k_variant not in variants:
        raise unknown_name_error(f"{name} variant", gsm8k_variant, variants)
    return variants[gsm8k_variant]
