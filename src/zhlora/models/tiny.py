"""The built-in tiny Llama: a real ``LlamaForCausalLM`` small enough to train on a CPU.

It exists so that every step of the experiment (and every test) runs in seconds without a
download. The architecture is Llama-2's (RoPE, RMSNorm, SwiGLU, grouped-query attention,
untied embeddings); only the sizes are small. The tokenizer is trained here, with the
``tokenizers`` library, on the text bundled in ``zhlora/samples`` and behaves like the
Llama-2 SentencePiece tokenizer as transformers converts it: BPE with byte fallback (any
text encodes, unknown characters become ``<0xNN>`` byte pieces), a ``▁`` word-boundary
marker prepended to the first word, single digits, punctuation never merged with letters
(so "答案：A" ends in the piece "A"), ``<unk>``/``<s>``/``</s>`` at ids 0-2
and ``<s>`` added at the start of every sequence.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.io_utils import share_per_umask, staging_folder

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "tiny"
TINY_VOCAB_SIZE = 6000  # target; a small corpus may stop the BPE trainer earlier
TINY_ARCHITECTURE = {
    "hidden_size": 128,
    "intermediate_size": 352,  # ~2.75 x hidden, the Llama-2 ratio
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in Llama-2-70B and Llama-3
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_TOKENS = tuple(f"<0x{value:02X}>" for value in range(256))
# Pieces benchmark scoring relies on: bare "A" (after "答案：") and "▁A" (lm-eval's " A"
# continuation, and what the Llama tokenizer gives "A" at the start of a text).
ANSWER_LETTERS = ("A", "B", "C", "D")
SAMPLE_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")
# Always part of the corpus, so the answer formats tokenize the same even if samples change.
_SEED_TEXT = [
    "答案：A\n答案：B\n答案：C\n答案：D",
    "Answer: A\nAnswer: B\nAnswer: C\nAnswer: D",
    "0 1 2 3 4 5 6 7 8 9 The answer is 42. 答案是 7。",
]


def sample_files() -> list[tuple[str, bytes]]:
    """The bundled sample files as ``(relative name, bytes)``, sorted by name (reproducible)."""
    root = resources.files("zhlora") / "samples"
    found: list[tuple[str, bytes]] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif child.name.endswith(SAMPLE_SUFFIXES):
                found.append((name, child.read_bytes()))

    if root.is_dir():
        walk(root, "")
    return sorted(found)


def _strings(value) -> Iterator[str]:
    """Every string inside a parsed JSON value, depth first, in document order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def corpus_texts(files: list[tuple[str, bytes]]) -> list[str]:
    """The text of the sample files: JSON string values, CSV cells, text lines.

    Parsing matters: raw JSON would teach the tokenizer ``{"instruction": `` and, when a file
    escapes Chinese as ``\\uXXXX``, no Chinese at all.
    """
    texts = list(_SEED_TEXT)
    for name, data in files:
        text = data.decode("utf-8", errors="replace")
        if name.endswith(".jsonl"):
            for line in text.splitlines():
                if line.strip():
                    try:
                        texts.extend(_strings(json.loads(line)))
                    except json.JSONDecodeError:
                        texts.append(line)
        elif name.endswith(".json"):
            try:
                texts.extend(_strings(json.loads(text)))
            except json.JSONDecodeError:  # JSON lines saved as .json (as BELLE does)
                texts.extend(corpus_texts([(name + "l", data)])[len(_SEED_TEXT):])
        elif name.endswith(".csv"):
            texts.extend(cell for row in csv.reader(text.splitlines()) for cell in row if cell.strip())
        else:
            texts.extend(line for line in text.splitlines() if line.strip())
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = TINY_VOCAB_SIZE):
    """Train a Llama-2-style BPE tokenizer on ``texts``; return a ``LlamaTokenizer``.

    The vocabulary is laid out like Llama-2's: the three special tokens, the 256 byte pieces,
    then the learned pieces. ``A``..``D`` and ``▁A``..``▁D`` are guaranteed single pieces.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    learner = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # Training splits at spaces and digits (SentencePiece's split_by_whitespace and
    # split_digits) and isolates punctuation, so no piece like "：A" can swallow an answer
    # letter; the saved tokenizer runs BPE over the whole text like Llama does.
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
         pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.Punctuation(behavior="isolated")]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=["▁", *ANSWER_LETTERS],
        limit_alphabet=4000,
        show_progress=False,
    )
    learner.train_from_iterator(texts, trainer=trainer)
    state = json.loads(learner.to_str())["model"]
    learned = sorted(state["vocab"].items(), key=lambda item: item[1])
    pieces = [piece for piece, _ in learned if piece not in SPECIAL_TOKENS and piece not in BYTE_TOKENS]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    for letter in ANSWER_LETTERS:
        if "▁" + letter not in pieces:
            pieces.append("▁" + letter)
            merges.append(("▁", letter))
    vocab = {piece: index for index, piece in enumerate([*SPECIAL_TOKENS, *BYTE_TOKENS, *pieces])}
    return LlamaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, legacy=False,
        model_max_length=TINY_ARCHITECTURE["max_position_embeddings"],
    )


def build_tiny_model(output_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny Llama and its tokenizer into ``output_dir``; return the folder.

    Deterministic: the same ``seed`` and the same bundled samples give byte-identical weight
    files. The folder is written through a temporary sibling and renamed into place, and
    holds what a real downloaded model holds: ``config.json``, ``model.safetensors``, the
    tokenizer files and ``zhlora_manifest.json``. Takes a few seconds on a CPU.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from zhlora.models.manifest import write_manifest

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ZhloraError(f"{output_dir} already exists and is not empty; remove it or choose another folder.")
    files = sample_files()
    if not files:
        logger.warning("No bundled sample text found under zhlora/samples; the tiny tokenizer "
                       "is trained on a few seed lines only and will spell most Chinese in bytes.")
    tokenizer = train_tokenizer(corpus_texts(files))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        **TINY_ARCHITECTURE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(output_dir.parent, f".{output_dir.name}.")
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_manifest(
            staging, source="tiny", model_name_or_path=TINY_MODEL_NAME, revision=None, revision_requested=None,
            tiny={"seed": seed, "architecture": TINY_ARCHITECTURE, "vocab_size": len(tokenizer),
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "corpus_files": {name: hashlib.sha256(data).hexdigest() for name, data in files}},
        )
        if output_dir.exists():
            output_dir.rmdir()
        share_per_umask(staging).rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir
