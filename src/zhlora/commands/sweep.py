"""``zhlora sweep``: a grid of LoRA settings, one shared baseline, a summary of learning vs forgetting.

Examples::

    zhlora sweep --config configs/sweep-seed-grid.yaml                  # the seed's 36 trials
    zhlora sweep --config configs/sweep-seed-grid.yaml --lora_ranks 8,16 --lora_alphas 32
    zhlora sweep --config configs/sweep-seed-grid.yaml --shard 0/4      # machine 1 of 4 (trials 0, 4, 8, ...)
    zhlora sweep --config configs/sweep-seed-grid.yaml --summary_only   # merge whatever is complete
    zhlora sweep --replay_ratios 0,0.1,0.3 --lora_ranks 16 --lora_alphas 32 --lora_dropouts 0.05

Each trial is a ``zhlora run`` named ``<run_name>-r<rank>-a<alpha>-d<dropout>[-replay<r>]`` in the
same work folder: data, base model, baseline evaluation (and preprocessing per replay ratio)
are done once and shared. Trials are resumable like ``zhlora run``; a failed trial is reported
and the others go on. Shards may share one work folder on a shared file system (steps are
locked) or run in copies of it; copy their ``results/``, ``evaluation_results/`` and
``.zhlora/steps/`` back together and ``--summary_only`` merges them. The summary
(``sweeps/<run_name>/report.html``) has a table of every trial, a learning-vs-forgetting
scatter with the Pareto front, and rank x alpha heatmaps.
"""

from __future__ import annotations

import argparse
import sys

SWEEP_GROUPS = ["data", "model", "lora", "train", "eval", "report", "sweep"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: ``--config``, the grid (``--lora_ranks``, ``--lora_alphas``, ...), ``--shard``, ``--summary_only``."""
    from zhlora.config import add_config_flags, add_top_level_flags

    add_top_level_flags(parser)
    add_config_flags(parser, SWEEP_GROUPS)
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="Run only trials whose grid index %% N == I (0 <= I < N), e.g. 0/4 on the first of 4 machines.")
    parser.add_argument("--summary_only", action="store_true", help="Run nothing; summarize the complete trials.")
    parser.add_argument("--dry_run", action="store_true", help="Print every step's command and state; run nothing.")


def main(args: argparse.Namespace) -> int:
    """Run this shard's trials (shared steps first), then write the summary of the whole grid."""
    from zhlora.cli import run_command
    from zhlora.commands.run import print_plan, resolve_config
    from zhlora.errors import ZhloraError
    from zhlora.experiment import (
        StepFailed,
        WorkLayout,
        execute,
        parse_shard,
        plan_fingerprints,
        plan_sweep,
        run_steps,
        shard_trials,
        summarize_sweep,
        sweep_trials,
        write_run_config,
        write_sweep_summary,
    )

    cfg = resolve_config(args)
    trials = sweep_trials(cfg)
    selected = shard_trials(trials, parse_shard(args.shard)) if args.shard else trials
    failed: list[str] = []
    if not args.summary_only:
        layout, steps, configs = plan_sweep(cfg, selected)
        fingerprints = plan_fingerprints(steps)
        if args.dry_run:
            print_plan(steps, layout, fingerprints)
            return 0
        print(f"zhlora sweep {cfg.run_name}: {len(selected)} of {len(trials)} trials"
              + (f" (shard {args.shard})" if args.shard else "") + f" in {layout.root}")
        for trial_cfg in configs:
            write_run_config(trial_cfg, layout)
        trial_ids = {step.id for trial_cfg in configs for step in run_steps(trial_cfg, layout)}
        try:
            execute([s for s in steps if s.id not in trial_ids], layout, run_command, fingerprints=fingerprints)
            for number, trial_cfg in enumerate(configs, start=1):
                print(f"\n=== trial {number}/{len(configs)}: {trial_cfg.run_name} ===")
                try:
                    execute(run_steps(trial_cfg, layout), layout, run_command, fingerprints=fingerprints)
                except StepFailed as exc:
                    if exc.exit_code == 130:
                        raise
                    print(f"zhlora sweep: trial {trial_cfg.run_name}: {exc}", file=sys.stderr)
                    failed.append(trial_cfg.run_name)
                except ZhloraError as exc:
                    print(f"zhlora sweep: trial {trial_cfg.run_name}: {exc}", file=sys.stderr)
                    failed.append(trial_cfg.run_name)
        except StepFailed as exc:
            print(f"zhlora sweep: {exc}", file=sys.stderr)
            return exc.exit_code
    summary = summarize_sweep(cfg)
    html = write_sweep_summary(summary, WorkLayout.of(cfg).sweep_dir(cfg.run_name), cfg.report.chart_language)
    complete = [row for row in summary["trials"] if row["status"].startswith("complete")]
    print(f"\n{len(complete)} of {len(summary['trials'])} trials complete. Summary: {html}")
    for row in complete:
        zh, en = ("—" if v is None else f"{v:+.1f}" for v in (row["zh_delta_points"], row["en_delta_points"]))
        print(f"  {row['name']:<40} accuracy change: Chinese {zh}, English {en} points")
    if failed:
        print(f"zhlora sweep: {len(failed)} trial(s) failed: {', '.join(failed)}. Rerun the same command to retry them.",
              file=sys.stderr)
        return 1
    return 0
