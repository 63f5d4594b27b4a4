"""Prompt templates that turn an instruction row into the text the model is trained on.

- ``alpaca`` (default): Stanford Alpaca's plain template, the usual choice for a *base* model
  (Llama-2-7b-hf) and the one Chinese-Alpaca's first release used.
- ``llama2_chat``: Llama-2-chat's ``[INST] ... [/INST]`` turn without a system prompt, for chat
  models. The tokenizer adds ``<s>``; the response follows the closing tag after a space.
- ``chat``: the model's own chat template (``tokenizer.apply_chat_template``: ChatML for
  SmolLM2-Instruct and Qwen, Llama-3's header format, ...), one user turn and the opening of
  the assistant turn (``add_generation_prompt``); the response is the assistant's message and
  the tokenizer's EOS closes it (``<|im_end|>`` for ChatML).

BOS follows the tokenizer, never Llama-2's assumptions: every prompt is encoded with the
tokenizer's special tokens, so it starts with BOS exactly when the tokenizer adds one (Llama-2
does, SmolLM2 does not). A chat template that writes the BOS text itself has it removed when
the tokenizer would add it again (no double BOS).

The prompt is everything the loss ignores; the response (plus EOS) is what the model learns.
"""

from __future__ import annotations

import hashlib

from zhlora.errors import ZhloraError, unknown_name_error

TEMPLATES = ("alpaca", "llama2_chat", "chat")
CHAT_TEMPLATE = "chat"

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def _chat_template_text(tokenizer) -> str:
    """The tokenizer's Jinja chat template; a clear error when it has none."""
    if tokenizer is None:
        raise ZhloraError('The "chat" prompt template renders with the model\'s tokenizer, and none was given.')
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template.strip():
        raise ZhloraError(
            f"The tokenizer of {tokenizer.name_or_path} has no chat template, so --prompt_template chat cannot be "
            "used with it. Use --prompt_template alpaca (base models) or llama2_chat."
        )
    return template


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def render_prompt(template: str, instruction: str, input: str = "", tokenizer=None) -> str:  # noqa: A002 - the records' field name
    """The prompt text for one instruction row under ``template``.

    ``tokenizer`` is needed for ``chat`` only (its chat template renders the turn).

    Example::

        >>> render_prompt("llama2_chat", "把这句话翻译成英文", "你好")
        '[INST] 把这句话翻译成英文\\n你好 [/INST]'
    """
    if template == "alpaca":
        if input:
            return _ALPACA_WITH_INPUT.format(instruction=instruction, input=input)
        return _ALPACA_NO_INPUT.format(instruction=instruction)
    user = f"{instruction}\n{input}" if input else instruction
    if template == "llama2_chat":
        return f"[INST] {user.strip()} [/INST]"
    if template == CHAT_TEMPLATE:
        _chat_template_text(tokenizer)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user.strip()}], tokenize=False, add_generation_prompt=True
        )
        if tokenizer.bos_token and text.startswith(tokenizer.bos_token) and _adds_bos(tokenizer):
            text = text[len(tokenizer.bos_token):]
        return text
    raise unknown_name_error("prompt template", template, TEMPLATES)


def template_identity(template: str, tokenizer=None) -> dict:
    """What identifies the rendering: ``{name, chat_template_sha256}`` (the sha256 of the Jinja
    text for ``chat``, None otherwise). Recorded with the processed data and the adapter, and
    checked when ``ppl_zh`` is evaluated, so held-out prompts are rendered as training rows were."""
    if template not in TEMPLATES:
        raise unknown_name_error("prompt template", template, TEMPLATES)
    digest = None
    if template == CHAT_TEMPLATE:
        digest = hashlib.sha256(_chat_template_text(tokenizer).encode("utf-8")).hexdigest()
    return {"name": template, "chat_template_sha256": digest}
