"""Prompt templates that turn an instruction row into the text the model is trained on.

- ``alpaca`` (default): Stanford Alpaca's plain template, the usual choice for a *base* model
  (Llama-2-7b-hf) and the one Chinese-Alpaca's first release used.
- ``llama2_chat``: Llama-2-chat's ``[INST] ... [/INST]`` turn without a system prompt, for chat
  models. The tokenizer adds ``<s>``; the response follows the closing tag after a space.

The prompt is everything the loss ignores; the response (plus EOS) is what the model learns.
"""

from __future__ import annotations

from zhlora.errors import unknown_name_error

TEMPLATES = ("alpaca", "llama2_chat")

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def render_prompt(template: str, instruction: str, input: str = "") -> str:  # noqa: A002 - the records' field name
    """The prompt text for one instruction row under ``template`` (``alpaca`` or ``llama2_chat``).

    Example::

        >>> render_prompt("llama2_chat", "把这句话翻译成英文", "你好")
        '[INST] 把这句话翻译成英文\\n你好 [/INST]'
    """
    if template == "alpaca":
        if input:
            return _ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return _ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "llama2_chat":
        user = f"{instruction}\n{input}" if input else instruction
        return f"[INST] {user.strip()} [/INST]"
    raise unknown_name_error("prompt template", template, TEMPLATES)
