"""``zhlora preprocess``: step 2, tokenize the BELLE sample into ``processed_data/``.

Examples::

    zhlora preprocess --data_dir data --output_dir processed_data --model_name_or_path meta-llama/Llama-2-7b-hf
    zhlora preprocess --model_name_or_path models/base_model --prompt_template llama2_chat
    zhlora preprocess --model_name_or_path models/base_model --replay_ratio 0.2   # mix in 20% English
"""

from __future__ import annotations

import argparse

from zhlora.config import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the data group (``--prompt_template``, ``--overlong``, ...), ``--max_seq_length`` (train group),
    the model group, ``--force``."""
    add_config_flags(parser, ["data", "model", "train"], used=("data_dir", "processed_dir", "prompt_template", "max_seq_length",
                                                      "overlong", "replay_ratio", "data_seed", "model_name_or_path",
                                                      "trust_remote_code"))
    parser.add_argument(
        "--output_dir", dest="cfg__data__processed_dir", default=argparse.SUPPRESS, metavar="PROCESSED_DIR",
        help="Same as --processed_dir (the seed script's name).",
    )
    parser.add_argument("--force", action="store_true", help="Redo and replace an existing processed output.")


def main(args: argparse.Namespace) -> int:
    """Load the model's tokenizer, preprocess, and print the row counts and tokens per Chinese character."""
    from zhlora.data.preprocess import preprocess_data
    from zhlora.locking import folder_lock
    from zhlora.models.loading import check_model_argument, load_tokenizer

    cfg = config_from_args(args)
    data = cfg.data
    check_model_argument(cfg.model.model_name_or_path, "--model_name_or_path")
    tokenizer = load_tokenizer(cfg.model.model_name_or_path, trust_remote_code=cfg.model.trust_remote_code)
    with folder_lock(data.processed_dir):  # one writer per output folder
        stats = preprocess_data(
            data.data_dir,
            data.processed_dir,
            tokenizer,
            template=data.prompt_template,
            max_seq_length=cfg.train.max_seq_length,
            overlong=data.overlong,
            replay_ratio=data.replay_ratio,
            seed=data.data_seed,
            force=args.force,
        )
    train, held_out = stats["train"], stats["eval"]
    replay = stats["replay"]
    replay_text = f"replay rows {replay['used']:,}"
    if replay.get("requested"):
        replay_text += (f" of {replay['requested']:,} asked for (effective replay ratio "
                        f"{replay.get('effective_ratio', 0):.3f}, asked {replay['ratio']:g})")
    print(
        f"{data.processed_dir}: train {train['rows_out']:,} rows ({train['lengths'].get('total', 0):,} tokens), "
        f"eval {held_out['rows_out']:,} rows; dropped {train['dropped'] or 'none'}; "
        f"{replay_text}; tokens per Chinese character {stats['tokens_per_chinese_char']}"
    )
    return 0
