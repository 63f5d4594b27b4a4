"""``zhlora download-data``: step 1, fetch the data sources into ``data/<source>/<split>.jsonl``.

Examples::

    zhlora download-data --data_dir data --belle_sample_size 50000          # from the hub
    HF_ENDPOINT=https://hf-mirror.com zhlora download-data --data_dir data  # through a mirror
    zhlora download-data --source local:/path/to/release --data_dir data   # release files on disk
    zhlora download-data --source sample --data_dir data                   # bundled samples, offline
    zhlora download-data --datasets ceval,mmlu --source local:../shared/data
"""

from __future__ import annotations

import argparse

from zhlora.config import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: the data group (``--source``, ``--datasets``, ``--belle_sample_size``, ...), ``--force``."""
    add_config_flags(parser, ["data"], used=("data_dir", "source", "datasets", "belle_dataset", "belle_sample_size",
                                             "belle_heldout_size", "data_seed", "replay_ratio"))
    parser.add_argument(
        "--output_dir", dest="cfg__data__data_dir", default=argparse.SUPPRESS, metavar="DATA_DIR",
        help="Same as --data_dir (the seed script's name).",
    )
    parser.add_argument("--force", action="store_true", help="Redo the named sources even when complete.")


def main(args: argparse.Namespace) -> int:
    """Fetch every named source (hub token from HF_TOKEN or the saved login) and print the row counts."""
    from zhlora.data.sources import download_data, resolve_datasets
    from zhlora.locking import folder_lock

    data = config_from_args(args).data
    names = resolve_datasets(data.datasets, data.replay_ratio)
    with folder_lock(data.data_dir):  # one writer per data folder (its manifest.json is shared)
        manifest = download_data(
            data.data_dir,
            source=data.source,
            datasets=names,
            belle_dataset=data.belle_dataset,
            belle_sample_size=data.belle_sample_size,
            belle_heldout_size=data.belle_heldout_size,
            seed=data.data_seed,
            force=args.force,
        )
    for name in names:
        entry = manifest["sources"][name]
        counts = ", ".join(f"{split} {info['rows']:,}" for split, info in entry["splits"].items())
        print(f"{data.data_dir}/{name}: {counts}  ({entry['request']['source']})")
    return 0
