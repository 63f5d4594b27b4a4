"""The CLI: every verb is registered, imports, and `--help` is instant."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from zhlora.cli import COMMANDS, load_command, main


def test_top_level_help_lists_exactly_the_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for verb in COMMANDS:
        assert verb in out


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
