"""Loading base models and tokenizers: the one path training and evaluation share.

Rules (see docs/models.md):
- weights are read from ``*.safetensors`` only (``use_safetensors=True``): pickled ``.bin``
  checkpoints can execute code when loaded;
- ``trust_remote_code`` stays off unless the user asks;
- ``torch_dtype="auto"`` means bfloat16 on a CUDA GPU that supports it, float32 otherwise
  (float16 weights are upcast on CPUs, where half precision is slow and lossy);
- tokenizers get a pad token (Llama ships none) and right padding by default.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from zhlora.errors import ZhloraError, did_you_mean
from zhlora.models.adapter_files import check_safetensors_file

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")
# owner/name as the hub spells repository ids
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DOWNLOAD_HINT = "Create it with `zhlora download-model --model_name_or_path <hub id, folder or tiny> --output_dir models`."


def resolve_dtype(name: str):
    """The ``torch.dtype`` for a ``--torch_dtype`` value.

    ``auto`` resolves to bfloat16 when a CUDA GPU supports it (Ampere or newer) and to
    float32 everywhere else. On CPUs float32 was chosen by measurement
    (``perf/cpu_dtype.py``, perf/README.md "CPU dtype"): on the AVX2 machine zhlora is
    built on, a bfloat16 matmul ran ~70x slower than float32 (no native bf16 instructions), and
    bfloat16 training and evaluation of the tiny model 2.5-11x slower, with no prediction changed.
    """
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPE_NAMES:
        raise ZhloraError(f'--torch_dtype must be one of {", ".join(DTYPE_NAMES)}, got "{name}".')
    return getattr(torch, name)


def _looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name.split("/")[0]).exists()


def looks_like_path(text: str) -> bool:
    """Whether a model argument is meant as a folder, not a hub id (``./x``, ``/x``, ``~/x``, ``a/b/c``)."""
    return (text.startswith(("/", ".", "~")) or "\\" in text or text.endswith("/") or text.count("/") > 1
            or (text.count("/") == 1 and Path(text.split("/")[0]).exists()))


def missing_path_hint(path: Path) -> str:
    """`` Did you mean "models/base_model"?`` for the nearest existing spelling of a missing path, or ''."""
    path = Path(path).expanduser()
    parts = path.parts
    for depth in range(len(parts) - 1, -1, -1):
        parent = Path(*parts[:depth]) if depth else Path(".")
        if parent.is_dir():
            try:
                names = [child.name for child in parent.iterdir()]
            except OSError:
                return ""
            hint = did_you_mean(parts[depth], names)
            if not hint:
                return ""
            guess = parent / hint.split('"')[1]
            return f' Did you mean "{Path(guess, *parts[depth + 1:])}"?'
    return ""


def check_model_argument(value: str | Path, flag: str) -> None:
    """Refuse a path-looking model argument that names no folder, in the command's own words.

    Hub ids (``owner/name``) pass: the hub (or its cache) decides about them when loading.
    """
    text = str(value)
    if looks_like_path(text) and not Path(text).expanduser().is_dir():
        what = "is a file, not a model folder" if Path(text).expanduser().is_file() else "no such folder"
        raise ZhloraError(f"{flag} {text}: {what}.{missing_path_hint(Path(text))} {_DOWNLOAD_HINT}")


def _check_local_model_folder(folder: Path) -> None:
    """Raise a ZhloraError unless ``folder`` holds a config and safetensors weights."""
    if not folder.is_dir():
        raise ZhloraError(f"Model folder {folder} does not exist. {_DOWNLOAD_HINT}")
    if not (folder / "config.json").is_file():
        raise ZhloraError(f"{folder} is not a model folder: it has no config.json. {_DOWNLOAD_HINT}")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pth", ".pt"))
        if pickles:
            raise ZhloraError(
                f"{folder} holds only pickled weights ({', '.join(pickles[:3])}), which zhlora refuses to load "
                "because unpickling can run arbitrary code. Convert them once to safetensors with "
                "transformers (`AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)`) "
                "in an environment you trust, or download a safetensors copy of the model."
            )
        raise ZhloraError(f"{folder} has a config.json but no *.safetensors weights. {_DOWNLOAD_HINT}")
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors_file(weights, "Download the model again: `zhlora download-model --model_name_or_path "
                               "<hub id, folder or tiny> --output_dir models --force`.")


def _resolve_source(name_or_path: str | Path, what: str) -> str:
    """A local folder path, or a hub id passed through; anything else is a clear error."""
    from zhlora.models.builtin import BUILTIN_GGUF_MODELS
    from zhlora.models.gguf import is_gguf_path
    from zhlora.models.tiny import TINY_MODEL_NAME

    text = str(name_or_path)
    if Path(text).exists() and not is_gguf_path(text):
        return text
    if text in (TINY_MODEL_NAME, *BUILTIN_GGUF_MODELS) or is_gguf_path(text):
        raise ZhloraError(
            f'"{text}" names a model to import, not a {what} folder. Import it with '
            f"`zhlora download-model --model_name_or_path {text} --output_dir models` and pass models/base_model."
        )
    if _looks_like_hub_id(text):
        return text
    raise ZhloraError(f"{what.capitalize()} folder {text} does not exist. {_DOWNLOAD_HINT}")


def _hub_failure(name: str, what: str, exc: Exception) -> ZhloraError:
    return ZhloraError(
        f'Could not load the {what} "{name}": it is not a local folder, and fetching it as a hub id failed '
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). If you meant a folder, check "
        f"the path. {_DOWNLOAD_HINT}"
    )


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False, padding_side: str = "right"):
    """Load the tokenizer of a model folder (or hub id), with the Llama quirks handled.

    - A folder holding only a SentencePiece ``tokenizer.model`` is converted with
      ``LlamaTokenizer.from_pretrained(folder, add_bos_token=True)`` (transformers 5 would
      otherwise build an empty tokenizer, or one that omits ``<s>`` unlike the hub's Llama-2).
    - A tokenizer that encodes text to nothing is rejected.
    - Llama has no pad token: pad with ``<unk>`` (or ``</s>`` when there is no unk), so pad
      positions never look like an end-of-sequence the model should learn.
    - ``padding_side`` is ``"right"`` (training, log-likelihood scoring); pass ``"left"`` for
      batched generation, where every prompt must end at the last position.
    - ``add_bos_token`` is set to what the tokenizer actually does (transformers 5 does not
      save the flag, only the post-processor that adds ``<s>``).
    """
    from transformers import AutoTokenizer, LlamaTokenizer

    if padding_side not in ("left", "right"):
        raise ZhloraError(f'padding_side must be "left" or "right", got "{padding_side}".')
    source = _resolve_source(name_or_path, "tokenizer")
    folder = Path(source)
    try:
        if folder.is_dir() and (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").is_file():
            tokenizer = LlamaTokenizer.from_pretrained(folder, add_bos_token=True)
        else:
            if folder.is_dir() and not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
                raise ZhloraError(f"{folder} holds no tokenizer (tokenizer.json, tokenizer_config.json or tokenizer.model). {_DOWNLOAD_HINT}")
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ZhloraError:
        raise
    except (OSError, ValueError) as exc:
        if folder.exists():
            raise ZhloraError(f"Could not load the tokenizer in {folder}: {exc}") from None
        raise _hub_failure(source, "tokenizer", exc) from None
    probe = tokenizer("Hello 你好", add_special_tokens=False)["input_ids"]
    if not probe or all(i == tokenizer.unk_token_id for i in probe):
        raise ZhloraError(
            f"The tokenizer loaded from {source} is empty: it encodes text to no tokens (or only <unk>). "
            "If the folder holds a SentencePiece tokenizer.model, make sure `sentencepiece` and `protobuf` "
            "are installed, and pass the folder (not the file)."
        )
    with_specials = tokenizer("a")["input_ids"]
    if tokenizer.bos_token_id is not None and with_specials[:1] == [tokenizer.bos_token_id] and not getattr(tokenizer, "add_bos_token", True):
        tokenizer.add_bos_token = True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def _quantization_config(load_in_4bit: bool, dtype):
    """The bitsandbytes NF4 config of QLoRA (double quantization, compute in ``dtype``)."""
    if not load_in_4bit:
        return None
    import torch

    if not torch.cuda.is_available():
        raise ZhloraError(
            "--load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is available here. "
            "Drop --load_in_4bit to load the model in full precision on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ZhloraError("--load_in_4bit needs bitsandbytes: pip install 'zhlora[qlora]'.") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_model(
    path: str | Path,
    torch_dtype: str = "auto",
    device_map=None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
):
    """Load a causal LM for training or evaluation; the only model-loading function.

    Args:
        path: a model folder (``models/base_model``) or a hub id.
        torch_dtype: ``auto`` (see :func:`resolve_dtype`), ``bfloat16``, ``float16`` or ``float32``.
        device_map: passed to transformers (``"auto"``, ``{"": 0}``, ...); None keeps the model on CPU.
        load_in_4bit: NF4 quantization for QLoRA; needs a CUDA GPU and bitsandbytes.
        trust_remote_code: run modelling code shipped in the folder; off unless asked.

    Returns the model in eval mode (callers that train switch it to train mode).
    """
    from transformers import AutoModelForCausalLM

    source = _resolve_source(path, "model")
    if Path(source).exists():
        _check_local_model_folder(Path(source))
    dtype = resolve_dtype(torch_dtype)
    quantization_config = _quantization_config(load_in_4bit, dtype)
    kwargs = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs.setdefault("device_map", {"": 0})
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if Path(source).exists():
            raise ZhloraError(f"Could not load the model in {source}: {str(exc).splitlines()[0]}") from None
        raise _hub_failure(source, "model", exc) from None
    model.eval()
    logger.info("Loaded %s (%s, %.1fM parameters)", source, dtype, model.num_parameters() / 1e6)
    return model
