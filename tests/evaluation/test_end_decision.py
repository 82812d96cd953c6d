"""The end decision after a continuation (LoglikelihoodRequest.end_until) against direct forward passes."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.evaluation.harness import Harness
from research.evaluation.requests import LoglikelihoodRequest
from research.models import ConfigError
from tests.evaluation.conftest import IdTokenizer, text, tiny_model

EOS = IdTokenizer.eos_id
CASES = [([5, 9, 12, 40], [17, 3]), ([7], [60, 61, 62]), ([33, 34, 35, 36, 37], [8])]


@functools.partial(jax.jit, static_argnums=0)
def _decoder_log_probs(model, params, tokens_1T):
    return jax.nn.log_softmax(model.apply({"params": params}, tokens_1T)[0].astype(jnp.float32), axis=-1)


def _next_after(model, params, ids) -> np.ndarray:
    """log p(next token | ids) over the vocabulary, by one plain forward pass (right padding)."""
    buffer = np.zeros((1, 16), np.int32)
    buffer[0, :len(ids)] = ids
    return np.asarray(_decoder_log_probs(model, params, buffer))[len(ids) - 1]


def _check(results, expected_next, vocab_limit, stop_sets):
    for result, log_probs, stops in zip(results, expected_next, stop_sets):
        assert result.end_log_prob == pytest.approx(float(np.logaddexp.reduce(log_probs[list(stops)])), abs=1e-5)
        assert result.end_is_greedy == (int(log_probs[:vocab_limit].argmax()) in stops)


def test_decoder_end_is_the_mass_on_the_ids_generation_stops_on():
    model, params = tiny_model("gpt2-tiny")
    harness = Harness(model, params, IdTokenizer(), batch_size=2)
    expected = [_next_after(model, params, c + t) for c, t in CASES]
    greedy = [int(lp[:harness.vocab_limit].argmax()) for lp in expected]
    assert EOS not in greedy  # so that the second request set below is the one that ends greedily
    plain = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t)) for c, t in CASES])
    assert all(r.end_log_prob is None and r.end_is_greedy is None for r in plain)
    # eos alone (no stop strings): not the argmax, so greedy decoding would go on.
    eos_only = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t), end_until=()) for c, t in CASES])
    _check(eos_only, expected, harness.vocab_limit, [{EOS}] * len(CASES))
    assert not any(r.end_is_greedy for r in eos_only)
    # A one-token stop string that is the argmax: greedy decoding ends there.
    stops = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t), end_until=(text([g]),))
                                   for (c, t), g in zip(CASES, greedy)])
    _check(stops, expected, harness.vocab_limit, [{EOS, g} for g in greedy])
    assert all(r.end_is_greedy for r in stops)
    # A stop string of two characters that no single id's text begins with: only eos counts.
    long_stop = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t), end_until=(text([g, 5]),))
                                       for (c, t), g in zip(CASES, greedy)])
    _check(long_stop, expected, harness.vocab_limit, [{EOS}] * len(CASES))
    # The continuation's own scores, now from the row that also scores the end, do not move.
    for a, b in zip(plain, stops):
        np.testing.assert_allclose(b.token_log_probs, a.token_log_probs, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(a.token_is_greedy, b.token_is_greedy)
        assert a.truncated == b.truncated and a.tokens == b.tokens
    # Requests with and without end_until in one call come back in their order.
    mixed = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t), end_until=(text([g]),) if k % 2 else None)
                                   for k, ((c, t), g) in enumerate(zip(CASES, greedy))])
    for k, result in enumerate(mixed):
        reference = stops[k] if k % 2 else plain[k]
        assert result.end_log_prob == reference.end_log_prob and result.tokens == reference.tokens
        np.testing.assert_allclose(result.token_log_probs, reference.token_log_probs, rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="end_until='x' must be a tuple"):
        harness.loglikelihood([LoglikelihoodRequest("a", "b", end_until="x")])


@functools.partial(jax.jit, static_argnums=0)
def _seq2seq_log_probs(model, params, source_1S, target_1T):
    return jax.nn.log_softmax(model.apply({"params": params}, source_1S, target_1T)[0], axis=-1)


def test_encoder_decoder_end_is_scored_after_the_target():
    model, params = tiny_model("t5-tiny")
    harness = Harness(model, params, IdTokenizer(), batch_size=2)
    start = model.config.decoder_start_token_id
    expected = []
    for source, target in CASES:
        buffer = np.zeros((1, 8), np.int32)
        buffer[0, :len(target) + 1] = [start] + target  # the decoder input after the whole target
        encoder_input = [*source, EOS]  # the eos every encoder input of this codebase's T5s ends with
        log_probs = _seq2seq_log_probs(model, params, jnp.asarray([encoder_input]), buffer)
        expected.append(np.asarray(log_probs)[len(target)])
    greedy = [int(lp[:harness.vocab_limit].argmax()) for lp in expected]
    other = [next(i for i in range(3, 96) if i != g) for g in greedy]
    results = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t), end_until=(text([o]),))
                                     for (c, t), o in zip(CASES, other)])
    _check(results, expected, harness.vocab_limit, [{EOS, o} for o in other])
    assert [r.end_is_greedy for r in results] == [g == EOS for g in greedy]


def _sum_tokenizer(tmp_path):
    """A SentencePiece tokenizer of "a+b=c" lines, in which encode("\\n") alone gives two ids
    (word-start piece, newline piece), and sentencepiece's own processor of the same model."""
    import random

    import sentencepiece as spm

    from research.data.config import TokenizerConfig
    from research.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    lines = [f"{rng.randint(10, 9999)}+{rng.randint(10, 9999)}={rng.randint(10, 99999)}" for _ in range(3000)]
    tokenizer = train_tokenizer(["\n".join(lines)], TokenizerConfig(vocab_size=19, byte_fallback=False,
                                                                    character_coverage=1.0), str(tmp_path / "t.model"))
    assert len(tokenizer.encode("\n")) == 2  # the premise
    return tokenizer, spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model"))


def test_end_mask_holds_a_sentencepiece_newline_piece_that_encode_splits(tmp_path):
    # The emergence study's tokenizer: encode("\n") alone is the word-start piece and the
    # newline piece, so no one-token stop string exists, yet after an answer the model writes the
    # newline piece alone and generate_until cuts the text there. With only one-token stop
    # strings counted, the end was right on no item of a cpu_tiny run (exact match 0.94 beside it).
    tokenizer, oracle = _sum_tokenizer(tmp_path)
    model, params = tiny_model("gpt2-tiny", vocab_size=32)
    harness = Harness(model, params, tokenizer)
    assert set(np.flatnonzero(harness.end_mask(("\n",)))) == {oracle.eos_id(), oracle.piece_to_id("\n")}
    assert set(np.flatnonzero(harness.end_mask(()))) == {oracle.eos_id()}
    plus_ids = {i for i in range(oracle.get_piece_size()) if oracle.id_to_piece(i).lstrip("\u2581").startswith("+")}
    assert set(np.flatnonzero(harness.end_mask(("+", "\n")))) == {oracle.eos_id(), oracle.piece_to_id("\n")} | plus_ids


def test_generation_stops_on_a_piece_holding_the_stop_string_with_the_text_it_had_without_stopping(tmp_path):
    # With only one-token stop strings, a stop that encodes to two ids alone ("\\n", or a digit:
    # word-start piece + the piece) stopped nothing: every row ran to max_new_tokens and the text
    # was cut afterwards. A piece whose text holds the stop now ends the row; the text is the one
    # the full-length run cuts.
    from research.evaluation.requests import GenerateRequest, cut_at_stop

    tokenizer, oracle = _sum_tokenizer(tmp_path)
    model, params = tiny_model("gpt2-tiny", vocab_size=32)
    harness = Harness(model, params, tokenizer, batch_size=4)
    assert {oracle.piece_to_id("\n"), oracle.eos_id()} <= set(harness._stop_tokens(("\n",)))
    prompts = [f"{a}+{b}=" for a, b in ((12, 345), (9, 87), (4321, 5), (66, 77), (100, 2000), (3, 4))]
    full = harness.generate_until([GenerateRequest(p, (), 12) for p in prompts])
    # A piece some row writes before its last token, as the stop string.
    stop = next(text for r in full for i in r.tokens[:-1] if (text := tokenizer.decode([i]).strip()))
    assert len(tokenizer.encode(stop)) == 2  # the premise: no one-token stop string
    stopped = harness.generate_until([GenerateRequest(p, (stop,), 12) for p in prompts])
    assert [r.text for r in stopped] == [cut_at_stop(tokenizer.decode(list(r.tokens)), (stop,)) for r in full]
    assert sum(map(len, (r.tokens for r in stopped))) < sum(map(len, (r.tokens for r in full)))
    assert all(stop not in tokenizer.decode([i]) for r in stopped for i in r.tokens[:-1])  # ended at the first
