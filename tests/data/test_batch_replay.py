"""Synthetic batch streams replayed within a process: bit-identical batches and states."""
import copy
import dataclasses
import itertools
import json

import numpy as np
import pytest

from research.data import DataConfig, build_tokenizer, make_batch_iterator
from research.data import batch_replay
from research.data.batch_replay import ReplayIterator
from research.data.config import SyntheticConfig, TokenizerConfig
from research.data.pipeline import _synthetic_key, make_batch_dataset

SYNTHETIC = SyntheticConfig(alphabet="abcdef", order=2, doc_chars=200, num_documents=60)
CONFIG = DataConfig(source="synthetic", synthetic=SYNTHETIC, tokenizer=TokenizerConfig(
    vocab_size=SYNTHETIC.char_vocab_size, byte_fallback=False, character_coverage=1.0))
ARGS = dict(objective="causal_lm", batch_size=3, seq_len=32, seed=5, shard_index=0, shard_count=1)


@pytest.fixture(scope="module")
def synthetic_tokenizer(tmp_path_factory):
    return build_tokenizer(CONFIG, str(tmp_path_factory.mktemp("synthetic-tok")))


@pytest.fixture(autouse=True)
def fresh_streams():
    batch_replay.clear()
    yield
    batch_replay.clear()


def _plain(tokenizer, **overrides):
    """The real pipeline's iterator, never replayed."""
    return iter(make_batch_dataset(CONFIG, tokenizer=tokenizer, **{**ARGS, **overrides}))


def _replayed(tokenizer, **overrides):
    iterator = make_batch_iterator(CONFIG, tokenizer=tokenizer, **{**ARGS, **overrides})
    assert isinstance(iterator, ReplayIterator)
    return iterator


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_runs_replay_the_pipelines_batches_and_states_bit_for_bit(synthetic_tokenizer):
    plain = _plain(synthetic_tokenizer)
    first, second = _replayed(synthetic_tokenizer), _replayed(synthetic_tokenizer)
    assert first.get_state() == plain.get_state()
    for n in range(200):  # many epochs of the 60-document corpus
        expected = next(plain)
        _assert_same(next(first), expected)  # computed, then stored
        assert first.get_state() == plain.get_state()
    stream = next(reversed(batch_replay._STREAMS.values()))
    assert len(stream.batches) == 200
    plain = _plain(synthetic_tokenizer)
    for n in range(250):  # the second run reads 200 from the stream, then extends it
        _assert_same(next(second), next(plain))
        assert second.get_state() == plain.get_state()
    assert len(stream.batches) == 250
    batch = next(second)
    batch["inputs"][0, 0] = -7  # a caller may write into its batch; the stream keeps its copy
    _assert_same(next(_replayed(synthetic_tokenizer)), next(_plain(synthetic_tokenizer)))


def test_other_settings_get_their_own_stream(synthetic_tokenizer):
    for overrides in (dict(seed=6), dict(seq_len=16), dict(batch_size=2), dict(objective="prefix_lm")):
        replayed, plain = _replayed(synthetic_tokenizer), _plain(synthetic_tokenizer)
        list(itertools.islice(replayed, 5))
        other, other_plain = _replayed(synthetic_tokenizer, **overrides), _plain(synthetic_tokenizer, **overrides)
        for _ in range(5):
            _assert_same(next(other), next(other_plain))


def test_set_state_resumes_from_the_stream_or_follows_the_pipeline(synthetic_tokenizer):
    plain = _plain(synthetic_tokenizer)
    list(itertools.islice(plain, 40))
    state = json.loads(json.dumps(plain.get_state()))  # as a checkpoint stores it
    expected = list(itertools.islice(plain, 30))
    # A new process (empty stream): follows the real pipeline from the state.
    resumed = _replayed(synthetic_tokenizer)
    resumed.set_state(state)
    for batch in expected:
        _assert_same(next(resumed), batch)
    # A known state (the stream holds it): read from the stream, and states stay the pipeline's.
    list(itertools.islice(_replayed(synthetic_tokenizer), 60))
    known = _replayed(synthetic_tokenizer)
    known.set_state(state)
    for batch in expected:
        _assert_same(next(known), batch)
    reference = _plain(synthetic_tokenizer)
    list(itertools.islice(reference, 70))
    assert known.get_state() == reference.get_state()
    known.set_state(json.loads(json.dumps(_plain(synthetic_tokenizer).get_state())))  # back to the start
    _assert_same(next(known), next(_plain(synthetic_tokenizer)))


def test_stream_stops_at_its_byte_bound_and_batches_stay_correct(synthetic_tokenizer, monkeypatch):
    first_batch = next(_plain(synthetic_tokenizer))
    compact_bytes = sum(v.size for v in first_batch.values())  # values fit in uint8
    monkeypatch.setattr(batch_replay, "MAX_REPLAY_BYTES", 10 * compact_bytes)
    list(itertools.islice(_replayed(synthetic_tokenizer), 50))
    stream = next(reversed(batch_replay._STREAMS.values()))
    assert len(stream.batches) == 10 and stream.nbytes == 10 * compact_bytes
    replayed, plain = _replayed(synthetic_tokenizer), _plain(synthetic_tokenizer)
    for _ in range(50):  # 10 from the stream, then from the pipeline moved to batch 10
        _assert_same(next(replayed), next(plain))
        assert replayed.get_state() == plain.get_state()


def test_file_sources_are_not_replayed(tokenizer, small_stdlib):
    iterator = make_batch_iterator(small_stdlib, tokenizer=tokenizer, **ARGS)
    assert not isinstance(iterator, ReplayIterator)


def test_back_to_a_known_state_after_following_an_unknown_one(synthetic_tokenizer):
    list(itertools.islice(_replayed(synthetic_tokenizer), 10))  # the stream holds batches 0..9
    plain = _plain(synthetic_tokenizer)
    list(itertools.islice(plain, 40))
    unknown = plain.get_state()
    replayed = _replayed(synthetic_tokenizer)
    list(itertools.islice(replayed, 12))  # 10 from the stream, 2 by its source (now at batch 12)
    known = replayed.get_state()
    replayed.set_state(unknown)  # follows the source from batch 40
    next(replayed)
    replayed.set_state(known)  # back to batch 12, a state the stream holds
    reference = _plain(synthetic_tokenizer)
    list(itertools.islice(reference, 12))
    for _ in range(5):  # the source must be moved back from batch 41 to batch 12
        _assert_same(next(replayed), next(reference))


def test_another_validation_fraction_is_not_replayed_the_first_runs_batches(synthetic_tokenizer):
    # The key once named the synthetic config but not validation_fraction, which sizes the
    # validation split: a second run with another fraction read the first run's batches.
    other = CONFIG.replace(validation_fraction=0.5)
    args = {**ARGS, "split": "validation"}
    first = list(itertools.islice(make_batch_iterator(CONFIG, tokenizer=synthetic_tokenizer, **args), 12))
    replayed = list(itertools.islice(make_batch_iterator(other, tokenizer=synthetic_tokenizer, **args), 12))
    truth = list(itertools.islice(iter(make_batch_dataset(other, tokenizer=synthetic_tokenizer, **args)), 12))
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, truth))  # the test can fail
    for got, expected in zip(replayed, truth):
        _assert_same(got, expected)


def test_every_data_field_but_the_tokenizer_config_is_in_the_stream_key(synthetic_tokenizer):
    """Robust to fields added later: changing any field (validation bypassed, the key only reads
    them) changes the key; the tokenizer enters through its digest, so an equal config, or one
    naming the same tokenizer another way (a model path in another run's workdir), shares it."""
    def key(config):
        return _synthetic_key(config, synthetic_tokenizer, "validation", 0, 1)
    for field in dataclasses.fields(DataConfig):
        if field.name == "tokenizer":
            continue
        changed = copy.copy(CONFIG)
        object.__setattr__(changed, field.name, f"<another {field.name}>")
        assert key(changed) != key(CONFIG), field.name
    same_run = CONFIG.replace(tokenizer=TokenizerConfig(model_path="/elsewhere/tokenizer.model"))
    assert key(DataConfig(**{f.name: getattr(CONFIG, f.name) for f in dataclasses.fields(CONFIG)})) == key(CONFIG)
    assert key(same_run) == key(CONFIG)
    list(itertools.islice(_replayed(synthetic_tokenizer), 5))
    replayed = make_batch_iterator(same_run, tokenizer=synthetic_tokenizer, **ARGS)
    assert len(replayed._stream.batches) == 5  # the same stream: read, not recomputed


def test_streams_evicted_while_read_stay_within_the_byte_bound(synthetic_tokenizer, monkeypatch):
    # Six seeds trained together (six live keys, MAX_STREAMS=4 kept): the two evicted streams
    # went on growing, uncounted, and the six held 30 batches against a bound of 20.
    per_batch = sum(v.size for v in next(_plain(synthetic_tokenizer)).values())  # compact: uint8
    monkeypatch.setattr(batch_replay, "MAX_REPLAY_BYTES", 20 * per_batch)
    replayed = [_replayed(synthetic_tokenizer, seed=seed) for seed in range(6)]
    plain = [_plain(synthetic_tokenizer, seed=seed) for seed in range(6)]
    for _ in range(30):
        for it, reference in zip(replayed, plain):
            _assert_same(next(it), next(reference))  # batches stay right either way
    held = {id(it._stream): it._stream.nbytes for it in replayed}
    assert len(held) == 6 and sum(held.values()) <= 20 * per_batch
