"""The typed config: defaults < YAML < flags, unknown keys refused, shipped YAMLs parse."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from zhlora.config import (
    ExperimentConfig,
    add_config_flags,
    add_top_level_flags,
    config_from_args,
    config_from_dict,
    dump_config_yaml,
    load_config,
)
from zhlora.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _parse(argv: list[str], groups=("data", "model", "lora", "train", "eval", "report")) -> ExperimentConfig:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, list(groups))
    add_top_level_flags(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_are_the_seed_experiment():
    cfg = ExperimentConfig()
    assert cfg.model.model_name_or_path == "meta-llama/Llama-2-7b-hf"
    assert cfg.data.belle_sample_size == 50000
    assert cfg.lora.lora_rank == 16


def test_one_flag_overrides_yaml_and_keeps_the_other_yaml_fields(tmp_path):
    yaml_file = tmp_path / "x.yaml"
    yaml_file.write_text("lora:\n  lora_rank: 8\n  lora_alpha: 64\ntrain:\n  learning_rate: 0.001\n", encoding="utf-8")
    cfg = _parse(["--config", str(yaml_file), "--lora_rank", "32"])
    assert cfg.lora.lora_rank == 32  # flag wins
    assert cfg.lora.lora_alpha == 64  # YAML kept
    assert cfg.train.learning_rate == 0.001  # YAML kept
    assert cfg.lora.lora_dropout == 0.05  # default kept


def test_dotted_flags_and_lists_and_booleans():
    cfg = _parse(["--lora.target_modules", "q_proj,v_proj", "--use_dora", "--benchmarks", "ceval,mmlu"])
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.lora.use_dora is True
    assert cfg.eval.benchmarks == ["ceval", "mmlu"]


def test_one_max_seq_length_and_old_configs_still_read(tmp_path, caplog):
    """Issue 10: data and train each had a max_seq_length; there is one now, in train."""
    assert not hasattr(ExperimentConfig().data, "max_seq_length")
    assert _parse(["--max_seq_length", "128"]).train.max_seq_length == 128  # one field: the plain flag works
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  max_seq_length: 256\ntrain:\n  max_seq_length: 256\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        assert load_config(old).train.max_seq_length == 256
    assert "data.max_seq_length is deprecated" in caplog.text
    only_data = tmp_path / "only_data.yaml"
    only_data.write_text("data:\n  max_seq_length: 300\n", encoding="utf-8")
    assert load_config(only_data).train.max_seq_length == 300
    assert _parse(["--config", str(only_data), "--max_seq_length", "64"]).train.max_seq_length == 64  # flag wins
    assert _parse(["--data.max_seq_length", "96"]).train.max_seq_length == 96  # the old dotted flag
    clash = tmp_path / "clash.yaml"
    clash.write_text("data:\n  max_seq_length: 512\ntrain:\n  max_seq_length: 1024\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"data.max_seq_length \(512\) and train.max_seq_length \(1024\) differ"):
        load_config(clash)
    with pytest.raises(ConfigError, match="pass --max_seq_length only"):
        _parse(["--data.max_seq_length", "96", "--max_seq_length", "64"])


def test_flat_flag_when_the_command_has_one_group():
    cfg = _parse(["--max_seq_length", "256"], groups=("train",))
    assert cfg.train.max_seq_length == 256


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--lora_rank", "0"], "--lora_rank"),
        (["--lora_alpha", "-1"], "--lora_alpha"),
        (["--lora_dropout", "1.0"], "--lora_dropout"),
        (["--learning_rate", "0"], "--learning_rate"),
        (["--protocol", "helm"], "--protocol"),
        (["--datasets", "belle,cevla"], "ceval"),
    ],
)
def test_bad_values_name_the_flag(argv, flag):
    with pytest.raises(ConfigError, match=flag):
        _parse(argv)


def test_non_numeric_value_names_the_key():
    with pytest.raises(ConfigError, match="lora_rank"):
        _parse(["--lora_rank", "sixteen"])


def test_unknown_yaml_key_gets_did_you_mean(tmp_path):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("lora:\n  lora_rnak: 8\n", encoding="utf-8")
    with pytest.raises(ConfigError, match='Did you mean "lora_rank"'):
        load_config(yaml_file)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"trian": {}})


def test_yaml_round_trip():
    cfg = ExperimentConfig()
    import yaml

    assert config_from_dict(yaml.safe_load(dump_config_yaml(cfg))) == cfg


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    load_config(path)


def test_benchmark_sizes_are_independent():
    from zhlora.config import EvalConfig

    ec = EvalConfig(limit=10, gsm8k_limit=3, ppl_en_documents=25)
    assert [ec.size_of(name) for name in ("ceval", "cmmlu", "mmlu", "gsm8k", "ppl_zh", "ppl_en")] == [10, 10, 10, 3, None, 25]
    assert EvalConfig().size_of("gsm8k") is None  # default: the whole set
    with pytest.raises(ConfigError, match="--ppl_zh_documents must be a positive number"):
        EvalConfig(ppl_zh_documents=0)
