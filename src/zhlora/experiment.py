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
from zhlora.errors import ConfigError, DataError, ZhloraError
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


def resolve_config_path(text: str) -> Path:
    """``--config`` as given when that file exists, else the shipped config of that name.

    So ``zhlora run --config configs/llama2-7b-belle.yaml`` (or ``--config llama2-7b-belle``)
    works from any folder once zhlora is pip-installed, not only from a checkout.
    """
    path = Path(text)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    shipped = shipped_configs_dir() / name
    if shipped.is_file():
        logger.info("--config %s: no such file here; using the shipped %s", text, shipped)
        return shipped
    known = ", ".join(sorted(p.name for p in shipped_configs_dir().glob("*.yaml")))
    raise ConfigError(f"--config {text}: no such file, and no shipped config of that name (shipped: {known}; "
                      "see `zhlora ls configs`).")


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
    description: str = ""
    redo_flags: tuple[str, ...] = ()
    resumes: bool = False

    def command(self, redo: bool = False) -> str:
        """The step as a shell command (what a user would type to do it by hand)."""
        if self.verb is None:
            return f"({self.description})"
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
            if cfg.data.source in ("hf", "modelscope"):
                argv += ["--belle_dataset", cfg.data.belle_dataset]
            else:  # read from a folder: the hub repository plays no part
                settings.pop("belle_dataset")
            argv += ["--belle_sample_size", str(cfg.data.belle_sample_size),
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
    if run_name is None:
        argv += ["--adapter_scales", "1"]  # the config's scales are for the adapter; the base model has none
    else:
        inputs.append(f"train.{run_name}")
        argv += ["--lora_model_path", str(layout.run_dir(run_name)), "--adapter_scale", number_tag(scale)]
    return Step(
        id=f"evaluate.{name}", settings=settings, inputs=tuple(inputs),
        stamp=_file_stamp(layout.eval_dir(name) / "results.json"), verb="evaluate", argv=tuple(argv),
        redo_flags=("--overwrite",), resumes=True,
    )


def run_steps(cfg: ExperimentConfig, layout: WorkLayout) -> list[Step]:
    """The steps of one run (``cfg.run_name``) after the shared ones: preprocess, train, evaluate, compare, report."""
    from zhlora.training.outputs import identity_train_settings

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
    train_inputs = [preprocess_id, "download-model"]
    train_argv = ["--config", config_file, "--model_path", str(layout.base_model),
                  "--dataset_path", str(processed / "train_dataset"), "--output_dir", str(layout.run_dir(run))]
    if cfg.train.monitor_every:  # forgetting probes read the benchmarks' data while training
        train_inputs += [f"download-data.{source}" for source in needed_sources(cfg, [ratio]) if source != "alpaca"]
        train_argv += ["--probe_data_dir", str(layout.data_dir)]
    steps.append(Step(
        id=f"train.{run}",
        settings={
            "lora": raw["lora"],
            "train": identity_train_settings(raw["train"]),
            "model": _pick(raw["model"], MODEL_LOAD_FIELDS),
        },
        inputs=tuple(dict.fromkeys(train_inputs)), stamp=_adapter_stamp(layout.run_dir(run)), verb="train",
        argv=tuple(train_argv), redo_flags=("--overwrite",), resumes=True,
    ))
    scales = sorted(set(cfg.eval.adapter_scales) | {1.0})
    compare_ids = []
    for scale in scales:
        name = scale_results_name(run, scale)
        steps.append(_evaluate_step(cfg, layout, name, run_name=run, scale=scale))
        # forgetting.json is computed from the two results alone (``zhlora evaluate`` of an adapter may
        # already have written it beside them), so this step always replaces it.
        steps.append(Step(
            id=f"compare.{name}", settings=_pick(raw["report"], COMPARE_FIELDS),
            inputs=(f"evaluate.{BASELINE_NAME}", f"evaluate.{name}"),
            stamp=_file_stamp(layout.eval_dir(name) / "forgetting.json"), verb="compare",
            argv=(str(layout.eval_dir(BASELINE_NAME)), str(layout.eval_dir(name)), "--config", config_file,
                  "--data_dir", str(layout.data_dir), "--no-report", "--overwrite"),
        ))
        compare_ids.append(f"compare.{name}")
    report_dir = layout.eval_dir(run)
    steps.append(Step(
        id=f"report.{run}", settings={"chart_language": cfg.report.chart_language, "scales": scales},
        inputs=(*compare_ids, f"train.{run}"), stamp=_file_stamp(report_dir / "report.html"),
        action=lambda: write_run_report(layout, run, scales, cfg.report.chart_language, cfg.report.confidence),
        description=f"built in: like `zhlora report {report_dir}`"
        + (", plus the adapter-scale curve" if len(scales) > 1 else ""),
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


@dataclass(frozen=True)
class StepState:
    """Whether a step would be skipped, and if not, whether it replaces its outputs and why."""

    skip: bool
    redo: bool
    reason: str


def step_state(step: Step, layout: WorkLayout, fingerprint: str, inputs: dict[str, str]) -> StepState:
    """Decide what to do with ``step`` from its record and the current state of its outputs."""
    record = read_record(layout, step.id)
    stamp = step.stamp()
    if (record is not None and record.get("status") == "complete" and record.get("fingerprint") == fingerprint
            and stamp is not None and stamp == record.get("output_stamp")):
        return StepState(True, False, "complete, same settings; skipping")
    return StepState(False, decide_redo(record, step, fingerprint, stamp), redo_reason(record, step, fingerprint, inputs, stamp))


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
    result = Execution(fingerprints=dict(fingerprints) if fingerprints is not None else plan_fingerprints(steps))
    for index, step in enumerate(steps, start=1):
        inputs = {i: result.fingerprints[i] for i in step.inputs}
        fingerprint = result.fingerprints[step.id]
        prefix = f"[{index}/{len(steps)}] {step.id}"
        with StepLock(layout.lock_file(step.id), poll_seconds):
            state = step_state(step, layout, fingerprint, inputs)
            if state.skip:
                logger.info("%s: %s", prefix, state.reason)
                result.outcomes.append(StepOutcome(step.id, "skipped"))
                continue
            command = step.command(state.redo)
            logger.info("%s: %s\n    %s", prefix, state.reason, command)
            base_record = {"fingerprint": fingerprint, "inputs": inputs, "command": command,
                           "started_at": utc_now(), "provenance": provenance()}
            _write_record(layout, step, status="running", redo=state.redo, **base_record)
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
            new_stamp = step.stamp()
            if new_stamp is None:
                raise ZhloraError(f"Step {step.id} finished but its outputs are incomplete ({command}). "
                                  "This is a bug in zhlora: please report it with the log above.")
            _write_record(layout, step, status="complete", redo=state.redo, output_stamp=new_stamp,
                          finished_at=utc_now(), seconds=round(seconds, 2), **base_record)
            result.outcomes.append(StepOutcome(step.id, "redone" if state.redo else "ran", seconds))
    return result


# ---------------------------------------------------------------------------------------
# Sweeps: a grid of runs sharing data, base model and baseline
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    """One point of the LoRA grid; ``index`` is its position in the full grid (for sharding)."""

    index: int
    name: str
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    replay_ratio: float


def sweep_trials(cfg: ExperimentConfig) -> list[Trial]:
    """The grid ``lora_ranks x lora_alphas x lora_dropouts x replay_ratios``, in that nesting order.

    A trial's run is ``<run_name>-r<rank>-a<alpha>-d<dropout>`` (plus ``-replay<r>`` when r > 0).
    """
    sweep = cfg.sweep
    grid = itertools.product(sweep.lora_ranks, sweep.lora_alphas, sweep.lora_dropouts, sweep.replay_ratios)
    trials = []
    for index, (rank, alpha, dropout, replay) in enumerate(grid):
        name = f"{cfg.run_name}-r{rank}-a{number_tag(alpha)}-d{number_tag(dropout)}"
        if replay > 0:
            name += f"-replay{number_tag(replay)}"
        trials.append(Trial(index, name, rank, alpha, dropout, replay))
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError("The sweep lists a value twice (e.g. --lora_ranks 8,8); each trial must be distinct.")
    return trials


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard i/n`` (0 <= i < n): this machine runs the trials whose index % n == i."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise ConfigError(
            f'--shard "{text}" must be i/n with 0 <= i < n, e.g. --shard 0/4 on the first of four machines.'
        )
    return int(match[1]), int(match[2])


def shard_trials(trials: Sequence[Trial], shard: tuple[int, int]) -> list[Trial]:
    """The trials of shard ``(i, n)``: every n-th trial starting at i (spreads ranks across machines)."""
    i, n = shard
    return [t for t in trials if t.index % n == i]


def trial_config(cfg: ExperimentConfig, trial: Trial) -> ExperimentConfig:
    """``cfg`` with the trial's run name, LoRA settings and replay ratio."""
    out = copy.deepcopy(cfg)
    out.run_name = trial.name
    out.lora = dataclasses.replace(out.lora, lora_rank=trial.lora_rank, lora_alpha=trial.lora_alpha,
                                   lora_dropout=trial.lora_dropout)
    out.data = dataclasses.replace(out.data, replay_ratio=trial.replay_ratio)
    return out


def _merge_plans(plans: Sequence[Sequence[Step]]) -> list[Step]:
    """Concatenate plans, keeping the first of steps that share an id (they must be identical)."""
    steps: dict[str, Step] = {}
    for plan in plans:
        for step in plan:
            known = steps.get(step.id)
            if known is None:
                steps[step.id] = step
            elif known.settings != step.settings or known.inputs != step.inputs:
                raise ConfigError(f"Two runs of this plan need step {step.id} with different settings; "
                                  "give them different work folders.")
    return list(steps.values())


def plan_sweep(cfg: ExperimentConfig, trials: Sequence[Trial]) -> tuple[WorkLayout, list[Step], list[ExperimentConfig]]:
    """Every step of the given trials (shared steps once), and each trial's config."""
    check_run_name(cfg.run_name)
    if not trials:
        raise ConfigError("This sweep selects no trial (check --shard and the sweep lists).")
    layout = WorkLayout.of(cfg)
    configs = [trial_config(cfg, t) for t in trials]
    shared = shared_steps(configs[0], layout, [t.replay_ratio for t in trials])
    return layout, _merge_plans([shared, *(run_steps(c, layout) for c in configs)]), configs


# ---------------------------------------------------------------------------------------
# Results: learning vs forgetting of a comparison, adapter-scale curves, sweep summaries
# ---------------------------------------------------------------------------------------
def tradeoff_numbers(forgetting: dict) -> dict[str, float | None]:
    """Learning and forgetting of one comparison (points and ratios from ``forgetting.json``).

    ``zh_*``/``en_*``: mean accuracy change of the Chinese / English benchmarks in points, with
    the CI bounds; ``ppl_zh``/``ppl_en``: relative perplexity change (0.1 = +10%).
    """
    out: dict[str, float | None] = {}
    for side, key in (("chinese", "zh"), ("english", "en")):
        entry = forgetting["headline"].get(side, {})
        for name in ("delta_points", "ci_low_points", "ci_high_points"):
            out[f"{key}_{name}"] = entry.get(name)
    by_name = {row["benchmark"]: row for row in forgetting.get("perplexity", [])}
    for name in ("ppl_zh", "ppl_en"):
        out[name] = by_name[name]["relative_change"] if name in by_name else None
    return out


def scale_curve(layout: WorkLayout, run_name: str, scales: Sequence[float]) -> list[dict]:
    """One row of :func:`tradeoff_numbers` per adapter scale of a run (its compare must be done)."""
    from zhlora.analysis.compare import FORGETTING_FILE
    from zhlora.analysis.results_io import load_forgetting

    return [
        {"scale": scale, **tradeoff_numbers(load_forgetting(layout.eval_dir(scale_results_name(run_name, scale)) / FORGETTING_FILE))}
        for scale in scales
    ]


def _points(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _ci(row: dict, key: str) -> str:
    low, high = row.get(f"{key}_ci_low_points"), row.get(f"{key}_ci_high_points")
    return "—" if low is None or high is None else f"[{low:+.1f}, {high:+.1f}]"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.1f}%"


def _tradeoff_cells(row: dict) -> list[str]:
    return [_points(row["zh_delta_points"]), _ci(row, "zh"), _points(row["en_delta_points"]), _ci(row, "en"),
            _percent(row["ppl_zh"]), _percent(row["ppl_en"])]


def _tradeoff_headers(confidence: float) -> list[str]:
    ci = f"{confidence:.0%} CI"
    return ["Chinese Δ (points)", ci, "English Δ (points)", ci, "PPL zh change", "PPL en change"]


def scale_curve_section(rows: Sequence[dict], out_dir: Path, confidence: float, language: str):
    """The report section of an adapter-scale curve: the chart and a table, one row per scale."""
    from zhlora.analysis.charts import plot_adapter_scale_curve
    from zhlora.analysis.sections import Section, Table, charts_section

    chart = plot_adapter_scale_curve(rows, out_dir / "report_adapter_scales.png", language=language)
    table = Table(["adapter scale", *_tradeoff_headers(confidence)],
                  [[number_tag(row["scale"]), *_tradeoff_cells(row)] for row in rows])
    intro = ("The same adapter evaluated with its update scaled by s (s = 0 is the base model, 1 the trained adapter): "
             "how learning and forgetting grow with the size of the update, without retraining.")
    charts = charts_section("Adapter scale", [("Learning and forgetting vs adapter scale", chart)], out_dir, anchor="scales")
    md = f"{charts.markdown}\n{intro}\n\n{table.markdown()}"
    htm = f"{charts.html}\n<p>{intro}</p>\n{table.html()}"
    return Section("Adapter scale", md, htm, "scales")


def write_run_report(layout: WorkLayout, run_name: str, scales: Sequence[float], language: str, confidence: float) -> Path:
    """Write the run's ``report.html``/``report.md`` (with the adapter-scale curve when there are several scales)."""
    from zhlora.analysis.compare import FORGETTING_FILE
    from zhlora.analysis.report import write_report
    from zhlora.analysis.results_io import load_forgetting

    out_dir = layout.eval_dir(run_name)
    forgetting = load_forgetting(out_dir / FORGETTING_FILE)
    extra = []
    if len(scales) > 1:
        rows = scale_curve(layout, run_name, scales)
        atomic_write_json(out_dir / "adapter_scales.json", {"provenance": provenance(), "rows": rows})
        extra.append(scale_curve_section(rows, out_dir, confidence, language))
    training_log = layout.run_dir(run_name) / "training_log.jsonl"
    return write_report(out_dir, forgetting, base_dir=layout.eval_dir(BASELINE_NAME), tuned_dir=out_dir,
                        training_log=training_log if training_log.is_file() else None, extra_sections=extra,
                        language=language)


def trial_status(layout: WorkLayout, trial_name: str, planned: str | None, records: dict[str, dict]) -> str:
    """``complete``, ``complete (unverified)`` (no step record beside it), ``stale``, ``evaluating``, ``training`` or ``not started``."""
    from zhlora.analysis.compare import FORGETTING_FILE

    if (layout.eval_dir(trial_name) / FORGETTING_FILE).is_file():
        record = records.get(f"compare.{trial_name}")
        if record is None:
            return "complete (unverified)"
        return "complete" if record.get("fingerprint") == planned else "stale"
    if (layout.eval_dir(trial_name)).is_dir():
        return "evaluating"
    if layout.run_dir(trial_name).is_dir():
        return "training"
    return "not started"


def summarize_sweep(cfg: ExperimentConfig) -> dict:
    """The state of every trial of ``cfg``'s grid in its work folder, with learning/forgetting of complete ones.

    Reads only files (merged shards included); trials made with other settings are ``stale``
    and left out of the charts.
    """
    from zhlora.analysis.compare import FORGETTING_FILE
    from zhlora.analysis.results_io import load_forgetting

    trials = sweep_trials(cfg)
    layout, steps, _ = plan_sweep(cfg, trials)
    planned = plan_fingerprints(steps)
    records = read_records(layout)
    rows = []
    for trial in trials:
        status = trial_status(layout, trial.name, planned.get(f"compare.{trial.name}"), records)
        row = {**dataclasses.asdict(trial), "status": status}
        if status.startswith("complete"):
            try:
                row.update(tradeoff_numbers(load_forgetting(layout.eval_dir(trial.name) / FORGETTING_FILE)))
            except DataError as exc:
                logger.warning("%s", exc)
                row["status"] = "unreadable forgetting.json (rerun the trial)"
        rows.append(row)
    return {"schema_version": 1, "provenance": provenance(), "work_dir": str(layout.root), "run_name": cfg.run_name,
            "grid": config_to_dict(cfg)["sweep"], "confidence": cfg.report.confidence, "trials": rows}


def _heatmaps(summary: dict, done: list[dict], out_dir: Path, language: str) -> list[tuple[str, Path]]:
    """Rank x alpha heatmaps of the Chinese and English accuracy changes, one pair per dropout and replay ratio."""
    from zhlora.analysis.charts import plot_heatmap

    grid = summary["grid"]
    charts = []
    for dropout, replay in itertools.product(grid["lora_dropouts"], grid["replay_ratios"]):
        cells = {(r["lora_rank"], r["lora_alpha"]): r for r in done
                 if r["lora_dropout"] == dropout and r["replay_ratio"] == replay}
        if not cells:
            continue
        suffix = f"dropout {number_tag(dropout)}" + (f", replay {number_tag(replay)}" if replay else "")
        # Signed changes on both maps: blue = gained, red = lost (plot_heatmap's diverging scale).
        for key, title in (("zh_delta_points", "Chinese accuracy change (points)"),
                           ("en_delta_points", "English accuracy change (points)")):
            matrix = [[None if (cell := cells.get((rank, alpha))) is None or cell[key] is None else cell[key]
                       for alpha in grid["lora_alphas"]] for rank in grid["lora_ranks"]]
            if all(v is None for row in matrix for v in row):
                continue
            name = f"heatmap_{key[:2]}_d{number_tag(dropout)}" + (f"_replay{number_tag(replay)}" if replay else "") + ".png"
            path = plot_heatmap(matrix, [str(r) for r in grid["lora_ranks"]], [number_tag(a) for a in grid["lora_alphas"]],
                                out_dir / name, title=f"{title}, {suffix}", row_title="LoRA rank",
                                col_title="LoRA alpha", language=language)
            charts.append((f"{title} by rank x alpha, {suffix}", path))
    return charts


def write_sweep_summary(summary: dict, out_dir: Path, language: str = "auto") -> Path:
    """Write ``summary.json``, ``summary.md``, ``report.html`` and charts of a sweep; return the HTML path.

    The trade-off scatter shows every complete trial (x: Chinese gain, y: English loss, both in
    accuracy points) with its Pareto front; heatmaps show both by rank x alpha.
    """
    from zhlora.analysis.charts import pareto_front, plot_tradeoff_scatter
    from zhlora.analysis.report import render_html, render_markdown
    from zhlora.analysis.sections import Section, Table, charts_section

    out_dir.mkdir(parents=True, exist_ok=True)
    done = [row for row in summary["trials"] if row["status"].startswith("complete")]
    plotted = [row for row in done if row["zh_delta_points"] is not None and row["en_delta_points"] is not None]
    points = [(row["zh_delta_points"], -row["en_delta_points"]) for row in plotted]
    front = {plotted[i]["name"] for i in pareto_front(points)}
    charts = []
    if plotted:
        charts.append(("Learning vs forgetting of every complete trial (Pareto front joined)",
                       plot_tradeoff_scatter(points, [row["name"].removeprefix(f"{summary['run_name']}-") for row in plotted],
                                             out_dir / "tradeoff.png", language=language)))
    charts += _heatmaps(summary, done, out_dir, language)
    table = Table(
        ["trial", "rank", "alpha", "dropout", "replay", *_tradeoff_headers(summary["confidence"]), "Pareto", "status"],
        [[row["name"], str(row["lora_rank"]), number_tag(row["lora_alpha"]), number_tag(row["lora_dropout"]),
          number_tag(row["replay_ratio"]),
          *(_tradeoff_cells(row) if row["status"].startswith("complete") else ["—"] * 6),
          "★" if row["name"] in front else "", row["status"]] for row in summary["trials"]],
    )
    intro = (f"{len(done)} of {len(summary['trials'])} trials complete in {summary['work_dir']}, each compared with the "
             "same baseline. Chinese Δ / English Δ: mean accuracy change of C-Eval+CMMLU / MMLU+GSM8K in points with "
             "paired-bootstrap intervals; PPL: relative perplexity change. ★ = on the Pareto front (no other trial "
             "learns more Chinese while losing less English).")
    trials_section = Section("Trials", f"## Trials\n\n{intro}\n\n{table.markdown()}",
                             f'<h2 id="trials">Trials</h2>\n<p>{intro}</p>\n{table.html()}', "trials")
    sections = [trials_section] + ([charts_section("Charts", charts, out_dir)] if charts else [])
    title = f"zhlora sweep: {summary['run_name']}"
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", render_markdown(title, sections))
    return atomic_write_text(out_dir / "report.html", render_html(title, sections))


# ---------------------------------------------------------------------------------------
# What a work folder holds (zhlora ls runs)
# ---------------------------------------------------------------------------------------
def runs_overview(work_dir: str | os.PathLike) -> list[dict]:
    """Every run and evaluation in a work folder: name, status and headline, from its files only.

    Works for folders made by ``zhlora run``/``sweep`` and by the individual verbs alike.
    """
    from zhlora.training.checkpoint import list_checkpoints

    layout = WorkLayout(root=Path(work_dir), data_dir=Path(work_dir) / "data")
    if not layout.root.is_dir():
        raise ZhloraError(f"{layout.root} is not a folder. Pass a work folder made by `zhlora run` (default: zhlora_work).")
    names = sorted({p.name for p in (layout.root / "results").glob("*") if p.is_dir()}
                   | {p.name for p in (layout.root / "evaluation_results").glob("*") if p.is_dir()})
    rows = []
    for name in names:
        run_dir, eval_dir = layout.run_dir(name), layout.eval_dir(name)
        row: dict[str, Any] = {"name": name, "headline": None}
        if (eval_dir / "forgetting.json").is_file():
            try:
                row["headline"] = json.loads((eval_dir / "forgetting.json").read_text(encoding="utf-8"))["headline"]["text"]
                row["status"] = "compared"
            except (OSError, json.JSONDecodeError, KeyError, TypeError):
                row["status"] = "compared (unreadable forgetting.json)"
        elif (eval_dir / "results.json").is_file():
            row["status"] = "evaluated"
        elif eval_dir.is_dir():
            row["status"] = "evaluation incomplete"
        elif (run_dir / "manifest.json").is_file():
            row["status"] = "trained, not evaluated"
        elif run_dir.is_dir():
            checkpoints = list_checkpoints(run_dir)
            row["status"] = f"training (checkpoint-{checkpoints[-1][0]})" if checkpoints else "training, no checkpoint yet"
        rows.append(row)
    return rows
