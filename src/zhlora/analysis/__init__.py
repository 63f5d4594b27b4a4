"""Forgetting analysis: statistics, charts and reports built from results files only.

- :mod:`~zhlora.analysis.stats`: paired score intervals, detectable change, McNemar exact test,
  Holm correction, document bootstrap.
- :mod:`~zhlora.analysis.seeds`: the spread between training seeds of one configuration.
- :mod:`~zhlora.analysis.compare`: ``compare_results`` -> forgetting.json / forgetting.md
  (with :mod:`~zhlora.analysis.pairing`, :mod:`~zhlora.analysis.headline`,
  :mod:`~zhlora.analysis.results_io`).
- :mod:`~zhlora.analysis.report`: ``write_report`` -> report.html / report.md, built from
  :mod:`~zhlora.analysis.sections`.
- :mod:`~zhlora.analysis.charts`: PNG charts (results, training log, comparison, sweeps).
- :mod:`~zhlora.analysis.fonts`, :mod:`~zhlora.analysis.labels`: Chinese labels only when a
  CJK font is installed, English otherwise.

Nothing here loads a model; the method is documented in docs/analysis.md.
"""
