"""The sweep on Ray: one Ray task per trial (train, evaluate, compare, report), retried once.

``zhlora sweep --launcher ray [--ray_address auto]`` runs the shared steps (data, base model,
baseline evaluation, preprocessing) once in the driver, then submits every trial that is not
complete yet as a task reserving ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs. A task runs
the trial's steps with the same :func:`~zhlora.experiment.execution.execute` as ``zhlora run`` (so
an interrupted trial continues from its checkpoints and evaluation cache), in a fresh worker
process each time (``max_calls=1``: no model or global state leaks from one trial into the next).
Ray itself retries nothing: a failed task (an error, or a worker that died) is reported and
submitted once more here, so the log says what happened.

The work folder must be reachable at the same absolute path from every Ray node (a shared file
system), as for ``--shard`` across machines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zhlora.config import ExperimentConfig
from zhlora.errors import ZhloraError
from zhlora.experiment.execution import Runner, execute
from zhlora.experiment.layout import WorkLayout
from zhlora.experiment.plan import run_steps

RETRIES = 1  # a failed trial is submitted once more


@dataclass
class TrialRun:
    """One trial's fate on the cluster: ``complete`` or ``failed``, attempts made, last error."""

    name: str
    status: str
    attempts: int
    seconds: float = 0.0
    error: str = ""


class TrialError(Exception):
    """A trial's step failed (one picklable message, sent back to the driver)."""


def _run_trial(trial_cfg: ExperimentConfig, layout: WorkLayout, runner: Runner, fingerprints: dict[str, str]) -> float:
    """The body of a trial's Ray task: its steps, in order; returns the seconds it took."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    try:
        execute(run_steps(trial_cfg, layout), layout, runner, fingerprints=fingerprints)
    except ZhloraError as exc:
        raise TrialError(str(exc)) from None
    return time.perf_counter() - started


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ZhloraError("--launcher ray needs Ray: pip install 'zhlora[ray]' (or pip install ray), "
                          "or run the sweep with --launcher local or --launcher slurm.") from None
    return ray


def _error_text(exc: BaseException) -> str:
    """The user-facing cause of a failed task: the trial's own error, or what happened to its worker."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def gpus_for(ray, gpus_per_trial: int | None) -> int:
    """GPUs a trial reserves: as configured, else 1 when the cluster has GPUs, else 0."""
    if gpus_per_trial is not None:
        return gpus_per_trial
    return 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0


def run_trials_on_ray(
    configs: Sequence[ExperimentConfig],
    layout: WorkLayout,
    runner: Runner,
    fingerprints: dict[str, str],
    *,
    address: str | None,
    cpus_per_trial: int,
    gpus_per_trial: int | None,
    report: Callable[[str], None] = print,
    body: Callable[..., float] = _run_trial,
) -> list[TrialRun]:
    """Run ``configs`` (the trials still to do) as Ray tasks; report each as it finishes.

    ``address``: an existing cluster (``auto``, ``ray://host:10001``), or None for a local one.
    ``runner`` runs one verb in the worker (the CLI's ``run_command``, imported there by name).
    ``body(cfg, layout, runner, fingerprints) -> seconds`` is what a task does (default: the
    trial's steps). Returns one :class:`TrialRun` per trial, in the order of ``configs``.
    """
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ZhloraError(f"Could not start or reach {where}: {exc}. Check --ray_address (e.g. auto on a node of a "
                              "running cluster, ray://<head>:10001 from outside it) and `ray status`.") from None
    try:
        gpus = gpus_for(ray, gpus_per_trial)
        task = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus, max_retries=0, max_calls=1)(body)
        report(f"Ray: {len(configs)} trial(s) on {ray.cluster_resources().get('CPU', 0):g} CPUs / "
               f"{ray.cluster_resources().get('GPU', 0):g} GPUs, each reserving {cpus_per_trial} CPU(s) and {gpus} GPU(s).")
        outcome = {cfg.run_name: TrialRun(cfg.run_name, "running", 1) for cfg in configs}
        pending = {task.remote(cfg, layout, runner, fingerprints): (cfg, time.perf_counter()) for cfg in configs}
        finished = 0
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cfg, submitted = pending.pop(ref)
            run = outcome[cfg.run_name]
            try:
                run.seconds = ray.get(ref)
            except ray.exceptions.RayError as exc:
                run.error = _error_text(exc)
                if run.attempts <= RETRIES:
                    report(f"trial {cfg.run_name} failed on attempt {run.attempts} ({run.error}); retrying it.")
                    run.attempts += 1
                    pending[task.remote(cfg, layout, runner, fingerprints)] = (cfg, time.perf_counter())
                    continue
                run.status, run.seconds = "failed", time.perf_counter() - submitted
                finished += 1
                report(f"[{finished}/{len(configs)}] trial {cfg.run_name} failed after {run.attempts} attempts: {run.error}")
                continue
            run.status = "complete"
            finished += 1
            report(f"[{finished}/{len(configs)}] trial {cfg.run_name} complete in {run.seconds:.0f} s"
                   + (f" (attempt {run.attempts})" if run.attempts > 1 else ""))
        return list(outcome.values())
    finally:
        if started_here:
            ray.shutdown()
