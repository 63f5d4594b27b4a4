"""Every artefact file and folder name zhlora writes or reads: the one home of these names.

The names live in the shared layer because every step reads another step's files, and the
writing modules are heavy (importing them loads torch) or sit above some readers. Paths
relative to a work folder (``zhlora run``'s layout) are built from these in
:mod:`zhlora.experiment.layout`.
"""

from __future__ import annotations

# --- the work folder (zhlora run) -----------------------------------------------------------------
DATA_DIRNAME = "data"  # step 1: normalized sources
PROCESSED_DIRNAME = "processed_data"  # step 2 (processed_data-replay<r> with replay)
MODELS_DIRNAME = "models"  # step 3
RUNS_DIRNAME = "results"  # step 5: one folder per training run
EVAL_DIRNAME = "evaluation_results"  # steps 4 and 6: one folder per evaluation
SWEEPS_DIRNAME = "sweeps"  # sweep summaries
SWEEP_SUMMARY = "summary.json"  # sweeps/<name>/, written last
SWEEP_SUMMARY_MD = "summary.md"
STATE_DIRNAME = ".zhlora"  # the pipeline's own records, configs and locks
BASELINE_NAME = "baseline"  # the base model's evaluation folder
LOCK_FILENAME = ".zhlora.lock"  # one writer per folder (zhlora.locking)

# --- data/ (download-data) ---------------------------------------------------------------------------
DATA_MANIFEST = "manifest.json"

# --- processed_data/ (preprocess) --------------------------------------------------------------------
TRAIN_DIRNAME = "train_dataset"
PROCESSED_META = "meta.json"  # written last: the completion marker
PROCESSED_STATS = "stats.json"

# --- models/ (download-model, merge) -----------------------------------------------------------------
BASE_MODEL_DIRNAME = "base_model"
MODEL_MANIFEST = "zhlora_manifest.json"

# --- results/<run>/ (train) ---------------------------------------------------------------------------
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
RUN_MANIFEST = "manifest.json"  # written last: marks the run complete
RUN_CONFIG = "train_config.yaml"
TRAINING_LOG = "training_log.jsonl"
LOSS_CURVE = "loss_curve.png"
INITIAL_ADAPTER_DIR = "initial_adapter"  # PiSSA/OLoRA start point, for the conversion to plain LoRA
WEIGHT_CHANGE = "weight_change.json"  # the spectrum of ΔW (zhlora.models.weight_change)
WEIGHT_CHANGE_CHART = "weight_change.png"
PROBE_SETS_NAME = "probe_sets.json"  # the forgetting monitor's (--monitor_every)
PROBE_CURVES_NAME = "probe_curves.png"
SNAPSHOT_DIRNAME = "probe_snapshots"
CHECKPOINT_PREFIX = "checkpoint-"  # checkpoint-<step>/
TRAINER_STATE = "trainer_state.json"  # inside a checkpoint

# --- evaluation_results/<name>/ (evaluate, compare, report) -----------------------------------------
RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"
TIMINGS_FILE = "timings.json"
SAMPLES_NAME = "samples.json"
PREDICTIONS_DIRNAME = "predictions"
CACHE_DIRNAME = ".cache"  # the resume cache of an unfinished evaluation
CACHE_SETTINGS = "settings.json"  # inside the cache
FORGETTING_FILE = "forgetting.json"
FORGETTING_MD = "forgetting.md"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
