"""``zhlora run``: the whole experiment in one work folder, resumable.

Examples::

    zhlora run                                             # the embedded demo: tiny Llama, bundled samples
    zhlora run --config configs/llama2-7b-belle.yaml       # the seed's experiment (GPU, hub access)
    zhlora run --lora_rank 8 --run_name lora-r8            # another run beside the first, same baseline
    zhlora run --adapter_scales 0,0.25,0.5,0.75,1          # also the learning/forgetting curve of the scale
    zhlora run --replay_ratio 0.2 --run_name lora-replay   # mix 20% English instructions into training
    zhlora run --dry_run                                   # print each step's command and whether it would run

Everything lands in ``--work_dir`` (default ``zhlora_work``) in the seed's layout; a relative
``--data_dir`` is taken inside it, an absolute one can be shared by several work folders.
Steps (each one ``zhlora <verb>``, printed before it runs): download-data (one per source),
download-model, evaluate (baseline), preprocess, train, evaluate (the adapter, per scale),
compare, report. A step whose outputs are complete and were made with the same settings is
skipped; one made with other settings is redone, and the steps after it too. Interrupted?
Run the same command again: training continues from its newest checkpoint, evaluation from
its last finished subject.
"""

from __future__ import annotations

import argparse
import sys

RUN_GROUPS = ["data", "model", "lora", "train", "eval", "report"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: ``--config`` (default: the embedded demo), ``--work_dir``, ``--run_name``, every config field, ``--dry_run``."""
    from zhlora.config import add_config_flags, add_top_level_flags

    add_top_level_flags(parser)
    add_config_flags(parser, RUN_GROUPS)
    parser.add_argument("--dry_run", action="store_true",
                        help="Print every step's command and whether it would be skipped, run or redone; run nothing.")


def main(args: argparse.Namespace) -> int:
    """Plan, print the resolved settings, run the steps, print the headline and the report's path."""
    import json
    import time

    from zhlora.commands._pipeline import print_plan, resolve_config
    from zhlora.experiment import StepFailed, execute, plan_fingerprints, plan_run, write_run_config
    from zhlora.filenames import FORGETTING_FILE, REPORT_HTML
    from zhlora.locking import folder_lock

    started = time.perf_counter()
    cfg = resolve_config(args)
    layout, steps = plan_run(cfg)
    if args.dry_run:
        print_plan(steps, layout, plan_fingerprints(steps))
        return 0
    config_file = write_run_config(cfg, layout)
    print(f"zhlora run {cfg.run_name} in {layout.root}: model {cfg.model.model_name_or_path}, data {cfg.data.source}, "
          f"LoRA r={cfg.lora.lora_rank} alpha={cfg.lora.lora_alpha:g}; resolved config {config_file}")
    try:
        with folder_lock(layout.run_dir(cfg.run_name)):  # one `zhlora run` per run; shared steps wait for each other
            execution = execute(steps, layout, args.run_verb)
    except StepFailed as exc:
        print(f"zhlora run: {exc}", file=sys.stderr)
        return exc.exit_code
    counts = {action: sum(o.action == action for o in execution.outcomes) for action in ("ran", "redone", "skipped")}
    report_dir = layout.eval_dir(cfg.run_name)
    forgetting = json.loads((report_dir / FORGETTING_FILE).read_text(encoding="utf-8"))
    print(f"\n{forgetting['headline']['text_zh']}\n{forgetting['headline']['text']}\n")
    print(f"Report: {report_dir / REPORT_HTML}")
    print(f"Steps: {counts['ran']} ran, {counts['redone']} redone, {counts['skipped']} skipped; "
          f"{time.perf_counter() - started:.0f} s. Step records: {layout.state_dir / 'steps'}")
    if "hypotheses" in forgetting:
        from zhlora.analysis.verdicts import verdict_lines

        print("\n" + "\n".join(verdict_lines(forgetting["hypotheses"])))
    return 0
