"""What ``zhlora run`` and ``zhlora sweep`` share: reading ``--config`` and printing a plan.

Not a verb: a helper of the two pipeline commands, so neither imports the other.
"""

from __future__ import annotations

import argparse


def resolve_config(args: argparse.Namespace):
    """The experiment config of ``args``: ``--config`` (a file, or a shipped config's name), else the embedded demo."""
    from zhlora.config import config_from_args
    from zhlora.experiment import default_config_path, resolve_config_path

    if args.config is None:
        args.config = str(default_config_path())
        print(f"No --config given: running the embedded demo ({args.config}).")
    else:
        args.config = str(resolve_config_path(args.config))
    return config_from_args(args)


def print_plan(steps, layout, fingerprints) -> None:
    """One line per step: what would happen, and its command."""
    from zhlora.experiment import step_state

    for index, step in enumerate(steps, start=1):
        state = step_state(step, layout, fingerprints[step.id], {i: fingerprints[i] for i in step.inputs})
        print(f"[{index}/{len(steps)}] {step.id}: {state.reason}")
        if not state.skip:
            print(f"    {step.command(state.redo)}")
