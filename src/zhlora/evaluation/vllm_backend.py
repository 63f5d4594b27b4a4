"""Optional vLLM backend for generation (GSM8K) on GPUs, with the LoRA adapter served by vLLM.

An :class:`~zhlora.evaluation.engine.EvalEngine` that answers generation only: the HF engine
(:mod:`zhlora.evaluation.hf_model`) stays the reference and scores the log-likelihood
benchmarks (:class:`~zhlora.evaluation.engine.GenerationRouted` pairs the two). vLLM cannot be
installed on the machines zhlora is developed on, so this path is untested here: compare its
GSM8K predictions with ``--backend hf`` on a few items before trusting it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.evaluation.adapters import adapter_rank, check_adapter_folder
from zhlora.evaluation.hf_model import cut_at_stop

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # values vLLM accepts for max_lora_rank


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``rank``."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ZhloraError(f"The adapter's LoRA rank {rank} exceeds vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]}); use --backend hf.")


class VllmGenerator:
    """Greedy generation with vLLM; ``generate`` has the signature of the HF engine's.

    It implements the generation request of :class:`~zhlora.evaluation.engine.EvalEngine` only
    (vLLM's prompt log-probabilities are not checked against the reference engine here).
    """

    def __init__(
        self,
        model_path: str | Path,
        adapter_path: str | Path | None = None,
        adapter_scale: float = 1.0,
        torch_dtype: str = "auto",
        trust_remote_code: bool = False,
    ):
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise ZhloraError(
                "--backend vllm needs vLLM, which is not installed: pip install 'zhlora[vllm]' (Linux with a CUDA GPU), "
                "or use --backend hf."
            ) from None
        kwargs = {"model": str(model_path), "dtype": torch_dtype, "trust_remote_code": trust_remote_code, "seed": 0}
        self.lora_request = None
        if adapter_path is not None:
            if adapter_scale != 1.0:
                raise ZhloraError(f"vLLM applies a LoRA adapter at scale 1 only, not --adapter_scale {adapter_scale}; use --backend hf.")
            folder = check_adapter_folder(adapter_path)
            kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(adapter_rank(folder)))
            self.lora_request = LoRARequest("zhlora_adapter", 1, str(folder))
        self.llm = LLM(**kwargs)

    def generate(self, prompts: Sequence[str], stop: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy continuations of ``prompts`` cut before the first stop string (as the HF engine)."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop))
        outputs = self.llm.generate(list(prompts), params, lora_request=self.lora_request, use_tqdm=False)
        return [cut_at_stop(output.outputs[0].text, stop) for output in outputs]

