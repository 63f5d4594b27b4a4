"""CPU threads: --num_threads, OMP_NUM_THREADS, the load-based default and the busy-machine warning."""

from __future__ import annotations

import logging

import pytest
import torch

from zhlora import threads
from zhlora.cli import main
from zhlora.errors import ZhloraError


@pytest.mark.parametrize(("cores", "load", "expected"), [(2, 0.1, 2), (2, 1.0, 1), (2, 7.0, 1), (16, 3.4, 13), (1, 0.0, 1)])
def test_default_threads_leave_busy_cores_alone(cores, load, expected):
    assert threads.default_threads(cores, load) == expected


def test_flag_then_environment_then_default(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.resolve_threads(2) == (2, "--num_threads")
    assert threads.resolve_threads(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "own_busy_cores", lambda: 0.0)
    assert threads.resolve_threads(None) == (1, "2 cores, load average 1.2 (0.0 of it this process)")
    monkeypatch.setattr(threads, "own_busy_cores", lambda: 1.0)  # the load is this process's own earlier work
    assert threads.resolve_threads(None) == (2, "2 cores, load average 1.2 (1.0 of it this process)")


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_omp_num_threads_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ZhloraError, match="OMP_NUM_THREADS must be a positive integer"):
        threads.resolve_threads(None)


def test_apply_sets_torch_and_warns_once_when_oversubscribed(monkeypatch, caplog):
    previous = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", str(previous))  # restored by monkeypatch; apply_threads rewrites it
    monkeypatch.setattr(threads, "_warned", False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 2.0, 2.0))
    monkeypatch.setattr(threads, "own_busy_cores", lambda: 0.0)
    try:
        with caplog.at_level(logging.WARNING, logger="zhlora.threads"):
            assert threads.apply_threads(1) == 1
            assert torch.get_num_threads() == 1
            threads.apply_threads(1)
        assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
        assert "load average 2.5 from other processes on 2 cores" in caplog.records[0].getMessage()
    finally:
        torch.set_num_threads(previous)
    assert not threads.oversubscribed(1, 2, 0.5) and threads.oversubscribed(2, 2, 1.5)


def test_num_threads_flag_is_checked(capsys):
    assert main(["evaluate", "--num_threads", "0", "--model_path", "nowhere"]) == 2
    assert "--num_threads must be a positive number of threads" in capsys.readouterr().err


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({}, None),
])
def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert threads.cgroup_cpu_limit(tmp_path) == expected


def test_more_threads_than_usable_cores_are_refused(monkeypatch, capsys):
    """A container with a 1.5-CPU quota on a 4-core affinity mask may use 2 cores: 999 threads are refused, by flag or env."""
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.5)
    assert threads.available_cores() == 2
    assert threads.resolve_threads(2) == (2, "--num_threads")
    assert main(["evaluate", "--num_threads", "999", "--model_path", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "--num_threads 999 is more than the 2 CPU core(s) this process may use" in err and "Traceback" not in err
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    with pytest.raises(ZhloraError, match="OMP_NUM_THREADS 8 is more than the 2 CPU core"):
        threads.resolve_threads(None)
