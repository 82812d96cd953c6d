"""The reachable loss on the synthetic corpus: conditional entropies by context length, window bound."""
import collections

import numpy as np
import pytest

from research.scaling.synthetic_bound import (conditional_tables, context_entropies_nats, eval_set_oracle_nats,
                                              oracle_loss_nats, window_bound_nats)
from research.scaling.synthetic_corpus import markov_source, synthetic_documents


def plug_in_conditional_entropy(text: str, j: int) -> float:
    """H(X_t | previous j characters) estimated from counts of (j+1)-grams in `text`."""
    grams = collections.Counter(text[i:i + j + 1] for i in range(len(text) - j))
    contexts = collections.Counter()
    for gram, count in grams.items():
        contexts[gram[:-1]] += count
    total = sum(grams.values())
    return -sum(count / total * np.log(count / contexts[gram[:-1]]) for gram, count in grams.items())


def test_context_entropies_match_counts_in_sampled_text():
    options = dict(alphabet="abcd", order=2, concentration=0.5)
    source = markov_source(1, **options)
    entropies = context_entropies_nats(source)
    assert list(entropies) == sorted(entropies, reverse=True)  # more context never hurts
    assert entropies[-1] == pytest.approx(source.entropy_rate_nats(), abs=1e-12)
    text = "".join(synthetic_documents(0, 40, 5000, source_seed=1, **options))
    for j, expected in enumerate(entropies):
        assert plug_in_conditional_entropy(text, j) == pytest.approx(expected, abs=0.01), j


def _binary_entropy_times(m: int) -> float:
    """m h(1/m): what predicting eos with probability 1/m at m like inputs costs in all."""
    return float(np.log(m) + (m - 1) * np.log(m / (m - 1)))


def test_window_bound_counts_the_context_each_window_starts_without_and_the_eos():
    source = markov_source(0, alphabet="abcdefgh", order=2, concentration=0.2)
    h0, h1, h2 = context_entropies_nats(source)
    # 8 characters in windows of 4 inputs: tokens ▁ c1 c2 c3 | c4 c5 c6 c7 | c8 eos. Token i is
    # predicted from the inputs of its window up to i - 1: c1 from [▁] (no character), c2 from
    # [▁ c1], c4 from [▁ c1 c2 c3], c5 from [c4] (one), c8 from [c4 c5 c6 c7]. The eos follows
    # c8, the first input of a window without ▁, as c4 is: P(eos) = 1/2 there; 2 ln 2 per document.
    contexts = [0, 1, 2, 2, 1, 2, 2, 2]
    characters = sum((h0, h1, h2)[c] for c in contexts)
    assert window_bound_nats(source, 8, 4) == pytest.approx((characters + 2 * np.log(2)) / 9)
    # One window holds the whole document with its ▁: the eos's place is known, it costs nothing.
    assert window_bound_nats(source, 10_000, 10_001) == pytest.approx((h0 + h1 + 9_998 * h2) / 10_001)
    # 1024 characters, windows of 64: c1 sees none, c2 and the first target of 15 later windows
    # one; the eos follows c1024, the first input of window 16, as c64, ..., c960 are (m = 16).
    expected = (h0 + 16 * h1 + 1007 * h2 + _binary_entropy_times(16)) / 1025
    assert window_bound_nats(source, 1024, 64) == pytest.approx(expected)
    # 10 characters in windows of 4: the eos follows c10 at window position 2, as c6 does (c2 is
    # in the ▁ window, which a model tells apart): m = 2.
    contexts = [0, 1, 2, 2, 1, 2, 2, 2, 1, 2]
    characters = sum((h0, h1, h2)[c] for c in contexts)
    assert window_bound_nats(source, 10, 4) == pytest.approx((characters + 2 * np.log(2)) / 11)
    with pytest.raises(ValueError, match="seq_len=1"):
        window_bound_nats(source, 8, 1)


def _one_window_batch(ids: list[int], seq_len: int) -> dict:
    """The batch causal_lm_examples makes of one document's tokens when they fit one window."""
    inputs = np.zeros((1, seq_len), np.int32)
    targets = np.zeros((1, seq_len), np.int32)
    weights = np.zeros((1, seq_len), np.float32)
    inputs[0, :len(ids)] = ids
    targets[0, :len(ids) - 1] = ids[1:]
    weights[0, :len(ids) - 1] = 1.0
    return {"inputs": inputs, "targets": targets, "positions": np.arange(seq_len)[None], "loss_weights": weights}


def test_oracle_loss_prices_each_target_from_its_own_window_by_hand():
    # Token ids: 0 = "▁", 1 = eos, 2 + s = letter s.
    symbol_of_id = np.array([-1, -1, 0, 1, 2])
    source = markov_source(2, alphabet="abc", order=2, concentration=0.5)
    text = [0, 2, 2, 1, 0, 0, 1, 2, 1, 1]  # letters c1..c10
    ids = [0, *[2 + s for s in text], 1]
    h0_table, h1_table = (np.asarray(t) for t in conditional_tables(source)[:2])
    # One window holds the document: c1 from nothing, c2 from c1, c3.. from the source's own
    # full contexts (its log_probs, an independent indexing of contexts); the eos costs nothing.
    full = source.log_probs(np.array(text[2:]), first_context=text[0] * 3 + text[1])
    expected = -(np.log(h0_table[0, text[0]]) + np.log(h1_table[text[0], text[1]]) + full.sum()) / 11
    loss, count = oracle_loss_nats(source, [_one_window_batch(ids, 12)], symbol_of_id=symbol_of_id, eos_id=1,
                                   prefix_id=0, doc_chars=10, seq_len=12)
    assert count == 11 and loss == pytest.approx(expected, rel=1e-12)
    assert h0_table[0] == pytest.approx(source.stationary_S().reshape(3, 3).sum(axis=0))
    # Windows of 4 inputs: ▁ c1 c2 c3 | c4 c5 c6 c7 | c8 c9 c10 eos. c5 sees only c4, c6 c4 c5; the eos
    # follows c10 at window position 2, as c6 does (m = 2): eos ln 2, c7 pays ln 2 besides its own.
    inputs = np.array([ids[0:4], ids[4:8], ids[8:12]], np.int32)
    targets = np.array([ids[1:5], ids[5:9], ids[9:12] + [0]], np.int32)
    weights = np.ones((3, 4), np.float32)
    weights[2, 3] = 0.0
    batch = {"inputs": inputs, "targets": targets, "positions": np.tile(np.arange(4), (3, 1)), "loss_weights": weights}
    tables = conditional_tables(source)
    nats = [-np.log(h0_table[0, text[0]])]
    for t in range(1, 10):  # text[t] is token t + 1, predicted from the inputs of its window up to token t
        window_start = t // 4 * 4
        seen = text[max(window_start - 1, 0, t - 2):t]  # the window's characters (▁ is token 0), last 2
        nats.append(-np.log(tables[len(seen)][seen[0] * 3 + seen[1] if len(seen) == 2 else seen[0], text[t]]))
    nats[6] += np.log(2)  # c7, predicted at window position 2 like the eos
    expected = (sum(nats) + np.log(2)) / 11
    loss, count = oracle_loss_nats(source, [batch], symbol_of_id=symbol_of_id, eos_id=1, prefix_id=0,
                                   doc_chars=10, seq_len=4)
    assert count == 11 and loss == pytest.approx(expected, rel=1e-12)


def test_oracle_on_the_pipelines_validation_batches_agrees_with_the_window_bound(tmp_path):
    """The bound's windows are the pipeline's: the source's own predictor, scored on the packed
    validation batches the train loop evaluates, lands on window_bound_nats within sampling noise,
    while the entropy rate (no window starts) lies far outside it."""
    from research.data import DataConfig, TokenizerConfig, build_tokenizer

    synthetic = dict(alphabet="abcdefgh", order=2, concentration=0.3, doc_chars=60, num_documents=4000, source_seed=3)
    config = DataConfig(source="synthetic", validation_fraction=0.25, synthetic=synthetic,
                        tokenizer=TokenizerConfig(vocab_size=15, byte_fallback=False, character_coverage=1.0))
    tokenizer = build_tokenizer(config, str(tmp_path))
    result = eval_set_oracle_nats(config, tokenizer, batch_size=16, seq_len=8, num_batches=400)
    source = markov_source(3, alphabet="abcdefgh", order=2, concentration=0.3)
    bound = window_bound_nats(source, 60, 8)
    assert 0.9 * 400 * 16 * 8 < result["targets"] <= 400 * 16 * 8  # the packed rows are nearly full
    assert result["loss"] == pytest.approx(bound, abs=0.01)
    assert abs(source.entropy_rate_nats() - bound) > 0.1
    # Asked for more batches than the split holds, it scores one epoch, as the loop's evaluation
    # does (it read on into a reshuffled second epoch the runs were no longer scored on).
    from research.data import make_batch_iterator
    epoch = list(make_batch_iterator(config, tokenizer=tokenizer, objective="causal_lm", batch_size=16, seq_len=8,
                                     split="validation", seed=0, num_epochs=1))
    whole = eval_set_oracle_nats(config, tokenizer, batch_size=16, seq_len=8, num_batches=10 * len(epoch))
    assert whole["batches"] == len(epoch) and whole["targets"] == sum(int(b["loss_weights"].sum()) for b in epoch)


def test_oracle_refuses_an_alphabet_with_a_space_by_naming_it(tmp_path):
    from research.data import DataConfig, TokenizerConfig, build_tokenizer

    config = DataConfig(source="synthetic", validation_fraction=0.1,
                        synthetic=dict(alphabet="abcdefg ", order=1, doc_chars=50, num_documents=100),
                        tokenizer=TokenizerConfig(vocab_size=14, byte_fallback=False, character_coverage=1.0))
    with pytest.raises(ValueError, match=r"alphabet 'abcdefg ' holds a space"):
        eval_set_oracle_nats(config, build_tokenizer(config, str(tmp_path)), batch_size=4, seq_len=8, num_batches=1)
