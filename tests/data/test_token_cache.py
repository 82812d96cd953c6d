"""The token cache: batches bit-identical to an uncached pipeline; each document encoded once."""
import itertools
import pickle

import grain
import numpy as np
import pytest

from research.data import DataConfig, get_objective, make_batch_iterator
from research.data import token_cache
from research.data.config import SyntheticConfig, TokenizerConfig
from research.data.pipeline import batches_from_token_documents
from research.data.sources import document_source

SMALL = DataConfig(max_documents=6)  # 6 documents: a few hundred batches are many epochs


def _uncached(config: DataConfig, tokenizer, objective: str, seq_len: int):
    """The pipeline as it was before the cache: encode on every read, grain's reader threads."""
    return iter(batches_from_token_documents(
        document_source(config, "train").map(tokenizer.encode), objective=get_objective(objective),
        special=tokenizer.special_tokens(), batch_size=2, seq_len=seq_len, seed=3))


@pytest.mark.parametrize("objective", ["causal_lm", "masked_lm", "span_corruption"])
def test_cached_batches_equal_uncached_over_many_epochs(objective, tokenizer):
    cached = make_batch_iterator(SMALL, tokenizer=tokenizer, objective=objective, batch_size=2, seq_len=64,
                                 seed=3, shard_index=0, shard_count=1)
    for a, b in itertools.islice(zip(cached, _uncached(SMALL, tokenizer, objective, 64)), 150):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _counting(encode):
    calls = []

    def counted(text):
        calls.append(text)
        return encode(text)
    return counted, calls


def test_each_document_is_encoded_once_and_shared_by_key(tokenizer):
    documents = document_source(SMALL, "train")
    encode, calls = _counting(tokenizer.encode)
    key = ("test-shared", id(documents))
    first = token_cache.cached_token_documents(documents, encode, shared_key=key)
    second = token_cache.cached_token_documents(documents, encode, shared_key=key)  # another run, same source
    for _ in range(3):
        for i in range(len(documents)):
            np.testing.assert_array_equal(first[i], tokenizer.encode(documents[i]))
            np.testing.assert_array_equal(second[i], first[i])
    assert len(calls) == len(documents)
    unshared = token_cache.cached_token_documents(documents, encode)  # per-dataset scope: its own cache
    unshared[0]
    assert len(calls) == len(documents) + 1


def test_cached_tokens_are_read_only(tokenizer):
    documents = document_source(SMALL, "train")
    tokens = token_cache.cached_token_documents(documents, tokenizer.encode)[0]
    with pytest.raises(ValueError, match="read-only"):
        tokens[0] = 1


def test_cache_stops_adding_at_its_token_bound_and_stays_correct(tokenizer, monkeypatch):
    documents = document_source(SMALL, "train")
    monkeypatch.setattr(token_cache, "MAX_CACHED_TOKENS", len(tokenizer.encode(documents[0])))
    encode, calls = _counting(tokenizer.encode)
    cached = token_cache.cached_token_documents(documents, encode)
    for _ in range(2):
        for i in range(len(documents)):
            np.testing.assert_array_equal(cached[i], tokenizer.encode(documents[i]))
    # Document 0 fills the bound; the others are encoded on every read.
    assert len(calls) == 1 + 2 * (len(documents) - 1)


def test_large_corpora_are_not_cached(tokenizer, monkeypatch):
    documents = document_source(SMALL, "train")
    monkeypatch.setattr(token_cache, "MAX_CACHED_DOCUMENTS", len(documents) - 1)
    encode, calls = _counting(tokenizer.encode)
    uncached = token_cache.cached_token_documents(documents, encode)
    uncached[0], uncached[0]
    assert len(calls) == 2 and not token_cache.caches(documents)


def test_synthetic_runs_in_one_process_share_tokens_and_the_cache_pickles(tmp_path):
    from research.data import build_tokenizer
    synthetic = SyntheticConfig(alphabet="abcd", doc_chars=64, num_documents=50)
    config = DataConfig(source="synthetic", synthetic=synthetic, tokenizer=TokenizerConfig(
        vocab_size=synthetic.char_vocab_size, byte_fallback=False, character_coverage=1.0))
    tokenizer = build_tokenizer(config, str(tmp_path))
    def run() -> list[np.ndarray]:
        batches = make_batch_iterator(config, tokenizer=tokenizer, objective="causal_lm", batch_size=2, seq_len=16,
                                      shard_index=0, shard_count=1)
        return [batch["inputs"] for batch in itertools.islice(batches, 40)]

    first = run()
    store = next(reversed(token_cache._SHARED.values()))  # the store the run just used
    documents_read = len(store._arrays)
    assert documents_read > 0
    second = run()
    assert next(reversed(token_cache._SHARED.values())) is store and len(store._arrays) == documents_read
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    source = token_cache.cached_token_documents(grain.MapDataset.source(["ab", "cd"]), tokenizer.encode)
    copy = pickle.loads(pickle.dumps(source))  # grain's mp_prefetch pickles the dataset
    np.testing.assert_array_equal(copy[1], tokenizer.encode("cd"))
