"""The pipeline: the steps of one experiment (or a sweep of them) in one work folder.

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
    .zhlora/locks/<step>.lock          held while a step runs (safe concurrent shards)

Several processes may share one work folder (``zhlora sweep --shard i/n`` on machines with
a shared file system): a step is run by one process at a time, the others wait for its lock
and then find it complete.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zhlora.config import ExperimentConfig, config_to_dict, dump_config_yaml
from zhlora.errors import ConfigError, ZhloraError
from zhlora.io_utils import atomic_write_json, atomic_write_text, dumps_json, provenance, sha256_file, utc_now

logger = logging.getLogger(__name__)

STATE_DIRNAME = ".zhlora"
BASELINE_NAME = "baseline"
DEFAULT_CONFIG = "demo.yaml"
LOCK_POLL_SECONDS = 5.0
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# ---------------------------------------------------------------------------------------
# Shipped configs and the work-folder layout
# ---------------------------------------------------------------------------------------
def shipped_configs_dir() -> Path:
    """The YAML configs installed with zhlora (``configs/`` in a checkout)."""
    return Path(str(resources.files("zhlora").joinpath("configs")))


def default_config_path() -> Path:
    """The embedded default experiment, ``configs/demo.yaml``: tiny model, bundled samples."""
    return shipped_configs_dir() / DEFAULT_CONFIG


def number_tag(value: float) -> str:
    """A short, file-name-safe spelling of a number (``0.2`` -> ``0.2``, ``32.0`` -> ``32``)."""
    return f"{value:g}"


def processed_dirname(replay_ratio: float) -> str:
    """``processed_data`` without replay, ``processed_data-replay<r>`` with (one folder per ratio)."""
    return "processed_data" if replay_ratio == 0 else f"processed_data-replay{number_tag(replay_ratio)}"


def scale_results_name(run_name: str, scale: float) -> str:
    """The evaluation folder of a run at one adapter scale; scale 1 is the run's main result."""
    return run_name if scale == 1 else f"{run_name}-scale{number_tag(scale)}"


@dataclass(frozen=True)
class WorkLayout:
    """Where every artefact of a work folder lives (``data_dir`` may be shared across work folders)."""

    root: Path
    data_dir: Path

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> WorkLayout:
        """The layout of ``cfg.work_dir``; a relative ``data.data_dir`` is taken inside it."""
        root = Path(cfg.work_dir)
        return cls(root=root, data_dir=_inside(root, cfg.data.data_dir))

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def base_model(self) -> Path:
        from zhlora.modeling import BASE_MODEL_DIRNAME

        return self.models_dir / BASE_MODEL_DIRNAME

    def processed_dir(self, replay_ratio: float) -> Path:
        return self.root / processed_dirname(replay_ratio)

    def run_dir(self, run_name: str) -> Path:
        return self.root / "results" / run_name

    def eval_dir(self, name: str) -> Path:
        return self.root / "evaluation_results" / name

    def sweep_dir(self, run_name: str) -> Path:
        return self.root / "sweeps" / run_name

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIRNAME

    def config_file(self, run_name: str) -> Path:
        return self.state_dir / "configs" / f"{run_name}.yaml"

    def record_file(self, step_id: str) -> Path:
        return self.state_dir / "steps" / f"{step_id}.json"

    def lock_file(self, step_id: str) -> Path:
        return self.state_dir / "locks" / f"{step_id}.lock"


def _inside(root: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else root / path


def check_run_name(run_name: str) -> None:
    """Run names become folder and file names: letters, digits, ``.``, ``_``, ``-``; not ``baseline``."""
    if not _NAME_PATTERN.fullmatch(run_name) or run_name == BASELINE_NAME:
        raise ConfigError(
            f'--run_name "{run_name}" cannot name a run folder: use letters, digits, ".", "_" and "-" '
            f'(starting with a letter or digit), and not "{BASELINE_NAME}", which names the base model\'s results.'
        )


def resolved_run_config(cfg: ExperimentConfig, layout: WorkLayout) -> ExperimentConfig:
    """``cfg`` with the data and processed-data paths placed in the work folder (what the verbs read)."""
    resolved = copy.deepcopy(cfg)
    resolved.data.data_dir = str(layout.data_dir)
    resolved.data.processed_dir = str(layout.processed_dir(cfg.data.replay_ratio))
    return resolved


def write_run_config(cfg: ExperimentConfig, layout: WorkLayout) -> Path:
    """Write the resolved config of ``cfg.run_name`` to ``.zhlora/configs/<run>.yaml``; return its path."""
    path = layout.config_file(cfg.run_name)
    text = "# Resolved by zhlora: the config every step of this run reads (defaults < YAML < flags).\n"
    atomic_write_text(path, text + dump_config_yaml(resolved_run_config(cfg, layout)))
    return path


# ---------------------------------------------------------------------------------------
# Steps and their fingerprints
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One step of the plan.

    Attributes:
        id: unique within a work folder and file-name safe, e.g. ``train.lora-demo``.
        settings: the config values the step's outputs depend on (JSON-able).
        inputs: ids of the steps whose outputs this one reads (earlier in the plan).
        stamp: returns a digest of the step's outputs when they are complete, else None.
        verb, argv: the command that does the step (``zhlora <verb> <argv...>``), or
        action: a function that does it (the report); exactly one of the two is set.
        redo_flags: added to ``argv`` to replace outputs made with other settings.
        resumes: the verb continues its own partial work (training, evaluation), so an
            interrupted attempt is continued rather than redone from scratch.
    """

    id: str
    settings: dict[str, Any]
    inputs: tuple[str, ...]
    stamp: Callable[[], str | None]
    verb: str | None = None
    argv: tuple[str, ...] = ()
    action: Callable[[], None] | None = None
    redo_flags: tuple[str, ...] = ()
    resumes: bool = False

    def command(self, redo: bool = False) -> str:
        """The step as a shell command (what a user would type to do it by hand)."""
        if self.verb is None:
            return f"(zhlora {self.id.split('.', 1)[0]}: built in)"
        words = ["zhlora", self.verb, *self.argv, *(self.redo_flags if redo else ())]
        return " ".join(_shell_quote(word) for word in words)


def _shell_quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def step_fingerprint(settings: dict[str, Any], input_fingerprints: dict[str, str]) -> str:
    """sha256 of a step's settings and its inputs' fingerprints (canonical JSON)."""
    identity = {"settings": settings, "inputs": dict(sorted(input_fingerprints.items()))}
    return hashlib.sha256(dumps_json(identity).encode("utf-8")).hexdigest()


def plan_fingerprints(steps: Sequence[Step]) -> dict[str, str]:
    """The fingerprint of every step of a plan (each step's inputs must come before it)."""
    fingerprints: dict[str, str] = {}
    for step in steps:
        missing = [i for i in step.inputs if i not in fingerprints]
        if missing:
            raise ValueError(f"step {step.id} reads {missing}, which the plan does not run before it")
        fingerprints[step.id] = step_fingerprint(step.settings, {i: fingerprints[i] for i in step.inputs})
    return fingerprints


def _file_stamp(path: Path) -> Callable[[], str | None]:
    return lambda: sha256_file(path) if path.is_file() else None


def _data_source_stamp(data_dir: Path, name: str) -> Callable[[], str | None]:
    """The sha256 of a source's split hashes in ``data/manifest.json``, when its files are all there."""

    def stamp() -> str | None:
        from zhlora.data.sources import read_manifest, source_is_complete

        entry = read_manifest(data_dir)["sources"].get(name)
        if not source_is_complete(data_dir, name, entry):
            return None
        return hashlib.sha256(dumps_json(entry["splits"]).encode("utf-8")).hexdigest()

    return stamp


def _model_stamp(folder: Path) -> Callable[[], str | None]:
    """The sha256 of ``zhlora_manifest.json`` when every file it lists is present."""

    def stamp() -> str | None:
        from zhlora.modeling import MANIFEST_NAME, read_manifest
        from zhlora.models.manifest import manifest_files_present

        manifest = read_manifest(folder)
        if manifest is None or not manifest_files_present(folder, manifest):
            return None
        return sha256_file(folder / MANIFEST_NAME)

    return stamp


def _adapter_stamp(run_dir: Path) -> Callable[[], str | None]:
    """The sha256 of the run's ``manifest.json`` (written last) when the adapter is there too."""
    from zhlora.training.checkpoint import ADAPTER_WEIGHTS_NAME
    from zhlora.training.outputs import MANIFEST_NAME

    def stamp() -> str | None:
        if not (run_dir / ADAPTER_WEIGHTS_NAME).is_file():
            return None
        return _file_stamp(run_dir / MANIFEST_NAME)()

    return stamp


def _pick(values: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: values[name] for name in names}


def benchmark_sources(benchmarks: Sequence[str], protocol: str, gsm8k_variant: str) -> list[str]:
    """The data sources the named benchmarks read (``ppl_zh`` reads BELLE's held-out slice)."""
    from zhlora.evaluation.specs import resolve_spec

    return sorted({resolve_spec(name, protocol, gsm8k_variant).source for name in benchmarks})


def needed_sources(cfg: ExperimentConfig, replay_ratios: Sequence[float]) -> list[str]:
    """``data.datasets`` plus what the pipeline reads: BELLE, the benchmarks' sources, alpaca for replay."""
    from zhlora.config import ALL_DATA_SOURCES, OPTIONAL_DATA_SOURCES

    needed = {"belle", *cfg.data.datasets, *benchmark_sources(cfg.eval.benchmarks, cfg.eval.protocol, cfg.eval.gsm8k_variant)}
    if any(ratio > 0 for ratio in replay_ratios):
        needed.add("alpaca")
    order = ALL_DATA_SOURCES + OPTIONAL_DATA_SOURCES
    return sorted(needed, key=order.index)


# Fields of each group a step depends on. Paths are not settings: they come from the layout.
DATA_SOURCE_FIELDS = ("source",)
BELLE_FIELDS = ("source", "belle_dataset", "belle_sample_size", "belle_heldout_size", "data_seed")
MODEL_SOURCE_FIELDS = ("model_name_or_path", "model_source", "revision")
PREPROCESS_FIELDS = ("prompt_template", "max_seq_length", "overlong", "replay_ratio", "data_seed")
MODEL_LOAD_FIELDS = ("torch_dtype", "load_in_4bit", "trust_remote_code")
EVAL_FIELDS = ("benchmarks", "protocol", "shots", "gsm8k_variant", "limit", "subjects", "max_new_tokens", "backend")
COMPARE_FIELDS = ("bootstrap_samples", "confidence", "significance", "stats_seed")


def shared_steps(cfg: ExperimentConfig, layout: WorkLayout, replay_ratios: Sequence[float]) -> list[Step]:
    """The steps every run of a work folder shares: data, base model, baseline evaluation."""
    raw = config_to_dict(cfg)
    steps = []
    for name in needed_sources(cfg, replay_ratios):
        fields = BELLE_FIELDS if name == "belle" else DATA_SOURCE_FIELDS
        settings = {"dataset": name, **_pick(raw["data"], fields)}
        argv = ["--data_dir", str(layout.data_dir), "--datasets", name, "--source", cfg.data.source]
        if name == "belle":
            argv += ["--belle_dataset", cfg.data.belle_dataset, "--belle_sample_size", str(cfg.data.belle_sample_size),
                     "--belle_heldout_size", str(cfg.data.belle_heldout_size), "--data_seed", str(cfg.data.data_seed)]
        steps.append(Step(
            id=f"download-data.{name}", settings=settings, inputs=(), stamp=_data_source_stamp(layout.data_dir, name),
            verb="download-data", argv=tuple(argv), redo_flags=("--force",),
        ))
    model = cfg.model
    argv = ["--model_name_or_path", model.model_name_or_path, "--model_source", model.model_source,
            "--output_dir", str(layout.models_dir)]
    if model.revision:
        argv += ["--revision", model.revision]
    steps.append(Step(
        id="download-model", settings=_pick(raw["model"], MODEL_SOURCE_FIELDS), inputs=(),
        stamp=_model_stamp(layout.base_model), verb="download-model", argv=tuple(argv), redo_flags=("--force",),
    ))
    steps.append(_evaluate_step(cfg, layout, BASELINE_NAME, run_name=None, scale=None))
    return steps


def _evaluate_step(
    cfg: ExperimentConfig, layout: WorkLayout, name: str, run_name: str | None, scale: float | None
) -> Step:
    """Evaluate the base model (``run_name`` None) or a run's adapter at ``scale`` into ``evaluation_results/<name>``."""
    raw = config_to_dict(cfg)
    sources = benchmark_sources(cfg.eval.benchmarks, cfg.eval.protocol, cfg.eval.gsm8k_variant)
    settings = {
        "eval": _pick(raw["eval"], EVAL_FIELDS),
        "model": _pick(raw["model"], MODEL_LOAD_FIELDS),
        "prompt_template": cfg.data.prompt_template,  # ppl_zh renders its prompts with the training template
        "adapter_scale": scale,
    }
    inputs = ["download-model", *(f"download-data.{source}" for source in sources)]
    config_run = run_name or cfg.run_name
    argv = ["--config", str(layout.config_file(config_run)), "--model_path", str(layout.base_model),
            "--data_dir", str(layout.data_dir), "--results_dir", str(layout.eval_dir(name))]
    if run_name is not None:
        inputs.append(f"train.{run_name}")
        argv += ["--lora_model_path", str(layout.run_dir(run_name)), "--adapter_scale", number_tag(scale)]
    return Step(
        id=f"evaluate.{name}", settings=settings, inputs=tuple(inputs),
        stamp=_file_stamp(layout.eval_dir(name) / "results.json"), verb="evaluate", argv=tuple(argv),
        redo_flags=("--overwrite",), resumes=True,
    )


def run_steps(cfg: ExperimentConfig, layout: WorkLayout) -> list[Step]:
    """The steps of one run (``cfg.run_name``) after the shared ones: preprocess, train, evaluate, compare, report."""
    from zhlora.training.outputs import NON_IDENTITY_TRAIN_FIELDS

    raw = config_to_dict(cfg)
    run, ratio = cfg.run_name, cfg.data.replay_ratio
    config_file = str(layout.config_file(run))
    processed = layout.processed_dir(ratio)
    preprocess_id = "preprocess" if ratio == 0 else f"preprocess.replay{number_tag(ratio)}"
    preprocess_inputs = ["download-data.belle", "download-model"] + (["download-data.alpaca"] if ratio > 0 else [])
    steps = [Step(
        id=preprocess_id,
        settings={**_pick(raw["data"], PREPROCESS_FIELDS), "trust_remote_code": cfg.model.trust_remote_code},
        inputs=tuple(preprocess_inputs), stamp=_file_stamp(processed / "meta.json"), verb="preprocess",
        argv=("--config", config_file, "--data_dir", str(layout.data_dir), "--processed_dir", str(processed),
              "--model_name_or_path", str(layout.base_model)),
        redo_flags=("--force",),
    )]
    steps.append(Step(
        id=f"train.{run}",
        settings={
            "lora": raw["lora"],
            "train": {k: v for k, v in raw["train"].items() if k not in NON_IDENTITY_TRAIN_FIELDS},
            "model": _pick(raw["model"], MODEL_LOAD_FIELDS),
        },
        inputs=(preprocess_id, "download-model"), stamp=_adapter_stamp(layout.run_dir(run)), verb="train",
        argv=("--config", config_file, "--model_path", str(layout.base_model),
              "--dataset_path", str(processed / "train_dataset"), "--output_dir", str(layout.run_dir(run))),
        redo_flags=("--overwrite",), resumes=True,
    ))
    scales = sorted(set(cfg.eval.adapter_scales) | {1.0})
    compare_ids = []
    for scale in scales:
        name = scale_results_name(run, scale)
        steps.append(_evaluate_step(cfg, layout, name, run_name=run, scale=scale))
        steps.append(Step(
            id=f"compare.{name}", settings=_pick(raw["report"], COMPARE_FIELDS),
            inputs=(f"evaluate.{BASELINE_NAME}", f"evaluate.{name}"),
            stamp=_file_stamp(layout.eval_dir(name) / "forgetting.json"), verb="compare",
            argv=(str(layout.eval_dir(BASELINE_NAME)), str(layout.eval_dir(name)), "--config", config_file,
                  "--data_dir", str(layout.data_dir), "--no-report"),
            redo_flags=("--overwrite",),
        ))
        compare_ids.append(f"compare.{name}")
    report_dir = layout.eval_dir(run)
    steps.append(Step(
        id=f"report.{run}", settings={"chart_language": cfg.report.chart_language, "scales": scales},
        inputs=(*compare_ids, f"train.{run}"), stamp=_file_stamp(report_dir / "report.html"),
        action=lambda: write_run_report(layout, run, scales, cfg.report.chart_language, cfg.report.confidence),
    ))
    return steps


def plan_run(cfg: ExperimentConfig) -> tuple[WorkLayout, list[Step]]:
    """Every step of ``zhlora run`` for ``cfg``, in execution order."""
    check_run_name(cfg.run_name)
    layout = WorkLayout.of(cfg)
    return layout, shared_steps(cfg, layout, [cfg.data.replay_ratio]) + run_steps(cfg, layout)


# ---------------------------------------------------------------------------------------
# Records and locks
# ---------------------------------------------------------------------------------------
def read_record(layout: WorkLayout, step_id: str) -> dict | None:
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
        record = read_record(layout, path.stem)
        if record is not None:
            records[path.stem] = record
    return records


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StepLock:
    """An exclusive lock file per step (``O_CREAT | O_EXCL``, atomic on local and NFS file systems).

    A lock left by a dead process on this host is taken over; one held on another host is
    waited for (the log says whose it is, and which file to delete if that process is gone).
    """

    def __init__(self, path: Path, poll_seconds: float = LOCK_POLL_SECONDS):
        self.path = path
        self.poll_seconds = poll_seconds
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}

    def __enter__(self) -> StepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == self.owner["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    logger.warning("Taking over %s, left by process %s that no longer runs.", self.path, holder.get("pid"))
                    self.path.unlink(missing_ok=True)
                    continue
                if not announced:
                    logger.info("Waiting for process %s on %s, which is running this step (lock %s; delete it if "
                                "that process is gone).", holder.get("pid"), holder.get("host"), self.path)
                    announced = True
                time.sleep(self.poll_seconds)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.owner, handle)
            return self

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, ValueError):
            return {}

    def __exit__(self, *exc_info) -> None:
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------
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


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict):
        flat: dict[str, Any] = {}
        for key, value in values.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): values}


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every (dotted) setting that differs between two settings dicts."""
    before, after = _flatten(old), _flatten(new)
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)]


def redo_reason(record: dict | None, step: Step, fingerprint: str, inputs: dict[str, str], stamp: str | None) -> str:
    """Why a step runs, in one phrase for the log."""
    if record is None:
        return "not done yet" if stamp is None else "outputs not recorded by zhlora run; the step checks them itself"
    if record.get("fingerprint") != fingerprint:
        changes = changed_settings(record.get("settings", {}), step.settings)
        redone_inputs = [i for i, fp in inputs.items() if record.get("inputs", {}).get(i) != fp]
        parts = []
        if changes:
            parts.append("settings changed (" + "; ".join(changes) + ")")
        if redone_inputs:
            parts.append("inputs were redone (" + ", ".join(redone_inputs) + ")")
        return "redoing: " + (" and ".join(parts) or "fingerprint changed")
    if record.get("status") != "complete":
        return "continuing an interrupted attempt" if step.resumes else "redoing an interrupted attempt"
    if stamp is None:
        return "outputs are missing or incomplete"
    return "outputs changed since they were recorded; the step checks them itself"


def decide_redo(record: dict | None, step: Step, fingerprint: str, stamp: str | None) -> bool:
    """Whether to pass the verb's redo flags (replace outputs) rather than let it skip or resume.

    - no record: never (outputs zhlora run did not make are the verb's to accept or refuse);
    - recorded with another fingerprint: always (zhlora run made them with other settings);
    - same fingerprint but interrupted or incomplete: only if the verb cannot resume itself;
    - same fingerprint, complete, but outputs changed by someone else: never (the verb decides).
    """
    if record is None:
        return False
    if record.get("fingerprint") != fingerprint:
        return True
    if record.get("status") != "complete" or stamp is None:
        return not step.resumes
    return False


def _write_record(layout: WorkLayout, step: Step, **fields: Any) -> None:
    record = {"id": step.id, "verb": step.verb, "settings": step.settings, **fields}
    atomic_write_json(layout.record_file(step.id), record)


def execute(steps: Sequence[Step], layout: WorkLayout, runner: Runner, *, poll_seconds: float = LOCK_POLL_SECONDS) -> Execution:
    """Run ``steps`` in order, skipping the complete ones; record each finished step.

    ``runner(verb, argv)`` runs one verb and returns its exit status (the CLI's
    ``run_command``). Raises :class:`StepFailed` when a step fails (status 130: interrupted;
    rerunning continues from that step).
    """
    result = Execution(fingerprints=plan_fingerprints(steps))
    for index, step in enumerate(steps, start=1):
        inputs = {i: result.fingerprints[i] for i in step.inputs}
        fingerprint = result.fingerprints[step.id]
        prefix = f"[{index}/{len(steps)}] {step.id}"
        with StepLock(layout.lock_file(step.id), poll_seconds):
            record = read_record(layout, step.id)
            stamp = step.stamp()
            if (record is not None and record.get("status") == "complete" and record.get("fingerprint") == fingerprint
                    and stamp is not None and stamp == record.get("output_stamp")):
                logger.info("%s: complete, same settings; skipping", prefix)
                result.outcomes.append(StepOutcome(step.id, "skipped"))
                continue
            redo = decide_redo(record, step, fingerprint, stamp)
            logger.info("%s: %s\n    %s", prefix, redo_reason(record, step, fingerprint, inputs, stamp), step.command(redo))
            base_record = {"fingerprint": fingerprint, "inputs": inputs, "command": step.command(redo),
                           "started_at": utc_now(), "provenance": provenance()}
            _write_record(layout, step, status="running", redo=redo, **base_record)
            started = time.perf_counter()
            if step.action is not None:
                step.action()
            else:
                status = runner(step.verb, [*step.argv, *(step.redo_flags if redo else ())])
                if status != 0:
                    what = "was interrupted" if status == 130 else f"failed (exit status {status})"
                    raise StepFailed(
                        f"Step {step.id} {what}. Its command: {step.command(redo)}. Fix what the message above says, "
                        "then rerun the same zhlora command: complete steps are skipped and this one "
                        + ("continues where it stopped." if step.resumes else "starts again."),
                        status,
                    )
            seconds = time.perf_counter() - started
            new_stamp = step.stamp()
            if new_stamp is None:
                raise ZhloraError(f"Step {step.id} finished but its outputs are incomplete ({step.command(redo)}). "
                                  "This is a bug in zhlora: please report it with the log above.")
            _write_record(layout, step, status="complete", redo=redo, output_stamp=new_stamp,
                          finished_at=utc_now(), seconds=round(seconds, 2), **base_record)
            result.outcomes.append(StepOutcome(step.id, "redone" if redo else "ran", seconds))
    return result
