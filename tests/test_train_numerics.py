"""Training numerics and checks in isolation: loss normalisation, step plan, LoRA helpers, data checks, run folder."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from zhlora.data.preprocess import IGNORE_INDEX
from zhlora.errors import ConfigError, DataError, ZhloraError
from zhlora.training.loss import micro_batch_objective, token_loss_sum
from zhlora.training.schedule import build_lr_scheduler, plan_steps


# ---------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------
def test_token_loss_sum_ignores_unscored_positions():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, IGNORE_INDEX, 4], [IGNORE_INDEX, IGNORE_INDEX, 0]])
    loss_sum, count = token_loss_sum(logits, targets)
    log_probs = logits.log_softmax(-1)
    expected = -(log_probs[0, 0, 1] + log_probs[0, 2, 4] + log_probs[1, 2, 0])
    assert count == 3
    torch.testing.assert_close(loss_sum, expected)


def _micro_batches(seed: int = 0):
    """Uneven micro-batches: 2, 7 and 1 scored tokens, so per-micro-batch means would be biased."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, 4), (2, 5), (1, 3)]
    batches = []
    for n_scored, (rows, width) in zip((2, 7, 1), shapes):
        x = torch.randn(rows, width, 6, generator=gen)
        targets = torch.full((rows, width), IGNORE_INDEX)
        flat = targets.view(-1)
        flat[:n_scored] = torch.randint(0, 4, (n_scored,), generator=gen)
        batches.append((x, targets))
    return batches


def _grad(weight: torch.Tensor, losses) -> torch.Tensor:
    weight.grad = None
    for loss in losses:
        loss.backward()
    return weight.grad.clone()


def test_accumulated_objective_equals_the_token_mean_over_the_whole_step():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, requires_grad=True)
    batches = _micro_batches()
    total_tokens = sum(int((t != IGNORE_INDEX).sum()) for _, t in batches)

    # reference: one big token mean over every scored token of the step
    all_logits = torch.cat([(x @ weight).reshape(-1, 4) for x, _ in batches])
    all_targets = torch.cat([t.reshape(-1) for _, t in batches])
    reference = _grad(weight, [torch.nn.functional.cross_entropy(all_logits, all_targets, ignore_index=IGNORE_INDEX)])

    # one process, 3 micro-batches, backward divides by the accumulation steps (as accelerate does)
    accum = len(batches)
    losses = [micro_batch_objective(token_loss_sum(x @ weight, t)[0], total_tokens, 1, accum) / accum for x, t in batches]
    torch.testing.assert_close(_grad(weight, losses), reference)

    # two processes (ranks hold micro-batches {0, 2} and {1}); DDP averages their gradients
    per_rank = []
    for rank_batches in ([batches[0], batches[2]], [batches[1]]):
        accum = 2  # each rank runs the same number of micro-steps; the 2nd rank's second one is empty here
        per_rank.append(_grad(weight, [
            micro_batch_objective(token_loss_sum(x @ weight, t)[0], total_tokens, 2, accum) / accum for x, t in rank_batches
        ]))
    torch.testing.assert_close((per_rank[0] + per_rank[1]) / 2, reference)

    # the naive alternative (mean of micro-batch means) is measurably different: the test can fail
    naive = _grad(weight, [token_loss_sum(x @ weight, t)[0] / int((t != IGNORE_INDEX).sum()) / 3 for x, t in batches])
    assert not torch.allclose(naive, reference, atol=1e-4)


# ---------------------------------------------------------------------------------------
# step plan and schedule
# ---------------------------------------------------------------------------------------
def test_plan_steps_counts_epochs_and_max_steps():
    plan = plan_steps(n_bins=100, batch_size=4, accumulation_steps=2, world_size=2, num_train_epochs=1.5,
                      max_steps=-1, warmup_ratio=0.03)
    assert plan.bins_per_step == 16
    assert plan.steps_per_epoch == 7  # ceil(100 / 16); the 7th step wraps around
    assert plan.total_steps == math.ceil(1.5 * 7)
    assert plan.warmup_steps == 1
    assert plan.epoch_of(7) == 1.0
    assert plan_steps(100, 4, 2, 2, 3.0, max_steps=5, warmup_ratio=0.0).total_steps == 5


def test_the_repeated_sequences_of_an_epoch_are_counted():
    """The wrapped last step trains 7 x 16 - 100 = 12 sequences twice; micro_batch_bins agrees."""
    import numpy as np

    from zhlora.training.packing import micro_batch_bins

    plan = plan_steps(100, 4, 2, 2, 1.0, max_steps=-1, warmup_ratio=0.0)
    assert plan.repeated_per_epoch == 12
    order = np.arange(100)
    seen = [b for step in range(plan.steps_per_epoch) for micro in range(2) for rank in range(2)
            for b in micro_batch_bins(order, step, micro, rank, 2, 4, 2)]
    assert len(seen) - len(set(seen)) == plan.repeated_per_epoch and set(seen) == set(range(100))
    assert plan_steps(96, 4, 2, 2, 1.0, max_steps=-1, warmup_ratio=0.0).repeated_per_epoch == 0


def test_scheduler_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, "cosine", warmup_steps=2, total_steps=10)
    rates = []
    for _ in range(10):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[:3] == [0.0, 0.5, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(rates[2:])) and rates[-1] < 0.05
    constant = build_lr_scheduler(torch.optim.AdamW([param], lr=1.0), "constant", warmup_steps=0, total_steps=10)
    assert constant.get_last_lr() == [1.0]


# ---------------------------------------------------------------------------------------
# LoRA helpers
# ---------------------------------------------------------------------------------------
def test_parse_init_lora_weights():
    from zhlora.training.lora import is_mutating_init, parse_init_lora_weights

    assert parse_init_lora_weights("true") is True
    assert parse_init_lora_weights("False") is False
    assert parse_init_lora_weights("pissa_niter_4") == "pissa_niter_4"
    assert is_mutating_init("pissa_niter_4") and is_mutating_init("olora") and not is_mutating_init("gaussian")
    with pytest.raises(ConfigError, match="eva"):
        parse_init_lora_weights("eva")


def test_unknown_target_module_lists_the_available_ones():
    from zhlora.training.lora import check_target_modules

    model = torch.nn.Sequential()
    model.add_module("q_proj", torch.nn.Linear(2, 2))
    model.add_module("v_proj", torch.nn.Linear(2, 2))
    check_target_modules(model, ["q_proj"])
    with pytest.raises(ConfigError, match="no linear layer named qkv_proj.*q_proj, v_proj"):
        check_target_modules(model, ["q_proj", "qkv_proj"])


@pytest.mark.parametrize("field,value", [("lora_rank", 0), ("lora_alpha", -1), ("lora_dropout", 1.0), ("lora_dropout", -0.1)])
def test_lora_config_validation(field, value):
    from zhlora.config import LoraSettings

    with pytest.raises(ConfigError, match=field):
        LoraSettings(**{field: value})


# ---------------------------------------------------------------------------------------
# processed data checks
# ---------------------------------------------------------------------------------------
def _save(path, columns):
    import datasets

    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


def test_load_token_rows_reads_flat_arrays(tmp_path):
    from zhlora.training.dataset import load_token_rows

    path = _save(tmp_path / "train_dataset", {"input_ids": [[1, 2, 3], [4, 5]], "labels": [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5]],
                                               "length": [3, 2]})
    rows = load_token_rows(path)
    assert len(rows) == 2 and rows.lengths.tolist() == [3, 2]
    assert rows.row(1)[0].tolist() == [4, 5] and rows.row(0)[1].tolist() == [IGNORE_INDEX, 2, 3]
    assert rows.scored_tokens_per_row().tolist() == [2, 1]


def test_load_token_rows_errors(tmp_path):
    from zhlora.training.dataset import load_token_rows

    with pytest.raises(DataError, match="does not exist"):
        load_token_rows(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "rows.jsonl").write_text("{}\n")
    with pytest.raises(DataError, match="not a processed dataset"):
        load_token_rows(tmp_path / "plain")
    with pytest.raises(DataError, match="lacks the column"):
        load_token_rows(_save(tmp_path / "nolabels", {"input_ids": [[1, 2]]}))
    with pytest.raises(DataError, match="row 1: `labels` and `input_ids` have different lengths"):
        load_token_rows(_save(tmp_path / "ragged", {"input_ids": [[1, 2], [3, 4]], "labels": [[1, 2], [3]]}))


def test_check_rows_fit(tmp_path):
    from zhlora.training.dataset import check_rows_fit, load_token_rows

    rows = load_token_rows(_save(tmp_path / "d", {"input_ids": [[1, 2, 3], [4, 5]], "labels": [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5]]}))
    check_rows_fit(rows, max_seq_length=3, embedding_rows=10, dataset_path="d")
    with pytest.raises(DataError, match="longer than --max_seq_length 2"):
        check_rows_fit(rows, 2, 10, "d")
    with pytest.raises(DataError, match="token id 5 is outside"):
        check_rows_fit(rows, 3, 5, "d")
    unscored = load_token_rows(_save(tmp_path / "u", {"input_ids": [[1, 2]], "labels": [[IGNORE_INDEX, IGNORE_INDEX]]}))
    with pytest.raises(DataError, match="nothing to learn"):
        check_rows_fit(unscored, 3, 10, "u")


class _FakeTokenizer:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_tokenizer_mismatch_is_refused(tmp_path):
    from zhlora.data.preprocess import tokenizer_identity
    from zhlora.training.dataset import check_tokenizer_matches, read_processed_meta

    made_with = _FakeTokenizer({"<unk>": 0, "a": 1, "b": 2})
    made_with.name_or_path, made_with.bos_token_id, made_with.eos_token_id = "tok-a", None, None
    (tmp_path / "train_dataset").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer": tokenizer_identity(made_with)}))
    meta, meta_path = read_processed_meta(tmp_path / "train_dataset")
    check_tokenizer_matches(meta, meta_path, made_with, "models/a")
    with pytest.raises(DataError, match="different tokenizer.*tok-a.*Rerun `zhlora preprocess"):
        check_tokenizer_matches(meta, meta_path, _FakeTokenizer({"<unk>": 0, "a": 1, "c": 2}), "models/b")
    with pytest.raises(DataError, match="meta.json is missing"):
        read_processed_meta(tmp_path / "elsewhere" / "train_dataset")


# ---------------------------------------------------------------------------------------
# the run folder
# ---------------------------------------------------------------------------------------
def test_run_fingerprint_ignores_reporting_settings():
    from dataclasses import asdict

    from zhlora.config import TrainConfig
    from zhlora.training.outputs import run_fingerprint

    base = asdict(TrainConfig())
    same = run_fingerprint({"r": 1}, {**base, "logging_steps": 1, "save_steps": 7}, {}, "w", "d")
    assert same == run_fingerprint({"r": 1}, base, {}, "w", "d")
    assert run_fingerprint({"r": 1}, {**base, "learning_rate": 1.0}, {}, "w", "d") != same
    assert run_fingerprint({"r": 1}, base, {}, "w", "other data") != same


def test_decide_start(tmp_path):
    from zhlora.filenames import RUN_MANIFEST
    from zhlora.training.outputs import RunStart, clear_run_artefacts, decide_start

    out = tmp_path / "run"
    assert decide_start(out, "fp", resume=False, overwrite=False) == RunStart("fresh")
    with pytest.raises(ZhloraError, match="no checkpoint to resume"):
        decide_start(out, "fp", resume=True, overwrite=False)
    checkpoint = out / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 4, "run_fingerprint": "fp"}))
    assert decide_start(out, "fp", resume=False, overwrite=False) == RunStart("resume", checkpoint)
    with pytest.raises(ZhloraError, match="checkpoints of a different run"):
        decide_start(out, "other", resume=False, overwrite=False)
    (out / "adapter_model.safetensors").write_bytes(b"x")
    (out / RUN_MANIFEST).write_text(json.dumps({"run_fingerprint": "fp"}))
    assert decide_start(out, "fp", resume=False, overwrite=False) == RunStart("complete")
    with pytest.raises(ZhloraError, match="different run.*--overwrite"):
        decide_start(out, "other", resume=False, overwrite=False)
    assert decide_start(out, "other", resume=False, overwrite=True) == RunStart("fresh")
    (out / "notes.txt").write_text("mine")
    clear_run_artefacts(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
