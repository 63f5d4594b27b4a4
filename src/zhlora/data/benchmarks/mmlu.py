"""MMLU (57 subjects, 4 options; scored on ``test``, shots from ``dev``): lm-eval's and the original prompt."""

from zhlora.data.benchmarks.kinds import Benchmark, ChoiceSpec

BENCHMARK = Benchmark(
    name="mmlu", language="en", display_en="MMLU", display_zh="MMLU", categories=True,
    variants={
        "lm-eval": ChoiceSpec(
            name="mmlu", protocol="lm-eval", version="1", reference="lm-evaluation-harness mmlu v2 (subtasks v1.0)",
            source="mmlu", eval_split="test", fewshot_split="dev",
            description="The following are multiple choice questions (with answers) about {subject_words}.\n\n",
            doc_to_text="{question_stripped}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:", target_delimiter=" ",
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
)
