"""Charts: CJK font choice with English fallback (never empty boxes), result/log/compare charts."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from zhlora.analysis import charts, fonts
from zhlora.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def tuned_results() -> dict:
    return json.loads((FIXTURES / "results_tuned" / "results.json").read_text(encoding="utf-8"))


@pytest.fixture
def no_cjk_font(monkeypatch):
    """Pretend a fresh install: no font that can draw Chinese."""
    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)


def _glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "Glyph" in str(w.message) and "missing" in str(w.message)]


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000  # an actual drawing, not an empty canvas


def test_missing_glyph_warnings_are_detectable(tmp_path):
    """Control for the tests below: Chinese drawn with the default font does warn."""
    from matplotlib.figure import Figure

    figure = Figure()
    figure.subplots().set_title("中文")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(tmp_path / "boxes.png")
    assert _glyph_warnings(caught)


def test_language_falls_back_to_english_without_cjk_font(no_cjk_font, caplog):
    assert fonts.resolve_chart_language("auto") == ("en", None)
    assert fonts.resolve_chart_language("en") == ("en", None)
    with caplog.at_level(logging.WARNING, logger="zhlora.analysis.fonts"):
        assert fonts.resolve_chart_language("zh") == ("en", None)
    assert "fonts-noto-cjk" in caplog.text


def test_unknown_chart_language_is_a_config_error():
    with pytest.raises(ConfigError, match="chart_language"):
        fonts.resolve_chart_language("fr")


def test_results_charts_without_cjk_font_draw_no_boxes(no_cjk_font, tuned_results, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = charts.plot_results_charts(tuned_results, tmp_path, language="zh")
    assert _glyph_warnings(caught) == []
    names = sorted(path.name for path in written)
    assert names == sorted(
        [
            "accuracy.png",
            "radar_ceval.png",
            "radar_cmmlu.png",
            "radar_mmlu.png",
            "subjects_ceval.png",
            "subjects_cmmlu.png",
            "subjects_mmlu.png",
        ]
    )
    for path in written:
        _assert_png(path)


def test_results_charts_with_cjk_font(tuned_results, tmp_path):
    family = fonts.find_cjk_font()
    if family is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk)")
    assert fonts.resolve_chart_language("auto") == ("zh", family)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = charts.plot_results_charts(tuned_results, tmp_path)
    assert _glyph_warnings(caught) == []
    assert len(written) == 7


def test_radar_skipped_below_three_categories(tuned_results, tmp_path):
    ceval = tuned_results["benchmarks"]["ceval"]
    ceval["categories"] = dict(list(ceval["categories"].items())[:2])
    written = {path.name for path in charts.plot_results_charts(tuned_results, tmp_path, language="en")}
    assert "radar_ceval.png" not in written and "subjects_ceval.png" in written


def _write_log(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_loss_curve_ignores_rows_without_loss(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    log = _write_log(
        tmp_path / "training_log.jsonl",
        [
            {"step": 10, "loss": 2.5, "learning_rate": 1e-4},
            {"step": 10, "probes": {"mmlu_acc": 0.4}},
            {"step": 20, "loss": 2.1, "learning_rate": 2e-4, "grad_norm": 0.7},
            {"step": 30, "loss": 1.9},
        ],
    )
    drawn, save = [], Figure.savefig

    def keep_figure(figure, *args, **kwargs):  # read the plotted series back from the figure that was saved
        drawn.append(figure)
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep_figure)
    out = charts.plot_loss_curve(log, tmp_path / "loss_curve.png", language="en")
    _assert_png(out)
    (figure,) = drawn
    loss_axes, lr_axes = figure.axes
    # the probe row at step 10 adds no point: one loss per logged step, in step order
    assert [tuple(xy) for xy in loss_axes.lines[0].get_xydata()] == [(10, 2.5), (20, 2.1), (30, 1.9)]
    # the learning rate only where a row has one
    assert [tuple(xy) for xy in lr_axes.lines[0].get_xydata()] == [(10, 1e-4), (20, 2e-4)]


def test_loss_curve_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        charts.plot_loss_curve(tmp_path / "missing.jsonl", tmp_path / "x.png")
    log = _write_log(tmp_path / "training_log.jsonl", [{"step": 1, "probes": {"a": 1.0}}])
    with pytest.raises(DataError, match='no rows with "loss"'):
        charts.plot_loss_curve(log, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_probe_curves_one_panel_per_probe(no_cjk_font, tmp_path):
    log = _write_log(
        tmp_path / "training_log.jsonl",
        [
            {"step": 0, "probes": {"ceval_acc": 0.30, "mmlu_acc": 0.45, "ppl_en": 7.0, "困惑度": 1.0}},
            {"step": 50, "loss": 2.0},
            {"step": 100, "probes": {"ceval_acc": 0.36, "mmlu_acc": 0.43, "ppl_en": 7.4}},
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = charts.plot_probe_curves(log, tmp_path / "probes.png")
    assert _glyph_warnings(caught) == []  # the Chinese probe name was replaced, not drawn as boxes
    _assert_png(out)


def test_change_bars_and_radar(tmp_path):
    rows = [
        {"label": "C-Eval", "delta": 7.0, "ci_low": 4.0, "ci_high": 10.0, "verdict": "improved"},
        {"label": "MMLU", "delta": -3.0, "ci_low": -5.0, "ci_high": -1.0, "verdict": "forgot"},
        {"label": "GSM8K", "delta": -1.0, "ci_low": -3.0, "ci_high": 1.0, "verdict": "no significant change"},
    ]
    _assert_png(charts.plot_change_bars(rows, tmp_path / "change.png", title="t", axis_label="points", language="en"))
    _assert_png(
        charts.plot_radar(
            ["a", "b", "c"], {"base": [30, 40, 50], "tuned": [35, 38, 52]}, tmp_path / "r.png", title="t", language="en"
        )
    )
    with pytest.raises(ValueError, match="at least 3"):
        charts.plot_radar(["a", "b"], {"base": [1, 2]}, tmp_path / "r2.png", title="t")


def test_pareto_front_hand_cases():
    # maximise gain (x), minimise loss (y)
    points = [(5.0, 1.0), (7.0, 3.0), (4.0, 2.0), (8.0, 6.0), (7.0, 3.0), (6.0, 4.0)]
    assert charts.pareto_front(points) == [0, 1, 4, 3]
    assert charts.pareto_front([(1.0, 1.0)]) == [0]
    assert charts.pareto_front([]) == []


def test_tradeoff_scatter_and_heatmap(tmp_path):
    _assert_png(
        charts.plot_tradeoff_scatter([(5, 1), (7, 3), (4, 2)], ["r8", "r16", "r4"], tmp_path / "s.png", language="en")
    )
    _assert_png(
        charts.plot_heatmap(
            [[1.0, -2.0], [None, 3.0]],
            ["8", "16"],
            ["16", "32"],
            tmp_path / "h.png",
            title="MMLU change",
            row_title="rank",
            col_title="alpha",
            language="en",
        )
    )
    with pytest.raises(ValueError, match="does not match"):
        charts.plot_heatmap([[1.0]], ["8", "16"], ["16"], tmp_path / "h2.png", title="t", row_title="r", col_title="c")


def test_probe_chart_marks_follow_the_run_manifest():
    from zhlora.analysis.charts import probe_chart_marks

    assert probe_chart_marks(None) == {"limits": None, "selected_step": None}
    budgeted = {"forgetting_budget": "ppl:5%", "budget_limit_values": {"en_ppl": 31.5}, "selected_step": 40}
    assert probe_chart_marks(budgeted) == {"limits": {"en_ppl": 31.5}, "selected_step": 40}
    watched_only = {"forgetting_budget": None, "budget_limit_values": {}, "selected_step": 80}
    assert probe_chart_marks(watched_only) == {"limits": {}, "selected_step": None}


# --- the font actually draws (issue 13: every glyph was a box on a fresh machine) -------------------
def _last_resort_font() -> str:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "LastResortHE-Regular.ttf"
    if not path.is_file():
        pytest.skip("this matplotlib ships no LastResortHE font")
    return str(path)


@pytest.fixture
def fonts_without_cjk(monkeypatch):
    """A machine without a CJK font: matplotlib's own fonts only (DejaVu and Last Resort)."""
    from matplotlib import font_manager

    kept = [e for e in font_manager.fontManager.ttflist if "mpl-data" in e.fname]
    assert any("LastResort" in e.fname for e in kept) or _last_resort_font()
    monkeypatch.setattr(font_manager.fontManager, "ttflist", kept)
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    monkeypatch.delenv(fonts.FONT_FILE_ENV, raising=False)
    fonts.find_cjk_font.cache_clear()
    yield
    fonts.find_cjk_font.cache_clear()


def _render_label(label: str, family: str | None, tmp_path: Path):
    """Draw ``label`` as a chart title with the chart fonts of ``family``; return (figure, pixels)."""
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure
    from PIL import Image

    with matplotlib.rc_context(fonts.font_rc(family)):
        figure = Figure(figsize=(4, 1))
        figure.text(0.05, 0.3, label, fontsize=20)
        out = tmp_path / f"label-{abs(hash((label, family)))}.png"
        figure.savefig(out, dpi=60)
        boxed = fonts.boxed_characters(figure)
    return boxed, np.asarray(Image.open(out).convert("L"))


@pytest.mark.allow_boxes
def test_last_resort_font_is_detected_as_boxes(tmp_path):
    """Control: the detector sees the boxes of the font that caused issue 13."""
    from matplotlib import font_manager

    path = _last_resort_font()
    assert fonts.is_box_font(path)
    assert not fonts.is_box_font(str(Path(font_manager.findfont("DejaVu Sans"))))
    boxed, _ = _render_label("准确率 Accuracy 12", "Last Resort High-Efficiency", tmp_path)
    assert set("准确率Accuracy12") <= set(boxed)
    boxed, _ = _render_label("准确率", None, tmp_path)  # DejaVu has no Chinese glyphs
    assert set(boxed) == set("准确率")


def test_without_cjk_font_labels_are_english_and_draw(fonts_without_cjk, tmp_path):
    assert fonts.find_cjk_font() is None  # not "Last Resort High-Efficiency"
    language, family = fonts.resolve_chart_language("auto")
    assert (language, family) == ("en", None)
    from zhlora.analysis import labels

    label = labels.text("benchmark_accuracy", language)
    boxed, pixels = _render_label(label + " 0123", family, tmp_path)
    assert boxed == {}
    assert (pixels < 128).any()  # ink on the canvas


def test_with_cjk_font_chinese_labels_draw_real_glyphs(tmp_path):
    family = fonts.find_cjk_font()
    if family is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk)")
    assert "last resort" not in family.lower()
    from zhlora.analysis import labels

    label = labels.text("benchmark_accuracy", "zh") + " C-Eval 12.5"
    boxed, drawn = _render_label(label, family, tmp_path)
    assert boxed == {}
    _, boxes = _render_label(label, "Last Resort High-Efficiency", tmp_path)
    assert drawn.shape == boxes.shape and (drawn != boxes).mean() > 0.01  # not the fallback's boxes
