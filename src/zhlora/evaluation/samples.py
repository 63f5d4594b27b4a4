"""Sample generations: greedy answers to a fixed handful of held-out Chinese and English prompts.

The first thing an experimenter reads to see whether a LoRA learned Chinese is what the model
now says. Every evaluation writes ``samples.json`` (the base and each tuned model answer the
same prompts, rendered with the training template), and the report puts base and tuned
answers side by side. The prompts were written for zhlora and appear in no bundled data set
(tests check they are not in the BELLE sample), so they are held out from any training run
on it. Greedy decoding makes the file deterministic for a given model.
"""

from __future__ import annotations

from collections.abc import Sequence

from zhlora.data.templates import render_prompt

# (id, language, instruction): what a user would type; the template wraps it.
SAMPLE_PROMPTS: tuple[tuple[str, str, str], ...] = (
    ("zh-greeting", "zh", "用一句话介绍你自己。"),
    ("zh-river", "zh", "中国最长的河流是哪一条？它流经哪些省份？"),
    ("zh-advice", "zh", "给准备第一次去北京旅游的人三条建议。"),
    ("zh-math", "zh", "小明有 5 个苹果，又买了 3 个，现在一共有几个？"),
    ("en-capital", "en", "What is the capital of France?"),
    ("en-explain", "en", "Explain in two sentences why the sky is blue."),
    ("en-translate", "en", "Translate into English: 今天天气很好。"),
)
# Where a plain-template answer ends when the model starts a new turn on its own.
_STOP = ("### Instruction", "[INST]")


def sample_generations(generator, tokenizer, template: str, max_new_tokens: int,
                       prompts: Sequence[tuple[str, str, str]] = SAMPLE_PROMPTS) -> dict:
    """Greedy answers of the model behind ``generator`` to ``prompts`` rendered with ``template``.

    ``generator`` answers ``generate(prompts, stop, max_new_tokens)`` (the HF engine or vLLM).
    Returns the ``samples.json`` content: ``{template, max_new_tokens, items: [{id, language,
    instruction, answer}]}``; answers are cut at the EOS or a new turn and stripped.
    """
    rendered = [render_prompt(template, instruction, "", tokenizer) for _, _, instruction in prompts]
    answers = generator.generate(rendered, _STOP, max_new_tokens)
    return {
        "template": template,
        "max_new_tokens": max_new_tokens,
        "items": [{"id": pid, "language": language, "instruction": instruction, "answer": answer.strip()}
                  for (pid, language, instruction), answer in zip(prompts, answers)],
    }

