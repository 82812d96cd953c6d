"""make_batch_iterator: schema per objective, exact resume (also through orbax), sharding, errors."""
import itertools

import grain
import numpy as np
import pytest

from research.data import DataConfig, DataError, get_objective, make_batch_iterator
from research.data.pipeline import batches_from_token_documents
from tests.data.handmade import HANDMADE

SMALL = DataConfig(max_documents=6)


def _take(iterator, n):
    return list(itertools.islice(iterator, n))


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _segments(batches, key="inputs", segment_key="segment_ids"):
    """Every packed segment (a document window) as a tuple of token ids."""
    out = []
    for batch in batches:
        for tokens, segments in zip(batch[key], batch[segment_key]):
            out.extend(tuple(tokens[segments == s]) for s in np.unique(segments[segments > 0]))
    return out


@pytest.mark.parametrize("objective", ["causal_lm", "prefix_lm", "masked_lm", "span_corruption"])
def test_every_objective_yields_its_schema(objective, tokenizer):
    batches = make_batch_iterator(SMALL, tokenizer=tokenizer, objective=objective, batch_size=2, seq_len=64,
                                  shard_index=0, shard_count=1)
    batch = next(batches)
    lengths = get_objective(objective).packed_lengths(64)
    for key, value in batch.items():
        assert value.dtype == (np.float32 if key == "loss_weights" else np.int32), key
        feature = "decoder_targets" if key.startswith("decoder") or key == "loss_weights" else key
        assert value.shape == (2, lengths.get(feature, 64)), key
    assert batch["loss_weights"].sum() > 0
    assert (batch.get("inputs", batch.get("encoder_inputs")) < tokenizer.vocab_size).all()


@pytest.mark.parametrize("objective", ["masked_lm", "span_corruption"])
def test_restored_state_gives_identical_batches(objective, tokenizer):
    kwargs = dict(tokenizer=tokenizer, objective=objective, batch_size=4, seq_len=64, seed=3,
                  shard_index=0, shard_count=1)
    batches = make_batch_iterator(SMALL, **kwargs)
    _take(batches, 3)
    state = batches.get_state()
    expected = _take(batches, 4)
    resumed = make_batch_iterator(SMALL, **kwargs)
    resumed.set_state(state)
    _assert_same(_take(resumed, 4), expected)
    # Same seed from the start: same batches; another seed: another order and masking.
    _assert_same(_take(make_batch_iterator(SMALL, **kwargs), 3), _take(make_batch_iterator(SMALL, **kwargs), 3))
    other = next(make_batch_iterator(SMALL, **{**kwargs, "seed": 4}))
    first = next(make_batch_iterator(SMALL, **kwargs))
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_orbax_checkpoints_the_iterator(tokenizer, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    kwargs = dict(tokenizer=tokenizer, objective="causal_lm", batch_size=2, seq_len=32, shard_index=0, shard_count=1)
    batches = make_batch_iterator(SMALL, **kwargs)
    _take(batches, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(batches)))
        manager.wait_until_finished()
    expected = _take(batches, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        resumed = make_batch_iterator(SMALL, **kwargs)
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    _assert_same(_take(resumed, 3), expected)


def test_process_shards_are_disjoint_and_cover_one_epoch(tokenizer):
    kwargs = dict(tokenizer=tokenizer, objective="causal_lm", batch_size=4, seq_len=256, num_epochs=1)
    whole = _segments(make_batch_iterator(SMALL, shard_index=0, shard_count=1, **kwargs))
    shards = [_segments(make_batch_iterator(SMALL, shard_index=i, shard_count=3, **kwargs)) for i in range(3)]
    for a, b in itertools.combinations(shards, 2):
        assert not set(a) & set(b)
    assert sorted(sum(shards, [])) == sorted(whole)  # one epoch: every window exactly once


def test_finite_epochs_pad_the_last_batch(tokenizer):
    kwargs = dict(tokenizer=tokenizer, objective="causal_lm", batch_size=8, seq_len=512, shard_index=0, shard_count=1)
    config = DataConfig(max_documents=2)
    batches = list(make_batch_iterator(config, num_epochs=2, **kwargs))
    assert all(b["inputs"].shape == (8, 512) for b in batches)
    empty_rows = ~batches[-1]["segment_ids"].any(axis=1)
    assert not batches[-1]["loss_weights"][empty_rows].any()
    once = _segments(make_batch_iterator(config, num_epochs=1, **kwargs))
    assert sorted(_segments(batches)) == sorted(once * 2)  # each window once per epoch, none dropped


def test_bad_inputs_fail_before_reading_data(tokenizer, tmp_path):
    kwargs = dict(tokenizer=tokenizer, objective="causal_lm", batch_size=2, shard_index=0, shard_count=1)
    with pytest.raises(DataError, match="seq_len=1024 is longer than the model's max_len=512"):
        make_batch_iterator(SMALL, seq_len=1024, model_max_len=512, **kwargs)
    with pytest.raises(DataError, match=f"vocab_size={tokenizer.vocab_size} is larger"):
        make_batch_iterator(SMALL, seq_len=64, model_vocab_size=256, **kwargs)
    with pytest.raises(DataError, match="shard_index=2 must be in"):
        make_batch_iterator(SMALL, seq_len=64, **{**kwargs, "shard_index": 2, "shard_count": 2})
    with pytest.raises(DataError, match="shard 7 of 8 is empty"):
        make_batch_iterator(SMALL, seq_len=64, **{**kwargs, "shard_index": 7, "shard_count": 8})
    with pytest.raises(DataError, match="matches no files"):
        make_batch_iterator(DataConfig(source="files", file_patterns=(str(tmp_path / "*.txt"),)), seq_len=64,
                            **kwargs)
    with pytest.raises(DataError, match="unknown TFDS dataset"):
        make_batch_iterator(DataConfig(source="tfds", tfds_name="not_a_dataset", data_dir=str(tmp_path)),
                            seq_len=64, **kwargs)


def test_shards_default_to_the_jax_process(tokenizer):
    kwargs = dict(tokenizer=tokenizer, objective="causal_lm", batch_size=2, seq_len=32)
    _assert_same(_take(make_batch_iterator(SMALL, **kwargs), 2),  # one process here: index 0 of 1
                 _take(make_batch_iterator(SMALL, shard_index=0, shard_count=1, **kwargs), 2))


def _epoch_orders(seed, num_docs=50, epochs=3):
    """The document order of each epoch: document i is the single token 5 + i."""
    docs = [np.array([5 + i], np.int32) for i in range(num_docs)]
    ds = batches_from_token_documents(grain.MapDataset.source(docs), objective=get_objective("causal_lm"),
                                      special=HANDMADE, batch_size=1, seq_len=2, seed=seed, num_epochs=epochs,
                                      num_packing_bins=1, read_threads=0)
    order = [int(batch["inputs"][0, 0]) - 5 for batch in ds]
    return [tuple(order[e * num_docs:(e + 1) * num_docs]) for e in range(epochs)]


def test_no_two_seeds_share_an_epoch_order():
    # grain orders epoch e by seed + e: run seeds passed to it as they were, seed 0's epoch 1 was
    # seed 1's epoch 0 (and seed 1's epoch 1 seed 2's epoch 0), so seed repeats saw one sequence.
    orders = {(seed, epoch): order for seed in range(4) for epoch, order in enumerate(_epoch_orders(seed))}
    assert all(sorted(order) == list(range(50)) for order in orders.values())
    assert len(set(orders.values())) == len(orders), "two (seed, epoch) pairs share a document order"


def test_seed_0_orders_its_epochs_as_it_always_did():
    """Published studies ran at seed 0: its epoch e is grain's index shuffle at seed e, as before
    the seeds were spread (see pipeline._SEED_STRIDE)."""
    from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

    expected = [tuple(index_shuffle_module.index_shuffle(i, max_index=49, seed=epoch, rounds=4) for i in range(50))
                for epoch in range(3)]
    assert _epoch_orders(0) == expected
