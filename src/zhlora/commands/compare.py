"""``zhlora compare BASE TUNED``: forgetting analysis of a baseline and a tuned evaluation.

Example::

    zhlora compare evaluation_results/baseline evaluation_results/lora-chinese-llama --data_dir data

Pairs the two ``zhlora evaluate`` folders item by item and writes ``forgetting.json`` and
``forgetting.md`` (and, unless ``--no-report``, ``report.html`` / ``report.md`` with charts)
to ``--output_dir`` (default: TUNED). Refuses folders evaluated with different settings.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the two results folders, output folder, data folder for question text, report knobs."""
    from zhlora.config import add_config_flags

    parser.add_argument(
        "base", metavar="BASE_RESULTS", help="evaluation_results/<baseline> folder (or its results.json)."
    )
    parser.add_argument("tuned", metavar="TUNED_RESULTS", help="evaluation_results/<run> folder of the tuned model.")
    parser.add_argument(
        "--output_dir", default=None, help="Where to write forgetting.json etc. (default: TUNED_RESULTS)."
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help="Normalized data folder (data/): question text of flipped items when predictions lack it.",
    )
    parser.add_argument(
        "--training_log",
        default=None,
        help="training_log.jsonl of the run, for the report's loss curve "
        "(default: <work>/results/<run>/training_log.jsonl for TUNED = <work>/evaluation_results/<run>, if present).",
    )
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Also write report.html and report.md (default: yes).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing forgetting.json.")
    parser.add_argument("--quiet", action="store_true",
                        help="Leave the headline out of the output (zhlora run prints it once, at its end).")
    parser.add_argument("--forgetting_budget", dest="cfg__train__forgetting_budget", default=argparse.SUPPRESS,
                        metavar="BUDGET", help="Margin of the English non-inferiority verdicts (H2), e.g. acc:2,ppl:5%% "
                        "(default: acc:2,ppl:5%%, or the config's train.forgetting_budget).")
    add_config_flags(parser, ["report"])


def main(args: argparse.Namespace) -> int:
    """Compare, write the artefacts, print the headline."""
    from zhlora.analysis.compare import compare_and_report
    from zhlora.analysis.results_io import default_training_log, results_dir_of
    from zhlora.analysis.verdicts import row_verdict, verdict_lines
    from zhlora.config import config_from_args
    from zhlora.filenames import FORGETTING_FILE
    from zhlora.locking import folder_lock

    cfg = config_from_args(args)
    report = cfg.report
    out_dir = args.output_dir or results_dir_of(args.tuned)
    with folder_lock(out_dir):  # one writer per results folder
        forgetting, html = compare_and_report(
            args.base, args.tuned, out_dir, report, data_dir=args.data_dir, overwrite=args.overwrite,
            training_log=args.training_log or default_training_log(results_dir_of(args.tuned)), write_html=args.report,
            budget=cfg.train.forgetting_budget,
        )
        print(f"{out_dir}/{FORGETTING_FILE}" + ("" if args.quiet else f": {forgetting['headline']['text']}"))
        for row in forgetting["rows"]:
            if row["level"] == "benchmark":
                interval = f"[{row['ci_low_points']:+.1f}, {row['ci_high_points']:+.1f}]"
                print(
                    f"  {row['name']:<8} {row['base_pct']:5.1f} -> {row['tuned_pct']:5.1f}  {row['delta_points']:+5.1f} "
                    f"{interval}  p_holm={row['p_holm']:.2g}  {row_verdict(row)}"
                )
        if html is not None:
            print(f"{html}: report")
        for line in verdict_lines(forgetting["hypotheses"]):
            print(line)
    return 0
