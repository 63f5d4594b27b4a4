"""The kinds of benchmark spec, and :class:`Benchmark`, the registry's record of one benchmark.

A spec is data, not code: what to read, how to prompt, how to score, and a version. The
evaluation engine reads these fields and never branches on a benchmark's name; each ``kind``
has one task object in :mod:`zhlora.evaluation.tasks` that turns a spec into requests and
scores. Bump a spec's ``version`` whenever its prompt, shots or scoring change; the version is
written next to every score in ``results.json``.

Prompt templates are plain :meth:`str.format` strings. Fields available:

- description (per subject): ``{subject}`` (handle, e.g. ``computer_network``), ``{name_zh}``
  (计算机网络), ``{subject_words}`` (``computer network``);
- multiple-choice questions: ``{question}`` (as in the data file), ``{question_stripped}``,
  ``{A}`` .. ``{D}`` (option texts);
- generation (GSM8K): ``{question}``.

The exact strings each spec produces are shown in ``docs/evaluation.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
    target of a drawn shot is its full worked solution. The gold answer is the text after the
    last ``answer_delimiter`` of the item's worked solution. Predictions are extracted with
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
    answer_delimiter: str = "####"
    protocol: str = "lm-eval"
    kind: str = field(default="generate", init=False)


# The tokenizer-independent units a PerplexitySpec may report (its ``units``):
# unit -> (count field of a prediction row, summary field, how the summary is formed from nats per unit)
PERPLEXITY_UNITS = {
    "bytes": ("n_bytes", "bits_per_byte", "bits"),
    "characters": ("n_characters", "bits_per_character", "bits"),
    "words": ("n_words", "word_perplexity", "perplexity"),
}


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


Spec = ChoiceSpec | GenerateSpec | PerplexitySpec
LANGUAGES = ("zh", "en")
# EvalConfig fields that bound a benchmark's size (zhlora.config.SIZE_FIELDS is derived from the registry).
SIZE_FIELD_DEFAULT = "limit"


@dataclass(frozen=True)
class Benchmark:
    """Everything zhlora knows about one benchmark, in one place.

    ``variants`` maps a protocol (``lm-eval``/``official``), a variant (``gsm8k_cot``/``gsm8k``)
    or ``default`` to its spec; every variant has the benchmark's ``name`` and one ``kind``.
    ``language`` (``zh`` or ``en``) decides the side of the forgetting analysis (learning or
    forgetting) and is written into ``results.json``; ``display_en``/``display_zh`` label
    charts and reports. ``size_field`` names the :class:`~zhlora.config.EvalConfig` field that
    bounds its size (``limit`` counts items per subject for multiple choice, the others count
    items in total; all default to every item). ``categories`` says whether a subject ->
    category table ships in ``zhlora/data/mappings/<name>.json`` (:mod:`zhlora.data.categories`).
    ``default`` says whether ``--benchmarks`` includes it by default.
    """

    name: str
    language: str
    display_en: str
    display_zh: str
    variants: Mapping[str, Spec]
    size_field: str = SIZE_FIELD_DEFAULT
    categories: bool = False
    default: bool = True

    @property
    def kind(self) -> str:
        """multiple_choice, generate or perplexity (the same for every variant)."""
        return next(iter(self.variants.values())).kind

    @property
    def source(self) -> str:
        """The data source its items are read from (``data/<source>/``)."""
        return next(iter(self.variants.values())).source
