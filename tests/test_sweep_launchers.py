"""The sweep on shared folders, Ray and SLURM.

Cheap (default run): concurrent shards computing a shared step once, the Ray retry/report logic
on a real local Ray cluster with trivial tasks, the sbatch scripts, ``--shard`` from the SLURM
variables. Slow: real 2-trial tiny sweeps (sequential, two concurrent shards, Ray, Ray with a
worker killed mid-trial, a single-node SLURM cluster when one is installed).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from zhlora.config import load_config
from zhlora.errors import ConfigError
from zhlora.experiment import Step, WorkLayout, execute, shard_from_environment, sweep_trials

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# Shared steps on a shared folder
# ---------------------------------------------------------------------------------------
def _shard_process(work: str, log_file: str) -> None:
    """One "shard": runs a shared step whose verb takes a while, logging to its own file."""
    logging.basicConfig(filename=log_file, level=logging.INFO, force=True)
    out = Path(work) / "baseline.txt"

    def runner(verb: str, argv: list[str]) -> int:
        with open(Path(work) / "runs.txt", "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(1.0)
        out.write_text("scores", encoding="utf-8")
        return 0

    step = Step(id="evaluate.baseline", settings={"x": 1}, inputs=(), verb="evaluate",
                stamp=lambda: out.read_text(encoding="utf-8") if out.is_file() else None)
    execute([step], WorkLayout(root=Path(work), data_dir=Path(work) / "data"), runner, poll_seconds=0.1)


def test_two_processes_started_together_compute_a_shared_step_once(tmp_path):
    context = multiprocessing.get_context("fork")
    logs = [tmp_path / f"shard{i}.log" for i in range(2)]
    shards = [context.Process(target=_shard_process, args=(str(tmp_path), str(log))) for log in logs]
    for shard in shards:
        shard.start()
    for shard in shards:
        shard.join(60)
        assert shard.exitcode == 0
    assert len((tmp_path / "runs.txt").read_text().splitlines()) == 1  # computed once
    texts = [log.read_text() for log in logs]
    assert sum("Waiting for" in text for text in texts) == 1, texts  # the other one waited, and said so
    assert sum("complete, same settings; skipping" in text for text in texts) == 1


# ---------------------------------------------------------------------------------------
# SLURM
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("env,shard", [
    ({}, None),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "36", "SLURM_ARRAY_TASK_MIN": "0"}, (3, 36)),
    ({"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}, (1, 4)),
])
def test_shard_from_the_slurm_array_variables(env, shard):
    assert shard_from_environment(env) == shard


def test_a_non_contiguous_slurm_array_asks_for_an_explicit_shard():
    with pytest.raises(ConfigError, match="--shard i/n"):
        shard_from_environment({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "3"})


def _sweep_cli(*argv: str, cwd: Path, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {}),
                "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "zhlora", "sweep", *argv], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_slurm_dry_run_writes_an_array_script_per_trial_and_a_dependent_merge(tmp_path, monkeypatch, capsys):
    from zhlora.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--config", str(REPO / "configs" / "sweep-seed-grid.yaml"), "--launcher", "slurm", "--dry_run",
            "--slurm_partition", "gpu-a100", "--gpus_per_trial", "1", "--slurm_time", "12:00:00", "--cpus_per_trial", "8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "zhlora_work_llama2" / "sweeps" / "lora-chinese-llama" / "slurm"
    assert "array 0-35" in out and "nothing submitted" in out
    trials = (folder / "trials.sbatch").read_text()
    assert "#SBATCH --array=0-35\n" in trials and "#SBATCH --partition=gpu-a100" in trials
    assert "#SBATCH --gres=gpu:1" in trials and "#SBATCH --time=12:00:00" in trials and "--cpus-per-task=8" in trials
    assert '--shard ${SLURM_ARRAY_TASK_ID}/36\n' in trials
    assert "--prepare_only" in (folder / "prepare.sbatch").read_text()
    merge = (folder / "merge.sbatch").read_text()
    assert "--summary_only" in merge and "--gres" not in merge
    submit = (folder / "submit.sh").read_text()
    assert "--dependency=afterok:$prepare" in submit and "--dependency=afterany:$trials" in submit
    for name in ("prepare.sbatch", "trials.sbatch", "merge.sbatch", "submit.sh"):
        check = subprocess.run(["bash", "-n", str(folder / name)], capture_output=True, text=True)
        assert check.returncode == 0, (name, check.stderr)
    config = load_config(folder / "sweep.yaml")  # the jobs' config: the same grid, run locally by each job
    assert config.sweep.launcher == "local" and len(sweep_trials(config)) == 36
    assert config.sweep.slurm_partition == "gpu-a100" and config.train.learning_rate == 0.0002


def test_slurm_without_sbatch_says_what_to_do(tmp_path, monkeypatch, capsys):
    from zhlora.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["sweep", "--lora_ranks", "4,8", "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "sbatch is not on PATH" in err and "--dry_run" in err and "Traceback" not in err


def test_launchers_and_shard_do_not_mix(tmp_path, monkeypatch, capsys):
    from zhlora.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--launcher", "ray", "--shard", "0/2"]) == 2
    assert "Use one of them" in capsys.readouterr().err
    assert main(["sweep", "--launcher", "kubernetes"]) == 2
    assert "--launcher must be one of local, ray, slurm" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Ray: retry and report with trivial tasks on a real local cluster
# ---------------------------------------------------------------------------------------
def test_ray_missing_says_how_to_install_it(monkeypatch):
    from zhlora.errors import ZhloraError
    from zhlora.experiment.ray_launcher import run_trials_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ZhloraError, match=r"pip install 'zhlora\[ray\]'"):
        run_trials_on_ray([], WorkLayout(Path("w"), Path("w/data")), None, {}, address=None, cpus_per_trial=1,
                          gpus_per_trial=None)


def _flaky_trial(cfg, layout, runner, fingerprints) -> float:
    """First attempt: fail as the trial says (error, or a worker that dies); then succeed."""
    marker = Path(layout) / f"{cfg.run_name}.attempted"
    if cfg.mode != "ok" and not marker.exists() or cfg.mode == "always":
        marker.touch()
        if cfg.mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"{cfg.run_name} broke")
    return 0.5


def test_ray_retries_a_failed_trial_once_and_reports_each_as_it_finishes(tmp_path):
    ray = pytest.importorskip("ray")
    from zhlora.experiment.ray_launcher import run_trials_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    configs = [SimpleNamespace(run_name=name, mode=name) for name in ("ok", "error", "die", "always")]
    lines: list[str] = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        runs = run_trials_on_ray(configs, str(tmp_path), None, {}, address=None, cpus_per_trial=1, gpus_per_trial=None,
                                 report=lines.append, body=_flaky_trial)
    finally:
        ray.shutdown()
    status = {run.name: (run.status, run.attempts) for run in runs}
    assert status == {"ok": ("complete", 1), "error": ("complete", 2), "die": ("complete", 2), "always": ("failed", 2)}
    text = "\n".join(lines)
    assert "trial error failed on attempt 1 (RuntimeError: error broke); retrying it." in text
    assert "trial die failed on attempt 1" in text  # a killed worker is a failure like any other
    assert "trial always failed after 2 attempts: RuntimeError: always broke" in text
    assert sum(line.startswith("[") for line in lines) == 4 and lines[-1].startswith("[4/4]")
    assert "each reserving 1 CPU(s) and 0 GPU(s)" in lines[0]


# ---------------------------------------------------------------------------------------
# Slow: real tiny sweeps
# ---------------------------------------------------------------------------------------
TINY = ["--max_steps", "2", "--save_steps", "2", "--limit", "1", "--shots", "0", "--max_new_tokens", "8",
        "--bootstrap_samples", "200", "--lora_ranks", "4,8", "--lora_alphas", "16", "--lora_dropouts", "0.05"]


def _trial_rows(work: Path) -> list[dict]:
    return json.loads((work / "sweeps" / "lora-demo" / "summary.json").read_text(encoding="utf-8"))["trials"]


@pytest.fixture(scope="module")
def sequential_sweep(tmp_path_factory) -> Path:
    """The reference: the 2-trial tiny sweep in one process."""
    work = tmp_path_factory.mktemp("sequential") / "work"
    done = _sweep_cli("--work_dir", str(work), *TINY, cwd=work.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["status"] for row in _trial_rows(work)] == ["complete", "complete"]
    return work


@pytest.mark.slow
def test_two_shards_started_together_share_the_baseline_and_merge_to_the_same_summary(sequential_sweep, tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    shards = [subprocess.Popen([sys.executable, "-m", "zhlora", "sweep", "--work_dir", str(work), *TINY, "--shard", f"{i}/2"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for i in range(2)]
    logs = [shard.communicate(timeout=1200)[0] for shard in shards]
    assert [shard.returncode for shard in shards] == [0, 0], logs
    for step in ("download-data.belle", "download-model", "evaluate.baseline", "preprocess"):
        assert sorted(log.count(f"{step}: not done yet") for log in logs) == [0, 1], step  # produced once
    assert sum("Waiting for" in log for log in logs) >= 1  # the other shard waited for it, and said so
    assert _trial_rows(work) == _trial_rows(sequential_sweep)
    again = _sweep_cli("--work_dir", str(work), *TINY, "--summary_only", cwd=tmp_path)
    assert again.returncode == 0 and _trial_rows(work) == _trial_rows(sequential_sweep)


@pytest.mark.slow
def test_ray_sweep_equals_the_sequential_sweep_even_when_a_worker_is_killed(sequential_sweep, tmp_path):
    pytest.importorskip("ray")
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    sweep = subprocess.Popen([sys.executable, "-m", "zhlora", "sweep", "--work_dir", str(work), *TINY, "--launcher", "ray"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = "lora-demo-r8-a16-d0.05"
    lock = work / ".zhlora" / "locks" / f"train.{victim}" / ".zhlora.lock"
    deadline = time.monotonic() + 900
    killed = None
    while killed is None and time.monotonic() < deadline and sweep.poll() is None:
        try:
            killed = json.loads(lock.read_text(encoding="utf-8"))["pid"]  # the Ray worker training the trial
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    assert killed is not None, "the trial's training never started"
    os.kill(killed, signal.SIGKILL)
    log = sweep.communicate(timeout=1200)[0]
    assert sweep.returncode == 0, log[-5000:]
    assert f"trial {victim} failed on attempt 1" in log and "retrying it" in log
    assert f"trial {victim} complete in" in log and "(attempt 2)" in log
    assert _trial_rows(work) == _trial_rows(sequential_sweep)
    rerun = _sweep_cli("--work_dir", str(work), *TINY, "--launcher", "ray", cwd=tmp_path)
    assert rerun.returncode == 0 and rerun.stdout.count("complete, same settings; skipping") >= 2


@pytest.mark.slow
def test_single_node_slurm_runs_the_tiny_sweep(sequential_sweep, tmp_path):
    if not shutil.which("sbatch") or subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        pytest.skip("no running SLURM cluster here (sbatch/sinfo)")
    work = tmp_path / "work"
    done = _sweep_cli("--work_dir", str(work), *TINY, "--launcher", "slurm", "--gpus_per_trial", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 1500
    summary = work / "sweeps" / "lora-demo" / "summary.json"
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-n", "zhlora-lora-demo-merge"], capture_output=True, text=True).stdout
        if summary.is_file() and not queue.strip():
            break
        time.sleep(5)
    assert _trial_rows(work) == _trial_rows(sequential_sweep)
