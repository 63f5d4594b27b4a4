"""ppl_en: English text perplexity over WikiText articles (the forgetting side's language-model loss)."""

from zhlora.data.benchmarks.kinds import Benchmark, PerplexitySpec

BENCHMARK = Benchmark(
    name="ppl_en", language="en", display_en="PPL (en)", display_zh="英文困惑度", size_field="ppl_en_documents",
    variants={
        "default": PerplexitySpec(
            name="ppl_en", version="2", reference="zhlora: English text loss, disjoint windows",
            source="english_text", eval_split="test", target="document", units=("bytes", "words"),
        ),
    },
)
