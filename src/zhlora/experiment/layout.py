"""Where a work folder keeps what: the seed's layout, run names, resolved configs."""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from zhlora.config import ExperimentConfig, dump_config_yaml
from zhlora.errors import ConfigError
from zhlora.filenames import (
    BASELINE_NAME,
    EVAL_DIRNAME,
    MODELS_DIRNAME,
    PROCESSED_DIRNAME,
    RUNS_DIRNAME,
    STATE_DIRNAME,
    SWEEPS_DIRNAME,
)
from zhlora.io_utils import atomic_write_text, check_not_a_file

logger = logging.getLogger(__name__)


DEFAULT_CONFIG = "demo.yaml"
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    return PROCESSED_DIRNAME if replay_ratio == 0 else f"{PROCESSED_DIRNAME}-replay{number_tag(replay_ratio)}"


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
        check_not_a_file(root, "--work_dir")
        return cls(root=root, data_dir=_inside(root, cfg.data.data_dir))

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS_DIRNAME

    @property
    def base_model(self) -> Path:
        from zhlora.filenames import BASE_MODEL_DIRNAME

        return self.models_dir / BASE_MODEL_DIRNAME

    def processed_dir(self, replay_ratio: float) -> Path:
        return self.root / processed_dirname(replay_ratio)

    def run_dir(self, run_name: str) -> Path:
        return self.root / RUNS_DIRNAME / run_name

    def eval_dir(self, name: str) -> Path:
        return self.root / EVAL_DIRNAME / name

    def sweep_dir(self, run_name: str) -> Path:
        return self.root / SWEEPS_DIRNAME / run_name

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIRNAME

    def config_file(self, run_name: str) -> Path:
        return self.state_dir / "configs" / f"{run_name}.yaml"

    def record_file(self, step_id: str) -> Path:
        return self.state_dir / "steps" / f"{step_id}.json"

    def lock_dir(self, step_id: str) -> Path:
        """The folder whose lock (:func:`zhlora.locking.folder_lock`) a process holds while it runs the step."""
        return self.state_dir / "locks" / step_id


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


def seed_run_name(run_name: str, seed: int) -> str:
    """The run of one extra training seed: ``<run>-seed<s>``."""
    return f"{run_name}-seed{seed}"


def seed_configs(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """One config per training seed of ``cfg`` (``train.seeds``): the run itself with ``train.seed``,
    then ``<run>-seed<s>`` for s = seed + 1, ..., each evaluated at adapter scale 1 only."""
    configs = [cfg]
    for offset in range(1, cfg.train.seeds):
        other = copy.deepcopy(cfg)
        other.train.seed = cfg.train.seed + offset
        other.run_name = seed_run_name(cfg.run_name, other.train.seed)
        other.eval.adapter_scales = [1.0]
        configs.append(other)
    return configs


def write_run_config(cfg: ExperimentConfig, layout: WorkLayout) -> Path:
    """Write the resolved config of ``cfg.run_name`` (and of its extra seed runs) to
    ``.zhlora/configs/<run>.yaml``; return the run's path."""
    text = "# Resolved by zhlora: the config every step of this run reads (defaults < YAML < flags).\n"
    paths = [atomic_write_text(layout.config_file(c.run_name), text + dump_config_yaml(resolved_run_config(c, layout)))
             for c in seed_configs(cfg)]
    return paths[0]
