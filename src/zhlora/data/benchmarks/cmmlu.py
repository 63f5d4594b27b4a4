"""CMMLU (67 subjects, 4 options; scored on ``test``, shots from ``dev``): lm-eval's and the official prompt."""

from zhlora.data.benchmarks.ceval import CEVAL_QUESTION
from zhlora.data.benchmarks.kinds import Benchmark, ChoiceSpec

BENCHMARK = Benchmark(
    name="cmmlu", language="zh", display_en="CMMLU", display_zh="CMMLU", categories=True,
    variants={
        "lm-eval": ChoiceSpec(
            name="cmmlu", protocol="lm-eval", version="1", reference="lm-evaluation-harness cmmlu v1.0",
            source="cmmlu", eval_split="test", fewshot_split="dev",
            description="以下是关于{name_zh}的单项选择题，请直接给出正确答案的选项。\n\n",
            doc_to_text=CEVAL_QUESTION, target_delimiter=" ",
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
)
