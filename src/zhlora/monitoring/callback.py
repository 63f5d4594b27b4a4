"""The training callback that probes the model while it trains, enforces the budget and keeps the best step.

:class:`ForgettingMonitor` plugs into :func:`zhlora.training.loop.train_loop` as a
``StepCallback``. Before training it measures the probes at step 0 (the baseline). When they
are due again (every ``monitor_every``-th step, every checkpoint step and the last step) and
running them keeps their wall time within ``--probe_overhead`` of the training time
(:mod:`zhlora.monitoring.schedule`; a probe that does not fit is deferred to the next due
step), it measures them on the model as it is (adapter applied, nothing reloaded), logs them
(``training_log.jsonl``, trackers such as TensorBoard), checks the forgetting budget, asks the loop to stop when the
budget is exceeded (``budget_action="stop"``), and keeps a copy of the adapter of the step
that :func:`~zhlora.monitoring.budget.select_step` currently chooses, so that
:meth:`ForgettingMonitor.restore_selected` can put it back before the final adapter is saved.

Probes run on the main process only; the others wait for it at the loop's next collective.
The adapter copies live in ``<output_dir>/probe_snapshots/step-<n>/`` (standard PEFT folders);
the copy chosen as of every checkpoint still on disk is kept, so a resumed run can still
export it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zhlora.errors import ZhloraError
from zhlora.filenames import PROBE_SETS_NAME, SNAPSHOT_DIRNAME
from zhlora.forgetting_budget import ForgettingBudget
from zhlora.io_utils import atomic_write_json, replace_folder
from zhlora.monitoring.budget import (
    ProbePoint,
    Selection,
    limit_values,
    resolution_points,
    select_step,
    violations,
)
from zhlora.monitoring.probes import ENGLISH_ACCURACY_PROBES, ProbeSuite, evaluate_probes, probe_manifest
from zhlora.monitoring.schedule import is_probe_due, should_probe, suggested_monitor_every
from zhlora.training.checkpoint import checkpoint_path, list_checkpoints
from zhlora.training.loop import StepReport

logger = logging.getLogger(__name__)

_SNAPSHOT_RE = re.compile(r"^step-(\d+)$")


def json_safe(values: dict[str, float]) -> dict[str, float | None]:
    """Probe values for JSON files: a non-finite value (a diverged model) is written as null."""
    return {name: value if value is not None and math.isfinite(value) else None for name, value in values.items()}


def _format_values(values: dict[str, float], baseline: dict[str, float] | None) -> str:
    parts = []
    for name, value in values.items():
        base = None if baseline is None else baseline.get(name)
        if name.endswith("_acc"):
            text = f"{name} {100 * value:.1f}%" + ("" if base is None else f" ({100 * (value - base):+.1f} pt)")
        elif name.endswith("_ppl"):
            text = f"{name} {value:.4g}" + ("" if base is None else f" ({100 * (value / base - 1):+.1f}%)")
        else:
            text = f"{name} {value:.4f}" + ("" if base is None else f" ({value - base:+.4f})")
        parts.append(text)
    return ", ".join(parts)


class ForgettingMonitor:
    """Probe, log, enforce the budget and remember the step to export (see the module docstring).

    Args:
        suite: the probe sets (:func:`~zhlora.monitoring.probes.select_probe_sets`).
        tokenizer: the model's tokenizer.
        budget: the parsed ``--forgetting_budget`` or None (observe only).
        budget_action: ``"stop"`` (end the run when the budget is exceeded) or ``"mark"`` (log and go on).
        monitor_every, save_steps, total_steps: when the probes are due
            (:func:`~zhlora.monitoring.schedule.is_probe_due`).
        probe_overhead: the most probe wall time allowed, as a fraction of the training time
            (``--probe_overhead``; 0: no bound); see :func:`~zhlora.monitoring.schedule.should_probe`.
        output_dir: the run folder (adapter snapshots, ``probe_sets.json``).
        is_main_process: only the main process probes and writes files.
        batch_size: rows per forward pass of the evaluation engine, or ``"auto"``.
        max_new_tokens: generation budget of a GSM8K probe answer (tokens).
        log_metrics: receives ``({"probe/<name>": value, ...}, step)`` for trackers (TensorBoard).
        clock: wall clock in seconds (tests pass a scripted one).
    """

    def __init__(
        self, suite: ProbeSuite, tokenizer, budget: ForgettingBudget | None, budget_action: str, *,
        monitor_every: int, save_steps: int, total_steps: int, probe_overhead: float, output_dir: str | os.PathLike,
        is_main_process: bool = True, batch_size: int | str = "auto", max_new_tokens: int = 256,
        log_metrics: Callable[[dict, int], None] | None = None, clock: Callable[[], float] = time.perf_counter,
    ):
        if monitor_every <= 0:
            raise ValueError("monitor_every must be positive")
        if probe_overhead < 0:
            raise ValueError("probe_overhead must be >= 0")
        self.suite = suite
        self.tokenizer = tokenizer
        self.budget = budget
        self.budget_action = budget_action
        self.monitor_every = monitor_every
        self.save_steps = save_steps
        self.total_steps = total_steps
        self.probe_overhead = probe_overhead
        self.output_dir = Path(output_dir)
        self.is_main_process = is_main_process
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.log_metrics = log_metrics
        self.clock = clock
        self.baseline: ProbePoint | None = None
        self.points: list[ProbePoint] = []
        self.selection: Selection | None = None
        self.exceeded: dict | None = None  # the first step that crossed the budget
        # overhead accounting of this session (a resumed run counts from the resume), in seconds
        self.probe_runs = 0
        self.probes_deferred = 0
        self.probe_seconds = 0.0
        self.train_seconds = 0.0
        self.baseline_seconds: float | None = None
        self.expected_seconds = 0.0  # the previous probe run's time: what the next one should cost
        self._start_step = 0
        self._last_step = 0
        self._deferred_since_probe = 0
        self._train_seconds_at_probe = 0.0
        self._mark = clock()

    # ------------------------------------------------------------------ start
    def start(self, model, start_step: int, log_rows: list[dict]) -> dict | None:
        """Fix the probe sets and measure step 0, or pick up the probe history of a resumed run.

        Returns the step-0 log record (``{"probes": ..., ...}``) for a fresh run, else None.

        Raises:
            ZhloraError: a resumed run's log has no step-0 probes, or its probe sets differ
                from the ones drawn now (the benchmark data changed).
        """
        if not self.is_main_process:
            return None
        record_path = self.output_dir / PROBE_SETS_NAME
        probe_sets = probe_manifest(self.suite)
        if start_step == 0:
            atomic_write_json(record_path, probe_sets)
            self._warn_coarse_budget()
            began = self.clock()
            measurement = self._measure(model)
            self.baseline = ProbePoint(0, measurement.values)
            self._log_metrics(measurement.values, 0)
            self._mark = self.clock()
            self.baseline_seconds = self.expected_seconds = self._mark - began
            logger.info("probes at step 0 (baseline, %.1f s): %s", self.baseline_seconds,
                        _format_values(measurement.values, None))
            return {"probes": json_safe(measurement.values), "probe_seconds": round(self.baseline_seconds, 3),
                    "probe_seconds_each": measurement.seconds_per_probe}
        self._resume(log_rows, start_step, record_path, probe_sets)
        self._start_step = self._last_step = start_step
        self._mark = self.clock()
        return None

    def _resume(self, log_rows: list[dict], start_step: int, record_path: Path, probe_sets: dict) -> None:
        recorded = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
        if recorded is None or recorded.get("probes") != probe_sets["probes"]:
            raise ZhloraError(
                f"Cannot resume the monitored run in {self.output_dir}: its probe sets ({record_path}) "
                f"{'are missing' if recorded is None else 'differ from the ones drawn from the data now (the benchmark data changed)'}, "
                "so its probe values cannot be compared with new ones. Restore the data, or start over with --overwrite."
            )
        rows = [row for row in log_rows if row.get("probes") and row["step"] <= start_step]
        base = [row for row in rows if row["step"] == 0]
        if not base:
            raise ZhloraError(
                f"Cannot resume with monitoring in {self.output_dir}: training_log.jsonl has no step-0 probes "
                "(the run was started without --monitor_every). Resume without monitoring, or start over with --overwrite."
            )
        self.baseline = ProbePoint(0, base[0]["probes"])
        self.points = [ProbePoint(row["step"], row["probes"]) for row in rows if row["step"] > 0]
        self.expected_seconds = float(rows[-1].get("probe_seconds") or 0.0)
        for row in rows:
            if row.get("budget", {}).get("exceeded") and self.exceeded is None:
                self.exceeded = {"step": row["step"], "violations": row["budget"]["violations"]}
        if self.points:
            self.selection = select_step(self.budget, self.baseline, self.points)
        logger.info("monitoring resumed at step %d with %d probed step(s)", start_step, len(self.points))

    def _warn_coarse_budget(self) -> None:
        if self.budget is None:
            return
        n = sum(self.suite.items[name].n_items for name in ENGLISH_ACCURACY_PROBES if name in self.suite.items)
        for limit in self.budget.limits:
            if limit.metric == "acc" and limit.limit < resolution_points(n):
                logger.warning(
                    "--forgetting_budget %s is finer than one item of the %d-item English probe (%.1f points): a single "
                    "flipped answer exceeds it. Use a larger --probe_limit or a looser budget.",
                    limit.text, n, resolution_points(n))

    # ------------------------------------------------------------------ every step
    def on_step_end(self, step: int, model) -> StepReport | None:
        """Probe after ``step`` when the probes are due and fit the overhead bound; ask to stop when the budget is exceeded."""
        if not self.is_main_process:
            return None
        began = self.clock()
        self.train_seconds += began - self._mark
        self._mark = began
        self._last_step = step
        if not is_probe_due(step, self.monitor_every, self.save_steps, self.total_steps):
            return None
        if not should_probe(step, self.total_steps, probe_seconds=self.probe_seconds, expected_seconds=self.expected_seconds,
                            train_seconds=self.train_seconds, bound=self.probe_overhead):
            self._defer(step)
            return None

        measurement = self._measure(model)
        values = measurement.values
        point = ProbePoint(step, values)
        self.points.append(point)
        crossed = violations(self.budget, self.baseline.values, values)
        self.selection = select_step(self.budget, self.baseline, self.points)
        if self.budget is not None and self.selection.step == step:
            self._save_snapshot(model, step)
        self._prune_snapshots()
        seconds, train_window, deferred = self._count_probe_run(began)
        overhead = self.probe_seconds / max(self.train_seconds, 1e-9)
        logger.info("probes at step %d (%.1f s; overhead so far %.1f%% of %.1f s training): %s", step,
                    seconds, 100 * overhead, self.train_seconds, _format_values(values, self.baseline.values))
        stop = False
        if crossed:
            what = "; ".join(v.describe() for v in crossed)
            if self.exceeded is None:
                self.exceeded = {"step": step, "violations": [v.describe() for v in crossed]}
            stop = self.budget_action == "stop"
            logger.warning("Forgetting budget %s exceeded at step %d: %s. %s", self.budget.text, step, what,
                           "Stopping the run after this step (--budget_action stop)." if stop
                           else "Training goes on (--budget_action mark).")
        self._log_metrics(values, step, {"monitor/probe_seconds": seconds, "monitor/overhead_pct": 100 * overhead})
        record = {
            "probes": json_safe(values),
            "probe_seconds": round(seconds, 3),
            "probe_seconds_each": measurement.seconds_per_probe,
            "train_seconds": round(train_window, 3),
            "probe_overhead_pct": round(100 * overhead, 2),
            "probes_deferred": deferred,
            "selected_step": self.selection.step,
        }
        if self.budget is not None:
            record["budget"] = {"text": self.budget.text, "exceeded": bool(crossed),
                                "violations": [v.describe() for v in crossed]}
        return StepReport(record=record, stop=stop)

    def _count_probe_run(self, began: float) -> tuple[float, float, int]:
        """Book a probe run that began at ``began``: its seconds, the training seconds and deferrals since the last one.

        Everything from the start of the step's callback to now is monitoring time: probes, adapter snapshot, pruning.
        """
        self._mark = self.clock()
        seconds = self._mark - began
        self.probe_runs += 1
        self.probe_seconds += seconds
        self.expected_seconds = seconds
        train_window = self.train_seconds - self._train_seconds_at_probe
        self._train_seconds_at_probe = self.train_seconds
        deferred, self._deferred_since_probe = self._deferred_since_probe, 0
        return seconds, train_window, deferred

    def _defer(self, step: int) -> None:
        """Skip a due probe that would take the probes past ``--probe_overhead``; the next due step tries again."""
        self.probes_deferred += 1
        self._deferred_since_probe += 1
        first = self.probes_deferred == 1
        advice = ""
        if first:  # explain once at INFO; later deferrals go to DEBUG and are counted in the log rows
            advice = "; the next due step tries again" + (
                ", so the forgetting budget is checked less often" if self.budget is not None else "")
        logger.log(logging.INFO if first else logging.DEBUG,
                   "probes due at step %d deferred: %.1f s so far + %.1f s expected > %g x %.1f s of training "
                   "(--probe_overhead)%s", step, self.probe_seconds, self.expected_seconds, self.probe_overhead,
                   self.train_seconds, advice)

    def _measure(self, model):
        # fork_rng: the engine draws no random numbers, but a training run must not depend on whether it is probed
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            measurement = evaluate_probes(model, self.tokenizer, self.suite, batch_size=self.batch_size,
                                          max_new_tokens=self.max_new_tokens)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the evaluation's activations back to training
        return measurement

    def _log_metrics(self, values: dict[str, float], step: int, extra: dict | None = None) -> None:
        if self.log_metrics is not None:
            self.log_metrics({**{f"probe/{name}": value for name, value in values.items()}, **(extra or {})}, step)

    # ------------------------------------------------------------------ adapter snapshots
    def _snapshot_dir(self, step: int) -> Path:
        return self.output_dir / SNAPSHOT_DIRNAME / f"step-{step}"

    def _save_snapshot(self, model, step: int) -> None:
        final = self._snapshot_dir(step)
        tmp = final.parent / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        replace_folder(tmp, final)

    def _prune_snapshots(self) -> None:
        """Delete snapshots no longer needed: keep the current choice and the choice as of each checkpoint."""
        folder = self.output_dir / SNAPSHOT_DIRNAME
        if not folder.is_dir():
            return
        keep = {self.selection.step} if self.selection else set()
        for checkpoint_step, _ in list_checkpoints(self.output_dir):
            earlier = [p for p in self.points if p.step <= checkpoint_step]
            if earlier and self.budget is not None:
                keep.add(select_step(self.budget, self.baseline, earlier).step)
        for child in folder.iterdir():
            match = _SNAPSHOT_RE.match(child.name)
            if match and int(match.group(1)) not in keep:
                shutil.rmtree(child, ignore_errors=True)

    def restore_selected(self, model, current_step: int) -> Path | None:
        """Load the selected step's adapter into ``model`` unless it is ``current_step``; return its source.

        Call on the main process before the final adapter is saved.

        Raises:
            ZhloraError: neither a snapshot nor a checkpoint of the selected step is on disk.
        """
        if not self.is_main_process or self.budget is None or self.selection is None or self.selection.step == current_step:
            return None
        from zhlora.training.weights import load_trained_weights, weight_files

        step = self.selection.step
        candidates = [self._snapshot_dir(step), checkpoint_path(self.output_dir, step)]
        source = next((folder for folder in candidates if weight_files(folder)), None)
        if source is None:
            raise ZhloraError(
                f"The weights of step {step}, chosen by the forgetting budget, are missing ({candidates[0]}). "
                "Rerun with --overwrite to train again."
            )
        load_trained_weights(model, source)
        logger.info("Exporting the weights of step %d (%s) from %s", step, self.selection.reason, source)
        return source

    # ------------------------------------------------------------------ manifest
    def summary(self) -> dict:
        """The run manifest's ``monitoring`` section: probe sets, budget, chosen step and why, overhead."""
        selection = self.selection
        return {
            "monitor_every": self.monitor_every,
            "probe_steps": [0] + [p.step for p in self.points] if self.baseline else [p.step for p in self.points],
            "probe_sets": probe_manifest(self.suite),
            "forgetting_budget": None if self.budget is None else self.budget.text,
            "budget_action": self.budget_action,
            "budget_limit_values": None if self.budget is None or self.baseline is None
            else json_safe(limit_values(self.budget, self.baseline.values)),
            "budget_exceeded": self.exceeded,
            "selected_step": None if selection is None else selection.step,
            "selected_within_budget": None if selection is None else selection.within_budget,
            "selection_reason": None if selection is None else selection.reason,
            "selected_zh_gain": None if selection is None else json_safe({"gain": selection.zh_gain})["gain"],
            "baseline": None if self.baseline is None else json_safe(dict(self.baseline.values)),
            "selected_probes": None if selection is None else json_safe(
                dict(next(p.values for p in self.points if p.step == selection.step))),
            "overhead": self._overhead_summary(),
        }

    def _overhead_summary(self) -> dict:
        overhead = self.probe_seconds / self.train_seconds if self.train_seconds > 0 else None
        steps = self._last_step - self._start_step
        suggestion = None
        if self.probes_deferred and self.probe_overhead > 0 and self.train_seconds > 0 and steps > 0:
            per_probe = self.probe_seconds / self.probe_runs if self.probe_runs else self.expected_seconds
            suggestion = suggested_monitor_every(per_probe, self.train_seconds / steps, self.probe_overhead)
        return {
            "probe_runs": self.probe_runs,
            "probes_deferred": self.probes_deferred,
            "probe_seconds": round(self.probe_seconds, 3),
            "baseline_seconds": None if self.baseline_seconds is None else round(self.baseline_seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "overhead_pct": None if overhead is None else round(100 * overhead, 2),
            "bound_pct": round(100 * self.probe_overhead, 6) if self.probe_overhead > 0 else None,
            "suggested_monitor_every": suggestion,
            "note": "this session only (a resumed run counts from the resume); the step-0 baseline is not counted; "
                    "the last step is always probed, so the overhead can pass the bound by one probe run",
        }


def overhead_line(overhead: dict) -> str:
    """The run's closing line about probe cost, from the manifest's ``monitoring.overhead`` section."""
    if overhead["overhead_pct"] is None:
        return f"Probes: {overhead['probe_runs']} run(s) after step 0 (no training time measured)."
    bound = ("no bound, --probe_overhead 0" if overhead["bound_pct"] is None
             else f"bound {overhead['bound_pct']:g}%, the last step is always probed")
    deferred = overhead["probes_deferred"]
    baseline = ("step-0 baseline before the resume" if overhead["baseline_seconds"] is None
                else f"step-0 baseline {overhead['baseline_seconds']} s, not counted")
    runs = overhead["probe_runs"]
    line = (f"Probes: {runs} run{'' if runs == 1 else 's'}, {deferred} deferred, {overhead['probe_seconds']} s vs "
            f"{overhead['train_seconds']} s of training = {overhead['overhead_pct']}% overhead ({bound}; {baseline}).")
    if overhead["suggested_monitor_every"] is not None:
        line += (f" {deferred} due probe(s) were deferred to stay within the bound: --monitor_every "
                 f"{overhead['suggested_monitor_every']} would probe on schedule.")
    return line
