"""The training callback that probes the model while it trains, enforces the budget and keeps the best step.

:class:`ForgettingMonitor` plugs into :func:`zhlora.training.loop.train_loop` as a
``StepCallback``. Before training it measures the probes at step 0 (the baseline); after every
``monitor_every``-th step, every checkpoint step and the last step it measures them again on
the model as it is (adapter applied, nothing reloaded), logs them (``training_log.jsonl``,
trackers such as TensorBoard), checks the forgetting budget, asks the loop to stop when the
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
from zhlora.io_utils import atomic_write_json
from zhlora.monitoring.budget import ForgettingBudget, ProbePoint, Selection, resolution_points, select_step, violations
from zhlora.monitoring.probes import ENGLISH_ACCURACY_PROBES, ProbeSuite, evaluate_probes, probe_manifest
from zhlora.training.checkpoint import ADAPTER_WEIGHTS_NAME, checkpoint_path, list_checkpoints
from zhlora.training.loop import StepReport

logger = logging.getLogger(__name__)

SNAPSHOT_DIRNAME = "probe_snapshots"
PROBE_SETS_NAME = "probe_sets.json"
PROBE_CURVES_NAME = "probe_curves.png"
OVERHEAD_BOUND = 0.10  # probes should cost at most this fraction of the training time
_SNAPSHOT_RE = re.compile(r"^step-(\d+)$")


def is_probe_step(step: int, monitor_every: int, save_steps: int, total_steps: int) -> bool:
    """Whether the probes run after ``step``: every ``monitor_every`` steps, at checkpoints and at the end."""
    return step % monitor_every == 0 or step % save_steps == 0 or step == total_steps


def suggested_monitor_every(monitor_every: int, overhead: float, bound: float = OVERHEAD_BOUND) -> int:
    """The smallest ``--monitor_every`` that brings a measured probe ``overhead`` (fraction) under ``bound``."""
    return max(monitor_every + 1, math.ceil(monitor_every * overhead / bound))


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
        monitor_every, save_steps, total_steps: when to probe (:func:`is_probe_step`).
        output_dir: the run folder (adapter snapshots, ``probe_sets.json``).
        is_main_process: only the main process probes and writes files.
        batch_size: rows per forward pass of the evaluation engine, or ``"auto"``.
        max_new_tokens: generation budget of a GSM8K probe answer (tokens).
        log_metrics: receives ``({"probe/<name>": value, ...}, step)`` for trackers (TensorBoard).
    """

    def __init__(
        self, suite: ProbeSuite, tokenizer, budget: ForgettingBudget | None, budget_action: str, *,
        monitor_every: int, save_steps: int, total_steps: int, output_dir: str | os.PathLike,
        is_main_process: bool = True, batch_size: int | str = "auto", max_new_tokens: int = 256,
        log_metrics: Callable[[dict, int], None] | None = None,
    ):
        if monitor_every <= 0:
            raise ValueError("monitor_every must be positive")
        self.suite = suite
        self.tokenizer = tokenizer
        self.budget = budget
        self.budget_action = budget_action
        self.monitor_every = monitor_every
        self.save_steps = save_steps
        self.total_steps = total_steps
        self.output_dir = Path(output_dir)
        self.is_main_process = is_main_process
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.log_metrics = log_metrics
        self.baseline: ProbePoint | None = None
        self.points: list[ProbePoint] = []
        self.selection: Selection | None = None
        self.exceeded: dict | None = None  # the first step that crossed the budget
        self.probe_seconds = 0.0
        self.train_seconds = 0.0
        self.baseline_seconds: float | None = None
        self.overhead_warned = False
        self._mark = time.perf_counter()

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
            measurement = self._measure(model)
            self.baseline = ProbePoint(0, measurement.values)
            self.baseline_seconds = measurement.seconds
            logger.info("probes at step 0 (baseline, %.1f s): %s", measurement.seconds, _format_values(measurement.values, None))
            self._log_metrics(measurement.values, 0)
            self._mark = time.perf_counter()
            return {"probes": json_safe(measurement.values), "probe_seconds": round(measurement.seconds, 3),
                    "probe_seconds_each": measurement.seconds_per_probe}
        self._resume(log_rows, start_step, record_path, probe_sets)
        self._mark = time.perf_counter()
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
        """Probe after ``step`` when it is a probe step; ask to stop when the budget is exceeded."""
        if not self.is_main_process or not is_probe_step(step, self.monitor_every, self.save_steps, self.total_steps):
            return None
        train_window = time.perf_counter() - self._mark
        measurement = self._measure(model)
        self.train_seconds += train_window
        self.probe_seconds += measurement.seconds
        values = measurement.values
        point = ProbePoint(step, values)
        self.points.append(point)
        crossed = violations(self.budget, self.baseline.values, values)
        self.selection = select_step(self.budget, self.baseline, self.points)
        if self.budget is not None and self.selection.step == step:
            self._save_snapshot(model, step)
        self._prune_snapshots()
        overhead = self.probe_seconds / max(self.train_seconds, 1e-9)
        logger.info("probes at step %d (%.1f s; overhead so far %.1f%% of %.1f s training): %s", step,
                    measurement.seconds, 100 * overhead, self.train_seconds, _format_values(values, self.baseline.values))
        self._check_overhead(overhead)
        stop = False
        if crossed:
            what = "; ".join(v.describe() for v in crossed)
            if self.exceeded is None:
                self.exceeded = {"step": step, "violations": [v.describe() for v in crossed]}
            stop = self.budget_action == "stop"
            logger.warning("Forgetting budget %s exceeded at step %d: %s. %s", self.budget.text, step, what,
                           "Stopping the run after this step (--budget_action stop)." if stop
                           else "Training goes on (--budget_action mark).")
        self._log_metrics(values, step, {"monitor/probe_seconds": measurement.seconds, "monitor/overhead_pct": 100 * overhead})
        record = {
            "probes": json_safe(values),
            "probe_seconds": round(measurement.seconds, 3),
            "probe_seconds_each": measurement.seconds_per_probe,
            "train_seconds": round(train_window, 3),
            "probe_overhead_pct": round(100 * overhead, 2),
            "selected_step": self.selection.step,
        }
        if self.budget is not None:
            record["budget"] = {"text": self.budget.text, "exceeded": bool(crossed),
                                "violations": [v.describe() for v in crossed]}
        self._mark = time.perf_counter()
        return StepReport(record=record, stop=stop)

    def _measure(self, model):
        # fork_rng: the engine draws no random numbers, but a training run must not depend on whether it is probed
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            measurement = evaluate_probes(model, self.tokenizer, self.suite, batch_size=self.batch_size,
                                          max_new_tokens=self.max_new_tokens)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the evaluation's activations back to training
        return measurement

    def _check_overhead(self, overhead: float) -> None:
        if overhead > OVERHEAD_BOUND and not self.overhead_warned and len(self.points) >= 2:
            self.overhead_warned = True
            logger.warning(
                "The probes took %.0f%% of the training time so far (bound %.0f%%). Pass --monitor_every %d "
                "(or a smaller --probe_limit) to bring it under the bound.",
                100 * overhead, 100 * OVERHEAD_BOUND, suggested_monitor_every(self.monitor_every, overhead))

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
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

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
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        step = self.selection.step
        candidates = [self._snapshot_dir(step) / ADAPTER_WEIGHTS_NAME, checkpoint_path(self.output_dir, step) / ADAPTER_WEIGHTS_NAME]
        source = next((path for path in candidates if path.is_file()), None)
        if source is None:
            raise ZhloraError(
                f"The adapter of step {step}, chosen by the forgetting budget, is missing ({candidates[0]}). "
                "Rerun with --overwrite to train again."
            )
        saved = load_file(str(source))
        set_peft_model_state_dict(model, saved)
        loaded = get_peft_model_state_dict(model)
        if set(loaded) != set(saved) or any(not torch.equal(loaded[k].cpu(), saved[k].cpu()) for k in saved):
            raise ZhloraError(f"{source} does not fit this model's adapter; rerun with --overwrite.")
        logger.info("Exporting the adapter of step %d (%s) from %s", step, self.selection.reason, source)
        return source

    # ------------------------------------------------------------------ manifest
    def summary(self) -> dict:
        """The run manifest's ``monitoring`` section: probe sets, budget, chosen step and why, overhead."""
        overhead = self.probe_seconds / self.train_seconds if self.train_seconds > 0 else None
        selection = self.selection
        return {
            "monitor_every": self.monitor_every,
            "probe_steps": [0] + [p.step for p in self.points] if self.baseline else [p.step for p in self.points],
            "probe_sets": probe_manifest(self.suite),
            "forgetting_budget": None if self.budget is None else self.budget.text,
            "budget_action": self.budget_action,
            "budget_exceeded": self.exceeded,
            "selected_step": None if selection is None else selection.step,
            "selected_within_budget": None if selection is None else selection.within_budget,
            "selection_reason": None if selection is None else selection.reason,
            "selected_zh_gain": None if selection is None else json_safe({"gain": selection.zh_gain})["gain"],
            "baseline": None if self.baseline is None else json_safe(dict(self.baseline.values)),
            "selected_probes": None if selection is None else json_safe(
                dict(next(p.values for p in self.points if p.step == selection.step))),
            "overhead": {
                "probe_runs": len(self.points), "probe_seconds": round(self.probe_seconds, 2),
                "baseline_seconds": None if self.baseline_seconds is None else round(self.baseline_seconds, 2),
                "train_seconds": round(self.train_seconds, 2),
                "overhead_pct": None if overhead is None else round(100 * overhead, 2),
                "bound_pct": 100 * OVERHEAD_BOUND,
                "note": "this session only (a resumed run counts from the resume); baseline excluded",
            },
        }

    def overhead_line(self) -> str:
        """One line for the user, e.g. ``probes: 6 runs, 12.3 s vs 140.2 s of training (8.8% overhead)``."""
        if not self.points:
            return "probes: no probe run after step 0"
        pct = 100 * self.probe_seconds / max(self.train_seconds, 1e-9)
        return (f"probes: {len(self.points)} runs took {self.probe_seconds:.1f} s vs {self.train_seconds:.1f} s of "
                f"training ({pct:.1f}% overhead, bound {100 * OVERHEAD_BOUND:.0f}%)"
                + ("" if self.baseline_seconds is None else f"; step-0 baseline {self.baseline_seconds:.1f} s"))
