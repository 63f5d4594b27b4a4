"""What every speed script shares: where things are, the order of interleaved runs, timing with the
load average beside it, child processes with their CPU time and peak memory, models, and ``--out``.

The scripts import it as a sibling (``perf/`` is on ``sys.path`` when a script runs), so each
runs from a fresh clone's venv: ``python perf/<script>.py ...``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "perf"
SHARED = Path(os.environ.get("ZHLORA_SHARED_DATA", REPO.parent / "shared" / "data"))
# The environment of a measured child: one thread, nothing fetched, no GPU, this checkout's zhlora.
CHILD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO / "src")}


def load_average() -> float:
    """The 1-minute load average, rounded to 0.01."""
    return round(os.getloadavg()[0], 2)


def interleaved(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """``(round, name)`` in alternating order: A B C, then C B A, then A B C ...

    Alternating cancels a drift of the machine's load over a round (a falling load would
    otherwise always favour whoever runs last).
    """
    for index in range(rounds):
        for name in (names if index % 2 == 0 else list(reversed(names))):
            yield index, name


@contextmanager
def timed(figures: dict) -> Iterator[dict]:
    """Time the block: ``figures`` gains wall and CPU seconds of this process and the load before/after."""
    load_before, wall, cpu = load_average(), time.perf_counter(), time.process_time()
    yield figures
    figures.update(wall_seconds=round(time.perf_counter() - wall, 3), cpu_seconds=round(time.process_time() - cpu, 3),
                   load_average_1min=[load_before, load_average()])


def run_child(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``command`` with its output in ``log``; its wall seconds, CPU seconds (user + sys) and peak RSS (MB).

    Fails with the log's tail when the child fails.
    """
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed; see {log}:\n" + log.read_text()[-3000:])
    return {"child_wall_seconds": round(time.perf_counter() - started, 2),
            "child_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_mb": usage.ru_maxrss // 1024}


def machine() -> dict:
    """What the figures were measured on: CPU, cores this process may use, versions, date."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "usable_cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def set_threads() -> int:
    """torch's CPU threads from ``OMP_NUM_THREADS`` (default 1, the speed scripts' setting)."""
    import torch

    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    return threads


def load_model(model_dir: Path, torch_dtype: str = "float32", device: str = "cpu"):
    """``(model, tokenizer)`` exactly as zhlora loads them (a peer harness is handed the same objects)."""
    from zhlora.models.loading import load_model as zhlora_load_model
    from zhlora.models.loading import load_tokenizer

    model = zhlora_load_model(str(model_dir), torch_dtype=torch_dtype, device_map=None if device == "cpu" else {"": 0})
    return model, load_tokenizer(str(model_dir))


def matmul_gflops(dtype_name: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """The best of ``repeats`` square matmuls, in GFLOP/s: the machine's peak for that dtype right now."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def write_summary(summary: dict, out: str | None) -> None:
    """Print ``summary`` as JSON and write it to ``--out`` when given."""
    text = json.dumps(summary, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")


def need_shared_data() -> bool:
    """True when ``../shared/data`` (or ``$ZHLORA_SHARED_DATA``) is there; says so on stderr otherwise."""
    if (SHARED / "README.md").is_file():
        return True
    print(f"{SHARED} is absent: this benchmark needs the real data folder (ZHLORA_SHARED_DATA=...).", file=sys.stderr)
    return False


def score_choice_subjects(model_dir: Path, data: Path, subjects: dict[str, list[str]], items_per_subject: int,
                          batch_size: int, torch_dtype: str = "float32", device: str = "cpu"):
    """zhlora's engine on the first ``items_per_subject`` 5-shot items of each ``{benchmark: [subject]}``.

    Returns ``(tokenizer, benches, results, seconds)``: the loaded items, ``evaluate_benchmarks``'
    results and its wall seconds (model loading excluded).
    """
    from zhlora.evaluation import evaluate_benchmarks, load_benchmark_items, resolve_spec

    set_threads()
    model, tokenizer = load_model(model_dir, torch_dtype, device)
    benches = {name: load_benchmark_items(data, resolve_spec(name), shots=5, subjects=names, limit=items_per_subject)
               for name, names in subjects.items()}
    started = time.perf_counter()
    results = evaluate_benchmarks(model, tokenizer, benches, batch_size=batch_size)
    return tokenizer, benches, results, time.perf_counter() - started


def clock_calls(owner, name: str) -> dict:
    """Wrap ``owner.name`` so every call adds its wall seconds to the returned ``{"seconds": ...}``.

    For the share of a run spent inside one function (the forward pass, a peer's scoring call);
    reset the count by assigning ``0.0`` to ``"seconds"``.
    """
    spent = {"seconds": 0.0}
    original = getattr(owner, name)

    def clocked(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - started

    setattr(owner, name, clocked)
    return spent
