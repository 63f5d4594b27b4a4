"""Names of the files in an ``evaluation_results/<name>/`` folder, for every layer that reads them.

``zhlora evaluate`` (:mod:`zhlora.evaluation.results`, :mod:`zhlora.evaluation.samples`) writes
the results and samples, ``zhlora compare`` (:mod:`zhlora.analysis.compare`,
:mod:`zhlora.analysis.report`) the comparison and the report; the analysis, the pipeline and the
commands read them. The names live here, in the shared layer, because the writing modules are
heavy (importing the evaluation package loads torch) or sit above some readers. The run folder's
names live in :mod:`zhlora.training.outputs` and :mod:`zhlora.training.logbook`, the processed
data's in :mod:`zhlora.data.preprocess`.
"""

from __future__ import annotations

RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"
TIMINGS_FILE = "timings.json"
SAMPLES_NAME = "samples.json"
FORGETTING_FILE = "forgetting.json"
FORGETTING_MD = "forgetting.md"
REPORT_HTML = "report.html"
