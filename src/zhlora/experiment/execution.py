"""Running a plan: step records, locks, and the skip / redo / resume decision."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zhlora.differences import differences
from zhlora.errors import ZhloraError
from zhlora.experiment.layout import WorkLayout
from zhlora.experiment.plan import Step, plan_fingerprints
from zhlora.io_utils import atomic_write_json, provenance, utc_now
from zhlora.locking import folder_lock

logger = logging.getLogger(__name__)


LOCK_POLL_SECONDS = 5.0  # how often a process waiting for another's step looks again


def read_step_record(layout: WorkLayout, step_id: str) -> dict | None:
    """The record of a step's last attempt, or None (also for an unreadable record)."""
    path = layout.record_file(step_id)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def read_records(layout: WorkLayout) -> dict[str, dict]:
    """Every step record of a work folder, by step id."""
    folder = layout.state_dir / "steps"
    records = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read_step_record(layout, path.stem)
        if record is not None:
            records[path.stem] = record
    return records


Runner = Callable[[str, list[str]], int]


@dataclass
class StepOutcome:
    """What :func:`execute` did with one step: ``skipped``, ``ran`` or ``redone``, in seconds."""

    id: str
    action: str
    seconds: float = 0.0


@dataclass
class Execution:
    """The outcome of :func:`execute`: per-step outcomes and the fingerprints of every step."""

    outcomes: list[StepOutcome] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)


class StepFailed(ZhloraError):
    """A step's verb returned a non-zero exit status (its own message was printed above)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def redo_reason(record: dict | None, step: Step, fingerprint: str, inputs: dict[str, str], stamp: str | None) -> str:
    """Why a step runs, in one phrase for the log."""
    if record is None:
        return "not done yet" if stamp is None else "outputs not recorded by zhlora run; the step checks them itself"
    if record.get("fingerprint") != fingerprint:
        changes = differences(record.get("settings", {}), step.settings)
        redone_inputs = [i for i, fp in inputs.items() if record.get("inputs", {}).get(i) != fp]
        parts = []
        if changes:
            parts.append("settings changed (" + "; ".join(changes) + ")")
        if redone_inputs:
            parts.append("inputs were redone (" + ", ".join(redone_inputs) + ")")
        return "redoing: " + (" and ".join(parts) or "fingerprint changed")
    if record.get("status") != "complete":
        if stamp is not None and stamp != record.get("stamp_before"):
            return "an interrupted attempt left complete outputs; the step checks and finishes them"
        return "continuing an interrupted attempt" if step.resumes else "redoing an interrupted attempt"
    if stamp is None:
        return "outputs are missing or incomplete"
    return "outputs changed since they were recorded; the step checks them itself"


def decide_redo(record: dict | None, step: Step, fingerprint: str, stamp: str | None) -> bool:
    """Whether to pass the verb's redo flags (replace outputs) rather than let it skip or resume.

    - no record: never (outputs zhlora run did not make are the verb's to accept or refuse);
    - recorded with another fingerprint: always (zhlora run made them with other settings);
    - same fingerprint but interrupted: again if the interrupted attempt was itself a redo and the
      outputs are still the ones it was replacing (``stamp_before``); otherwise only if the verb
      cannot resume. Complete outputs of an interrupted attempt are left to the verb, which
      accepts them when they match its settings (a kill between a verb's last write and the
      step record must never leave a folder that refuses to be finished);
    - same fingerprint, complete, but outputs changed by someone else: never (the verb decides).
    """
    if record is None:
        return False
    if record.get("fingerprint") != fingerprint:
        return True
    if record.get("status") != "complete" and record.get("redo") and stamp is not None \
            and stamp == record.get("stamp_before"):
        return True
    if record.get("status") != "complete" or stamp is None:
        return stamp is None and not step.resumes
    return False


def _write_record(layout: WorkLayout, step: Step, **fields: Any) -> None:
    record = {"id": step.id, "verb": step.verb, "settings": step.settings, **fields}
    atomic_write_json(layout.record_file(step.id), record)


@dataclass(frozen=True)
class StepState:
    """Whether a step would be skipped, and if not, whether it replaces its outputs and why."""

    skip: bool
    redo: bool
    reason: str


def step_state(step: Step, layout: WorkLayout, fingerprint: str, inputs: dict[str, str]) -> StepState:
    """Decide what to do with ``step`` from its record and the current state of its outputs."""
    record = read_step_record(layout, step.id)
    stamp = step.stamp()
    if (record is not None and record.get("status") == "complete" and record.get("fingerprint") == fingerprint
            and stamp is not None and stamp == record.get("output_stamp")):
        return StepState(True, False, "complete, same settings; skipping")
    return StepState(False, decide_redo(record, step, fingerprint, stamp), redo_reason(record, step, fingerprint, inputs, stamp))


# Relative cost of each kind of step, from the demo (`zhlora run`, 2 CPU cores: evaluate ~50 s,
# train ~140 s, download-model ~45 s, report ~10 s, preprocess ~7 s). Only used for steps of a kind
# not measured yet, scaled by how long the measured steps took against these weights.
STEP_WEIGHTS = {"download-data": 0.01, "download-model": 0.8, "evaluate": 1.0, "preprocess": 0.12, "train": 2.7,
                "compare": 0.02, "action": 0.2}


def estimate_remaining(steps: Sequence[Step], history: dict[str, float],
                       measured: dict[str, list[float]]) -> tuple[float, bool] | None:
    """Seconds the ``steps`` still to run are expected to take, and whether that is only rough.

    Each step counts its own last recorded duration (``history``: an earlier attempt or run), else
    the mean of the steps of its kind measured in this invocation (``measured``), else its
    :data:`STEP_WEIGHTS` share scaled by the measured steps (rough). None before anything was
    measured. A guide for the log, not a promise.
    """
    kinds = {kind: sum(values) / len(values) for kind, values in measured.items() if values}
    if not kinds and not history:
        return None
    basis = [(STEP_WEIGHTS.get(kind, 1.0), seconds) for kind, seconds in kinds.items()]
    basis += [(STEP_WEIGHTS.get(s.verb or "action", 1.0), history[s.id]) for s in steps if s.id in history]
    per_weight = sum(seconds for _, seconds in basis) / max(sum(weight for weight, _ in basis), 1e-9)
    total, rough = 0.0, False
    for step in steps:
        kind = step.verb or "action"
        if step.id in history:
            total += history[step.id]
        elif kind in kinds:
            total += kinds[kind]
        else:
            total += STEP_WEIGHTS.get(kind, 1.0) * per_weight
            rough = True
    return total, rough


def execute(
    steps: Sequence[Step],
    layout: WorkLayout,
    runner: Runner,
    *,
    fingerprints: dict[str, str] | None = None,
    poll_seconds: float = LOCK_POLL_SECONDS,
) -> Execution:
    """Run ``steps`` in order, skipping the complete ones; record each finished step.

    ``runner(verb, argv)`` runs one verb and returns its exit status (the CLI's
    ``run_command``). ``fingerprints`` (default: :func:`plan_fingerprints` of ``steps``) lets a
    caller run part of a larger plan. Raises :class:`StepFailed` when a step fails (status
    130: interrupted); rerunning continues from that step.
    """
    from zhlora.progress import format_duration

    result = Execution(fingerprints=dict(fingerprints) if fingerprints is not None else plan_fingerprints(steps))
    history = {step.id: float(record["seconds"]) for step in steps
               if (record := read_step_record(layout, step.id)) and isinstance(record.get("seconds"), (int, float))}
    measured: dict[str, list[float]] = {}
    started_all = time.perf_counter()
    for index, step in enumerate(steps, start=1):
        inputs = {i: result.fingerprints[i] for i in step.inputs}
        fingerprint = result.fingerprints[step.id]
        prefix = f"[{index}/{len(steps)}] {step.id}"
        estimate = estimate_remaining(steps[index - 1:], history, measured)
        timing = f"{format_duration(time.perf_counter() - started_all)} so far"
        if estimate is not None:
            left, rough = estimate
            timing += f", {'roughly' if rough else 'about'} {format_duration(left)} left"
        # Shards of a sweep on one (shared) folder: the first runs a shared step, the others wait
        # (logged once) and then find it complete. A lock of a dead process is taken over.
        with folder_lock(layout.lock_dir(step.id), wait=True, poll_seconds=poll_seconds), \
                contextlib.ExitStack() as folders:
            for folder in step.writes:  # the verb takes these too (re-entrant); another shard's step is waited for
                folders.enter_context(folder_lock(folder, wait=True, poll_seconds=poll_seconds))
            state = step_state(step, layout, fingerprint, inputs)
            if state.skip:
                logger.info("%s: %s", prefix, state.reason)
                result.outcomes.append(StepOutcome(step.id, "skipped"))
                continue
            command = step.command(state.redo)
            logger.info("%s: %s (%s)\n    %s", prefix, state.reason, timing, command)
            base_record = {"fingerprint": fingerprint, "inputs": inputs, "command": command,
                           "started_at": utc_now(), "provenance": provenance()}
            _write_record(layout, step, status="running", redo=state.redo, stamp_before=step.stamp(), **base_record)
            started = time.perf_counter()
            if step.action is not None:
                step.action()
            else:
                status = runner(step.verb, [*step.argv, *(step.redo_flags if state.redo else ())])
                if status != 0:
                    what = "was interrupted" if status == 130 else f"failed (exit status {status})"
                    raise StepFailed(
                        f"Step {step.id} {what}. Its command: {command}. Fix what the message above says, then "
                        "rerun the same zhlora command: complete steps are skipped and this one "
                        + ("continues where it stopped." if step.resumes else "starts again."),
                        status,
                    )
            seconds = time.perf_counter() - started
            measured.setdefault(step.verb or "action", []).append(seconds)
            new_stamp = step.stamp()
            if new_stamp is None:
                raise ZhloraError(f"Step {step.id} finished but its outputs are incomplete ({command}). "
                                  "This is a bug in zhlora: please report it with the log above.")
            _write_record(layout, step, status="complete", redo=state.redo, output_stamp=new_stamp,
                          finished_at=utc_now(), seconds=round(seconds, 2), **base_record)
            result.outcomes.append(StepOutcome(step.id, "redone" if state.redo else "ran", seconds))
    return result
