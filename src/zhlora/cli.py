"""The ``zhlora`` command: one verb per experiment step.

Each verb lives in ``zhlora.commands.<module>`` and exposes ``add_arguments(parser)`` and
``main(args) -> int``. Command modules import torch and friends inside ``main`` only, so
``zhlora --help`` and ``zhlora <verb> --help`` stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from zhlora import __version__
from zhlora.errors import ZhloraError, did_you_mean

# verb -> (module under zhlora.commands, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "download-data": ("download_data", "Step 1: download BELLE, C-Eval, CMMLU, MMLU, GSM8K and English text."),
    "preprocess": ("preprocess", "Step 2: render, tokenize and mask the training and held-out sets."),
    "download-model": ("download_model", "Step 3: fetch the base model (hub, ModelScope, local) or build the tiny one."),
    "evaluate": ("evaluate", "Steps 4/6: evaluate a base model, or base + LoRA adapter, on the benchmarks."),
    "train": ("train", "Step 5: LoRA fine-tune the base model on the processed data."),
    "merge": ("merge", "Merge a LoRA adapter into its base model and save a full model."),
    "compare": ("compare", "Step 6: forgetting analysis of baseline vs tuned results."),
    "report": ("report", "Render the HTML/Markdown report of an experiment folder."),
    "run": ("run", "Run all six steps into one work folder (resumable)."),
    "sweep": ("sweep", "Run a grid of LoRA settings sharing one baseline (resumable, shardable)."),
    "ls": ("ls", "List data sources, benchmarks, shipped configs, or runs in a work folder."),
}


# verbs that compute with torch: they take --num_threads (see zhlora.threads)
THREADED_VERBS = ("download-model", "evaluate", "train", "merge", "run", "sweep")
# verbs that run other verbs in-process (the pipeline): they get ``args.run_verb`` = :func:`run_command`,
# so the command modules never import this one
PIPELINE_VERBS = ("run", "sweep")
# Libraries whose deprecation notices are for zhlora's developers, not its users.
THIRD_PARTY_MODULES = r"(transformers|peft|accelerate|datasets|huggingface_hub|torch|safetensors)(\.|$)"
DEPRECATION_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)


def quiet_third_party_deprecations() -> None:
    """Hide deprecation warnings raised inside third-party libraries, so the log shows zhlora's messages.

    Filtered by category and by the module that warns: every other warning (a library's
    UserWarning about the data, anything zhlora itself warns about) still prints.
    """
    for category in DEPRECATION_CATEGORIES:
        warnings.filterwarnings("ignore", category=category, module=THIRD_PARTY_MODULES)


def load_command(verb: str):
    """Import the module that implements ``verb``."""
    module_name, _ = COMMANDS[verb]
    return importlib.import_module(f"zhlora.commands.{module_name}")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (verbs are parsed by their own modules, lazily)."""
    parser = argparse.ArgumentParser(
        prog="zhlora",
        description="Teach a Llama model Chinese with LoRA, and prove what it forgot.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="verbs:\n" + "\n".join(f"  {verb:<15} {summary}" for verb, (_, summary) in COMMANDS.items())
        + "\n\nRun `zhlora <verb> --help` for the flags of one verb.",
    )
    parser.add_argument("--version", action="version", version=f"zhlora {__version__}")
    parser.add_argument("verb", nargs="?", help="one of the verbs below")
    return parser


# flags naming the folders a verb writes, most specific first (for the disk-full message)
OUTPUT_FOLDER_FLAGS = ("output_dir", "results_dir", "work_dir", "path")


def output_folders(args: argparse.Namespace) -> list:
    """The folders ``args`` says the verb writes."""
    from pathlib import Path

    return [Path(value) for flag in OUTPUT_FOLDER_FLAGS if isinstance(value := getattr(args, flag, None), str)]


def run_command(verb: str, argv: list[str], prog: str | None = None) -> int:
    """Parse ``argv`` for ``verb`` and run it, turning user errors into one-paragraph messages."""
    module = load_command(verb)
    parser = argparse.ArgumentParser(prog=prog or f"zhlora {verb}", description=COMMANDS[verb][1])
    module.add_arguments(parser)
    if verb in THREADED_VERBS:
        parser.add_argument("--num_threads", type=int, default=None,
                            help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the cores not already "
                                 "busy by the 1-minute load average, at least 1).")
    if verb in PIPELINE_VERBS:
        parser.set_defaults(run_verb=run_command)
    args = parser.parse_args(argv)
    quiet_third_party_deprecations()
    if not sys.stderr.isatty():  # library progress bars in a log file are one endless line; zhlora logs lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "accelerate"):  # per request / per saved file
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if verb in THREADED_VERBS:
            from zhlora.threads import apply_threads

            apply_threads(args.num_threads)
        return int(module.main(args) or 0)
    except ZhloraError as exc:
        print(f"zhlora {verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zhlora {verb}: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `zhlora ls | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except Exception as exc:  # a full disk or read-only folder, whichever library noticed it
        from zhlora.storage import storage_error

        translated = storage_error(exc, output_folders(args))
        if translated is None:
            raise
        print(f"zhlora {verb}: error: {translated}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``zhlora`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] == "--version":
        build_parser().parse_args(argv or ["--help"])
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in COMMANDS:
        print(f'zhlora: error: unknown verb "{verb}".{did_you_mean(verb, COMMANDS)} '
              f"Verbs: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    return run_command(verb, rest)


if __name__ == "__main__":
    sys.exit(main())
