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
locked: the first shard computes a shared step, the others wait for it) or run in copies of it;
copy their ``results/``, ``evaluation_results/`` and ``.zhlora/steps/`` back together and
``--summary_only`` merges them. Inside a SLURM array job ``--shard`` defaults to the array task.
The summary (``sweeps/<run_name>/report.html``) has a table of every trial, a
learning-vs-forgetting scatter with the Pareto front, and rank x alpha heatmaps.

Launchers (``--launcher``, docs/sweeps.md)::

    zhlora sweep --config configs/sweep-seed-grid.yaml --launcher ray --ray_address auto --gpus_per_trial 1
    zhlora sweep --config configs/sweep-seed-grid.yaml --launcher slurm --slurm_partition gpu --dry_run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SWEEP_GROUPS = ["data", "model", "lora", "train", "eval", "report", "sweep"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: ``--config``, the grid (``--lora_ranks``, ...), the launcher, ``--shard``, ``--summary_only``, ``--prepare_only``."""
    from zhlora.config import add_config_flags, add_top_level_flags

    add_top_level_flags(parser)
    add_config_flags(parser, SWEEP_GROUPS)
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="Run only trials whose grid index %% N == I (0 <= I < N), e.g. 0/4 on the first of 4 machines "
                             "(default inside a SLURM array job: the array task's shard).")
    parser.add_argument("--summary_only", action="store_true", help="Run nothing; summarize the complete trials.")
    parser.add_argument("--prepare_only", action="store_true",
                        help="Run only the shared steps (data, base model, baseline evaluation, preprocessing).")
    parser.add_argument("--dry_run", action="store_true",
                        help="Print every step's command and state; run nothing (--launcher slurm: write the sbatch "
                             "scripts without submitting them).")


def main(args: argparse.Namespace) -> int:
    """Run this shard's trials (shared steps first) here, on Ray or on SLURM, then summarize the whole grid."""
    from zhlora.commands._pipeline import resolve_config
    from zhlora.errors import ConfigError
    from zhlora.experiment import WorkLayout, parse_shard, shard_from_environment, shard_trials, sweep_trials

    cfg = resolve_config(args)
    trials = sweep_trials(cfg)
    shard = parse_shard(args.shard) if args.shard else shard_from_environment()
    if shard and not args.shard:
        print(f"SLURM array task: running shard {shard[0]}/{shard[1]} (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT).")
    launcher = cfg.sweep.launcher
    if launcher != "local" and shard:
        raise ConfigError(f"--shard splits a sweep by hand; --launcher {launcher} splits it itself. Use one of them.")
    if launcher == "slurm" and not (args.summary_only or args.prepare_only):
        return _submit_to_slurm(cfg, len(trials), WorkLayout.of(cfg), args.dry_run)
    if launcher == "ray" and not args.dry_run:
        cfg.work_dir = str(Path(cfg.work_dir).resolve())  # Ray workers may start in another folder
    selected = shard_trials(trials, shard) if shard else trials
    failed: list[str] = []
    if not args.summary_only:
        outcome = _run_trials(cfg, selected, len(trials), args, shard)
        if isinstance(outcome, int):
            return outcome
        failed = outcome
    if args.prepare_only:
        return 0
    _write_summary(cfg)
    if failed:
        print(f"zhlora sweep: {len(failed)} trial(s) failed: {', '.join(failed)}. Rerun the same command to retry them.",
              file=sys.stderr)
        return 1
    return 0


def _run_trials(cfg, selected, n_trials: int, args: argparse.Namespace, shard) -> int | list[str]:
    """Shared steps once, then the trials (here or on Ray); the failed trials' names, or an exit status."""
    from zhlora.commands._pipeline import print_plan
    from zhlora.experiment import (
        StepFailed,
        execute,
        plan_fingerprints,
        plan_sweep,
        shared_sweep_steps,
        write_run_config,
    )

    run_command = args.run_verb  # zhlora.cli.run_command, passed in by the CLI
    layout, steps, configs = plan_sweep(cfg, selected)
    fingerprints = plan_fingerprints(steps)
    if args.dry_run:
        print_plan(steps, layout, fingerprints)
        return 0
    print(f"zhlora sweep {cfg.run_name}: {len(selected)} of {n_trials} trials"
          + (f" (shard {shard[0]}/{shard[1]})" if shard else "") + f" in {layout.root}"
          + (" on Ray" if cfg.sweep.launcher == "ray" else ""))
    for trial_cfg in configs:
        write_run_config(trial_cfg, layout)
    try:
        execute(shared_sweep_steps(steps, configs, layout), layout, run_command, fingerprints=fingerprints)
        if args.prepare_only:
            print("zhlora sweep: the shared steps are complete.")
            return 0
        if cfg.sweep.launcher == "ray":
            return _run_on_ray(cfg, configs, layout, run_command, fingerprints)
        return _run_here(configs, layout, run_command, fingerprints)
    except StepFailed as exc:
        print(f"zhlora sweep: {exc}", file=sys.stderr)
        return exc.exit_code


def _run_here(configs, layout, runner, fingerprints) -> list[str]:
    """The trials one after the other in this process; a failed trial is reported and the others go on."""
    from zhlora.errors import ZhloraError
    from zhlora.experiment import StepFailed, execute, trial_steps

    failed = []
    for number, trial_cfg in enumerate(configs, start=1):
        print(f"\n=== trial {number}/{len(configs)}: {trial_cfg.run_name} ===")
        try:
            execute(trial_steps(trial_cfg, layout), layout, runner, fingerprints=fingerprints)
        except StepFailed as exc:
            if exc.exit_code == 130:
                raise
            print(f"zhlora sweep: trial {trial_cfg.run_name}: {exc}", file=sys.stderr)
            failed.append(trial_cfg.run_name)
        except ZhloraError as exc:
            print(f"zhlora sweep: trial {trial_cfg.run_name}: {exc}", file=sys.stderr)
            failed.append(trial_cfg.run_name)
    return failed


def _run_on_ray(cfg, configs, layout, runner, fingerprints) -> list[str]:
    """The trials that are not complete yet as Ray tasks (see zhlora.experiment.ray_launcher)."""
    from zhlora.experiment import trial_is_done
    from zhlora.experiment.ray_launcher import run_trials_on_ray

    todo = []
    for trial_cfg in configs:
        if trial_is_done(trial_cfg, layout, fingerprints):
            print(f"trial {trial_cfg.run_name}: complete, same settings; skipping")
        else:
            todo.append(trial_cfg)
    if not todo:
        return []
    sweep = cfg.sweep
    runs = run_trials_on_ray(todo, layout, runner, fingerprints, address=sweep.ray_address,
                             cpus_per_trial=sweep.cpus_per_trial, gpus_per_trial=sweep.gpus_per_trial,
                             report=lambda line: print(line, flush=True))
    return [run.name for run in runs if run.status != "complete"]


def _submit_to_slurm(cfg, n_trials: int, layout, dry_run: bool) -> int:
    """Write the sweep's sbatch scripts and, unless ``dry_run``, submit them."""
    from zhlora.experiment.slurm import submit_slurm_scripts, write_slurm_scripts

    scripts = write_slurm_scripts(cfg, n_trials, layout.sweep_dir(cfg.run_name) / "slurm")
    print(f"SLURM scripts for {n_trials} trials (array 0-{n_trials - 1}) in {scripts.folder}:")
    for path in (scripts.config, scripts.prepare, scripts.trials, scripts.merge, scripts.submit):
        print(f"  {path}")
    if dry_run:
        print(f"Dry run: nothing submitted. Submit with: bash {scripts.submit}")
        return 0
    print(submit_slurm_scripts(scripts))
    return 0


def _write_summary(cfg) -> None:
    """Recompute the summary from the trials complete now (one writer at a time) and print it."""
    from zhlora.experiment import WorkLayout, summarize_sweep, write_sweep_summary
    from zhlora.locking import folder_lock

    sweep_dir = WorkLayout.of(cfg).sweep_dir(cfg.run_name)
    with folder_lock(sweep_dir, wait=True):  # shards finishing together: the last writer saw every trial
        summary = summarize_sweep(cfg)
        html = write_sweep_summary(summary, sweep_dir, cfg.report.chart_language)
    complete = [row for row in summary["trials"] if row["status"].startswith("complete")]
    print(f"\n{len(complete)} of {len(summary['trials'])} trials complete. Summary: {html}")
    for row in complete:
        parts = []
        if row["zh_delta_points"] is not None or row["en_delta_points"] is not None:
            zh, en = ("—" if v is None else f"{v:+.1f}" for v in (row["zh_delta_points"], row["en_delta_points"]))
            parts.append(f"accuracy Chinese {zh}, English {en} points")
        if row.get("learning_pct") is not None:
            parts.append(f"bits/byte Chinese {-row['learning_pct']:+.1f}%, English {row['forgetting_pct']:+.1f}%")
        verdicts = f"H1 {row.get('H1') or '—'}, H2 {row.get('H2') or '—'}"
        print(f"  {row['name']:<40} {'; '.join(parts) or 'no changes recorded'}; {verdicts}")
