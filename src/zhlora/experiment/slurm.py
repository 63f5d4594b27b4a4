"""The sweep on SLURM: a prepare job, an array job with one task per trial, and a merge job.

``zhlora sweep --launcher slurm`` writes three ``sbatch`` scripts and ``submit.sh`` to
``sweeps/<run_name>/slurm/`` and, unless ``--dry_run``, submits them with dependencies:

1. ``prepare.sbatch`` — the shared steps once (data, base model, baseline evaluation,
   preprocessing): ``zhlora sweep --prepare_only``; no array task waits for it on a GPU.
2. ``trials.sbatch`` — ``--array=0-<n-1>``, task *i* runs ``zhlora sweep --shard i/n`` (exactly
   trial *i*), after ``prepare`` succeeded. The total *n* is written into the script rather than
   read from ``SLURM_ARRAY_TASK_COUNT`` so that ``sbatch --array=3,7 trials.sbatch`` reruns just
   those trials.
3. ``merge.sbatch`` — ``zhlora sweep --summary_only`` after every array task ended (``afterany``),
   so the summary shows the failed trials too.

Every job reads ``sweep.yaml``, the sweep's resolved config (defaults < YAML < flags) with
``launcher: local``. The work folder must be on a file system every node sees.
"""

from __future__ import annotations

import copy
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from zhlora.config import ExperimentConfig, dump_config_yaml
from zhlora.errors import ZhloraError
from zhlora.io_utils import atomic_write_text

MERGE_TIME = "01:00:00"


@dataclass(frozen=True)
class SlurmScripts:
    """The files written for one sweep (absolute paths)."""

    folder: Path
    config: Path
    prepare: Path
    trials: Path
    merge: Path
    submit: Path


def _header(job_name: str, log_dir: Path, cfg: ExperimentConfig, *, time_limit: str, cpus: int, gpus: int,
            array: str | None = None) -> list[str]:
    sweep = cfg.sweep
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}",
             f"#SBATCH --output={log_dir}/%x-{'%A_%a' if array else '%j'}.out", f"#SBATCH --time={time_limit}",
             "#SBATCH --nodes=1", "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={cpus}"]
    if gpus > 0:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    if sweep.slurm_partition:
        lines.append(f"#SBATCH --partition={sweep.slurm_partition}")
    if sweep.slurm_account:
        lines.append(f"#SBATCH --account={sweep.slurm_account}")
    if array:
        lines.append(f"#SBATCH --array={array}")
    return lines


def _body(cwd: Path, argv: list[str]) -> list[str]:
    command = shlex.join([sys.executable, "-m", "zhlora", "sweep", *argv])
    return ["set -euo pipefail", f"cd {shlex.quote(str(cwd))}",
            'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"', command, ""]


def write_slurm_scripts(cfg: ExperimentConfig, n_trials: int, folder: Path, cwd: Path | None = None) -> SlurmScripts:
    """Write ``sweep.yaml``, the three sbatch scripts and ``submit.sh`` to ``folder``.

    ``cfg``: the sweep's resolved config; ``n_trials``: the size of its grid; ``cwd``: where the
    jobs run (a relative ``work_dir`` is relative to it; default: the current folder).
    """
    folder = Path(folder).resolve()
    cwd = (cwd or Path.cwd()).resolve()
    log_dir = folder / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    local = copy.deepcopy(cfg)
    local.sweep.launcher = "local"  # the jobs run their trials themselves
    config = atomic_write_text(folder / "sweep.yaml", "# The sweep the SLURM jobs run (written by zhlora sweep --launcher slurm).\n"
                               + dump_config_yaml(local))
    sweep = cfg.sweep
    gpus = 1 if sweep.gpus_per_trial is None else sweep.gpus_per_trial
    name = f"zhlora-{cfg.run_name}"
    quoted = str(config)
    prepare = _header(f"{name}-prepare", log_dir, cfg, time_limit=sweep.slurm_time, cpus=sweep.cpus_per_trial, gpus=gpus)
    prepare += ["# The shared steps, once: data, base model, baseline evaluation, preprocessing.",
                *_body(cwd, ["--config", quoted, "--prepare_only"])]
    trials = _header(f"{name}-trials", log_dir, cfg, time_limit=sweep.slurm_time, cpus=sweep.cpus_per_trial, gpus=gpus,
                     array=f"0-{n_trials - 1}")
    trials += [f"# One array task per trial: task i runs trial i of the {n_trials}-trial grid.",
               *_body(cwd, ["--config", quoted, "--shard", f"__SHARD__/{n_trials}"])]
    merge = _header(f"{name}-merge", log_dir, cfg, time_limit=MERGE_TIME, cpus=1, gpus=0)
    merge += ["# The summary of whatever trials are complete (also rerunnable by hand at any time).",
              *_body(cwd, ["--config", quoted, "--summary_only"])]
    paths = {}
    for key, lines in (("prepare", prepare), ("trials", trials), ("merge", merge)):
        text = "\n".join(lines).replace("__SHARD__", "${SLURM_ARRAY_TASK_ID}")
        paths[key] = atomic_write_text(folder / f"{key}.sbatch", text)
    submit = atomic_write_text(folder / "submit.sh", "\n".join([
        "#!/bin/bash", "# Submit the sweep: prepare, then the trial array, then the merge.", "set -euo pipefail",
        f"prepare=$(sbatch --parsable {shlex.quote(str(paths['prepare']))} | cut -d';' -f1)",
        f"trials=$(sbatch --parsable --dependency=afterok:$prepare {shlex.quote(str(paths['trials']))} | cut -d';' -f1)",
        f"merge=$(sbatch --parsable --dependency=afterany:$trials {shlex.quote(str(paths['merge']))} | cut -d';' -f1)",
        'echo "submitted: prepare $prepare, trials $trials, merge $merge"', ""]))
    submit.chmod(0o755)
    return SlurmScripts(folder, config, paths["prepare"], paths["trials"], paths["merge"], submit)


def submit_slurm_scripts(scripts: SlurmScripts) -> str:
    """Run ``submit.sh`` (needs ``sbatch`` on PATH); return its line naming the job ids."""
    if shutil.which("sbatch") is None:
        raise ZhloraError(f"--launcher slurm: sbatch is not on PATH here. The scripts are in {scripts.folder}: run "
                          f"{scripts.submit} on a SLURM login node, or pass --dry_run to only write them.")
    done = subprocess.run(["bash", str(scripts.submit)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ZhloraError(f"sbatch refused the sweep's jobs: {done.stderr.strip() or done.stdout.strip()} "
                          f"(scripts in {scripts.folder}; fix the partition/account/time flags and rerun).")
    return done.stdout.strip()
