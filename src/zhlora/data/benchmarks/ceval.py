"""C-Eval (52 subjects, 4 options; scored on ``val``, shots from ``dev``): lm-eval's and the official prompt."""

from zhlora.data.benchmarks.kinds import Benchmark, ChoiceSpec

CEVAL_QUESTION = "{question_stripped}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案："

BENCHMARK = Benchmark(
    name="ceval", language="zh", display_en="C-Eval", display_zh="C-Eval", categories=True,
    variants={
        "lm-eval": ChoiceSpec(
            name="ceval", protocol="lm-eval", version="1", reference="lm-evaluation-harness ceval-valid v2.0",
            source="ceval", eval_split="val", fewshot_split="dev",
            description="以下是中国关于{name_zh}的单项选择题，请选出其中的正确答案。\n\n",
            doc_to_text=CEVAL_QUESTION, target_delimiter=" ",
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
)
