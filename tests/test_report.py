"""report.html / report.md: self-contained, readable, rendered by headless Chromium where installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from zhlora import cli
from zhlora.analysis.compare import compare_results
from zhlora.analysis.report import write_report
from zhlora.analysis.sections import Section
from zhlora.errors import ZhloraError

FIXTURES = Path(__file__).parent / "fixtures"
OPTIONS = {"bootstrap_samples": 1000, "confidence": 0.95, "significance": 0.05, "seed": 0}


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory) -> Path:
    """A work folder laid out like `zhlora run`: two evaluations, a training log, a comparison."""
    work = tmp_path_factory.mktemp("work")
    base = shutil.copytree(FIXTURES / "results_base", work / "evaluation_results" / "baseline")
    tuned = shutil.copytree(FIXTURES / "results_tuned", work / "evaluation_results" / "lora-chinese-llama")
    log = work / "results" / "lora-chinese-llama" / "training_log.jsonl"
    log.parent.mkdir(parents=True)
    rows = [{"step": s, "loss": 2.6 - 0.01 * s, "learning_rate": 2e-4, "epoch": s / 100} for s in range(10, 101, 10)]
    rows += [{"step": s, "probes": {"ceval_acc": 0.3 + s / 1000, "mmlu_acc": 0.46 - s / 2000}} for s in (0, 50, 100)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    compare_results(base, tuned, tuned, data_dir=FIXTURES / "results_data", **OPTIONS)
    return work


@pytest.fixture(scope="module")
def report_html(work_dir) -> Path:
    assert cli.main(["report", str(work_dir), "--chart_language", "auto"]) == 0
    return work_dir / "evaluation_results" / "lora-chinese-llama" / "report.html"


def test_report_is_self_contained(report_html):
    page = report_html.read_text(encoding="utf-8")
    forgetting = json.loads((report_html.parent / "forgetting.json").read_text(encoding="utf-8"))
    assert forgetting["headline"]["text"].replace("'", "&#x27;") in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "report must not load remote resources"
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    assert len(images) == 5  # two radars, change bars, loss curve, probe curves
    for anchor in ("headline", "benchmarks", "perplexity", "training", "categories", "subjects", "flipped", "settings"):
        assert f'id="{anchor}"' in page
    assert "Synthetic mmlu question" in page  # flipped examples carry their text
    assert "▼ forgot" in page and "▲ improved" in page


def test_report_markdown_links_existing_charts(report_html):
    markdown = (report_html.parent / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 5
    for link in links:
        assert (report_html.parent / link).is_file(), link
    assert "## Flipped items" in markdown and "## Benchmarks" in markdown


def test_extra_sections_are_appended(work_dir, tmp_path):
    forgetting = json.loads(
        (work_dir / "evaluation_results" / "lora-chinese-llama" / "forgetting.json").read_text(encoding="utf-8")
    )
    extra = Section("Sweep", "## Sweep\n\nrank 8 wins\n", '<h2 id="sweep">Sweep</h2><p>rank 8 wins</p>', "sweep")
    html = write_report(tmp_path, forgetting, base_dir="b", tuned_dir="t", extra_sections=[extra], language="en")
    page = html.read_text(encoding="utf-8")
    assert page.index('id="settings"') < page.index('id="sweep"')
    assert "rank 8 wins" in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "report_loss.png" not in page and not (tmp_path / "report_loss.png").exists()


def test_report_without_comparison_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "zhlora compare" in capsys.readouterr().err
    with pytest.raises(ZhloraError):
        from zhlora.commands.report import find_forgetting_files

        find_forgetting_files(tmp_path)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_html, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    from PIL import Image

    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,2000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = report_html.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*flags, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True).stdout
    assert "After LoRA fine-tuning, Chinese accuracy changed by" in dom
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 2000)
    colors = image.getcolors(maxcolors=1 << 22)
    assert len(colors) > 1000, f"screenshot looks blank ({len(colors)} colors)"
    assert max(count for count, _ in colors) < 0.9 * 1280 * 2000  # not one flat background


def test_cli_compare_writes_report_with_discovered_training_log(work_dir, tmp_path):
    work = Path(shutil.copytree(work_dir, tmp_path / "work"))
    base, tuned = work / "evaluation_results" / "baseline", work / "evaluation_results" / "lora-chinese-llama"
    args = ["compare", str(base), str(tuned), "--overwrite", "--bootstrap_samples", "500", "--chart_language", "en"]
    assert cli.main(args) == 0
    page = (tuned / "report.html").read_text(encoding="utf-8")
    assert 'id="training"' in page and (tuned / "report_loss.png").is_file()


def test_report_charts_fall_back_to_english_without_cjk_font(work_dir, tmp_path, monkeypatch):
    import warnings

    from zhlora.analysis import fonts

    monkeypatch.setattr(fonts, "find_cjk_font", lambda: None)
    forgetting = json.loads(
        (work_dir / "evaluation_results" / "lora-chinese-llama" / "forgetting.json").read_text(encoding="utf-8")
    )
    log = work_dir / "results" / "lora-chinese-llama" / "training_log.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_report(tmp_path, forgetting, base_dir="b", tuned_dir="t", training_log=log, language="zh")
    assert not [w for w in caught if "Glyph" in str(w.message)]
    assert {p.name for p in tmp_path.glob("report_*.png")} == {
        "report_radar_zh.png",
        "report_radar_en.png",
        "report_change.png",
        "report_loss.png",
        "report_probes.png",
    }


def _samples(answers: dict[str, str], template: str = "chat") -> dict:
    from zhlora.evaluation.samples import SAMPLE_PROMPTS

    return {"template": template, "max_new_tokens": 48, "items": [
        {"id": pid, "language": lang, "instruction": text, "answer": answers.get(pid, "")} for pid, lang, text in SAMPLE_PROMPTS]}


def test_sample_generations_side_by_side(work_dir, tmp_path):
    """Both evaluations' samples.json become a prompt | base | tuned table right after the headline."""
    base_dir, tuned_dir = (work_dir / "evaluation_results" / n for n in ("baseline", "lora-chinese-llama"))
    (base_dir / "samples.json").write_text(json.dumps(_samples({"zh-river": "<b>Paris</b>"})), encoding="utf-8")
    (tuned_dir / "samples.json").write_text(json.dumps(_samples({"zh-river": "北京。\n首都"})), encoding="utf-8")
    forgetting = json.loads((tuned_dir / "forgetting.json").read_text(encoding="utf-8"))
    try:
        html_path = write_report(tmp_path, forgetting, base_dir=base_dir, tuned_dir=tuned_dir)
    finally:
        (base_dir / "samples.json").unlink()
        (tuned_dir / "samples.json").unlink()
    page = html_path.read_text(encoding="utf-8")
    assert page.index('id="headline"') < page.index('id="samples"') < page.index('id="charts"')
    row = re.search(r"<tr><td>中文 Chinese · 中国最长的河流是哪一条？它流经哪些省份？</td><td>(.*?)</td><td>(.*?)</td></tr>", page, re.S)
    assert row.groups() == ("&lt;b&gt;Paris&lt;/b&gt;", "北京。\n首都")  # escaped, line breaks kept (pre-wrap)
    assert page.count("<i>(empty)</i>") == 2 * (len(_samples({})["items"]) - 1)
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "### 中文 Chinese · 中国最长的河流是哪一条？它流经哪些省份？\n\n**Base**\n\n> <b>Paris</b>\n\n**Tuned**\n\n> 北京。\n> 首都" in markdown


def test_sample_prompts_are_held_out_of_the_bundled_instructions():
    from importlib import resources

    from zhlora.evaluation.samples import SAMPLE_PROMPTS

    bundled = "".join(resources.files("zhlora").joinpath(f"samples/{name}").read_text(encoding="utf-8")
                      for name in ("belle/belle_sample.json", "alpaca/alpaca_data.json"))
    assert len({pid for pid, _, _ in SAMPLE_PROMPTS}) == len(SAMPLE_PROMPTS)
    assert {lang for _, lang, _ in SAMPLE_PROMPTS} == {"zh", "en"}
    for _, _, instruction in SAMPLE_PROMPTS:
        assert instruction not in bundled
