"""The CLI: every verb is registered, imports, and `--help` is instant."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from zhlora.cli import COMMANDS, load_command, main

# Written out by hand, independently of cli.COMMANDS: the verbs a user reads in `zhlora --help`, in order.
EXPECTED_VERBS = ["download-data", "preprocess", "download-model", "evaluate", "train", "merge", "compare", "report",
                  "run", "sweep", "ls"]


def test_top_level_help_lists_exactly_the_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    listed = out.split("verbs:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == EXPECTED_VERBS
    assert all(len(line.split(maxsplit=1)) == 2 for line in listed)  # each verb has its one-line summary


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_imports_and_has_the_interface(verb):
    module = load_command(verb)
    assert callable(module.add_arguments) and callable(module.main)


def test_help_does_not_import_torch():
    code = "import sys; from zhlora.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert time.perf_counter() - start < 10


def test_unknown_verb_suggests(capsys):
    assert main(["evalute"]) == 2
    assert 'Did you mean "evaluate"' in capsys.readouterr().err


def test_third_party_deprecations_are_hidden_and_real_warnings_pass():
    """Issue 13 finding 6: transformers' FutureWarnings are noise for users; other warnings are not."""
    import warnings

    from zhlora.cli import quiet_third_party_deprecations

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party_deprecations()
        for category, module in [(FutureWarning, "transformers.modeling_utils"), (DeprecationWarning, "peft.tuners"),
                                 (UserWarning, "transformers.generation"), (FutureWarning, "zhlora.training"),
                                 (FutureWarning, "transformersx")]:
            warnings.warn_explicit(f"{module} says", category, "file.py", 1, module=module)
    assert sorted(str(w.message) for w in caught) == ["transformers.generation says", "transformersx says",
                                                      "zhlora.training says"]


def _help(verb: str) -> str:
    import argparse

    from zhlora.cli import load_command

    parser = argparse.ArgumentParser(prog=f"zhlora {verb}")
    load_command(verb).add_arguments(parser)
    return parser.format_help()


def test_verb_help_shows_its_own_flags_first_and_names_the_shared_ones():
    """Issue 13: download-data --help must not describe preprocessing flags, and vice versa."""
    text = _help("download-data")
    own, shared = text.split("shared config:")
    assert "--belle_sample_size BELLE_SAMPLE_SIZE" in own and "--source SOURCE" in own
    for flag in ("--processed_dir", "--prompt_template", "--overlong"):
        assert flag not in own and flag in shared
    assert "--max_seq_length" not in text  # a train setting (preprocess reads it too), not a data one
    text = _help("preprocess")
    own, shared = text.split("shared config:")
    assert "--max_seq_length MAX_SEQ_LENGTH" in own and "--model_name_or_path" in own
    for flag in ("--source", "--belle_sample_size", "--torch_dtype"):
        assert f"{flag} " not in own and flag in shared
    assert "shared config" not in _help("train")  # train reads all of its groups


def test_shared_config_flags_are_still_accepted():
    import argparse

    from zhlora.cli import load_command
    from zhlora.config import config_from_args

    parser = argparse.ArgumentParser()
    load_command("preprocess").add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--source", "sample", "--belle_sample_size", "7"]))
    assert cfg.data.source == "sample" and cfg.data.belle_sample_size == 7
