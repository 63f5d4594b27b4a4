"""``zhlora report WORK_DIR_OR_RESULTS``: render report.html and report.md of compared runs.

Example::

    zhlora report zhlora_work                          # every evaluation_results/*/forgetting.json
    zhlora report zhlora_work/evaluation_results/lora-chinese-llama

Reads forgetting.json (written by ``zhlora compare``) and, when found, the run's
``results/<run>/training_log.jsonl`` for the loss curve. Never loads a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the work or results folder, an explicit training log, chart language."""
    parser.add_argument(
        "path",
        metavar="WORK_DIR_OR_RESULTS",
        help="A work folder (all evaluation_results/*/forgetting.json) or one results folder.",
    )
    parser.add_argument(
        "--training_log",
        default=None,
        help="training_log.jsonl for the loss curve (default: <work>/results/<run>/training_log.jsonl if present).",
    )
    parser.add_argument(
        "--chart_language",
        default="auto",
        choices=["auto", "zh", "en"],
        help="Chart labels: auto (Chinese when a CJK font is installed), zh or en (default: auto).",
    )


def find_forgetting_files(path: Path) -> list[Path]:
    """forgetting.json of a results folder, or of every results folder under a work folder."""
    from zhlora.errors import ZhloraError
    from zhlora.filenames import FORGETTING_FILE

    if (path / FORGETTING_FILE).is_file():
        return [path / FORGETTING_FILE]
    found = sorted(path.glob(f"evaluation_results/*/{FORGETTING_FILE}")) + sorted(path.glob(f"*/{FORGETTING_FILE}"))
    if not found:
        raise ZhloraError(
            f"No {FORGETTING_FILE} in {path} or its evaluation_results/*/ folders. "
            "Run `zhlora compare BASE_RESULTS TUNED_RESULTS` first."
        )
    return found


def main(args: argparse.Namespace) -> int:
    """Render one report per forgetting.json found."""
    from zhlora.analysis.report import write_report
    from zhlora.analysis.results_io import default_training_log, load_forgetting, regenerate_forgetting_hint
    from zhlora.errors import DataError

    for file in find_forgetting_files(Path(args.path)):
        forgetting = load_forgetting(file)
        training_log = args.training_log or default_training_log(file.parent)
        try:
            html = write_report(
                file.parent,
                forgetting,
                base_dir=forgetting["base"].get("dir", "?"),
                tuned_dir=forgetting["tuned"].get("dir", file.parent),
                training_log=training_log,
                language=args.chart_language,
            )
        except (KeyError, TypeError) as exc:  # a row or entry of a hand-edited or damaged file lacks what the report reads
            raise DataError(f"{file}: {type(exc).__name__} {exc} while rendering the report; the file is damaged "
                            f"or incomplete. {regenerate_forgetting_hint(file, forgetting)}") from None
        print(f"{html}: {forgetting['headline']['text']}")
    return 0
