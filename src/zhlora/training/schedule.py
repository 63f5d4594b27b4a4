"""How many optimizer steps a run takes, and the learning rate at each of them."""

from __future__ import annotations

import math
from dataclasses import dataclass

# zhlora's --lr_scheduler_type -> transformers' scheduler name (both warm up linearly first)
_SCHEDULER_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass(frozen=True)
class StepPlan:
    """The length of a run in optimizer steps."""

    bins_per_step: int  # packed sequences per optimizer step, all processes together
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    # Sequences the last step of each epoch takes again from the epoch's start, to keep every step the
    # same shape on every process (0 when the sequences fill the steps exactly): 1 epoch trains
    # these twice. Recorded in the run's manifest and logged.
    repeated_per_epoch: int = 0

    def epoch_of(self, step: int) -> float:
        """Fractional epochs completed after ``step`` optimizer steps."""
        return step / self.steps_per_epoch


def plan_steps(
    n_bins: int, batch_size: int, accumulation_steps: int, world_size: int,
    num_train_epochs: float, max_steps: int, warmup_ratio: float,
) -> StepPlan:
    """Count the optimizer steps of a run.

    An epoch is ``ceil(n_bins / bins_per_step)`` steps; its last step wraps around to the
    epoch's first bins (:func:`zhlora.training.packing.micro_batch_bins`), which are then trained
    twice in that epoch: ``repeated_per_epoch`` counts them. ``max_steps > 0``
    overrides ``num_train_epochs``; otherwise the run is ``ceil(epochs x steps_per_epoch)``
    steps. Warm-up lasts ``ceil(warmup_ratio x total_steps)`` steps, as in transformers.
    """
    if n_bins <= 0:
        raise ValueError("no packed sequences to train on")
    bins_per_step = batch_size * accumulation_steps * world_size
    steps_per_epoch = math.ceil(n_bins / bins_per_step)
    total = max_steps if max_steps > 0 else max(1, math.ceil(num_train_epochs * steps_per_epoch))
    return StepPlan(
        bins_per_step=bins_per_step,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=math.ceil(warmup_ratio * total),
        repeated_per_epoch=steps_per_epoch * bins_per_step - n_bins,
    )


def build_lr_scheduler(optimizer, kind: str, warmup_steps: int, total_steps: int):
    """A ``LambdaLR`` from transformers: linear warm-up, then ``kind`` (cosine, linear, constant) decay to 0."""
    from transformers import get_scheduler

    if kind not in _SCHEDULER_NAMES:
        raise ValueError(f"unknown scheduler {kind!r}; use one of {', '.join(_SCHEDULER_NAMES)}")
    return get_scheduler(
        _SCHEDULER_NAMES[kind], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
