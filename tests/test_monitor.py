"""Probe sets (seeded, spread over subjects, disjoint from the final items where the data allows), the probe
schedule and its overhead bound (constructed timings), and the training callback (stop/mark, adapter snapshots,
export, resume, deferred probes), with scripted probe values and a scripted clock."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import pytest
import torch

from zhlora.data.benchmarks import resolve_spec
from zhlora.errors import DataError, ZhloraError
from zhlora.evaluation.items import load_benchmark_items
from zhlora.forgetting_budget import parse_budget
from zhlora.monitoring import callback as callback_module
from zhlora.monitoring.callback import ForgettingMonitor, overhead_line
from zhlora.monitoring.probes import ProbeMeasurement, ProbeSizes, probe_manifest, select_probe_sets, spread_over_groups
from zhlora.monitoring.schedule import is_probe_due, should_probe, suggested_monitor_every

SMALL = ProbeSizes(zh_loss=5, en_ppl=3, en_ppl_chars=300, mmlu_acc=16, gsm8k_acc=3, ceval_acc=9, cmmlu_acc=8)


# ---------------------------------------------------------------------------------------
# probe sets
# ---------------------------------------------------------------------------------------
def test_spread_over_groups_is_even_seeded_and_keeps_file_order():
    groups = {"b": list(range(10)), "a": list(range(100, 103)), "c": list(range(200, 201))}
    picked = spread_over_groups(groups, 8, random.Random(1))
    assert {k: len(v) for k, v in picked.items()} == {"a": 3, "b": 4, "c": 1}  # a and c run out, b takes the rest
    assert all(v == sorted(v) for v in picked.values())
    assert picked == spread_over_groups(groups, 8, random.Random(1))
    assert spread_over_groups(groups, 100, random.Random(1)) == groups | {"b": list(range(10))}
    assert sum(map(len, spread_over_groups(groups, 2, random.Random(1)).values())) == 2


def _final_ids(data_dir: Path, benchmark: str) -> set[str]:
    bench = load_benchmark_items(data_dir, resolve_spec(benchmark), shots=0)
    return {item.id for items in bench.groups.values() for item in items}


def test_probe_sets_are_fixed_spread_and_disjoint_from_the_final_items(sample_data_dir):
    suite = select_probe_sets(sample_data_dir, SMALL)
    again = select_probe_sets(sample_data_dir, SMALL)
    assert {n: suite.ids(n) for n in suite.items} == {n: again.ids(n) for n in again.items}
    assert {n: b.n_items for n, b in suite.items.items()} == {
        "zh_loss": 5, "ceval_acc": 9, "cmmlu_acc": 8, "en_ppl": 3, "mmlu_acc": 16, "gsm8k_acc": 3}
    assert {len(v) for v in suite.items["mmlu_acc"].groups.values()} == {2}  # 8 subjects x 2
    assert all(len(item.text) <= 300 for item in suite.items["en_ppl"].groups["all"])

    record = probe_manifest(suite)["probes"]
    for name, benchmark in (("mmlu_acc", "mmlu"), ("ceval_acc", "ceval"), ("cmmlu_acc", "cmmlu"), ("gsm8k_acc", "gsm8k")):
        assert record[name]["disjoint_from_final_scored_items"] is True
        assert not set(record[name]["ids"]) & _final_ids(sample_data_dir, benchmark), name
    for name, benchmark in (("zh_loss", "ppl_zh"), ("en_ppl", "ppl_en")):  # one split only: overlap, and said so
        assert record[name]["disjoint_from_final_scored_items"] is False
        assert set(record[name]["ids"]) <= _final_ids(sample_data_dir, benchmark)
        assert "optimistic" in record[name]["note"]
    assert record["mmlu_acc"]["split"] == "val" and record["gsm8k_acc"]["split"] == "train"
    assert record["gsm8k_acc"]["shots"] == 8 and record["mmlu_acc"]["shots"] == 0


def test_a_larger_probe_contains_the_smaller_one_of_the_others(sample_data_dir):
    small = select_probe_sets(sample_data_dir, SMALL)
    other = select_probe_sets(sample_data_dir, ProbeSizes(**{**SMALL.__dict__, "mmlu_acc": 24}))
    assert small.ids("ceval_acc") == other.ids("ceval_acc")  # one random stream per probe


def test_missing_probe_data_is_skipped_unless_the_budget_reads_it(sample_data_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(sample_data_dir, data)
    (data / "gsm8k" / "train.jsonl").unlink()
    (data / "english_text" / "test.jsonl").unlink()
    with caplog.at_level(logging.WARNING):
        suite = select_probe_sets(data, SMALL, required=("en_acc",))
    assert "gsm8k_acc" not in suite.items and "gsm8k/train.jsonl is missing" in suite.skipped["gsm8k_acc"]
    assert "probe en_ppl skipped" in caplog.text and "download-data --datasets english_text" in caplog.text
    with pytest.raises(DataError, match="reads the en_ppl probe, which has no data"):
        select_probe_sets(data, SMALL, required=("en_ppl",))
    (data / "mmlu" / "val.jsonl").unlink()
    with pytest.raises(DataError, match="English probe accuracy"):
        select_probe_sets(data, SMALL, required=("en_acc",))


def test_broken_probe_data_is_an_error_not_a_skip(sample_data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(sample_data_dir, data)
    (data / "mmlu" / "val.jsonl").write_text('{"id": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="mmlu/val.jsonl"):
        select_probe_sets(data, SMALL)


def test_probe_limit_caps_every_probe():
    capped = ProbeSizes().capped(4)
    assert (capped.mmlu_acc, capped.zh_loss, capped.gsm8k_acc, capped.en_ppl_chars) == (4, 4, 4, 2000)
    assert ProbeSizes().capped(None) == ProbeSizes()


# ---------------------------------------------------------------------------------------
# the schedule: due steps and the overhead bound, on constructed timings
# ---------------------------------------------------------------------------------------
def test_probes_are_due_every_n_steps_at_checkpoints_and_at_the_end():
    assert [s for s in range(1, 12) if is_probe_due(s, 4, 6, 11)] == [4, 6, 8, 11]


def _run_schedule(train_seconds: list[float], probe_seconds: list[float], baseline: float, bound: float,
                  monitor_every: int = 1) -> list[dict]:
    """Drive :func:`should_probe` as the monitor does: one training step after another, probing when due and
    allowed; ``probe_seconds[i]`` is what the i-th probe run really takes. Returns one dict per run."""
    total = len(train_seconds)
    runs, spent, trained, expected = [], 0.0, 0.0, baseline
    for step, seconds in enumerate(train_seconds, start=1):
        trained += seconds
        if is_probe_due(step, monitor_every, 10**9, total) and should_probe(
                step, total, probe_seconds=spent, expected_seconds=expected, train_seconds=trained, bound=bound):
            took = probe_seconds[len(runs)]
            spent += took
            runs.append({"step": step, "spent": spent, "trained": trained, "took": took, "expected": expected})
            expected = took
    return runs


def test_the_bound_is_never_exceeded_except_by_the_last_probe_on_random_timings():
    rng = random.Random(20240601)
    for _ in range(300):
        bound = rng.choice([0.02, 0.1, 0.25, 0.5, 1.0])
        steps = rng.randint(1, 80)
        train = [rng.expovariate(1 / rng.choice([0.05, 1.0, 30.0])) for _ in range(steps)]  # seconds per step
        cost = rng.uniform(0.01, 60.0)
        runs = _run_schedule(train, [cost] * steps, baseline=cost, bound=bound, monitor_every=rng.randint(1, 7))
        assert runs and runs[-1]["step"] == steps  # the last step is always probed
        for run in runs[:-1]:  # probes that take what the previous one took: never over the bound
            assert run["spent"] <= bound * run["trained"] * (1 + 1e-12)
        last = runs[-1]  # the forced last probe: over the bound by at most itself
        assert last["spent"] - last["took"] <= bound * last["trained"] * (1 + 1e-12)


def test_a_probe_slower_than_the_previous_one_overshoots_by_at_most_the_difference():
    rng = random.Random(7)
    for _ in range(300):
        bound = rng.choice([0.05, 0.1, 0.3])
        steps = rng.randint(2, 60)
        train = [rng.uniform(0.1, 10.0) for _ in range(steps)]
        costs = [rng.uniform(0.1, 20.0) for _ in range(steps)]
        for run in _run_schedule(train, costs, baseline=rng.uniform(0.1, 20.0), bound=bound)[:-1]:
            assert run["spent"] <= bound * run["trained"] + max(0.0, run["took"] - run["expected"]) + 1e-9


def test_deferred_probes_run_as_soon_as_they_fit():
    # 1 s per step, 1 s per probe, 25 %: a probe fits every 4 steps; the last step (10) is probed regardless
    runs = _run_schedule([1.0] * 10, [1.0] * 10, baseline=1.0, bound=0.25)
    assert [run["step"] for run in runs] == [4, 8, 10]
    assert (runs[-1]["spent"], runs[-1]["trained"]) == (3.0, 10.0)  # 30 %: the last probe passes the bound


def test_step_zero_always_runs_and_bound_zero_means_no_bound():
    assert should_probe(0, 10, probe_seconds=1e6, expected_seconds=1e6, train_seconds=0.0, bound=0.1)
    assert not should_probe(3, 10, probe_seconds=1e6, expected_seconds=1e6, train_seconds=1.0, bound=0.1)
    assert should_probe(3, 10, probe_seconds=1e6, expected_seconds=1e6, train_seconds=1.0, bound=0.0)
    assert should_probe(10, 10, probe_seconds=1e6, expected_seconds=1e6, train_seconds=1.0, bound=0.1)
    assert [run["step"] for run in _run_schedule([0.1] * 6, [5.0] * 6, 5.0, bound=0.0)] == [1, 2, 3, 4, 5, 6]
    assert should_probe(4, 10, probe_seconds=1.0, expected_seconds=1.0, train_seconds=8.0, bound=0.25)  # at the limit


def test_suggested_monitor_every_fits_the_bound():
    assert suggested_monitor_every(seconds_per_probe=1.0, seconds_per_step=1.0, bound=0.25) == 4
    assert suggested_monitor_every(seconds_per_probe=30.0, seconds_per_step=2.0, bound=0.1) == 150
    assert suggested_monitor_every(seconds_per_probe=0.01, seconds_per_step=2.0, bound=0.1) == 1


# ---------------------------------------------------------------------------------------
# the callback, with scripted probe values on a real (tiny) PEFT model
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def peft_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from zhlora.models.loading import load_model

    torch.manual_seed(0)
    model = load_model(tiny_model_dir, torch_dtype="float32")
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def _lora_b(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


def _train_a_little(model, amount: float) -> None:
    """Stand-in for an optimizer step: move every lora_B weight."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(amount)


class ScriptedClock:
    """A wall clock that moves only when told (seconds)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ScriptedProbes:
    """Replaces evaluate_probes: returns the next scripted values, each taking 0.5 s on ``self.clock``."""

    def __init__(self, values: list[dict]):
        self.values = list(values)
        self.calls = 0
        self.clock = ScriptedClock()

    def __call__(self, model, tokenizer, suite, **kwargs):
        self.calls += 1
        self.clock.now += 0.5
        return ProbeMeasurement(values=self.values.pop(0), seconds=0.5, seconds_per_probe={"zh_loss": 0.5})


def _values(zh: float, ppl: float, acc: float = 0.5) -> dict:
    return {"zh_loss": zh, "en_ppl": ppl, "en_acc": acc}


def _monitor(sample_data_dir, out: Path, budget: str | None, action: str = "stop", **kwargs) -> ForgettingMonitor:
    suite = select_probe_sets(sample_data_dir, SMALL)
    settings = {"monitor_every": 2, "save_steps": 100, "total_steps": 10, "probe_overhead": 0.0, **kwargs}
    return ForgettingMonitor(suite, tokenizer=None, budget=parse_budget(budget), budget_action=action,
                             output_dir=out, **settings)


def test_stop_on_the_crossing_step_and_export_the_best_allowed_step(sample_data_dir, tmp_path, peft_model,
                                                                    monkeypatch, caplog):
    script = ScriptedProbes([_values(2.0, 10.0), _values(1.9, 10.1), _values(1.7, 10.3), _values(1.5, 11.0)])
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    metrics = []
    monitor = _monitor(sample_data_dir, tmp_path, "ppl:5%", log_metrics=lambda values, step: metrics.append((step, values)),
                       clock=script.clock)
    start = monitor.start(peft_model, 0, [])
    assert start["probes"] == _values(2.0, 10.0) and json.loads((tmp_path / "probe_sets.json").read_text())["probes"]
    weights = {}
    with caplog.at_level(logging.INFO):
        for step in range(1, 7):
            _train_a_little(peft_model, 0.01)
            weights[step] = _lora_b(peft_model)
            report = monitor.on_step_end(step, peft_model)
            if step % 2:
                assert report is None
                continue
            assert report.stop == (step == 6)
            if report.stop:
                break
    assert script.calls == 4
    assert report.record["budget"] == {"text": "ppl:5%", "exceeded": True,
                                       "violations": ["en_ppl rose 10.0% (10 -> 11), over ppl:5%"]}
    assert "Forgetting budget ppl:5% exceeded at step 6: en_ppl rose 10.0%" in caplog.text
    assert "Stopping the run after this step" in caplog.text
    assert report.record["selected_step"] == 4 and report.record["probe_overhead_pct"] > 0
    assert [step for step, _ in metrics] == [0, 2, 4, 6] and metrics[-1][1]["probe/en_ppl"] == 11.0
    assert sorted(p.name for p in (tmp_path / "probe_snapshots").iterdir()) == ["step-4"]  # step 2's was superseded

    source = monitor.restore_selected(peft_model, 6)
    assert source == tmp_path / "probe_snapshots" / "step-4"  # the folder whose weights were loaded
    restored = _lora_b(peft_model)
    assert all(torch.equal(restored[k], weights[4][k]) for k in restored)
    summary = monitor.summary()
    assert (summary["selected_step"], summary["selected_within_budget"]) == (4, True)
    assert summary["budget_exceeded"]["step"] == 6 and summary["probe_steps"] == [0, 2, 4, 6]
    assert summary["selected_zh_gain"] == pytest.approx(0.3)
    assert summary["overhead"]["probe_runs"] == 3 and summary["overhead"]["baseline_seconds"] == 0.5
    assert (summary["overhead"]["probes_deferred"], summary["overhead"]["bound_pct"]) == (0, None)
    assert summary["budget_limit_values"] == {"en_ppl": pytest.approx(10.5)}


def test_mark_goes_on_and_no_budget_only_observes(sample_data_dir, tmp_path, peft_model, monkeypatch):
    script = ScriptedProbes([_values(2.0, 10.0), _values(1.9, 12.0), _values(1.8, 10.2)])
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    monitor = _monitor(sample_data_dir, tmp_path / "mark", "ppl:5%", action="mark", total_steps=4)
    monitor.start(peft_model, 0, [])
    first, second = monitor.on_step_end(2, peft_model), monitor.on_step_end(4, peft_model)
    assert (first.stop, first.record["budget"]["exceeded"], second.record["budget"]["exceeded"]) == (False, True, False)
    assert second.record["selected_step"] == 4 and monitor.restore_selected(peft_model, 4) is None

    script = ScriptedProbes([_values(2.0, 10.0), _values(1.9, 50.0), _values(1.8, 90.0)])
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    observer = _monitor(sample_data_dir, tmp_path / "observe", None, total_steps=4)
    observer.start(peft_model, 0, [])
    reports = [observer.on_step_end(step, peft_model) for step in (2, 4)]
    assert not any(r.stop for r in reports) and "budget" not in reports[0].record
    assert not (tmp_path / "observe" / "probe_snapshots").exists()
    assert observer.restore_selected(peft_model, 4) is None and observer.summary()["selected_step"] == 4


def test_snapshots_chosen_as_of_a_checkpoint_survive_for_resume(sample_data_dir, tmp_path, peft_model, monkeypatch):
    script = ScriptedProbes([_values(2.0, 10.0), _values(1.9, 10.0), _values(1.8, 10.0), _values(1.7, 10.0)])
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    monitor = _monitor(sample_data_dir, tmp_path, "ppl:5%", action="mark")
    monitor.start(peft_model, 0, [])
    monitor.on_step_end(2, peft_model)
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}", encoding="utf-8")
    monitor.on_step_end(4, peft_model)
    monitor.on_step_end(6, peft_model)
    assert sorted(p.name for p in (tmp_path / "probe_snapshots").iterdir()) == ["step-2", "step-6"]


def test_resume_picks_up_the_probe_history(sample_data_dir, tmp_path, peft_model, monkeypatch):
    script = ScriptedProbes([_values(2.0, 10.0), _values(1.8, 10.0)])
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    first = _monitor(sample_data_dir, tmp_path, "ppl:5%")
    rows = [{"step": 0, **first.start(peft_model, 0, [])}, {"step": 2, **first.on_step_end(2, peft_model).record}]
    rows.append({"step": 3, "loss": 1.0})

    resumed = _monitor(sample_data_dir, tmp_path, "ppl:5%")
    assert resumed.start(peft_model, 3, rows) is None and script.calls == 2  # no new baseline
    assert resumed.baseline.values == _values(2.0, 10.0) and resumed.selection.step == 2
    assert resumed.expected_seconds == rows[1]["probe_seconds"]  # the next probe is expected to cost the last one's time

    with pytest.raises(ZhloraError, match="no step-0 probes"):
        _monitor(sample_data_dir, tmp_path, "ppl:5%").start(peft_model, 3, rows[1:])
    record = json.loads((tmp_path / "probe_sets.json").read_text())
    record["probes"]["mmlu_acc"]["ids"] = ["another-item"]
    (tmp_path / "probe_sets.json").write_text(json.dumps(record))
    with pytest.raises(ZhloraError, match="the benchmark data changed"):
        _monitor(sample_data_dir, tmp_path, "ppl:5%").start(peft_model, 3, rows)


def test_missing_snapshot_of_the_chosen_step_is_a_clear_error(sample_data_dir, tmp_path, peft_model, monkeypatch):
    script = ScriptedProbes([_values(2.0, 10.0), _values(1.8, 10.0), _values(1.7, 20.0)])
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    monitor = _monitor(sample_data_dir, tmp_path, "ppl:5%")
    monitor.start(peft_model, 0, [])
    monitor.on_step_end(2, peft_model)
    monitor.on_step_end(4, peft_model)
    shutil.rmtree(tmp_path / "probe_snapshots")
    with pytest.raises(ZhloraError, match="weights of step 2, chosen by the forgetting budget, are missing"):
        monitor.restore_selected(peft_model, 4)


def test_due_probes_that_do_not_fit_the_bound_are_deferred_counted_and_logged(sample_data_dir, tmp_path, peft_model,
                                                                             monkeypatch, caplog):
    script = ScriptedProbes([_values(2.0, 10.0)] * 4)
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    monitor = _monitor(sample_data_dir, tmp_path, None, monitor_every=1, probe_overhead=0.25, clock=script.clock)
    monitor.start(peft_model, 0, [])
    records = {}
    with caplog.at_level(logging.DEBUG, logger=callback_module.logger.name):
        for step in range(1, 11):
            script.clock.now += 0.5  # the training step
            report = monitor.on_step_end(step, peft_model)
            if report is not None:
                records[step] = report.record
    assert sorted(records) == [4, 8, 10] and script.calls == 4  # the last step is probed whatever the bound
    assert [records[s]["probes_deferred"] for s in (4, 8, 10)] == [3, 3, 1]
    assert [records[s]["train_seconds"] for s in (4, 8, 10)] == [2.0, 2.0, 1.0]
    assert [records[s]["probe_overhead_pct"] for s in (4, 8, 10)] == [25.0, 25.0, 30.0]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "deferred" in r.getMessage()]
    assert info == [("probes due at step 1 deferred: 0.0 s so far + 0.5 s expected > 0.25 x 0.5 s of training "
                     "(--probe_overhead); the next due step tries again")]
    assert sum("deferred" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG) == 6

    overhead = monitor.summary()["overhead"]
    assert {k: overhead[k] for k in ("probe_runs", "probes_deferred", "probe_seconds", "train_seconds", "overhead_pct",
                                     "bound_pct", "baseline_seconds", "suggested_monitor_every")} == {
        "probe_runs": 3, "probes_deferred": 7, "probe_seconds": 1.5, "train_seconds": 5.0, "overhead_pct": 30.0,
        "bound_pct": 25.0, "baseline_seconds": 0.5, "suggested_monitor_every": 4}
    assert overhead_line(overhead) == (
        "Probes: 3 runs, 7 deferred, 1.5 s vs 5.0 s of training = 30.0% overhead (bound 25%, the last step is "
        "always probed; step-0 baseline 0.5 s, not counted). 7 due probe(s) were deferred to stay within the bound: "
        "--monitor_every 4 would probe on schedule.")


def test_with_a_budget_a_deferral_says_the_budget_is_checked_less_often(sample_data_dir, tmp_path, peft_model,
                                                                       monkeypatch, caplog):
    script = ScriptedProbes([_values(2.0, 10.0)] * 2)
    monkeypatch.setattr(callback_module, "evaluate_probes", script)
    monitor = _monitor(sample_data_dir, tmp_path, "ppl:5%", probe_overhead=0.1, clock=script.clock)
    monitor.start(peft_model, 0, [])
    with caplog.at_level(logging.INFO):
        assert monitor.on_step_end(2, peft_model) is None
    assert "so the forgetting budget is checked less often" in caplog.text
    assert monitor.summary()["probe_steps"] == [0]


def test_without_a_bound_the_overhead_line_says_so():
    overhead = {"probe_runs": 2, "probes_deferred": 0, "probe_seconds": 3.0, "train_seconds": 1.0, "overhead_pct": 300.0,
                "bound_pct": None, "baseline_seconds": None, "suggested_monitor_every": None}
    assert overhead_line(overhead) == ("Probes: 2 runs, 0 deferred, 3.0 s vs 1.0 s of training = 300.0% overhead "
                                       "(no bound, --probe_overhead 0; step-0 baseline before the resume).")


def test_probe_curves_mark_the_budget_limit_and_the_exported_step(tmp_path):
    from zhlora.analysis.charts import plot_probe_curves

    log = tmp_path / "training_log.jsonl"
    rows = [{"step": s, "probes": {"zh_loss": 2.0 - 0.1 * s, "en_ppl": 10.0 + s}} for s in range(4)]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    plain = plot_probe_curves(log, tmp_path / "plain.png", language="en").read_bytes()
    again = plot_probe_curves(log, tmp_path / "again.png", language="en").read_bytes()
    marked = plot_probe_curves(log, tmp_path / "marked.png", language="en", limits={"en_ppl": 10.5},
                               selected_step=1).read_bytes()
    assert plain == again and marked != plain and marked.startswith(b"\x89PNG")


def test_a_budget_makes_the_probe_settings_part_of_the_run_identity():
    import dataclasses

    from zhlora.config import TrainConfig
    from zhlora.training.outputs import run_fingerprint

    base = dataclasses.asdict(TrainConfig())

    def fingerprint(**changes) -> str:
        return run_fingerprint({"r": 8}, {**base, **changes}, {}, "weights", "data")

    # monitoring without a budget only observes: same adapter, same run
    assert fingerprint() == fingerprint(monitor_every=5) == fingerprint(monitor_every=5, probe_limit=3, save_steps=7)
    budgeted = fingerprint(monitor_every=5, forgetting_budget="ppl:5%")
    assert budgeted != fingerprint(monitor_every=5)
    assert fingerprint(monitor_every=5, probe_overhead=0.0) == fingerprint()
    for changes in ({"monitor_every": 10}, {"budget_action": "mark"}, {"save_steps": 7}, {"probe_limit": 3},
                    {"forgetting_budget": "acc:2"}, {"probe_overhead": 0.0}):
        assert fingerprint(**{"monitor_every": 5, "forgetting_budget": "ppl:5%", **changes}) != budgeted, changes
    assert fingerprint(monitor_every=5, forgetting_budget="ppl:5%", logging_steps=3, save_total_limit=1) == budgeted


@pytest.mark.shared_data
def test_default_probe_sets_on_the_real_benchmarks(shared_eval_data):
    suite = select_probe_sets(shared_eval_data, ProbeSizes())
    record = probe_manifest(suite)["probes"]
    sizes = {name: entry["n"] for name, entry in record.items()}
    assert sizes == {"ceval_acc": 48, "cmmlu_acc": 48, "en_ppl": 16, "mmlu_acc": 96, "gsm8k_acc": 8}  # no BELLE here
    mmlu = suite.items["mmlu_acc"].groups
    assert len(mmlu) == 57 and {len(items) for items in mmlu.values()} == {1, 2}  # 96 questions over 57 subjects
    assert len(suite.items["ceval_acc"].groups) == 48  # one question from each of 48 of the 52 subjects
    for name, benchmark in (("mmlu_acc", "mmlu"), ("ceval_acc", "ceval"), ("cmmlu_acc", "cmmlu"), ("gsm8k_acc", "gsm8k")):
        assert not set(record[name]["ids"]) & _final_ids(shared_eval_data, benchmark), name
    assert all(len(item.text) <= 2000 for item in suite.items["en_ppl"].groups["all"])
