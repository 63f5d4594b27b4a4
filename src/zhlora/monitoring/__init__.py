"""Watch forgetting while training: fixed probe sets, the forgetting budget, and the training callback.

- :mod:`zhlora.monitoring.probes` draws the probe sets and evaluates them on the in-memory model;
- :mod:`zhlora.monitoring.budget` parses ``--forgetting_budget`` and chooses the step to export
  (pure functions);
- :mod:`zhlora.monitoring.schedule` says when probes are due and whether a due probe fits
  ``--probe_overhead`` (pure functions);
- :mod:`zhlora.monitoring.callback` ties them into the training loop.

See ``docs/monitoring.md``.
"""
