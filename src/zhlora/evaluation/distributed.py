"""Data-parallel evaluation: which process scores which unit, and the gather on the main process.

``accelerate launch -m zhlora evaluate ...`` or ``torchrun --nproc_per_node 8 -m zhlora evaluate ...``
start one process per GPU (or per CPU slot, with gloo). Each process loads the model on its own
device and scores a share of every benchmark's *units* (:func:`zhlora.evaluation.runner.benchmark_units`:
one subject, or 64 consecutive items); the main process gathers the prediction rows and writes
the results.

Why units, not single items: a unit is scored by one process with exactly the batches a
single-process run forms for it (the batches are built per unit), so every number, and therefore
``results.json`` and ``predictions/``, is byte-identical to one process on the same kind of
device. Splitting inside a unit would change which items share a batch, and padded batch shapes
can move the last bits of a float. Each process writes its finished units to the shared resume
cache, so a killed distributed evaluation resumes per process (with any number of processes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class EvalProcesses:
    """This process's place in a (possibly one-process) evaluation.

    ``rank`` / ``world_size``: index and number of processes; ``local_rank``: index on this
    machine (its GPU); ``state``: accelerate's ``PartialState`` when distributed, else None.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, share: Any) -> list | None:
        """Every process's ``share`` (in rank order) on the main process; None on the others."""
        if self.world_size == 1:
            return [share]
        import torch.distributed as dist

        shares = [None] * self.world_size if self.is_main else None
        dist.gather_object(share, shares, dst=0)
        return shares

    def wait_for_everyone(self) -> None:
        """A barrier (no-op in one process)."""
        if self.state is not None:
            self.state.wait_for_everyone()


def launched_world_size() -> int:
    """How many processes the launcher (torchrun, accelerate launch, srun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_eval_processes(cpu: bool) -> EvalProcesses:
    """Join the process group the launcher prepared (gloo on CPU, nccl on GPUs), or stay alone.

    ``cpu``: evaluate on CPU even where GPUs are visible (``--device cpu``). Without a GPU every
    launch is a CPU run whatever the flag says: accelerate's ``PartialState(cpu=False)`` would
    otherwise not join the launcher's group, each process would think it is rank 0 of 1, and the
    second would be refused the results folder's lock.
    """
    if launched_world_size() <= 1:
        return EvalProcesses()
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=cpu or not torch.cuda.is_available())
    return EvalProcesses(state.process_index, state.num_processes, state.local_process_index, state)


def assign_units(sizes: Sequence[int], world_size: int) -> list[int]:
    """The process that scores each unit, given the units' item counts.

    Largest unit first, each to the process with the fewest items so far (ties: the lower
    rank): a deterministic, balanced split (within one unit of the ideal) that every process
    computes identically without talking to the others.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    owners = [0] * len(sizes)
    load = [0] * world_size
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += sizes[index]
    return owners
