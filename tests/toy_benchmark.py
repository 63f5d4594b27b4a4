"""A toy benchmark, defined the way a new one is added to zhlora: this one file, nothing else.

Dropped into ``src/zhlora/data/benchmarks/`` it would be found by the registry on import; a
test registers it with :func:`zhlora.data.benchmarks.register` instead, so the package stays
as shipped. ``default=False`` keeps it out of the default ``--benchmarks``.
"""

from zhlora.data.benchmarks import Benchmark, ChoiceSpec

BENCHMARK = Benchmark(
    name="toy_zh", language="zh", display_en="Toy (zh)", display_zh="玩具基准", default=False,
    variants={
        "lm-eval": ChoiceSpec(
            name="toy_zh", protocol="lm-eval", version="1", reference="zhlora tests: toy benchmark",
            source="toy", eval_split="test", fewshot_split="dev", default_shots=1,
            description="以下是关于{name_zh}的单项选择题。\n\n",
            doc_to_text="{question_stripped}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案：", target_delimiter=" ",
        ),
    },
)
