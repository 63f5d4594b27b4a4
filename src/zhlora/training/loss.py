"""The training loss: mean next-token cross-entropy over the response tokens of an optimizer step.

The quantity zhlora optimizes, for one optimizer step, is

    loss = (sum of token losses over ALL micro-batches on ALL processes)
           / (number of scored tokens in those micro-batches)

so every response token weighs the same, however rows are packed, split into micro-batches
or spread over GPUs. Averaging per micro-batch first (what ``model(labels=...)`` returns) would
give a token of a short micro-batch more weight than a token of a long one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zhlora.data.preprocess import IGNORE_INDEX


def token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Next-token negative log-likelihood (nats) of ``targets``: the one place zhlora computes it.

    Training sums it over a step (:func:`token_loss_sum`); evaluation reads it per token
    (held-out loss, perplexity windows, answer options: ``zhlora.evaluation.hf_model``), so the
    held-out Chinese loss is the training loss on unseen rows by construction.

    Args:
        logits: ``[batch, tokens, vocab]`` scores of the next token at every position, or
            ``[positions, vocab]`` at selected positions only.
        targets: the next-token ids of the same positions (``[batch, tokens]`` or ``[positions]``),
            :data:`IGNORE_INDEX` where unscored (already shifted: ``targets[:, i]`` is the token
            that follows position ``i``).
        reduction: ``none`` (one value per position, 0 where unscored, flattened) or ``sum``.

    The cross-entropy is computed in float32 whatever the logits' dtype (bf16 log-softmax
    over 32k classes loses digits).
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
    )


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of the cross-entropies (nats) of the scored positions (:func:`token_nll`), and how many there are."""
    return token_nll(logits, targets, reduction="sum"), int((targets != IGNORE_INDEX).sum())


# Positions per chunk of the fused output layer: 128 x 262,144 float32 scores = 134 MB at a time.
HEAD_CHUNK = 128


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets`` for a frozen ``weight``, chunk by chunk.

    The gradient with respect to ``hidden`` (``(softmax - onehot) @ weight``) is computed during the
    forward pass, one chunk of positions at a time, so neither the logits nor their softmax are kept:
    the memory of the output layer is one chunk's scores instead of every scored position's.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            scores = (hidden[start:start + chunk] @ weight.T).float()
            wanted = targets[start:start + chunk]
            log_norm = torch.logsumexp(scores, dim=-1)
            total += (log_norm - scores.gather(1, wanted[:, None])[:, 0]).sum()
            probs = torch.exp(scores.sub_(log_norm[:, None]))  # the softmax, in place of the scores
            probs[torch.arange(len(wanted), device=probs.device), wanted] -= 1.0
            grad[start:start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def fused_linear_token_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                                chunk: int = HEAD_CHUNK) -> tuple[torch.Tensor, int]:
    """:func:`token_loss_sum` of ``hidden @ weight.T`` without materialising those logits (frozen ``weight``).

    ``hidden``: ``[positions, hidden]`` final-norm states of the scored positions; ``targets``:
    their next-token ids (all scored). The same float32 cross-entropy as :func:`token_nll`, summed
    in another order (differences of float rounding only).
    """
    if weight.requires_grad:
        raise ValueError("the fused output layer needs a frozen weight (it computes no weight gradient)")
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk), int(targets.numel())


def micro_batch_objective(
    loss_sum: torch.Tensor, step_target_tokens: int, world_size: int, backward_divisor: int
) -> torch.Tensor:
    """What to back-propagate for one micro-batch so the step's gradient is that of the step loss.

    Args:
        loss_sum: this micro-batch's summed token loss (:func:`token_loss_sum`).
        step_target_tokens: scored tokens of the whole optimizer step, summed over every
            micro-batch of every process (known before the first backward pass).
        world_size: data-parallel processes; DDP, FSDP and DeepSpeed *average* gradients over
            them, so each process's contribution is scaled up by this factor.
        backward_divisor: what the backward call divides the loss by; ``accelerator.backward``
            (and DeepSpeed's engine) divide by the gradient accumulation steps.

    Summing the gradients of these values over all micro-batches, then averaging over the
    processes and dividing by ``backward_divisor`` as the frameworks do, yields exactly the
    gradient of ``sum(token losses) / step_target_tokens``.
    """
    return loss_sum * (world_size * backward_divisor / max(step_target_tokens, 1))
