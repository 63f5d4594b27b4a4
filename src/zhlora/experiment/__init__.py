"""The pipeline: the steps of one experiment (or a sweep of them) in one work folder.

Modules: :mod:`.layout` (where things live), :mod:`.plan` (steps, settings, fingerprints),
:mod:`.execution` (records, locks, skip/redo/resume), :mod:`.sweep` (grid, shards, summary
state) and :mod:`.reports` (scale curves, sweep summary, run listings).

``zhlora run`` and ``zhlora sweep`` plan a list of :class:`Step` and hand it to
:func:`execute`. A step is one verb invocation (``zhlora train --config ... --output_dir
...``) or, for the final report, a call into :mod:`zhlora.analysis`. The plan is data: it
names the exact command of every step, which the log prints and ``.zhlora/steps/`` records,
so any step can be rerun by hand.

Skip and redo. A step's *fingerprint* is the sha256 of the config values it depends on
(``Step.settings``) and of the fingerprints of the steps whose outputs it reads. After a
step succeeds, ``.zhlora/steps/<step>.json`` records its fingerprint and a *stamp* of its
outputs (the sha256 of the file the verb writes last). On the next run a step is skipped
when its record has the same fingerprint and its outputs still carry the recorded stamp;
when settings changed it is redone (with the verb's ``--force``/``--overwrite``), the log
says which setting changed, and every step downstream is redone too because its inputs'
fingerprints changed. Within a step, resuming is the step's own business: training
continues from its newest checkpoint, evaluation from its per-subject cache.

Layout of a work folder (the seed's, plus the pipeline's own state)::

    data/<source>/<split>.jsonl        models/base_model/
    processed_data/                    processed_data-replay<r>/   (one per replay ratio)
    results/<run>/                     evaluation_results/{baseline,<run>,<run>-scale<s>}/
    sweeps/<run_name>/                 (sweep summary)
    .zhlora/configs/<run>.yaml         the resolved config each run's verbs read
    .zhlora/steps/<step>.json          fingerprint, settings, command, output stamp, timings
    .zhlora/locks/<step>/.zhlora.lock  held while a step runs (safe concurrent shards)

Several processes may share one work folder (``zhlora sweep --shard i/n`` on machines with
a shared file system): a step is run by one process at a time, the others wait for its lock
and then find it complete.
"""

from zhlora.experiment.execution import (
    Execution,
    StepFailed,
    StepOutcome,
    StepState,
    decide_redo,
    execute,
    read_records,
    read_step_record,
    redo_reason,
    step_state,
)
from zhlora.experiment.layout import (
    WorkLayout,
    check_run_name,
    default_config_path,
    number_tag,
    processed_dirname,
    resolve_config_path,
    resolved_run_config,
    scale_results_name,
    shipped_configs_dir,
    write_run_config,
)
from zhlora.experiment.plan import (
    Step,
    benchmark_sources,
    needed_sources,
    plan_fingerprints,
    plan_run,
    run_steps,
    shared_steps,
    step_fingerprint,
)
from zhlora.experiment.reports import (
    runs_overview,
    scale_curve,
    tradeoff_numbers,
    write_run_report_html,
    write_sweep_summary,
)
from zhlora.experiment.sweep import (
    Trial,
    parse_shard,
    plan_sweep,
    shard_from_environment,
    shard_trials,
    shared_sweep_steps,
    summarize_sweep,
    sweep_trials,
    trial_config,
    trial_is_done,
    trial_status,
    trial_steps,
)
from zhlora.filenames import BASELINE_NAME, STATE_DIRNAME

__all__ = [
    "BASELINE_NAME", "STATE_DIRNAME", "Execution", "Step", "StepFailed", "StepOutcome", "StepState",
    "Trial", "WorkLayout", "benchmark_sources", "check_run_name", "decide_redo",
    "default_config_path", "execute", "needed_sources", "number_tag", "parse_shard", "plan_fingerprints", "plan_run",
    "plan_sweep", "processed_dirname", "read_step_record", "read_records", "redo_reason", "resolve_config_path",
    "resolved_run_config", "run_steps", "runs_overview", "scale_curve", "scale_results_name", "shard_from_environment",
    "shard_trials", "shared_steps", "shared_sweep_steps", "shipped_configs_dir", "step_fingerprint", "step_state", "summarize_sweep", "sweep_trials",
    "tradeoff_numbers", "trial_config", "trial_is_done", "trial_status", "trial_steps", "write_run_config", "write_run_report_html", "write_sweep_summary",
]
