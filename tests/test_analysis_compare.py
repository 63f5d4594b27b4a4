"""Forgetting comparison on the committed results fixtures (tests/fixtures/make_results_fixtures.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zhlora import cli
from zhlora.analysis import stats
from zhlora.analysis.compare import SettingsMismatchError, compare_results
from zhlora.errors import DataError, ZhloraError

FIXTURES = Path(__file__).parent / "fixtures"
OPTIONS = {"bootstrap_samples": 2000, "confidence": 0.95, "significance": 0.05, "seed": 0}


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """Writable copies of the base and tuned results folders."""
    base = shutil.copytree(FIXTURES / "results_base", tmp_path / "evaluation_results" / "baseline")
    tuned = shutil.copytree(FIXTURES / "results_tuned", tmp_path / "evaluation_results" / "lora")
    return Path(base), Path(tuned)


@pytest.fixture(scope="module")
def forgetting(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("forgetting")
    return compare_results(
        FIXTURES / "results_base", FIXTURES / "results_tuned", out, data_dir=FIXTURES / "results_data", **OPTIONS
    )


def _row(forgetting: dict, level: str, name: str) -> dict:
    return next(r for r in forgetting["rows"] if r["level"] == level and r["name"] == name)


def _edit_results(folder: Path, edit) -> None:
    file = folder / "results.json"
    results = json.loads(file.read_text(encoding="utf-8"))
    edit(results)
    file.write_text(json.dumps(results), encoding="utf-8")


def test_benchmark_rows_match_hand_counts(forgetting):
    ceval = _row(forgetting, "benchmark", "ceval")
    # constructed: 60/200 right before; +30 wrong->right, 2 right->wrong after
    assert (ceval["n"], ceval["right_to_wrong"], ceval["wrong_to_right"]) == (200, 2, 30)
    assert ceval["base_pct"] == pytest.approx(30.0) and ceval["tuned_pct"] == pytest.approx(44.0)
    assert ceval["delta_points"] == pytest.approx(14.0)
    assert ceval["relative_change"] == pytest.approx(14.0 / 30.0)
    assert ceval["retention"] == pytest.approx(44.0 / 30.0)
    assert ceval["p_value"] == pytest.approx(2 * (1 + 32 + 496) / 2**32)
    assert ceval["ci_low_points"] < 14.0 < ceval["ci_high_points"]
    benchmark_rows = [r for r in forgetting["rows"] if r["family"] == "benchmarks"]
    assert [r["name"] for r in benchmark_rows] == ["ceval", "cmmlu", "mmlu", "gsm8k"]
    holm = stats.holm_adjust([r["p_value"] for r in benchmark_rows])
    assert [r["p_holm"] for r in benchmark_rows] == pytest.approx(holm)


def test_verdicts_flag_real_forgetting_and_gain_only(forgetting):
    verdicts = {(r["level"], r["name"]): r["verdict"] for r in forgetting["rows"] if r["benchmark"] != "cmmlu"}
    assert verdicts[("benchmark", "ceval")] == "improved"
    assert verdicts[("benchmark", "mmlu")] == "forgot"
    assert verdicts[("subject", "high_school_us_history")] == "forgot"
    assert verdicts[("benchmark", "gsm8k")] == "no significant change"  # 4 vs 1 flips: too few
    for subject in ("abstract_algebra", "econometrics", "clinical_knowledge"):
        row = _row(forgetting, "subject", subject)
        assert row["verdict"] == "no significant change"
        assert (row["delta_points"], row["p_value"]) == (0.0, 1.0)
        # no flips: the score interval is ±100 z²/(n + z²), not the bootstrap's [0, 0]
        half = 100 * 1.959963984540054**2 / (row["n"] + 1.959963984540054**2)
        assert (row["ci_low_points"], row["ci_high_points"]) == pytest.approx((-half, half), abs=1e-6)
    # CMMLU: 6 flips each way, nothing may be flagged at any level
    assert {r["verdict"] for r in forgetting["rows"] if r["benchmark"] == "cmmlu"} == {"no significant change"}


def test_holm_families_and_category_rows(forgetting):
    families = {r["family"] for r in forgetting["rows"]}
    assert families == {
        "benchmarks",
        "ceval:categories",
        "ceval:subjects",
        "cmmlu:categories",
        "cmmlu:subjects",
        "mmlu:categories",
        "mmlu:subjects",
    }
    china = _row(forgetting, "category", "China specific")  # multi-label: ancient_chinese + chinese_history
    assert china["n"] == 80
    # C-Eval subjects: each +6 of 40 (p = 2/64) is not significant after Holm over 5 subjects
    subject = _row(forgetting, "subject", "marxism")
    assert subject["p_value"] == pytest.approx(2 / 2**6)
    assert subject["p_holm"] == pytest.approx(min(1.0, 5 * 2 / 2**6))
    assert subject["verdict"] == "no significant change"
    assert subject["name_zh"] == "马克思主义基本原理"


def test_identical_results_flag_nothing(pair, tmp_path):
    base, _ = pair
    same = Path(shutil.copytree(base, tmp_path / "same"))
    result = compare_results(base, same, tmp_path / "out", **OPTIONS)
    assert {r["verdict"] for r in result["rows"]} == {"no significant change"}
    assert all(r["delta_points"] == 0.0 and r["p_value"] == 1.0 for r in result["rows"])
    assert result["flipped"]["mmlu"] == {"right_to_wrong": [], "wrong_to_right": []}
    assert all(p["relative_change"] == 0.0 for p in result["perplexity"])


def test_headline_states_gain_loss_and_uncertainty(forgetting):
    headline = forgetting["headline"]
    assert headline["chinese"]["delta_points"] == pytest.approx((14.0 + 0.0) / 2)
    assert headline["english"]["delta_points"] == pytest.approx((-10.0 + -5.0) / 2)
    assert headline["chinese"]["ci_low_points"] < 7.0 < headline["chinese"]["ci_high_points"]
    assert headline["english"]["ci_high_points"] < 0  # constructed English loss is clear
    assert headline["chinese"]["perplexity_relative_change"] < 0 < headline["english"]["perplexity_relative_change"]
    text = headline["text"]
    assert (
        "Chinese accuracy changed by +7.0 points (95% CI" in text and "English accuracy changed by -7.5 points" in text
    )
    assert "perplexity" in text and text.count(".") >= 1
    text_zh = headline["text_zh"]
    assert "中文准确率变化 +7.0 个百分点（95% 置信区间" in text_zh and "英文准确率变化 -7.5 个百分点" in text_zh


def test_perplexity_rows(forgetting):
    ppl = {row["benchmark"]: row for row in forgetting["perplexity"]}
    assert ppl["ppl_zh"]["delta_loss"] == pytest.approx(-0.5)
    assert ppl["ppl_zh"]["relative_change"] == pytest.approx(
        ppl["ppl_zh"]["tuned_perplexity"] / ppl["ppl_zh"]["base_perplexity"] - 1
    )
    assert ppl["ppl_en"]["language"] == "en"


def test_flipped_items_with_question_text(forgetting):
    mmlu = forgetting["flipped"]["mmlu"]
    assert len(mmlu["right_to_wrong"]) == 20 and mmlu["wrong_to_right"] == []
    item = mmlu["right_to_wrong"][0]
    assert item["subject"] == "high_school_us_history"
    assert item["question"].startswith("Synthetic mmlu question")
    assert item["choices"] == ["option A", "option B", "option C", "option D"]
    assert item["gold"] == item["base_predicted"] != item["tuned_predicted"]
    gsm8k = forgetting["flipped"]["gsm8k"]
    assert (len(gsm8k["right_to_wrong"]), len(gsm8k["wrong_to_right"])) == (4, 1)
    assert gsm8k["right_to_wrong"][0]["tuned_generated"].startswith("Tuned reasoning")


def test_flipped_items_without_data_dir_show_ids(pair, tmp_path):
    base, tuned = pair
    result = compare_results(base, tuned, tmp_path / "out", **OPTIONS)
    item = result["flipped"]["ceval"]["wrong_to_right"][0]
    assert item["question"] is None and item["id"].startswith("ceval/")


def test_reproducible_with_same_seed(pair, tmp_path):
    base, tuned = pair
    one = compare_results(base, tuned, tmp_path / "a", **OPTIONS)
    two = compare_results(base, tuned, tmp_path / "b", **OPTIONS)
    assert one["rows"] == two["rows"] and one["headline"] == two["headline"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["settings"].update(shots=0), "settings.shots (base 5, tuned 0)"),
        (lambda r: r["settings"].update(protocol="official"), "settings.protocol"),
        (lambda r: r["benchmarks"]["ceval"].update(split="test"), "ceval.split"),
        (lambda r: r["benchmarks"]["mmlu"].update(spec_version="2.0"), "mmlu.spec_version"),
        (lambda r: r["benchmarks"]["gsm8k"].update(item_ids_sha256="0" * 64), "gsm8k.item set"),
        (lambda r: r["benchmarks"].pop("ppl_en"), "benchmarks only in base: ppl_en"),
        (lambda r: r["model"].update(base_sha256="ef" * 32), "the base model"),
    ],
)
def test_mismatched_settings_are_refused(pair, tmp_path, edit, message):
    base, tuned = pair
    _edit_results(tuned, edit)
    with pytest.raises(SettingsMismatchError, match="Refusing to compare") as info:
        compare_results(base, tuned, tmp_path / "out", **OPTIONS)
    assert message in str(info.value)
    assert not (tmp_path / "out" / "forgetting.json").exists()


def test_different_item_ids_are_refused(pair, tmp_path):
    base, tuned = pair
    file = tuned / "predictions" / "gsm8k.jsonl"
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    rows[0]["id"] = "gsm8k/test/other"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(SettingsMismatchError, match="scored different items"):
        compare_results(base, tuned, tmp_path / "out", **OPTIONS)


def test_predictions_that_disagree_with_results_json(pair, tmp_path):
    base, tuned = pair
    file = tuned / "predictions" / "ceval.jsonl"
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    rows[0]["correct"] = not rows[0]["correct"]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match="ceval.jsonl gives accuracy"):
        compare_results(base, tuned, tmp_path / "out", **OPTIONS)


def test_bad_inputs_have_clear_errors(pair, tmp_path):
    base, tuned = pair
    with pytest.raises(DataError, match="results.json does not exist"):
        compare_results(tmp_path / "nowhere", tuned, tmp_path / "out", **OPTIONS)
    with pytest.raises(ZhloraError, match="same folder"):
        compare_results(base, base / "results.json", tmp_path / "out", **OPTIONS)
    _edit_results(tuned, lambda r: r["benchmarks"]["mmlu"].update(accuracy_micro=36.0))
    with pytest.raises(DataError, match="fractions in"):
        compare_results(base, tuned, tmp_path / "out", **OPTIONS)
    (base / "predictions" / "cmmlu.jsonl").unlink()
    with pytest.raises(DataError, match="cmmlu.jsonl"):
        compare_results(base, FIXTURES / "results_tuned", tmp_path / "out", **OPTIONS)
    with pytest.raises(DataError, match="--data_dir"):
        compare_results(
            FIXTURES / "results_base",
            FIXTURES / "results_tuned",
            tmp_path / "out",
            data_dir=tmp_path / "no_data",
            **OPTIONS,
        )


def test_existing_forgetting_is_not_overwritten(pair):
    base, tuned = pair
    compare_results(base, tuned, tuned, **OPTIONS)
    with pytest.raises(ZhloraError, match="--overwrite"):
        compare_results(base, tuned, tuned, **OPTIONS)
    compare_results(base, tuned, tuned, overwrite=True, **OPTIONS)


def test_forgetting_files_written(pair):
    base, tuned = pair
    compare_results(base, tuned, tuned, **OPTIONS)
    saved = json.loads((tuned / "forgetting.json").read_text(encoding="utf-8"))
    assert saved["schema_version"] == 1 and saved["statistics"]["bootstrap_samples"] == 2000
    assert saved["base"]["dir"] == str(base)
    markdown = (tuned / "forgetting.md").read_text(encoding="utf-8")
    assert saved["headline"]["text"] in markdown
    assert "| MMLU | 200 | 46.0 | 36.0 | -10.0 |" in markdown
    assert "high_school_us_history" in markdown


def test_cli_compare_and_refusal(pair, tmp_path, capsys):
    base, tuned = pair
    code = cli.main(["compare", str(base), str(tuned), "--bootstrap_samples", "500", "--no-report"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Chinese accuracy changed by" in out and "mmlu" in out and "forgot" in out
    assert (tuned / "forgetting.json").is_file() and not (tuned / "report.html").exists()
    _edit_results(tuned, lambda r: r["settings"].update(limit=10))
    code = cli.main(["compare", str(base), str(tuned), "--overwrite", "--no-report"])
    assert code == 2
    assert "settings.limit" in capsys.readouterr().err


def test_perplexity_interval_only_with_document_losses(forgetting):
    ppl = {row["benchmark"]: row for row in forgetting["perplexity"]}
    zh, en = ppl["ppl_zh"], ppl["ppl_en"]
    assert zh["ci_low"] < zh["relative_change"] < zh["ci_high"] < 0  # constructed clear Chinese improvement
    assert en["ci_low"] is None and en["ci_high"] is None  # no per-document losses saved
    text = forgetting["headline"]["text"]
    assert "Chinese bits per byte by -20.8% (" in text and "CI -" in text  # ppl_zh has bits per byte
    assert "English perplexity per token by +8.3%" in text  # older ppl_en results: per-token only, no interval


def test_perplexity_token_mismatch_is_refused(pair, tmp_path):
    base, tuned = pair
    file = tuned / "predictions" / "ppl_zh.jsonl"
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    rows[0]["n_tokens"] += 1
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(SettingsMismatchError, match="token counts"):
        compare_results(base, tuned, tmp_path / "out", **OPTIONS)


def test_perplexity_units_with_paired_intervals(forgetting):
    zh = next(row for row in forgetting["perplexity"] if row["benchmark"] == "ppl_zh")
    assert zh["resolved"] is True and zh["n_documents"] == 20
    bpb, bpc = zh["units"]["bits_per_byte"], zh["units"]["bits_per_character"]
    # the unit cancels in a ratio: bits per byte and per character change by the same fraction,
    # that of the summed loss (= of the per-token loss, same tokens)
    assert bpb["relative_change"] == pytest.approx(zh["tuned_loss"] / zh["base_loss"] - 1, abs=1e-5)
    assert bpc["relative_change"] == pytest.approx(bpb["relative_change"], abs=1e-5)
    assert bpb["ci_low"] < bpb["relative_change"] < bpb["ci_high"] < 0
    assert bpb["delta_ci_low"] < bpb["delta"] < bpb["delta_ci_high"] < 0
    assert bpc["delta"] == pytest.approx(3 * bpb["delta"], rel=1e-4)  # 3 bytes per character in the fixture
    assert "words" not in zh["units"] and "word_perplexity" not in zh["units"]
    assert forgetting["headline"]["chinese"]["perplexity_unit"] == "bits per byte"
    assert forgetting["headline"]["english"]["perplexity_unit"] == "perplexity per token"


def _keep_documents(folder: Path, name: str, keep: int) -> None:
    """Cut a perplexity probe of a results folder to its first ``keep`` documents (consistently)."""
    from zhlora.evaluation.scoring import summarize_perplexity

    file = folder / "predictions" / f"{name}.jsonl"
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()][:keep]
    file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _edit_results(folder, lambda r: r["benchmarks"][name].update(summarize_perplexity(rows, ("bytes", "characters"))))


def test_few_documents_are_not_resolved(pair, tmp_path):
    base, tuned = pair
    for folder in pair:
        _keep_documents(folder, "ppl_zh", 2)
    result = compare_results(base, tuned, tmp_path / "out", **OPTIONS)
    zh = next(row for row in result["perplexity"] if row["benchmark"] == "ppl_zh")
    assert zh["resolved"] is False and zh["ci_low"] is None and zh["units"]["bits_per_byte"]["ci_low"] is None
    assert "not resolved: 2 documents, an interval needs 20" in result["headline"]["text"]
    assert "无法给出区间：仅 2 篇文档" in result["headline"]["text_zh"]
    markdown = (tmp_path / "out" / "forgetting.md").read_text(encoding="utf-8")
    assert "not resolved (2 documents < 20)" in markdown


def test_detectable_change_on_every_accuracy_row(forgetting):
    for row in forgetting["rows"]:
        discordant = (row["right_to_wrong"] + row["wrong_to_right"]) / row["n"]
        assert row["detectable_points"] == pytest.approx(stats.minimum_detectable_change(row["n"], discordant))
    gsm8k = _row(forgetting, "benchmark", "gsm8k")  # 60 problems, 5 flips
    assert gsm8k["detectable_points"] > 5
    assert "detectable" in forgetting["statistics"]["power"] or "80% power" in forgetting["statistics"]["power"]


def test_ten_items_without_flips(tmp_path):
    """An n = 10 benchmark where nothing flipped: a real interval and a "too small to detect" statement."""
    from zhlora.analysis.compare import build_forgetting

    rows = [{"id": f"q{i}", "subject": "anatomy", "gold": "A", "predicted": "A" if i < 4 else "B", "correct": i < 4}
            for i in range(10)]
    entry = {"kind": "multiple_choice", "n": 10, "accuracy_micro": 0.4, "subjects": {}}
    results = {"model": {}, "settings": {}, "benchmarks": {"mmlu": entry}}
    out = build_forgetting(results, results, {"mmlu": rows}, {"mmlu": rows}, **OPTIONS)
    row = out["rows"][0]
    assert (row["delta_points"], row["right_to_wrong"], row["wrong_to_right"]) == (0.0, 0, 0)
    assert row["ci_low_points"] == pytest.approx(-27.7533, abs=1e-3) and row["ci_high_points"] == pytest.approx(27.7533, abs=1e-3)
    assert row["detectable_points"] == pytest.approx(61.58, abs=0.01)
    assert out["headline"]["english"]["ci_low_points"] == pytest.approx(-27.7533, abs=1e-3)
    text = out["headline"]["text"]
    assert "English accuracy changed by +0.0 points (95% CI -27.8 to +27.8; MMLU +0.0)" in text
    assert "Too few items to detect a change of 5 points: MMLU (n = 10: changes smaller than ±62 points would go unseen)." in text
    assert "MMLU（n = 10：小于 ±62 个百分点的变化检测不到）" in out["headline"]["text_zh"]


def test_non_utf8_predictions_are_a_clear_error(pair, capsys):
    """Issue 13 finding 7: a damaged predictions file names itself and its line, exit 2, no traceback."""
    from zhlora.cli import main

    base, tuned = pair
    path = tuned / "predictions" / "mmlu.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [b'{"id": "x\xff\xfe"}\n'] + lines[3:]))
    assert main(["compare", str(base), str(tuned), "--no-report", "--bootstrap_samples", "100"]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3: not UTF-8 text (byte 0xff" in err and "Traceback" not in err
