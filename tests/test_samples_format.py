"""The bundled benchmark samples (package data) are well-formed and keep the upstream file formats.

The samples stand in for the real C-Eval, CMMLU, MMLU, GSM8K and WikiText files when zhlora
runs offline, so they must parse exactly as the upstream loaders parse the real ones: same
headers, quoting and line endings, real subject handles, answers A-D, correct arithmetic.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest

from zhlora.analysis.stats import MIN_DOCUMENTS

SAMPLES = Path(str(files("zhlora").joinpath("samples")))
REPO_ROOT = Path(__file__).resolve().parents[1]
LETTERS = ("A", "B", "C", "D")

# Subject handles per category as upstream defines them (C-Eval subject_mapping.json, CMMLU
# src/categories.py, lm-evaluation-harness MMLU group tags); checked against the real mapping
# files when ../shared/data is present.
CEVAL_CATEGORIES = {
    "STEM": "computer_network operating_system computer_architecture college_programming college_physics "
    "college_chemistry advanced_mathematics probability_and_statistics discrete_mathematics electrical_engineer "
    "metrology_engineer high_school_mathematics high_school_physics high_school_chemistry high_school_biology "
    "middle_school_mathematics middle_school_biology middle_school_physics middle_school_chemistry veterinary_medicine",
    "Social Science": "college_economics business_administration marxism mao_zedong_thought education_science "
    "teacher_qualification high_school_politics high_school_geography middle_school_politics middle_school_geography",
    "Humanities": "modern_chinese_history ideological_and_moral_cultivation logic law chinese_language_and_literature "
    "art_studies professional_tour_guide legal_professional high_school_chinese high_school_history "
    "middle_school_history",
    "Other": "civil_servant sports_science plant_protection basic_medicine clinical_medicine urban_and_rural_planner "
    "accountant fire_engineer environmental_impact_assessment_engineer tax_accountant physician",
}
CMMLU_CATEGORIES = {
    "STEM": "anatomy astronomy college_actuarial_science college_engineering_hydrology college_mathematics "
    "college_medical_statistics computer_science conceptual_physics electrical_engineering elementary_mathematics "
    "genetics high_school_biology high_school_chemistry high_school_mathematics high_school_physics machine_learning "
    "virology",
    "Humanities": "arts chinese_history chinese_literature college_law global_facts international_law jurisprudence "
    "logical marxist_theory philosophy professional_law world_history world_religions",
    "Social Science": "ancient_chinese business_ethics chinese_civil_service_exam chinese_food_culture "
    "chinese_foreign_policy chinese_teacher_qualification college_education economics education elementary_chinese "
    "ethnology high_school_geography high_school_politics journalism management marketing modern_chinese "
    "professional_accounting professional_psychology public_relations security_study sociology",
    "Other": "agronomy chinese_driving_rule clinical_knowledge college_medicine computer_security "
    "construction_project_management elementary_commonsense elementary_information_and_technology food_science "
    "human_sexuality legal_and_moral_basis nutrition professional_medicine sports_science traditional_chinese_medicine",
    "China specific": "ancient_chinese chinese_civil_service_exam chinese_driving_rule chinese_food_culture "
    "chinese_foreign_policy chinese_history chinese_literature chinese_teacher_qualification "
    "construction_project_management elementary_chinese elementary_commonsense ethnology high_school_politics "
    "modern_chinese traditional_chinese_medicine",
}
MMLU_GROUPS = {  # lm-evaluation-harness groups
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
    "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy prehistory "
    "professional_law world_religions",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology human_sexuality "
    "professional_psychology public_relations security_studies sociology us_foreign_policy",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging management marketing "
    "medical_genetics miscellaneous nutrition professional_accounting professional_medicine virology",
}


def _by_subject(categories: dict[str, str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for category, handles in categories.items():
        for handle in handles.split():
            out.setdefault(handle, set()).add(category)
    return out


KNOWN = {
    "ceval": _by_subject(CEVAL_CATEGORIES),
    "cmmlu": _by_subject(CMMLU_CATEGORIES),
    "mmlu": _by_subject(MMLU_GROUPS),
}

CEVAL_HEADERS = {
    "dev": ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
    "val": ["id", "question", "A", "B", "C", "D", "answer"],
    "test": ["id", "question", "A", "B", "C", "D"],
}
CMMLU_HEADER = ["", "Question", "A", "B", "C", "D", "Answer"]
SPLITS = {"ceval": ("dev", "val", "test"), "cmmlu": ("dev", "test"), "mmlu": ("dev", "val", "test")}
# (min, max) rows per subject file; dev is always exactly 5 (the few-shot pool).
ROWS = {
    ("ceval", "dev"): (5, 5), ("ceval", "val"): (12, 15), ("ceval", "test"): (5, 5),
    ("cmmlu", "dev"): (5, 5), ("cmmlu", "test"): (12, 15),
    ("mmlu", "dev"): (5, 5), ("mmlu", "val"): (5, 5), ("mmlu", "test"): (12, 15),
}


@dataclass
class Item:
    benchmark: str
    subject: str
    split: str
    where: str
    question: str
    choices: list[str]
    answer: str | None


def csv_style(data: bytes) -> tuple[str, bool] | None:
    """The (row terminator, final newline) with which the csv module reproduces ``data`` exactly, or None.

    A match proves minimal quoting and consistent line endings (quoted cells may still hold newlines).
    """
    text = data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    for terminator in ("\r\n", "\n"):
        for final_newline in (True, False):
            buf = io.StringIO(newline="")
            csv.writer(buf, lineterminator=terminator).writerows(rows)
            rendered = buf.getvalue() if final_newline else buf.getvalue()[: -len(terminator)]
            if rendered == text:
                return terminator, final_newline
    return None


def read_rows(path: Path) -> list[list[str]]:
    data = path.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf"), f"{path}: has a BOM; upstream files have none"
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline=""), strict=True))


def subject_files(benchmark: str, split: str) -> dict[str, Path]:
    suffix = "" if benchmark == "cmmlu" else f"_{split}"
    paths = sorted((SAMPLES / benchmark / split).glob("*.csv"))
    assert paths, f"no sample files in {benchmark}/{split}"
    out = {}
    for path in paths:
        assert path.stem.endswith(suffix), f"{path}: expected <subject>{suffix}.csv"
        out[path.stem[: len(path.stem) - len(suffix)]] = path
    return out


def load_items(benchmark: str) -> list[Item]:
    """Parse every sample file the way the upstream loaders read it, checking the columns."""
    items: list[Item] = []
    for split in SPLITS[benchmark]:
        for subject, path in subject_files(benchmark, split).items():
            rows = read_rows(path)
            if benchmark == "ceval":
                assert rows[0] == CEVAL_HEADERS[split], f"{path}: header {rows[0]}"
                body, width = rows[1:], len(CEVAL_HEADERS[split])
            elif benchmark == "cmmlu":
                assert rows[0] == CMMLU_HEADER, f"{path}: header {rows[0]}"
                body, width = rows[1:], len(CMMLU_HEADER)
            else:
                assert rows[0][-1] in LETTERS, f"{path}: MMLU files have no header row"
                body, width = rows, 6
            low, high = ROWS[benchmark, split]
            assert low <= len(body) <= high, f"{path}: {len(body)} rows, expected {low}-{high}"
            for n, row in enumerate(body):
                where = f"{path.relative_to(SAMPLES)} row {n}"
                assert len(row) == width, f"{where}: {len(row)} columns, expected {width}"
                if benchmark != "mmlu":
                    assert row[0] == str(n), f"{where}: id/index {row[0]!r}, expected {n} (ids count from 0)"
                    row = row[1:]
                question, choices = row[0], row[1:5]
                answer = row[5] if len(row) > 5 else None
                if benchmark == "ceval" and split == "dev":
                    assert row[6].startswith("1. "), f"{where}: explanation should be numbered steps"
                items.append(Item(benchmark, subject, split, where, question, choices, answer))
    return items


@pytest.mark.parametrize("source", ["ceval", "cmmlu", "mmlu"])  # not "benchmark": a pytest-benchmark fixture
def test_subjects_are_real_handles_covering_every_category(source):
    per_split = {split: set(subject_files(source, split)) for split in SPLITS[source]}
    subjects = per_split[SPLITS[source][0]]
    assert all(s == subjects for s in per_split.values()), f"{source}: splits hold different subjects {per_split}"
    assert len(subjects) == 8
    unknown = subjects - set(KNOWN[source])
    assert not unknown, f"{source}: not upstream subject handles: {sorted(unknown)}"
    covered = Counter(c for s in subjects for c in KNOWN[source][s])
    expected_categories = {"ceval": CEVAL_CATEGORIES, "cmmlu": CMMLU_CATEGORIES, "mmlu": MMLU_GROUPS}[source]
    assert set(covered) == set(expected_categories), f"{source}: categories covered {dict(covered)}"
    if source == "cmmlu":
        assert covered["China specific"] >= 3


def test_known_handle_lists_have_upstream_sizes():
    assert (len(KNOWN["ceval"]), len(KNOWN["cmmlu"]), len(KNOWN["mmlu"])) == (52, 67, 57)


@pytest.mark.parametrize("source", ["ceval", "cmmlu", "mmlu"])  # not "benchmark": a pytest-benchmark fixture
def test_rows_are_well_formed(source):
    items = load_items(source)
    for item in items:
        assert item.question.strip() and all(c.strip() for c in item.choices), f"{item.where}: empty cell"
        assert len(set(item.choices)) == 4, f"{item.where}: repeated options {item.choices}"
        if source == "ceval" and item.split == "test":
            assert item.answer is None
        else:
            assert item.answer in LETTERS, f"{item.where}: answer {item.answer!r}"
    questions = Counter(re.sub(r"\s+", "", i.question) for i in items)
    repeated = [q for q, n in questions.items() if n > 1]
    assert not repeated, f"{source}: questions appear twice (split leakage?): {repeated}"


@pytest.mark.parametrize("source", ["ceval", "cmmlu", "mmlu"])  # not "benchmark": a pytest-benchmark fixture
def test_answer_letters_are_spread(source):
    items = [i for i in load_items(source) if i.answer is not None]
    shares = {letter: n / len(items) for letter, n in Counter(i.answer for i in items).items()}
    assert set(shares) == set(LETTERS)
    assert all(0.15 <= share <= 0.35 for share in shares.values()), f"{source}: answer shares {shares}"
    for subject in {i.subject for i in items}:
        letters = {i.answer for i in items if i.subject == subject}
        assert len(letters) >= 3, f"{source}/{subject}: answers use only {letters}"


def test_csv_quoting_and_line_endings_match_upstream_conventions():
    for path in sorted(SAMPLES.glob("ceval/*/*.csv")):
        assert csv_style(path.read_bytes()) == ("\r\n", True), f"{path}: C-Eval files are CRLF, minimally quoted"
    for path in sorted(SAMPLES.glob("cmmlu/*/*.csv")):
        assert csv_style(path.read_bytes()) == ("\n", True), f"{path}: CMMLU files are LF, minimally quoted"
    for path in sorted(SAMPLES.glob("mmlu/*/*.csv")):
        style = csv_style(path.read_bytes())
        assert style in {("\n", True), ("\r\n", False)}, f"{path}: {style} is not one of the MMLU archive's styles"


def test_ceval_subject_mapping_is_upstream_format():
    path = SAMPLES / "ceval" / "subject_mapping.json"
    raw = path.read_bytes()
    mapping = json.loads(raw)
    # hkust-nlp/ceval writes it with tab indentation, ASCII escapes and CRLF.
    assert raw == json.dumps(mapping, indent="\t").replace("\n", "\r\n").encode("ascii")
    assert set(mapping) == set(subject_files("ceval", "val"))
    for handle, (english, chinese, category) in mapping.items():
        assert english == handle.replace("_", " ").title().replace(" And ", " and ")
        assert re.fullmatch(r"[\u4e00-\u9fff]+", chinese), f"{handle}: Chinese name {chinese!r}"
        assert KNOWN["ceval"][handle] == {category}


ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")


def _evaluate(expression: str) -> float:
    assert re.fullmatch(r"[0-9+\-*/(). ]+", expression), f"unexpected calculator expression {expression!r}"
    return float(eval(expression, {"__builtins__": {}}))  # digits and operators only, checked above


@pytest.mark.parametrize("split,low,high", [("train", 20, 60), ("test", 40, 50)])
def test_gsm8k_format_and_arithmetic(split, low, high):
    path = SAMPLES / "gsm8k" / f"{split}.jsonl"
    data = path.read_bytes()
    assert data.endswith(b"\n") and b"\r" not in data
    lines = data.decode("utf-8").splitlines()
    assert low <= len(lines) <= high
    for n, line in enumerate(lines, 1):
        where = f"{path.name} line {n}"
        row = json.loads(line)
        assert line == json.dumps(row), f"{where}: not in upstream json.dumps form"
        assert list(row) == ["question", "answer"], f"{where}: keys {list(row)}"
        *steps, final = row["answer"].split("\n")
        match = re.fullmatch(r"#### (\d+)", final)
        assert match, f"{where}: answer must end with '#### <integer>', got {final!r}"
        annotations = ANNOTATION.findall(row["answer"])
        assert annotations, f"{where}: no <<expr=value>> annotations"
        for expression, value in annotations:
            assert abs(_evaluate(expression) - float(value)) < 1e-9, f"{where}: <<{expression}={value}>> is wrong"
            repeated = f"<<{expression}={value}>>{value}" in row["answer"]
            assert repeated, f"{where}: the text after <<{expression}={value}>> must repeat {value}"
        assert float(annotations[-1][1]) == int(match.group(1)), f"{where}: final answer != last computed value"
    assert any(re.search(r"\d,\d{3}", json.loads(line)["question"]) for line in lines), "no 1,200-style numbers"


def test_english_text_is_plain_prose():
    data = (SAMPLES / "english_text" / "english_sample.txt").read_bytes()
    assert 16 * 1024 <= len(data) <= 24 * 1024  # short: both evaluations score every token
    text = data.decode("utf-8")
    assert "<unk>" not in text and " @-@ " not in text and "\r" not in text
    titles = re.findall(r"^= (.+) =$", text, flags=re.M)
    assert len(titles) >= MIN_DOCUMENTS and len(set(titles)) == len(titles)  # ppl_en gets an interval
    paragraphs = [p for p in text.split("\n\n") if p.strip() and not p.startswith("= ")]
    assert len(paragraphs) >= 2 * len(titles)


def test_package_data_globs_ship_the_samples():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = config["tool"]["setuptools"]["package-data"]["zhlora"]
    package = SAMPLES.parent
    shipped = {p for pattern in globs for p in package.glob(pattern) if p.is_file()}
    ours = [p for name in ("ceval", "cmmlu", "mmlu", "gsm8k", "english_text") for p in (SAMPLES / name).rglob("*")]
    assert ours and all(p in shipped for p in ours if p.is_file())


# --- against the real files (skipped when ../shared/data is absent) ---------------------------


def _sample_and_real_csvs(shared_data: Path):
    for path in sorted(SAMPLES.glob("*/*/*.csv")):
        relative = path.relative_to(SAMPLES)
        if relative.parts[0] in SPLITS:
            yield path, shared_data / relative


@pytest.mark.shared_data
def test_header_and_line_endings_match_the_real_file_of_the_same_name(shared_data):
    for sample, real in _sample_and_real_csvs(shared_data):
        assert real.is_file(), f"{sample}: no real file {real} (subject handle or layout differs from upstream)"
        real_bytes, sample_bytes = real.read_bytes(), sample.read_bytes()
        if sample.parts[-3] != "mmlu":  # MMLU has no header line
            assert sample_bytes.split(b"\n", 1)[0] == real_bytes.split(b"\n", 1)[0], f"{sample}: header line"
        real_style = csv_style(real_bytes)
        if real_style is not None:
            assert csv_style(sample_bytes) == real_style, f"{sample}: line endings differ from {real}"


@pytest.mark.shared_data
def test_subject_lists_agree_with_the_real_mappings(shared_data):
    ceval = json.loads((shared_data / "ceval" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {h: {v[2]} for h, v in ceval.items()} == KNOWN["ceval"]
    sample_mapping = json.loads((SAMPLES / "ceval" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert all(ceval[h] == v for h, v in sample_mapping.items())
    cmmlu = json.loads((shared_data / "cmmlu" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {h: set(v["categories"]) for h, v in cmmlu.items()} == KNOWN["cmmlu"]
    mmlu = json.loads((shared_data / "mmlu" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {h: {v["group_lm_eval"]} for h, v in mmlu.items()} == KNOWN["mmlu"]


@pytest.mark.shared_data
def test_no_sample_question_is_copied_from_the_real_data(shared_data):
    """Sample questions were written for zhlora: none may equal a real question of any subject or split."""
    for benchmark in ("ceval", "cmmlu", "mmlu"):
        column = 0 if benchmark == "mmlu" else 1
        real_questions = {
            re.sub(r"\s+", "", row[column])
            for path in shared_data.glob(f"{benchmark}/*/*.csv")
            for row in read_rows(path)
            if len(row) > column
        }
        for item in load_items(benchmark):
            question = re.sub(r"\s+", "", item.question)
            assert question not in real_questions, f"{item.where}: equals a real {benchmark} question"
    real_gsm8k = {
        json.loads(line)["question"]
        for path in shared_data.glob("gsm8k/*.jsonl")
        for line in path.read_text(encoding="utf-8").splitlines()
    }
    for name in ("train.jsonl", "test.jsonl"):
        for line in (SAMPLES / "gsm8k" / name).read_text(encoding="utf-8").splitlines():
            assert json.loads(line)["question"] not in real_gsm8k, f"gsm8k/{name}: equals a real GSM8K question"
