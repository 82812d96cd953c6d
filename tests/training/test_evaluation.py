"""The loop's evaluation: batches evaluated several per call give the figures of one call per batch."""
import math

import jax
import numpy as np
import pytest

from research.models import build_model, get_config
from research.sharding import DEFAULT_RULES
from research.training import evaluation, losses, partitioning
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import abstract_batch, create_train_state
from research.training.train_step import make_eval_step

from tests.training.conftest import synthetic_batch

NUM_BATCHES = 7


@pytest.fixture(scope="module")
def setup():
    config = get_config("gpt2-tiny", num_layers=1, vocab_size=128, max_len=16)
    model = build_model(config)
    objective = losses.get_objective("causal_lm", config.family)
    # Rows with different numbers of target tokens, so the token weighting matters.
    batches = [synthetic_batch("decoder", 8, 16, 128, seed=i, ragged_weights=True) for i in range(NUM_BATCHES)]
    mesh = partitioning.make_training_mesh((8, 1, 1))
    optimizer, _ = make_optimizer(OptimizerConfig(total_steps=10))
    state, shardings = create_train_state(model, objective, optimizer, abstract_batch(batches[0]), mesh,
                                          DEFAULT_RULES, seed=0)
    return model, objective, batches, mesh, state, shardings


def _one_call_per_batch(eval_step, params, batches, sharding):
    """The evaluation as it was: a compiled call and a fetch per batch, float64 sums in batch order."""
    compiled = jax.jit(eval_step)
    sums = {"loss_sum": 0.0, "correct_sum": 0.0, "num_tokens": 0.0}
    for batch in batches:
        out = jax.device_get(compiled(params, partitioning.shard_batch(batch, sharding)))
        sums = {k: sums[k] + float(np.float64(out[k])) for k in sums}
    loss = sums["loss_sum"] / sums["num_tokens"]
    return {"eval_loss": loss, "eval_perplexity": math.exp(loss), "eval_accuracy": sums["correct_sum"] / sums["num_tokens"]}


@pytest.mark.parametrize("block_len", [1, 3, 64])  # 7 batches: one per call, 3 + 3 + 1 (padded), all at once
def test_blocked_evaluation_equals_one_call_per_batch(setup, block_len, monkeypatch):
    model, objective, batches, mesh, state, shardings = setup
    eval_step = make_eval_step(model, losses.make_loss_fn(objective, 1e-4))
    sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    monkeypatch.setattr(evaluation, "EVAL_BLOCK_LEN", block_len)
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        expected = _one_call_per_batch(eval_step, state.params, batches, sharding)
        run = evaluation.make_evaluation(eval_step, shardings.params, sharding, lambda: [iter(batches)],
                                         NUM_BATCHES, 1, per_member=False,
                                         batch_bytes=sum(v.nbytes for v in batches[0].values()))
        assert run(state.params) == [expected]
        assert run(state.params) == [expected]  # fresh iterators each time: the same batches


def test_block_length_respects_the_byte_bound():
    assert evaluation.eval_block_len(800, 20_000) == evaluation.EVAL_BLOCK_LEN
    assert evaluation.eval_block_len(5, 20_000) == 5
    assert evaluation.eval_block_len(800, evaluation.MAX_EVAL_BLOCK_BYTES // 3) == 3
    assert evaluation.eval_block_len(800, 2 * evaluation.MAX_EVAL_BLOCK_BYTES) == 1


def test_a_split_holding_fewer_batches_than_asked_is_scored_once_with_one_warning(setup, caplog, monkeypatch):
    """train.eval_batches past one epoch of the validation split: the loop's iterators of one epoch
    end, and each evaluation scores what the split holds, every row once (a reshuffled second epoch
    was averaged in: the scaling preset stdlib_tiny asked 800 batches of a split of 779)."""
    model, objective, batches, mesh, state, shardings = setup
    eval_step = make_eval_step(model, losses.make_loss_fn(objective, 1e-4))
    sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    monkeypatch.setattr(evaluation, "EVAL_BLOCK_LEN", 3)  # the split ends inside the third call
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        expected = _one_call_per_batch(eval_step, state.params, batches, sharding)
        run = evaluation.make_evaluation(eval_step, shardings.params, sharding, lambda: [iter(batches)],
                                         NUM_BATCHES + 5, 1, per_member=False,
                                         batch_bytes=sum(v.nbytes for v in batches[0].values()))
        with caplog.at_level("WARNING", logger="research.training.evaluation"):
            assert run(state.params) == [expected]
            assert run(state.params) == [expected]
    warnings = [r.getMessage() for r in caplog.records if "eval_batches" in r.getMessage()]
    assert warnings == [f"train.eval_batches={NUM_BATCHES + 5} is more than the validation split holds "
                        f"({NUM_BATCHES} batches): each evaluation scores those, every row once (a second, reshuffled "
                        f"epoch was averaged in before 2026-12-07); set train.eval_batches={NUM_BATCHES} or fewer to "
                        "silence this."]


def test_processes_whose_shards_end_apart_all_stop_where_the_shortest_ends(setup, caplog, monkeypatch):
    """Several processes kept the endless validation stream (their shards end at different batches,
    and processes stopping apart hang): 2 of them re-read a reshuffled epoch, without a word. Now
    each call keeps the rows every process has; here another process's shard holds 5 batches."""
    model, objective, batches, mesh, state, shardings = setup
    eval_step = make_eval_step(model, losses.make_loss_fn(objective, 1e-4))
    sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    monkeypatch.setattr(evaluation, "EVAL_BLOCK_LEN", 3)
    other = []  # the other process's batches left, per evaluation: 5, of which 3 go in the first call

    def fewest(count):
        mine = min(count, other[-1])
        other[-1] -= mine
        return mine

    monkeypatch.setattr(evaluation, "_rows_every_process_has", fewest)
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        expected = _one_call_per_batch(eval_step, state.params, batches[:5], sharding)
        run = evaluation.make_evaluation(eval_step, shardings.params, sharding, lambda: [iter(batches)],
                                         NUM_BATCHES + 5, 1, per_member=False,
                                         batch_bytes=sum(v.nbytes for v in batches[0].values()))
        with caplog.at_level("WARNING", logger="research.training.evaluation"):
            for _ in range(2):
                other.append(5)
                assert run(state.params) == [expected]
    warnings = [r.getMessage() for r in caplog.records if "eval_batches" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(
        f"train.eval_batches={NUM_BATCHES + 5} is more than the validation split holds (5 batches)")


def test_the_loop_scores_one_epoch_of_a_short_validation_split(tokenizers, tmp_path, caplog):
    """The loop's wiring: its validation iterators end after one epoch (they repeated forever)."""
    import re

    from research.training import train_and_evaluate
    from tests.training.conftest import run_config
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2, eval_every_steps=2, eval_batches=10_000)
    config.checkpoint.every_steps = 2
    with caplog.at_level("WARNING", logger="research.training.evaluation"):
        result = train_and_evaluate(config, str(tmp_path))
    (line,) = [r.getMessage() for r in caplog.records if "eval_batches=10000" in r.getMessage()]
    held = int(re.search(r"holds \((\d+) batches\)", line).group(1))
    assert 0 < held < 10_000 and math.isfinite(result["eval_loss"])
