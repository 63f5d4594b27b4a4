"""The steps of a run: what each reads and writes, the settings it depends on, its fingerprint."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhlora.config import EVAL_IDENTITY_FIELDS, ExperimentConfig, config_to_dict
from zhlora.errors import ConfigError
from zhlora.experiment.layout import WorkLayout, check_run_name, number_tag, scale_results_name, seed_configs
from zhlora.experiment.reports import write_run_report_html
from zhlora.filenames import BASELINE_NAME, FORGETTING_FILE, PROCESSED_META, REPORT_HTML, RESULTS_FILE
from zhlora.forgetting_budget import analysis_budget
from zhlora.io_utils import dumps_json, sha256_file


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
        writes: the folders the step writes; :func:`~zhlora.experiment.execution.execute` holds
            their one-writer locks (waiting for another shard's step) while the step runs.
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
    writes: tuple[Path, ...] = ()

    def command(self, redo: bool = False) -> str:
        """The step as a shell command (what a user would type to do it by hand)."""
        if self.verb is None:
            return f"({self.description})"
        words = ["zhlora", self.verb, *self.argv, *(self.redo_flags if redo else ())]
        return " ".join(shlex.quote(word) for word in words)


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
        from zhlora.data.sources import read_data_manifest, source_is_complete

        entry = read_data_manifest(data_dir)["sources"].get(name)
        if not source_is_complete(data_dir, name, entry):
            return None
        return hashlib.sha256(dumps_json(entry["splits"]).encode("utf-8")).hexdigest()

    return stamp


def _model_stamp(folder: Path) -> Callable[[], str | None]:
    """The sha256 of ``zhlora_manifest.json`` when every file it lists is present."""

    def stamp() -> str | None:
        from zhlora.filenames import MODEL_MANIFEST
        from zhlora.models.manifest import manifest_files_present, read_model_manifest

        manifest = read_model_manifest(folder)
        if manifest is None or not manifest_files_present(folder, manifest):
            return None
        return sha256_file(folder / MODEL_MANIFEST)

    return stamp


def _adapter_stamp(run_dir: Path) -> Callable[[], str | None]:
    """The sha256 of the run's ``manifest.json`` (written last) when its weights (adapter or full model) are there too."""
    from zhlora.filenames import RUN_MANIFEST
    from zhlora.training.weights import final_weights

    def stamp() -> str | None:
        if final_weights(run_dir) is None:
            return None
        return _file_stamp(run_dir / RUN_MANIFEST)()

    return stamp


def _pick(values: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: values[name] for name in names}


def benchmark_sources(benchmarks: Sequence[str], protocol: str, gsm8k_variant: str) -> list[str]:
    """The data sources the named benchmarks read (``ppl_zh`` reads BELLE's held-out slice)."""
    from zhlora.data.benchmarks import resolve_spec

    return sorted({resolve_spec(name, protocol, gsm8k_variant).source for name in benchmarks})


def benchmark_spec_versions(benchmarks: Sequence[str], protocol: str, gsm8k_variant: str) -> dict[str, str]:
    """The version of each benchmark's spec: a new prompt or scoring rule (a version bump) redoes evaluations."""
    from zhlora.data.benchmarks import resolve_spec

    return {name: resolve_spec(name, protocol, gsm8k_variant).version for name in benchmarks}


def needed_sources(cfg: ExperimentConfig, replay_ratios: Sequence[float]) -> list[str]:
    """``data.datasets`` plus what the pipeline reads: BELLE, the benchmarks' sources, alpaca for replay."""
    from zhlora.data.catalog import ALL_DATA_SOURCES, OPTIONAL_DATA_SOURCES

    needed = {"belle", *cfg.data.datasets, *benchmark_sources(cfg.eval.benchmarks, cfg.eval.protocol, cfg.eval.gsm8k_variant)}
    if any(ratio > 0 for ratio in replay_ratios):
        needed.add("alpaca")
    order = ALL_DATA_SOURCES + OPTIONAL_DATA_SOURCES
    return sorted(needed, key=order.index)


# Fields of each group a step depends on. Paths are not settings: they come from the layout.
DATA_SOURCE_FIELDS = ("source",)
BELLE_FIELDS = ("source", "belle_dataset", "belle_sample_size", "belle_heldout_size", "data_seed")
MODEL_SOURCE_FIELDS = ("model_name_or_path", "model_source", "revision")
PREPROCESS_FIELDS = ("prompt_template", "overlong", "replay_ratio", "data_seed")  # + train.max_seq_length
MODEL_LOAD_FIELDS = ("torch_dtype", "load_in_4bit", "trust_remote_code")
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
            verb="download-data", argv=tuple(argv), redo_flags=("--force",), writes=(layout.data_dir,),
        ))
    model = cfg.model
    argv = ["--model_name_or_path", model.model_name_or_path, "--model_source", model.model_source,
            "--output_dir", str(layout.models_dir)]
    if model.revision:
        argv += ["--revision", model.revision]
    steps.append(Step(
        id="download-model", settings=_pick(raw["model"], MODEL_SOURCE_FIELDS), inputs=(),
        stamp=_model_stamp(layout.base_model), verb="download-model", argv=tuple(argv), redo_flags=("--force",),
        writes=(layout.models_dir,),
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
        "eval": _pick(raw["eval"], EVAL_IDENTITY_FIELDS),
        "spec_versions": benchmark_spec_versions(cfg.eval.benchmarks, cfg.eval.protocol, cfg.eval.gsm8k_variant),
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
    elif cfg.train.finetuning_type == "full":  # the run folder is the fine-tuned model
        inputs.append(f"train.{run_name}")
        argv[argv.index("--model_path") + 1] = str(layout.run_dir(run_name))
        argv += ["--adapter_scales", "1", "--no_compare"]
    else:
        inputs.append(f"train.{run_name}")
        argv += ["--lora_model_path", str(layout.run_dir(run_name)), "--adapter_scale", number_tag(scale),
                 "--no_compare"]  # the compare step below does it, with the run's report settings
    return Step(
        id=f"evaluate.{name}", settings=settings, inputs=tuple(inputs),
        stamp=_file_stamp(layout.eval_dir(name) / RESULTS_FILE), verb="evaluate", argv=tuple(argv),
        redo_flags=("--overwrite",), resumes=True, writes=(layout.eval_dir(name),),
    )


def _seed_run_steps(cfg: ExperimentConfig, layout: WorkLayout, scales: Sequence[float]) -> list[Step]:
    """Preprocess, train, and per adapter scale evaluate + compare, of one training seed's run."""
    from zhlora.training.outputs import identity_lora_settings, identity_train_settings

    raw = config_to_dict(cfg)
    run, ratio = cfg.run_name, cfg.data.replay_ratio
    config_file = str(layout.config_file(run))
    processed = layout.processed_dir(ratio)
    preprocess_id = "preprocess" if ratio == 0 else f"preprocess.replay{number_tag(ratio)}"
    preprocess_inputs = ["download-data.belle", "download-model"] + (["download-data.alpaca"] if ratio > 0 else [])
    steps = [Step(
        id=preprocess_id,
        settings={**_pick(raw["data"], PREPROCESS_FIELDS), "max_seq_length": cfg.train.max_seq_length,
                  "trust_remote_code": cfg.model.trust_remote_code},
        inputs=tuple(preprocess_inputs), stamp=_file_stamp(processed / PROCESSED_META), verb="preprocess",
        argv=("--config", config_file, "--data_dir", str(layout.data_dir), "--processed_dir", str(processed),
              "--model_name_or_path", str(layout.base_model)),
        redo_flags=("--force",), writes=(processed,),
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
            "lora": identity_lora_settings(raw["lora"], raw["train"]),
            "train": identity_train_settings(raw["train"]),
            "model": _pick(raw["model"], MODEL_LOAD_FIELDS),
        },
        inputs=tuple(dict.fromkeys(train_inputs)), stamp=_adapter_stamp(layout.run_dir(run)), verb="train",
        argv=tuple(train_argv), redo_flags=("--overwrite",), resumes=True, writes=(layout.run_dir(run),),
    ))
    for scale in scales:
        name = scale_results_name(run, scale)
        steps.append(_evaluate_step(cfg, layout, name, run_name=run, scale=scale))
        # forgetting.json is computed from the two results alone (``zhlora evaluate`` of an adapter may
        # already have written it beside them), so this step always replaces it.
        steps.append(Step(
            id=f"compare.{name}",
            settings={**_pick(raw["report"], COMPARE_FIELDS),
                      "forgetting_budget": analysis_budget(cfg.train.forgetting_budget).text},
            inputs=(f"evaluate.{BASELINE_NAME}", f"evaluate.{name}"),
            stamp=_file_stamp(layout.eval_dir(name) / FORGETTING_FILE), verb="compare",
            argv=(str(layout.eval_dir(BASELINE_NAME)), str(layout.eval_dir(name)), "--config", config_file,
                  "--data_dir", str(layout.data_dir), "--no-report", "--overwrite", "--quiet"),
            writes=(layout.eval_dir(name),),
        ))
    return steps


def merge_plans(plans: Sequence[Sequence[Step]]) -> list[Step]:
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


def run_steps(cfg: ExperimentConfig, layout: WorkLayout) -> list[Step]:
    """The steps of one run (``cfg.run_name``) after the shared ones: preprocess, train, evaluate, compare,
    report. With ``train.seeds`` > 1 the extra seeds' runs (``<run>-seed<s>``) are trained, evaluated
    and compared too, and the report shows the spread between seeds."""
    run = cfg.run_name
    runs = seed_configs(cfg)
    scales = sorted(set(cfg.eval.adapter_scales) | {1.0})
    steps = merge_plans([_seed_run_steps(c, layout, scales if c is cfg else [1.0]) for c in runs])
    compare_ids = [f"compare.{scale_results_name(run, scale)}" for scale in scales]
    compare_ids += [f"compare.{c.run_name}" for c in runs[1:]]
    seed_runs = [(c.train.seed, c.run_name) for c in runs] if len(runs) > 1 else []
    settings: dict[str, Any] = {"chart_language": cfg.report.chart_language, "scales": scales}
    if seed_runs:
        settings["seed_runs"] = seed_runs
    report_dir, processed = layout.eval_dir(run), layout.processed_dir(cfg.data.replay_ratio)
    steps.append(Step(
        id=f"report.{run}", settings=settings,
        inputs=(*compare_ids, *(f"train.{c.run_name}" for c in runs)), stamp=_file_stamp(report_dir / REPORT_HTML),
        action=lambda: write_run_report_html(layout, run, scales, cfg.report.chart_language, cfg.report.confidence,
                                        processed_dir=processed, seed_runs=seed_runs),
        description=f"built in: like `zhlora report {report_dir}`"
        + (", plus the adapter-scale curve" if len(scales) > 1 else "")
        + (f", plus the spread over {len(runs)} training seeds" if seed_runs else ""), writes=(report_dir,),
    ))
    return steps


def plan_run(cfg: ExperimentConfig) -> tuple[WorkLayout, list[Step]]:
    """Every step of ``zhlora run`` for ``cfg``, in execution order."""
    check_run_name(cfg.run_name)
    layout = WorkLayout.of(cfg)
    return layout, shared_steps(cfg, layout, [cfg.data.replay_ratio]) + run_steps(cfg, layout)
