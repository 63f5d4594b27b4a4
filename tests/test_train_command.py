"""``zhlora train`` end to end on the tiny model: artefacts, resume after SIGKILL, Ctrl-C, two processes, bad input."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from zhlora.cli import run_command
from zhlora.training import checkpoint as ckpt

# Small enough for seconds per run on 2 CPU cores, big enough for several steps and checkpoints.
BASE_FLAGS = [
    "--max_seq_length", "256", "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2",
    "--lora_rank", "8", "--learning_rate", "1e-2", "--warmup_ratio", "0", "--logging_steps", "1",
]
REFERENCE_FLAGS = [*BASE_FLAGS, "--max_steps", "8", "--save_steps", "2", "--lora_dropout", "0.1", "--seed", "3"]


def _paths(model: Path, processed: Path, output: Path) -> list[str]:
    return ["--model_path", str(model), "--dataset_path", str(processed / "train_dataset"), "--output_dir", str(output)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir, processed) -> Path:
    """An uninterrupted 8-step run (checkpoints every 2 steps), in this process."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    assert run_command("train", [*_paths(tiny_model_dir, processed, out), *REFERENCE_FLAGS]) == 0
    return out


def _max_abs_diff(a: Path, b: Path) -> float:
    first, second = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    assert first.keys() == second.keys()
    return max(float((first[k] - second[k]).abs().max()) for k in first)


def _zhlora(*args: str) -> list[str]:
    return [sys.executable, "-m", "zhlora", "train", *args]


def _env(threads: int | None = None) -> dict:
    """Subprocess environment; by default with this process's thread count, since a different
    number of threads sums floats in another order (and Adam turns that noise into ~lr-sized steps)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads or torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}


@contextlib.contextmanager
def _torch_threads(count: int):
    """Run in-process commands with ``count`` threads (zhlora.threads reads OMP_NUM_THREADS)."""
    previous, previous_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        if previous_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous_env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {path.name} appeared:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------
# a complete run
# ---------------------------------------------------------------------------------------
def test_run_writes_a_standard_peft_adapter_and_its_records(reference_run, tiny_model_dir, processed):
    from peft import PeftModel

    from zhlora.config import load_config
    from zhlora.models.loading import load_model
    from zhlora.models.manifest import model_fingerprint

    out = reference_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_config.yaml", "manifest.json",
                 "training_log.jsonl", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert not list(out.glob(".*tmp"))

    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert set(rows[0]) >= {"step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch", "pad_fraction"}
    first, last = sum(r["loss"] for r in rows[:2]) / 2, sum(r["loss"] for r in rows[-2:]) / 2
    assert last < first - 0.05, f"loss did not fall: {first:.3f} -> {last:.3f}"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3
    assert manifest["base_model"]["weights_sha256"] == model_fingerprint(tiny_model_dir)
    assert manifest["dataset"]["rows"] > 100 and len(manifest["dataset"]["sha256"]) == 64
    assert {"torch", "transformers", "peft"} <= set(manifest["provenance"]["versions"])
    assert manifest["training"]["steps"] == 8 and manifest["training"]["this_session"]["pad_fraction"] < 0.2
    assert load_config(out / "train_config.yaml").lora.lora_rank == 8
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    base = load_model(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(input_ids=ids).logits
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert (after - before).abs().max() > 1e-3  # the adapter loads with plain PEFT and changes the model


def test_rerun_is_a_no_op_and_another_run_is_refused(reference_run, tiny_model_dir, processed, capsys):
    paths = _paths(tiny_model_dir, processed, reference_run)
    stamp = (reference_run / "manifest.json").stat().st_mtime_ns
    assert run_command("train", [*paths, *REFERENCE_FLAGS]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (reference_run / "manifest.json").stat().st_mtime_ns == stamp
    assert run_command("train", [*paths, *REFERENCE_FLAGS[:-2], "--seed", "4"]) == 2
    assert "already holds a different run" in capsys.readouterr().err


def test_overwrite_replaces_another_run(tmp_path, reference_run, tiny_model_dir, processed):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    (out / "my_notes.txt").write_text("kept")
    flags = [*BASE_FLAGS, "--max_steps", "2", "--save_steps", "100", "--seed", "5"]
    assert run_command("train", [*_paths(tiny_model_dir, processed, out), *flags, "--overwrite"]) == 0
    assert not list(out.glob("checkpoint-*"))
    assert json.loads((out / "manifest.json").read_text())["seed"] == 5
    assert (out / "my_notes.txt").read_text() == "kept"


# ---------------------------------------------------------------------------------------
# interruption
# ---------------------------------------------------------------------------------------
def test_sigkill_then_rerun_ends_with_the_uninterrupted_adapter(tmp_path, reference_run, tiny_model_dir, processed, caplog):
    out = tmp_path / "killed"
    command = _zhlora(*_paths(tiny_model_dir, processed, out), *REFERENCE_FLAGS)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "checkpoint-2", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"

    # The resume runs in this process (cheaper than a second interpreter), with the same threads
    # as the killed one (_env()); the kill left a stale lock on the folder, which is taken over.
    with caplog.at_level(logging.INFO, logger="zhlora.training"):
        assert run_command("train", [*_paths(tiny_model_dir, processed, out), *REFERENCE_FLAGS]) == 0
    assert "Resumed from" in caplog.text
    assert _max_abs_diff(out, reference_run) <= 1e-5
    steps = [json.loads(line)["step"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # no step logged twice after the resume


def test_sigterm_saves_a_checkpoint_and_a_second_writer_is_refused(tmp_path, tiny_model_dir, processed, capsys):
    """SIGTERM (like Ctrl-C) saves a checkpoint and exits 130; while the first process still
    holds the run folder, a second `zhlora train` into it is refused, naming the holder (issue 13)."""
    out = tmp_path / "interrupted"
    flags = [*BASE_FLAGS, "--max_steps", "400", "--save_steps", "1000"]
    proc = subprocess.Popen(_zhlora(*_paths(tiny_model_dir, processed, out), *flags), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(out / "training_log.jsonl", proc)
    deadline = time.monotonic() + 120
    while not (out / "training_log.jsonl").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)  # at least one step done
    assert run_command("train", [*_paths(tiny_model_dir, processed, out), *flags, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"is being written by another zhlora process: pid {proc.pid}" in err, err
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "Interrupted at step" in output and "resume" in output
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "adapter_model.safetensors").is_file()
    assert not (out / "manifest.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert not (out / ".zhlora.lock").exists()  # released on exit


@pytest.mark.parametrize("damaged", ["optimizer.bin", "adapter_model.safetensors"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, reference_run, tiny_model_dir, processed, caplog, damaged):
    """Issue 13: a truncated file in the newest checkpoint is found by its recorded sha256 before
    loading; the run resumes from the previous intact checkpoint and ends with the same adapter."""
    out = tmp_path / "damaged"
    shutil.copytree(reference_run, out)
    for name in ("adapter_model.safetensors", "manifest.json"):
        (out / name).unlink()
    (step_a, older), (step_b, newest) = ckpt.list_checkpoints(out)[-2:]
    assert set(json.loads((newest / "trainer_state.json").read_text())["files"]) >= {"optimizer.bin", damaged}
    path = newest / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert ckpt.checkpoint_damage(newest) == f"{damaged} changed since it was written (truncated or damaged)"
    with caplog.at_level(logging.WARNING):
        assert run_command("train", [*_paths(tiny_model_dir, processed, out), *REFERENCE_FLAGS]) == 0
    assert f"Resuming from checkpoint-{step_a} instead" in caplog.text and damaged in caplog.text
    assert _max_abs_diff(out, reference_run) <= 1e-5
    steps = [json.loads(line)["step"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_killed_between_the_adapter_and_the_manifest_finishes_from_the_checkpoint(
        tmp_path, reference_run, tiny_model_dir, processed, caplog):
    """Issue 13 finding 0 for train: manifest.json (the completion marker) is written after the
    adapter; a kill between them must not leave "an adapter zhlora did not record" (a dead end)."""
    out = tmp_path / "unfinished"
    shutil.copytree(reference_run, out)
    (out / "manifest.json").unlink()
    with caplog.at_level(logging.INFO, logger="zhlora.training"):
        assert run_command("train", [*_paths(tiny_model_dir, processed, out), *REFERENCE_FLAGS]) == 0
    assert "stopped while writing its final files" in caplog.text
    assert (out / "manifest.json").is_file() and _max_abs_diff(out, reference_run) <= 1e-5


def test_every_checkpoint_damaged_is_a_clear_error(tmp_path, reference_run, tiny_model_dir, processed, capsys):
    out = tmp_path / "damaged"
    shutil.copytree(reference_run, out)
    for name in ("adapter_model.safetensors", "manifest.json"):
        (out / name).unlink()
    for _, checkpoint in ckpt.list_checkpoints(out):
        (checkpoint / "optimizer.bin").write_bytes(b"")
    assert run_command("train", [*_paths(tiny_model_dir, processed, out), *REFERENCE_FLAGS]) == 2
    err = capsys.readouterr().err
    assert "Every checkpoint in" in err and "optimizer.bin changed" in err and "--overwrite" in err


# ---------------------------------------------------------------------------------------
# two processes (gloo on CPU)
# ---------------------------------------------------------------------------------------
LAUNCHERS = {  # as docs/training.md types them: no device flag; on a machine without CUDA both run gloo on CPU
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_processes_train_the_same_adapter_as_one_with_accumulation(tmp_path, tiny_model_dir, processed, launcher):
    """World 2 x 1 micro-batch sees the same bins per step as world 1 x 2 micro-batches; with no
    dropout the adapters must agree, which checks the loss normalisation across processes."""
    flags = [*BASE_FLAGS[:4], "--lora_rank", "8", "--learning_rate", "1e-2", "--warmup_ratio", "0",
             "--logging_steps", "1", "--max_steps", "4", "--save_steps", "2", "--lora_dropout", "0"]
    single, double = tmp_path / "one", tmp_path / "two"
    with _torch_threads(1):  # as each of the two processes below
        assert run_command("train", [*_paths(tiny_model_dir, processed, single), *flags,
                                     "--gradient_accumulation_steps", "2"]) == 0
    launch = [sys.executable, *LAUNCHERS[launcher], "-m", "zhlora", "train", *_paths(tiny_model_dir, processed, double), *flags,
              "--gradient_accumulation_steps", "1"]
    done = subprocess.run(launch, env=_env(threads=1), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((double / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2
    rows = [json.loads(line) for line in (double / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # one writer
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert sorted(os.listdir(double / "checkpoint-4")).count("random_states_1.pkl") == 1
    assert _max_abs_diff(single, double) <= 1e-5


# ---------------------------------------------------------------------------------------
# bad input: a clear error, exit 2, nothing that looks complete
# ---------------------------------------------------------------------------------------
def _fails(capsys, argv: list[str], message: str, output: Path | None = None) -> None:
    assert run_command("train", argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    if output is not None:
        assert not (output / "manifest.json").exists() and not (output / "adapter_model.safetensors").exists()


def test_missing_or_unprocessed_dataset(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    _fails(capsys, ["--model_path", str(tiny_model_dir), "--dataset_path", str(tmp_path / "nope"), "--output_dir", str(out)],
           "does not exist", out)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.jsonl").write_text('{"instruction": "x"}\n')
    _fails(capsys, ["--model_path", str(tiny_model_dir), "--dataset_path", str(tmp_path / "raw"), "--output_dir", str(out)],
           "not a processed dataset", out)


def test_data_from_another_tokenizer(tmp_path, tiny_model_dir, processed, capsys):
    other = tmp_path / "processed_data"
    shutil.copytree(processed, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tokenizer"].update(name_or_path="meta-llama/Llama-2-7b-hf", vocab_size=32000, vocab_sha256="0" * 64)
    (other / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    _fails(capsys, _paths(tiny_model_dir, other, out), "tokenized with a different tokenizer", out)


@pytest.mark.parametrize("flags,message", [
    (["--lora_rank", "0"], "--lora_rank must be a positive integer"),
    (["--lora_alpha", "0"], "--lora_alpha must be positive"),
    (["--lora_dropout", "1"], "--lora_dropout must be in [0, 1)"),
    (["--target_modules", "q_proj,qkv"], "no linear layer named qkv"),
    (["--load_in_4bit"], "needs a CUDA GPU"),
    (["--init_lora_weights", "eva"], "--init_lora_weights"),
    (["--max_seq_length", "64"], "longer than --max_seq_length 64"),
])
def test_bad_settings(tmp_path, tiny_model_dir, processed, capsys, flags, message):
    if "--load_in_4bit" in flags and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    _fails(capsys, [*_paths(tiny_model_dir, processed, out), *flags], message, out)


def test_report_to_a_missing_package(tmp_path, tiny_model_dir, processed, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    _fails(capsys, [*_paths(tiny_model_dir, processed, tmp_path / "out"), "--report_to", "tensorboard"],
           "needs the tensorboard package")


def test_resume_without_checkpoint(tmp_path, tiny_model_dir, processed, capsys):
    _fails(capsys, [*_paths(tiny_model_dir, processed, tmp_path / "out"), "--resume"], "no checkpoint to resume from")


def test_train_config_written_is_the_resolved_config(reference_run):
    raw = yaml.safe_load((reference_run / "train_config.yaml").read_text())
    assert raw["train"]["max_steps"] == 8 and raw["lora"]["lora_dropout"] == 0.1


def test_a_callback_can_log_rows_and_stop_the_run(tmp_path, tiny_model_dir, processed):
    """The monitoring hook: on_step_end(step, model) -> StepReport(record, stop)."""
    from zhlora.config import config_from_dict
    from zhlora.recipes.train import train
    from zhlora.training.loop import StepReport

    class StopAtTwo:
        def __init__(self):
            self.seen = []

        def on_step_end(self, step, model):
            self.seen.append((step, model.training))
            return StepReport(record={"probe": step * 10}, stop=step == 2)

    cfg = config_from_dict({"lora": {"lora_rank": 4}, "train": {
        "max_steps": 6, "save_steps": 100, "max_seq_length": 256, "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1, "logging_steps": 5}})
    callback = StopAtTwo()
    out = tmp_path / "run"
    outcome = train(cfg, tiny_model_dir, processed / "train_dataset", out, callbacks=[callback])
    assert (outcome.status, outcome.step) == ("stopped", 2)
    assert callback.seen == [(1, True), (2, True)]
    rows = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert {"step": 1, "probe": 10} in rows and {"step": 2, "probe": 20} in rows
    assert any(r["step"] == 2 and "loss" in r for r in rows)  # a stop also logs the step it ends on
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "manifest.json").read_text())["training"]["status"] == "stopped"
