"""Step 5: LoRA training, read top to bottom in this order.

- ``dataset``: the processed rows as flat token arrays, checked against the model and tokenizer;
- ``packing``: rows into full sequences (best-fit decreasing), seeded epoch order, micro-batch
  tensors with per-row positions and the block-diagonal causal mask;
- ``loss``: token-mean cross-entropy over a whole optimizer step (all micro-batches, all processes);
- ``schedule``: steps per epoch and the learning-rate schedule;
- ``lora``: PEFT's LoRA config and wrapping, with checked target modules;
- ``loop``: the explicit training loop and its callback hook (``StepCallback``);
- ``checkpoint``: atomic checkpoints and exact resume; ``outputs``: the run folder's identity;
  ``logbook``: ``training_log.jsonl``.

The recipe that wires them together (with monitoring and the loss chart) is
:func:`zhlora.recipes.train.train`, one layer up.
"""
