"""When the forgetting probes run: the due steps, and the overhead bound that may defer a due probe.

Pure functions over step numbers and wall times (seconds), so the rules are tested on
constructed timings without a model or a clock.

A probe is *due* after every ``monitor_every``-th optimizer step, every checkpoint step and the
last step. A due probe *runs* only if it keeps the probes within ``bound`` (``--probe_overhead``,
a fraction) of the training time so far::

    probe_seconds_so_far + expected_probe_seconds <= bound * train_seconds_so_far

where ``expected_probe_seconds`` is the duration of the previous probe run (the step-0 baseline
for the first one); otherwise it is deferred to the next due step. Two probes run whatever the
bound says: step 0, the baseline every later value is compared with (a one-off start-up cost,
like loading the model, so it is reported but not counted against the bound), and the last
step, so that the exported step is chosen knowing where the run ended. The last probe can
therefore take the overhead past the bound by one probe run; every other probe stays within it
unless it takes longer than the previous one did (then by at most the difference).
"""

from __future__ import annotations

import math


def is_probe_due(step: int, monitor_every: int, save_steps: int, total_steps: int) -> bool:
    """Whether the probes are due after ``step``: every ``monitor_every`` steps, at checkpoints and at the end."""
    return step % monitor_every == 0 or step % save_steps == 0 or step >= total_steps


def should_probe(step: int, total_steps: int, *, probe_seconds: float, expected_seconds: float,
                 train_seconds: float, bound: float) -> bool:
    """Whether a due probe runs now (see the module docstring); ``bound`` <= 0 means no bound.

    Args:
        step: the optimizer step just finished (0: before training).
        total_steps: the run's last step.
        probe_seconds: wall time of the probe runs so far, step-0 baseline excluded.
        expected_seconds: how long this probe run is expected to take (the previous run's time).
        train_seconds: wall time spent training so far (probes excluded).
        bound: the most probe time allowed, as a fraction of ``train_seconds``.
    """
    if step == 0 or step >= total_steps or bound <= 0:
        return True
    return probe_seconds + expected_seconds <= bound * train_seconds


def suggested_monitor_every(seconds_per_probe: float, seconds_per_step: float, bound: float) -> int:
    """The smallest ``--monitor_every`` whose probes fit within ``bound`` of the training time.

    A probe run of ``seconds_per_probe`` every N steps of ``seconds_per_step`` each costs
    ``seconds_per_probe / (N * seconds_per_step)`` of the training time.
    """
    if bound <= 0 or seconds_per_step <= 0:
        raise ValueError("suggested_monitor_every needs a positive bound and step time")
    return max(1, math.ceil(seconds_per_probe / (bound * seconds_per_step)))
