"""The report's "Sample generations" section: base and tuned greedy answers side by side.

Reads the ``samples.json`` each evaluation writes (:mod:`zhlora.evaluation.samples`); the
analysis layer never runs a model. Prompts are paired by id, so a result folder written
before sample generations existed (no ``samples.json``) simply gives no section.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from zhlora.analysis.sections import Section
from zhlora.filenames import SAMPLES_NAME

LANGUAGE_LABEL = {"zh": "中文 Chinese", "en": "English"}


def read_samples(results_dir: str | Path) -> dict | None:
    """The ``samples.json`` of an evaluation folder, or None when absent or unreadable."""
    path = Path(results_dir) / SAMPLES_NAME
    try:
        samples = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return samples if isinstance(samples, dict) and isinstance(samples.get("items"), list) else None


def _md_block(text: str) -> str:
    """An answer as a Markdown blockquote (line breaks kept, an empty answer shown as such)."""
    lines = text.splitlines() or ["(empty)"]
    return "\n".join(f"> {line}" if line.strip() else ">" for line in lines)


def samples_section(base: dict | None, tuned: dict | None) -> Section | None:
    """Base vs tuned answers per prompt (HTML: a three-column table; Markdown: quotes); None without both files."""
    if not base or not tuned:
        return None
    tuned_by_id = {item["id"]: item for item in tuned["items"]}
    pairs = [(item, tuned_by_id[item["id"]]) for item in base["items"] if item["id"] in tuned_by_id]
    if not pairs:
        return None
    intro = (f"Greedy answers (at most {base.get('max_new_tokens')} new tokens) to fixed held-out prompts, rendered with "
             f"the {base.get('template')!r} template; the same prompts for both models.")
    if base.get("template") != tuned.get("template"):
        intro += f" Note: the tuned model's prompts used the {tuned.get('template')!r} template."
    md = ["## Sample generations\n", f"{intro}\n"]
    rows = []
    for left, right in pairs:
        label = f"{LANGUAGE_LABEL.get(left['language'], left['language'])} · {left['instruction']}"
        md += [f"### {label}\n", "**Base**\n", _md_block(left["answer"]) + "\n", "**Tuned**\n", _md_block(right["answer"]) + "\n"]
        rows.append(
            f"<tr><td>{html.escape(label)}</td><td>{html.escape(left['answer']) or '<i>(empty)</i>'}</td>"
            f"<td>{html.escape(right['answer']) or '<i>(empty)</i>'}</td></tr>"
        )
    table = ('<div class="table-wrap"><table class="samples"><thead><tr><th>prompt</th><th>base</th><th>tuned</th>'
             f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    htm = f'<h2 id="samples">Sample generations</h2>\n<p>{html.escape(intro)}</p>\n{table}\n'
    return Section("Sample generations", "\n".join(md), htm, "samples")
