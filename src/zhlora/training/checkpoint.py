"""Checkpoints: everything needed to continue a run as if it had never stopped.

``<output_dir>/checkpoint-<step>/`` holds

- ``adapter_model.safetensors`` + ``adapter_config.json``: the adapter at that step, a standard
  PEFT folder (so an intermediate checkpoint can be evaluated like a final adapter); with
  ``--finetuning_type full``, the whole model's ``model*.safetensors`` + ``config.json`` instead;
- ``optimizer.bin``, ``custom_checkpoint_0.pkl`` (the LR scheduler) and one
  ``random_states_<process>.pkl`` per process (python, numpy, torch and CUDA RNG states), written
  by ``accelerate``'s ``save_state``, which also knows how DeepSpeed and FSDP shard optimizers;
- ``trainer_state.json``: the step, the data position, the run's fingerprint and the sha256 of
  every other file of the checkpoint (``files``), written last.

On resume the newest checkpoint whose files still have those hashes is used
(:func:`newest_intact_checkpoint`): a truncated ``optimizer.bin`` or adapter is reported by name
and the previous checkpoint is taken, instead of failing deep inside torch or safetensors.

The data position needs no sampler state: the bin order of an epoch is a function of
``(seed, epoch)`` (:func:`zhlora.training.packing.epoch_permutation`) and the step fixes the
epoch and the offset within it.

A checkpoint is written into ``.checkpoint-<step>.tmp`` and renamed into place once complete,
so a run killed while saving leaves no folder that looks like a checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from zhlora.errors import ZhloraError
from zhlora.filenames import TRAINER_STATE
from zhlora.io_utils import atomic_write_json, replace_folder, sha256_file

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return Path(output_dir) / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (with a trainer state) of ``output_dir`` as ``(step, path)``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and (child / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def read_trainer_state(checkpoint: str | Path) -> dict:
    """The ``trainer_state.json`` of a checkpoint."""
    path = Path(checkpoint) / TRAINER_STATE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZhloraError(f"{path}: unreadable checkpoint state ({exc}). Delete {Path(checkpoint)} and rerun.") from None


def checkpoint_damage(checkpoint: str | Path) -> str | None:
    """What is wrong with a checkpoint's files (missing, or changed since written), or None when intact.

    Checkpoints written before file hashes were recorded (no ``files``) count as intact.
    """
    checkpoint = Path(checkpoint)
    try:
        files = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8")).get("files")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return f"{TRAINER_STATE} is unreadable"
    problems = []
    for name, digest in sorted((files or {}).items()):
        path = checkpoint / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{name} changed since it was written (truncated or damaged)")
    return "; ".join(problems) or None


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[int, Path] | None:
    """The newest checkpoint whose files are intact, logging each damaged newer one; None if none.

    Raises:
        ZhloraError: there are checkpoints, but every one is damaged.
    """
    checkpoints = list_checkpoints(output_dir)
    damaged = []
    for step, path in reversed(checkpoints):
        problem = checkpoint_damage(path)
        if problem is None:
            if damaged:
                logger.warning("Resuming from %s instead: the newer checkpoint(s) are damaged (%s).", path.name,
                               "; ".join(damaged))
            return step, path
        damaged.append(f"{path}: {problem}")
    if damaged:
        raise ZhloraError(
            f"Every checkpoint in {output_dir} is damaged ({'; '.join(damaged)}), so the run cannot be resumed. "
            "Pass --overwrite to start it over (the damaged checkpoints are deleted)."
        )
    return None


def register_adapter_only_hooks(accelerator) -> None:
    """Keep ``save_state``/``load_state`` away from the model weights; zhlora saves the trained weights itself.

    accelerate would otherwise write the full model (13 GB for Llama-2-7B) into every LoRA checkpoint; a full
    fine-tuning checkpoint gets the model once, from :func:`save_adapter` (``save_pretrained`` of the whole model).
    DeepSpeed and FSDP models never reach these hooks: their engines save their own shards.
    """

    def drop_weights(models, weights, output_dir):
        weights.clear()

    def drop_models(models, input_dir):
        models.clear()

    accelerator.register_save_state_pre_hook(drop_weights)
    accelerator.register_load_state_pre_hook(drop_models)


def _engine_kwargs(accelerator, saving: bool) -> dict:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # Frozen base weights are not part of the run's state; the base model folder holds them.
        return {"exclude_frozen_parameters": True} if saving else {"load_module_strict": False}
    return {}


def _engine_holds_weights(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def save_adapter(accelerator, model, folder: Path, **save_kwargs) -> None:
    """Write the adapter (PEFT ``save_pretrained``) of the possibly wrapped ``model`` into ``folder``.

    Every process must call this: under ZeRO-3 and FSDP gathering the weights is collective.
    Only the main process writes files.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(
            str(folder), state_dict=state_dict, safe_serialization=True, is_main_process=True, **save_kwargs
        )


def save_checkpoint(accelerator, model, output_dir: str | Path, step: int, trainer_state: dict, keep: int) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep only the newest ``keep`` checkpoints.

    Collective: every process calls it. ``trainer_state`` must be JSON-serialisable.
    """
    output_dir = Path(output_dir)
    final = checkpoint_path(output_dir, step)
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True, **_engine_kwargs(accelerator, saving=True))
    save_adapter(accelerator, model, tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from zhlora.locking import check_still_held

        check_still_held(output_dir)  # a late save (SIGTERM) must not land in a folder another run took
        files = {path.relative_to(tmp).as_posix(): sha256_file(path) for path in sorted(tmp.rglob("*")) if path.is_file()}
        atomic_write_json(tmp / TRAINER_STATE, {**trainer_state, "step": step, "files": files})
        replace_folder(tmp, final)
        if keep > 0:
            for _, old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
        logger.info("Saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, model, checkpoint: str | Path) -> dict:
    """Restore adapter, optimizer, scheduler and this process's RNG states; return the trainer state.

    Raises:
        ZhloraError: the checkpoint was written by a different number of processes, or its
            adapter does not fit the model (different LoRA settings).
    """
    from zhlora.training.weights import load_trained_weights

    checkpoint = Path(checkpoint)
    state = read_trainer_state(checkpoint)
    saved_world = int(state.get("world_size", 1))
    if saved_world != accelerator.num_processes:
        raise ZhloraError(
            f"{checkpoint} was written by {saved_world} training process(es) but this run has "
            f"{accelerator.num_processes}. Resume with the same number of processes "
            f"(accelerate launch --num_processes {saved_world}), or start over with --overwrite."
        )
    if not (checkpoint / f"random_states_{accelerator.process_index}.pkl").is_file():
        raise ZhloraError(f"{checkpoint} lacks the RNG state of process {accelerator.process_index}; delete it and rerun.")
    problem = checkpoint_damage(checkpoint)
    if problem is not None:
        raise ZhloraError(f"{checkpoint} is damaged ({problem}). Delete it and rerun to resume from the one before.")
    try:
        accelerator.load_state(str(checkpoint), **_engine_kwargs(accelerator, saving=False))
        if not _engine_holds_weights(accelerator):
            load_trained_weights(accelerator.unwrap_model(model), checkpoint)  # the adapter, or the full model
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise ZhloraError(
            f"Could not load {checkpoint} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Delete it and rerun to resume from the checkpoint before, or pass --overwrite to start over."
        ) from None
    logger.info("Resumed from %s (step %d)", checkpoint, state["step"])
    return state
