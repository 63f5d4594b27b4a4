"""Subject -> category tables: counts from eval-protocols.md, and agreement with the upstream files."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from zhlora.data.categories import category_names, subject_table
from zhlora.errors import ZhloraError


def _counts(benchmark: str, scheme: str | None = None) -> Counter:
    return Counter(c for info in subject_table(benchmark).values() for c in info.categories_in(scheme or "default"))


def test_ceval_has_52_subjects_in_4_categories():
    table = subject_table("ceval")
    assert len(table) == 52
    assert category_names("ceval") == ("STEM", "Social Science", "Humanities", "Other")
    assert _counts("ceval") == {"STEM": 20, "Social Science": 10, "Humanities": 11, "Other": 11}
    assert table["mao_zedong_thought"].name_zh == "毛泽东思想和中国特色社会主义理论体系概论"
    assert table["computer_network"].name_en == "Computer Network"


def test_cmmlu_china_specific_is_a_second_label():
    table = subject_table("cmmlu")
    assert len(table) == 67
    assert category_names("cmmlu") == ("STEM", "Humanities", "Social Science", "Other", "China specific")
    assert _counts("cmmlu") == {"STEM": 17, "Humanities": 13, "Social Science": 22, "Other": 15, "China specific": 15}
    assert table["ancient_chinese"].categories == ("Social Science", "China specific")
    assert table["agronomy"].categories == ("Other",) and table["agronomy"].name_zh == "农学"
    assert all(len(info.categories) == 2 for info in table.values() if "China specific" in info.categories)


def test_mmlu_has_both_schemes_differing_only_on_anatomy():
    table = subject_table("mmlu")
    assert len(table) == 57
    assert category_names("mmlu") == ("stem", "humanities", "social_sciences", "other")
    assert category_names("mmlu", "original") == ("STEM", "humanities", "social sciences", "other (business, health, misc.)")
    assert _counts("mmlu") == {"stem": 19, "other": 13, "social_sciences": 12, "humanities": 13}
    assert _counts("mmlu", "original") == {"STEM": 18, "other (business, health, misc.)": 14, "social sciences": 12, "humanities": 13}
    assert table["anatomy"].lm_eval_group == "stem" and table["anatomy"].original_category == "other (business, health, misc.)"
    assert table["anatomy"].categories_in("original") == ("other (business, health, misc.)",)
    assert all(info.name_zh for info in table.values())
    assert table["high_school_us_history"].name_en == "High School US History"


def test_every_subject_category_is_a_listed_category():
    for benchmark, schemes in (("ceval", [None]), ("cmmlu", [None]), ("mmlu", [None, "original"])):
        for scheme in schemes:
            names = set(category_names(benchmark, scheme))
            for info in subject_table(benchmark).values():
                assert set(info.categories_in(scheme or "default")) <= names


def test_unknown_names_suggest():
    with pytest.raises(ZhloraError, match='Did you mean "cmmlu"'):
        subject_table("cmmluu")
    with pytest.raises(ZhloraError, match='Did you mean "original"'):
        category_names("mmlu", "orginal")


@pytest.mark.shared_data
def test_tables_agree_with_the_upstream_mapping_files(shared_data):
    ceval = json.loads((shared_data / "ceval" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {s: [i.name_en, i.name_zh, i.categories[0]] for s, i in subject_table("ceval").items()} == ceval
    cmmlu = json.loads((shared_data / "cmmlu" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {s: (i.name_zh, list(i.categories)) for s, i in subject_table("cmmlu").items()} == {
        s: (row["zh"], row["categories"]) for s, row in cmmlu.items()
    }
    mmlu = json.loads((shared_data / "mmlu" / "subject_mapping.json").read_text(encoding="utf-8"))
    assert {s: (i.original_category, i.lm_eval_group) for s, i in subject_table("mmlu").items()} == {
        s: (row["category_hendrycks"], row["group_lm_eval"]) for s, row in mmlu.items()
    }
