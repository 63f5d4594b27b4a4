"""Hooks of the GSM8K specs: few-shot draws, answer extraction and exact-match normalization.

The semantics are lm-evaluation-harness's (``filters/extraction.py`` RegexFilter and
``api/metrics.py`` exact_match), so strict-match and flexible-extract scores are comparable
with published lm-eval numbers.
"""

from __future__ import annotations

import random
import re

INVALID = "[invalid]"


def reference_answer(answer_text: str) -> str:
    """The gold answer of a worked solution: the text after its last ``####``, stripped.

    Example: ``"... = 18.\\n#### 18"`` -> ``"18"``.
    """
    return answer_text.split("####")[-1].strip()


def extract_answer(generation: str, pattern: str, group_select: int) -> str:
    """The ``group_select``-th regex match in ``generation`` (0 first, -1 last), or ``[invalid]``.

    With several capture groups a match is a tuple; its first non-empty group is used.
    Example: ``extract_answer("so 5 + 4 = 9. The answer is 9.", r"The answer is (\\-?[0-9\\.\\,]+).", 0)`` -> ``"9"``.
    """
    matches = re.findall(pattern, generation)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        non_empty = [group for group in match if group]
        match = non_empty[0] if non_empty else INVALID
    return match.strip()


def normalize_answer(text: str, ignore_regexes: tuple[str, ...]) -> str:
    """Remove every ``ignore_regexes`` match (in order) and lower-case, as lm-eval's exact_match does.

    Example with GSM8K's regexes: ``"$1,000."`` -> ``"1000"``.
    """
    for pattern in ignore_regexes:
        text = re.sub(pattern, "", text)
    return text.lower()


def random_shot_indices(pool_size: int, n_items: int, shots: int, seed: int) -> list[list[int]]:
    """Indices of the shots of each of ``n_items`` successive items, drawn as lm-eval does.

    lm-eval keeps one ``random.Random(seed)`` per task and calls ``sample(pool, shots)`` once per
    evaluated document in order, so item ``i`` gets the ``i``-th draw.
    """
    rnd = random.Random(seed)
    population = range(pool_size)
    return [rnd.sample(population, shots) for _ in range(n_items)]
