"""ppl_zh: the held-out Chinese loss, i.e. the fine-tuning loss on BELLE rows not trained on."""

from zhlora.data.benchmarks.kinds import Benchmark, PerplexitySpec

BENCHMARK = Benchmark(
    name="ppl_zh", language="zh", display_en="PPL (zh)", display_zh="中文困惑度", size_field="ppl_zh_documents",
    variants={
        "default": PerplexitySpec(
            name="ppl_zh", version="2", reference="zhlora: held-out BELLE response loss",
            source="belle", eval_split="heldout", target="response", units=("bytes", "characters"),
        ),
    },
)
