"""The run folder ``results/<run>/``: whose run it holds, whether to start, resume or stop, and its manifest.

A run is identified by a fingerprint of everything that changes the adapter it produces (LoRA
and optimisation settings, base weights, training data). A folder holding a finished run with
the same fingerprint is complete; one holding checkpoints of it is resumed; one holding
anything of a different run is refused unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from zhlora.config import DEFAULT_LEARNING_RATES
from zhlora.errors import ZhloraError
from zhlora.filenames import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FORGETTING_FILE,
    INITIAL_ADAPTER_DIR,
    LOSS_CURVE,
    MODEL_MANIFEST,
    PROBE_CURVES_NAME,
    PROBE_SETS_NAME,
    PROCESSED_META,
    RESULTS_FILE,
    RUN_CONFIG,
    RUN_MANIFEST,
    SNAPSHOT_DIRNAME,
    TRAIN_DIRNAME,
    TRAINING_LOG,
    WEIGHT_CHANGE,
    WEIGHT_CHANGE_CHART,
)
from zhlora.io_utils import check_not_a_file
from zhlora.training.checkpoint import newest_intact_checkpoint, read_trainer_state
from zhlora.training.weights import FULL_MODEL_FILES, final_weights

logger = logging.getLogger(__name__)

# written by the forgetting monitor (zhlora.monitoring.callback) with --monitor_every
# Files and folders zhlora writes into a run folder; --overwrite removes exactly these.
RUN_ARTEFACTS = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, "README.md", RUN_CONFIG, RUN_MANIFEST,
                 TRAINING_LOG, LOSS_CURVE, INITIAL_ADAPTER_DIR, "runs",
                 PROBE_CURVES_NAME, PROBE_SETS_NAME, SNAPSHOT_DIRNAME, WEIGHT_CHANGE, WEIGHT_CHANGE_CHART)
# Settings that change how a run reports or saves, never the adapter it produces...
NON_IDENTITY_TRAIN_FIELDS = ("save_steps", "save_total_limit", "logging_steps", "report_to",
                             "monitor_every", "forgetting_budget", "budget_action", "probe_limit", "probe_overhead",
                             "seeds")  # how many seed runs the pipeline makes; each run's own seed is `seed`
# ...unless a forgetting budget is set: then when and on how many items the probes run can stop
# the run early and choose the step whose adapter is exported.
BUDGET_IDENTITY_FIELDS = ("save_steps", "monitor_every", "forgetting_budget", "budget_action", "probe_limit",
                          "probe_overhead")


def identity_train_settings(train: dict) -> dict:
    """The train settings (config group as a dict) that determine the weights a run produces.

    The learning rate is the one used (the type's default when none is given); ``finetuning_type``
    counts only when it is not LoRA, so runs made before the full-fine-tuning control keep their
    fingerprints.
    """
    counted = set(BUDGET_IDENTITY_FIELDS) if train.get("forgetting_budget") else set()
    settings = {k: v for k, v in train.items() if k not in NON_IDENTITY_TRAIN_FIELDS or k in counted}
    kind = settings.pop("finetuning_type", "lora") or "lora"
    if settings.get("learning_rate") is None:
        settings["learning_rate"] = DEFAULT_LEARNING_RATES[kind]
    return settings if kind == "lora" else {**settings, "finetuning_type": kind}


def identity_lora_settings(lora: dict, train: dict) -> dict | None:
    """The LoRA settings that shape the weights: all of them for an adapter, none for full fine-tuning."""
    return None if train.get("finetuning_type") == "full" else lora


def run_fingerprint(lora: dict, train: dict, model: dict, base_weights_sha256: str, dataset_sha256: str) -> str:
    """sha256 of the settings that determine the trained weights (config groups as dicts, plus data and weights)."""
    identity = {
        "lora": identity_lora_settings(lora, train),
        "train": identity_train_settings(train),
        "model": {k: model.get(k) for k in ("torch_dtype", "load_in_4bit")},
        "base_weights_sha256": base_weights_sha256,
        "dataset_sha256": dataset_sha256,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunStart:
    """What to do in a run folder: ``fresh``, ``resume`` (from ``checkpoint``) or ``complete``."""

    kind: str
    checkpoint: Path | None = None


def _recorded_fingerprint(manifest_path: Path) -> str | None:
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8")).get("run_fingerprint")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def foreign_contents(folder: Path) -> str | None:
    """What ``folder`` holds that a training run must never write into, or None.

    A base model (``config.json`` or a zhlora model manifest not written by a full fine-tuning run),
    a dataset (``download-data``'s or ``preprocess``'s folder, a ``save_to_disk`` dataset) or an
    evaluation folder: the run's adapter, checkpoints and ``--overwrite`` clean-up would mix into it.
    """
    if not folder.is_dir():
        return None
    model_manifest = folder / MODEL_MANIFEST
    if model_manifest.is_file():
        try:
            source = json.loads(model_manifest.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            source = None
        if source != "finetune":
            return f"a model ({MODEL_MANIFEST} from {source or 'an unknown source'})"
    elif (folder / "config.json").is_file() and not (folder / RUN_MANIFEST).is_file():
        return "a model (config.json)"
    if (folder / PROCESSED_META).is_file() or (folder / TRAIN_DIRNAME).is_dir():
        return f"a processed dataset ({PROCESSED_META} or {TRAIN_DIRNAME}/, written by zhlora preprocess)"
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return "a dataset (datasets.save_to_disk)"
    if any((folder / name / "train.jsonl").is_file() for name in ("belle", "alpaca")) or (folder / "ceval").is_dir():
        return "downloaded data (written by zhlora download-data)"
    for name in (RESULTS_FILE, FORGETTING_FILE):
        if (folder / name).is_file():
            return f"evaluation results ({name})"
    return None


def check_output_dir_is_a_run_folder(output_dir: Path) -> None:
    """Refuse an ``--output_dir`` that is a file or holds a model, a dataset or results (even with ``--overwrite``)."""
    check_not_a_file(output_dir, "--output_dir")
    found = foreign_contents(output_dir)
    if found is not None:
        raise ZhloraError(
            f"--output_dir {output_dir} holds {found}, not a training run; training would mix its adapter, "
            f"checkpoints and logs into it (and --overwrite would delete some of its files). Choose a folder of "
            f"its own, for example {output_dir.parent / 'results' / 'my-run'}.")


def decide_start(output_dir: str | Path, fingerprint: str, resume: bool, overwrite: bool) -> RunStart:
    """Decide between starting, resuming and doing nothing; refuse to mix two runs in one folder.

    Raises:
        ZhloraError: the folder holds another run's adapter or checkpoints (and not ``overwrite``),
            or ``resume`` was asked for but there is no checkpoint.
    """
    folder = Path(output_dir)
    if overwrite:
        if resume:
            raise ZhloraError("--resume and --overwrite contradict each other: pick one.")
        return RunStart("fresh")
    refuse = (
        f"Use another --output_dir, or pass --overwrite to delete that run's adapter, checkpoints and logs "
        f"in {folder}."
    )
    manifest = folder / RUN_MANIFEST
    weights = final_weights(folder)
    if weights is not None:
        recorded = _recorded_fingerprint(manifest) if manifest.is_file() else None
        if recorded == fingerprint:
            return RunStart("complete")
        newest = newest_intact_checkpoint(folder) if recorded is None else None
        if newest is not None and read_trainer_state(newest[1]).get("run_fingerprint") == fingerprint:
            # Killed after writing the adapter but before manifest.json (the completion marker):
            # finish from this run's newest checkpoint, which rewrites both.
            logger.info("%s has an adapter but no %s: the run stopped while writing its final files; finishing it "
                        "from %s.", folder, RUN_MANIFEST, newest[1].name)
            return RunStart("resume", newest[1])
        what = "a different run (other settings, base model or data)" if recorded else "an adapter zhlora did not record"
        raise ZhloraError(f"{folder} already holds {what}: {weights}. {refuse}")
    newest = newest_intact_checkpoint(folder)
    if newest is not None:
        step, latest = newest
        recorded = read_trainer_state(latest).get("run_fingerprint")
        if recorded != fingerprint:
            raise ZhloraError(
                f"{folder} holds checkpoints of a different run (checkpoint-{step} was made with other settings, "
                f"base model or data), so it cannot be resumed with these. {refuse}"
            )
        return RunStart("resume", latest)
    if resume:
        raise ZhloraError(f"--resume: {folder} has no checkpoint to resume from. Drop --resume to start the run.")
    return RunStart("fresh")


def clear_run_artefacts(output_dir: str | Path) -> None:
    """Delete what zhlora wrote into a run folder (adapter, checkpoints, logs), nothing else."""
    folder = Path(output_dir)
    for name in RUN_ARTEFACTS:
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and re.fullmatch(r"\.?checkpoint-\d+(\.tmp)?|\.adapter\.tmp|\.model\.tmp", child.name):
            shutil.rmtree(child)
        elif child.is_file() and (child.name in FULL_MODEL_FILES or re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors",
                                                                                 child.name)):
            child.unlink()  # a full fine-tuning run's model
