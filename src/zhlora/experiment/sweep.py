"""Sweeps: a grid of LoRA settings as runs sharing data, base model and baseline; shards; the summary."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zhlora.config import ExperimentConfig, config_to_dict
from zhlora.errors import ConfigError, DataError
from zhlora.experiment.execution import read_records, step_state
from zhlora.experiment.layout import WorkLayout, check_run_name, number_tag, seed_configs
from zhlora.experiment.plan import Step, merge_plans, plan_fingerprints, run_steps, shared_steps
from zhlora.experiment.reports import seed_mean_and_spread, tradeoff_numbers
from zhlora.io_utils import provenance

logger = logging.getLogger(__name__)

# Sweep settings that say where trials run, not what they compute (left out of the summary's grid).
LAUNCH_FIELDS = ("launcher", "ray_address", "cpus_per_trial", "gpus_per_trial", "slurm_partition", "slurm_time",
                 "slurm_account")


@dataclass(frozen=True)
class Trial:
    """One point of the grid; ``index`` is its position in the full grid (for sharding).

    ``method`` is lora, dora, rslora, pissa or full; a full fine-tuning trial has no LoRA settings
    (None).
    """

    index: int
    name: str
    lora_rank: int | None
    lora_alpha: float | None
    lora_dropout: float | None
    replay_ratio: float
    method: str = "lora"


def sweep_trials(cfg: ExperimentConfig) -> list[Trial]:
    """The grid ``methods x lora_ranks x lora_alphas x lora_dropouts x replay_ratios``, in that nesting order.

    A LoRA trial's run is ``<run_name>-r<rank>-a<alpha>-d<dropout>`` (plus ``-replay<r>`` when r > 0);
    another LoRA method's inserts its name (``<run_name>-dora-r8-...``); full fine-tuning is one trial
    per replay ratio, ``<run_name>-full[-replay<r>]``, whatever the LoRA grid.
    """
    sweep = cfg.sweep
    points = []
    for method in sweep.methods:
        if method == "full":
            points += [(method, None, None, None, replay) for replay in sweep.replay_ratios]
        else:
            points += [(method, *point) for point in itertools.product(
                sweep.lora_ranks, sweep.lora_alphas, sweep.lora_dropouts, sweep.replay_ratios)]
    trials = []
    for index, (method, rank, alpha, dropout, replay) in enumerate(points):
        if method == "full":
            name = f"{cfg.run_name}-full"
        else:
            prefix = "" if method == "lora" else f"-{method}"
            name = f"{cfg.run_name}{prefix}-r{rank}-a{number_tag(alpha)}-d{number_tag(dropout)}"
        if replay > 0:
            name += f"-replay{number_tag(replay)}"
        trials.append(Trial(index, name, rank, alpha, dropout, replay, method))
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError("The sweep lists a value twice (e.g. --lora_ranks 8,8); each trial must be distinct.")
    return trials


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard i/n`` (0 <= i < n): this machine runs the trials whose index % n == i."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise ConfigError(
            f'--shard "{text}" must be i/n with 0 <= i < n, e.g. --shard 0/4 on the first of four machines.'
        )
    return int(match[1]), int(match[2])


def shard_from_environment(environ: dict | None = None) -> tuple[int, int] | None:
    """The shard of a SLURM array task (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of
    ``SLURM_ARRAY_TASK_COUNT``), or None outside an array job. Lets a hand-written array script
    run ``zhlora sweep`` without ``--shard`` arithmetic."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    except ValueError:
        raise ConfigError("SLURM_ARRAY_TASK_ID/_MIN/_COUNT are set but not integers; pass --shard i/n explicitly.") from None
    text = f"{task - first}/{count}"
    try:
        return parse_shard(text)
    except ConfigError:
        raise ConfigError(f"The SLURM array (task {task}, first {first}, {count} tasks) is not a contiguous range "
                          "starting at its first index; pass --shard i/n explicitly.") from None


def shard_trials(trials: Sequence[Trial], shard: tuple[int, int]) -> list[Trial]:
    """The trials of shard ``(i, n)``: every n-th trial starting at i (spreads ranks across machines)."""
    i, n = shard
    return [t for t in trials if t.index % n == i]


def trial_config(cfg: ExperimentConfig, trial: Trial) -> ExperimentConfig:
    """``cfg`` with the trial's run name, LoRA settings and replay ratio."""
    out = copy.deepcopy(cfg)
    out.run_name = trial.name
    out.data = dataclasses.replace(out.data, replay_ratio=trial.replay_ratio)
    if trial.method == "full":
        out.train = dataclasses.replace(out.train, finetuning_type="full", learning_rate=cfg.sweep.full_learning_rate)
        return out
    out.train = dataclasses.replace(out.train, finetuning_type="lora")
    out.lora = dataclasses.replace(
        out.lora, lora_rank=trial.lora_rank, lora_alpha=trial.lora_alpha, lora_dropout=trial.lora_dropout,
        use_dora=trial.method == "dora" or (trial.method == "lora" and out.lora.use_dora),
        use_rslora=trial.method == "rslora" or (trial.method == "lora" and out.lora.use_rslora),
        init_lora_weights="pissa" if trial.method == "pissa" else out.lora.init_lora_weights,
    )
    return out


def plan_sweep(cfg: ExperimentConfig, trials: Sequence[Trial]) -> tuple[WorkLayout, list[Step], list[ExperimentConfig]]:
    """Every step of the given trials (shared steps once), and each trial's config."""
    check_run_name(cfg.run_name)
    if not trials:
        raise ConfigError("This sweep selects no trial (check --shard and the sweep lists).")
    layout = WorkLayout.of(cfg)
    configs = [trial_config(cfg, t) for t in trials]
    shared = shared_steps(configs[0], layout, [t.replay_ratio for t in trials])
    return layout, merge_plans([shared, *(run_steps(c, layout) for c in configs)]), configs


def trial_steps(cfg: ExperimentConfig, layout: WorkLayout) -> list[Step]:
    """A trial's own steps (train, evaluate, compare, report): its run's steps without the shared preprocessing.

    Only these run on a trial's machine, Ray task or array task; the shared ones run first, once.
    """
    return [step for step in run_steps(cfg, layout) if step.verb != "preprocess"]


def shared_sweep_steps(steps: Sequence[Step], configs: Sequence[ExperimentConfig], layout: WorkLayout) -> list[Step]:
    """The steps of a sweep plan that no single trial owns (data, base model, baseline, preprocessing)."""
    own = {step.id for cfg in configs for step in trial_steps(cfg, layout)}
    return [step for step in steps if step.id not in own]


def trial_is_done(cfg: ExperimentConfig, layout: WorkLayout, fingerprints: dict[str, str]) -> bool:
    """Whether every step of a trial is complete with the planned settings (it would be skipped)."""
    return all(step_state(step, layout, fingerprints[step.id], {i: fingerprints[i] for i in step.inputs}).skip
               for step in trial_steps(cfg, layout))


def trial_status(layout: WorkLayout, trial_name: str, planned: str | None, records: dict[str, dict]) -> str:
    """A trial's state from its files and records.

    ``complete``, ``complete (unverified)`` (no step record beside it, e.g. copied from another
    machine without ``.zhlora/steps``), ``stale`` (made with other settings), ``evaluating``,
    ``training`` or ``not started``.
    """
    from zhlora.filenames import FORGETTING_FILE

    if (layout.eval_dir(trial_name) / FORGETTING_FILE).is_file():
        record = records.get(f"compare.{trial_name}")
        if record is None:
            return "complete (unverified)"
        return "complete" if record.get("fingerprint") == planned else "stale"
    if (layout.eval_dir(trial_name)).is_dir():
        return "evaluating"
    if layout.run_dir(trial_name).is_dir():
        return "training"
    return "not started"


def _rank90(path: Path) -> float | None:
    """The run's median rank at 90% of ‖ΔW‖² from its weight_change.json (None without one)."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("rank90_median")
    except (OSError, ValueError, AttributeError):
        return None


def summarize_sweep(cfg: ExperimentConfig) -> dict:
    """The state of every trial of ``cfg``'s grid in its work folder, with learning/forgetting of complete ones.

    Reads only files (merged shards included); trials made with other settings are ``stale``
    and left out of the charts.
    """
    from zhlora.analysis.results_io import load_forgetting
    from zhlora.analysis.trajectories import probe_trajectory, start_en_ppl
    from zhlora.filenames import FORGETTING_FILE, TRAINING_LOG, WEIGHT_CHANGE

    trials = sweep_trials(cfg)
    layout, steps, _ = plan_sweep(cfg, trials)
    planned = plan_fingerprints(steps)
    records = read_records(layout)
    rows = []
    for trial in trials:
        status = trial_status(layout, trial.name, planned.get(f"compare.{trial.name}"), records)
        row = {**dataclasses.asdict(trial), "status": status}
        if status.startswith("complete"):
            try:
                seeds = [load_forgetting(layout.eval_dir(c.run_name) / FORGETTING_FILE)
                         for c in seed_configs(trial_config(cfg, trial))
                         if (layout.eval_dir(c.run_name) / FORGETTING_FILE).is_file()]
                row.update(seed_mean_and_spread([tradeoff_numbers(f) for f in seeds]) if len(seeds) > 1
                           else tradeoff_numbers(seeds[0]))
                row["seeds_compared"] = len(seeds)
                log = layout.run_dir(trial.name) / TRAINING_LOG
                row["trajectory"] = probe_trajectory(log)
                row["en_ppl_start"] = start_en_ppl(log)
                row["rank90_median"] = _rank90(layout.run_dir(trial.name) / WEIGHT_CHANGE)
            except DataError as exc:
                logger.warning("%s", exc)
                row["status"] = "unreadable forgetting.json (rerun the trial)"
        rows.append(row)
    return {"schema_version": 1, "provenance": provenance(), "work_dir": str(layout.root), "run_name": cfg.run_name,
            "grid": {k: v for k, v in config_to_dict(cfg)["sweep"].items() if k not in LAUNCH_FIELDS}, "confidence": cfg.report.confidence, "trials": rows}
