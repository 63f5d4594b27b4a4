"""Few-shot prompt rendering, split into the part shared by a subject and the per-item part.

The rendering is lm-evaluation-harness's plain-text one::

    description
    + shot_1_text + target_delimiter + shot_1_target + fewshot_delimiter
    + ...
    + item_text

``prefix`` is everything up to and including the last fewshot delimiter; it is the same
string for every item of a subject, which is what lets the engine compute its key/value
cache once (see :mod:`zhlora.evaluation.hf_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: ``prefix`` (description and shots) + ``query`` (this item)."""

    prefix: str
    query: str

    @property
    def text(self) -> str:
        """The whole prompt string."""
        return self.prefix + self.query


def fewshot_prompt(
    description: str,
    shots: Sequence[tuple[str, str]],
    query: str,
    target_delimiter: str,
    fewshot_delimiter: str,
) -> Prompt:
    """Render ``shots`` (``(text, target)`` pairs) and ``query`` as lm-eval does.

    Example (C-Eval, one shot)::

        >>> fewshot_prompt("以下是中国关于法学的单项选择题，请选出其中的正确答案。\\n\\n",
        ...                [("问1\\nA. a\\nB. b\\nC. c\\nD. d\\n答案：", "B")], "问2\\n...答案：", " ", "\\n\\n").text
        '以下是中国关于法学的单项选择题，请选出其中的正确答案。\\n\\n问1\\nA. a\\nB. b\\nC. c\\nD. d\\n答案： B\\n\\n问2\\n...答案：'
    """
    prefix = description + "".join(text + target_delimiter + target + fewshot_delimiter for text, target in shots)
    return Prompt(prefix=prefix, query=query)
