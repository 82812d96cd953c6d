"""Decoder-only scoring and generation against direct forward passes of the same model."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.evaluation import scoring
from research.evaluation.harness import Harness
from research.evaluation.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest, rolling_windows
from research.models import ConfigError
from tests.evaluation.conftest import IdTokenizer, text, tiny_model

CONTEXTS = [[5, 9, 12, 40], [7], [33, 34, 35, 36, 37, 38, 39, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52]]
CONTINUATIONS = [[17, 3], [60, 61, 62], [8]]


@pytest.fixture(scope="module")
def gpt2():
    return tiny_model("gpt2-tiny")


WIDTH = 64  # one reference compile: right-padding never changes a causal model's earlier outputs


@functools.partial(jax.jit, static_argnums=0)
def _forward_log_probs(model, params, tokens_1T):
    logits = model.apply({"params": params}, tokens_1T)[0]
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _log_probs(model, params, ids):
    """([len(ids) - 1] log p(ids[t+1] | ids[:t+1]), argmax at each position), by a plain forward pass."""
    buffer = np.zeros((1, WIDTH), np.int32)
    buffer[0, :len(ids)] = ids
    log_probs = np.asarray(_forward_log_probs(model, params, buffer))[:len(ids)]
    return log_probs[np.arange(len(ids) - 1), ids[1:]], log_probs.argmax(-1)


def _greedy_rollout(model, params, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(_log_probs(model, params, ids + [0])[1][len(ids) - 1]))
    return ids[len(prompt):]


def test_loglikelihood_is_sum_of_forward_log_probs_and_batching_is_exact(gpt2):
    model, params = gpt2
    requests = [LoglikelihoodRequest(text(c), text(t)) for c, t in zip(CONTEXTS, CONTINUATIONS)]
    batched = Harness(model, params, IdTokenizer(), batch_size=2).loglikelihood(requests)
    for context, continuation, result in zip(CONTEXTS, CONTINUATIONS, batched):
        expected, _ = _log_probs(model, params, context + continuation)
        np.testing.assert_allclose(result.token_log_probs, expected[-len(continuation):], rtol=1e-5, atol=1e-5)
        assert result.log_prob == pytest.approx(float(expected[-len(continuation):].sum()), abs=1e-4)
        assert ((result.token_brier >= 0) & (result.token_brier <= 2)).all()
    one_at_a_time = Harness(model, params, IdTokenizer(), batch_size=1)
    for request, result in zip(requests, batched):
        alone = one_at_a_time.loglikelihood([request])[0]
        assert alone.log_prob == pytest.approx(result.log_prob, abs=1e-5)
        assert alone.is_greedy == result.is_greedy


def test_is_greedy_true_exactly_for_the_argmax_continuation(gpt2):
    model, params = gpt2
    prompt = [5, 9, 12, 40]
    greedy = _greedy_rollout(model, params, prompt, 3)
    wrong = greedy[:2] + [(greedy[2] + 1) % 96]
    harness = Harness(model, params, IdTokenizer(), batch_size=4)
    right_result, wrong_result = harness.loglikelihood([LoglikelihoodRequest(text(prompt), text(greedy)),
                                                        LoglikelihoodRequest(text(prompt), text(wrong))])
    assert right_result.is_greedy and right_result.token_is_greedy.all()
    assert not wrong_result.is_greedy
    assert wrong_result.token_is_greedy.tolist() == [True, True, False]


def test_shapes_are_bucketed_so_few_compiles(gpt2):
    model, params = gpt2
    harness = Harness(model, params, IdTokenizer(), batch_size=4, min_bucket=16)
    before = scoring.compiled_shapes(scoring.decoder_token_stats)
    # 12 lengths from 2 to 45 tokens -> buckets 16, 32, 64 only.
    requests = [LoglikelihoodRequest(text(list(range(10, 10 + n))), text([4])) for n in range(1, 45, 4)]
    harness.loglikelihood(requests)
    assert scoring.compiled_shapes(scoring.decoder_token_stats) - before <= 3
    assert [scoring.bucket_length(n, 128) for n in (1, 16, 17, 33, 100)] == [16, 16, 32, 64, 128]
    assert scoring.bucket_length(90, 96) == 96  # capped at the context


def test_rolling_scores_every_token_once_in_windows(gpt2):
    model, params = gpt2
    ids = [int(i) for i in np.random.default_rng(0).integers(4, 96, size=40)]
    harness = Harness(model, params, IdTokenizer(), batch_size=4, max_length=16)
    result = harness.loglikelihood_rolling([RollingRequest(text(ids))])[0]
    assert result.num_windows == 3 and result.token_log_probs.shape == (40,)
    expected = []
    for row in rolling_windows(ids, 16, harness.prefix_token):
        log_probs, _ = _log_probs(model, params, row.tokens.tolist())
        expected.append(log_probs[-row.num_scored:])
    np.testing.assert_allclose(result.token_log_probs, np.concatenate(expected), atol=1e-5)
    # A text that fits one window is the loglikelihood of the text after the prefix token.
    short = harness.loglikelihood_rolling([RollingRequest(text(ids[:10]))])[0]
    assert short.log_prob == pytest.approx(harness.loglikelihood([LoglikelihoodRequest("", text(ids[:10]))])[0].log_prob,
                                           abs=1e-4)


def test_generate_until_is_greedy_and_stops_at_stop_string(gpt2):
    model, params = gpt2
    harness = Harness(model, params, IdTokenizer(), batch_size=2)
    prompts = [[5, 9, 12, 40], [7, 8], [20, 21, 22, 23, 24, 25]]
    greedy = [_greedy_rollout(model, params, p, 6) for p in prompts]
    results = harness.generate_until([GenerateRequest(text(p), (), 6) for p in prompts])
    for expected, result in zip(greedy, results):
        ids = expected[:expected.index(1)] if 1 in expected else expected  # eos (id 1) ends the text
        assert result.text == text(ids)
    # Each row of the batches (the second with a spare row) matched its own one-at-a-time rollout.
    # A two-character stop string (the greedy output's 4th and 5th tokens): the text is cut before it.
    full = text(greedy[0])
    stop = full[3:5]
    cut = harness.generate_until([GenerateRequest(text(prompts[0]), (stop,), 6)])[0].text
    assert cut == full[:full.index(stop)] and stop not in cut


class _SpecialEnd(IdTokenizer):
    """Id `end` is a special token: decode() drops it, decode_keeping_special spells it "<|end|>"."""

    def __init__(self, end):
        self.end = end

    def decode(self, ids):
        return super().decode([i for i in ids if int(i) != self.end])

    def decode_keeping_special(self, ids):
        return "".join("<|end|>" if int(i) == self.end else super().decode([i]) for i in ids)


def test_generation_ends_at_the_models_stop_ids_and_at_a_special_tokens_stop_string(gpt2):
    """A model's own stop ids (generation_config.json's eos list, e.g. a chat turn end) were ignored,
    and so was a stop string spelling a special token, whose text decode() drops: both generated on
    to max_new_tokens, keeping the text after the turn end."""
    model, params = gpt2
    prompt = [5, 9, 12, 40]
    greedy = _greedy_rollout(model, params, prompt, 6)
    k = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])  # the first new id ends it
    end = greedy[k]
    assert IdTokenizer.eos_id not in greedy
    request = GenerateRequest(text(prompt), (), 6)
    harness = Harness(model, params, IdTokenizer(), batch_size=2, stop_ids=(end,))
    assert harness.generate_until([request])[0].text == text(greedy[:k])
    assert harness.end_mask(())[end] and not harness.end_mask(())[greedy[0]]
    assert Harness(model, params, IdTokenizer(), batch_size=2).generate_until([request])[0].text == text(greedy)
    special = Harness(model, params, _SpecialEnd(end), batch_size=2)
    assert special.generate_until([GenerateRequest(text(prompt), ("<|end|>",), 6)])[0].text == text(greedy[:k])
    assert special.end_mask(("<|end|>",))[end]
    with pytest.raises(ConfigError, match=r"stop_ids=\(9999,\): 9999 is not a token id"):
        Harness(model, params, IdTokenizer(), stop_ids=(9999,))


def test_long_context_is_truncated_from_the_left_with_a_warning(gpt2):
    model, params = gpt2
    harness = Harness(model, params, IdTokenizer(), batch_size=2, max_length=16)
    context = list(range(10, 40))
    with pytest.warns(UserWarning, match="1 of 1 contexts exceed max_length=16"):
        result = harness.loglikelihood([LoglikelihoodRequest(text(context), text([5, 6]))])[0]
    assert result.truncated
    expected, _ = _log_probs(model, params, (context + [5, 6])[-17:])
    assert result.log_prob == pytest.approx(float(expected[-2:].sum()), abs=1e-4)
    with pytest.raises(ConfigError, match="continuation of 20 tokens exceeds the model context of 16"):
        harness.loglikelihood([LoglikelihoodRequest(text([4]), text(list(range(10, 30))))])
    with pytest.raises(ConfigError, match="max_new_tokens=16 leaves no room"):
        harness.generate_until([GenerateRequest(text([4]), (), 16)])


def test_every_group_is_checked_before_the_first_is_generated_or_scored(gpt2, monkeypatch):
    """lm-eval sends every task's generate_until requests in one call, grouped here by
    max_new_tokens: a group leaving no room for a prompt (or asking for no tokens) failed only
    when the loop reached it, after the groups before it had been generated. loglikelihood
    likewise scored the requests without end_until before refusing a too-long one with it."""
    model, params = gpt2
    harness = Harness(model, params, IdTokenizer(), batch_size=2, max_length=16)
    monkeypatch.setattr(harness, "_generate", lambda *a: pytest.fail("generated before every group was checked"))
    fine = GenerateRequest(text([5, 9]), (), 4)
    for bad, message in ((GenerateRequest(text([7]), (), 16), r"max_new_tokens=16 leaves no room for a prompt in "
                                                               r"max_length=16; lower max_new_tokens to at most 15\."),
                         (GenerateRequest(text([7]), (), 0), r"max_new_tokens=0 must be a positive integer\.")):
        with pytest.raises(ConfigError, match=message) as error:
            harness.generate_until([fine, fine, bad])
        assert "\n" not in str(error.value)
    monkeypatch.setattr(scoring, "score_decoder_rows_and_ends", lambda *a, **k: pytest.fail("scored before checking"))
    with pytest.raises(ConfigError, match=r"continuation of 16 tokens and the decision to end after it exceed "
                                          r"max_length=16; shorten it"):
        harness.loglikelihood([LoglikelihoodRequest(text([4]), text([5, 6])),
                               LoglikelihoodRequest(text([4]), text(list(range(10, 26))), end_until=("\n",))])
    # The limits loglikelihood scores up to: max_length, one less with the end decision.
    requests = [LoglikelihoodRequest(text([4]), text(list(range(10, 26)))),
                LoglikelihoodRequest(text([4]), text(list(range(10, 25))), end_until=())]
    assert harness.continuation_overflow(requests) is None
    assert harness.continuation_overflow(requests + [LoglikelihoodRequest(text([4]), text(list(range(10, 27))))]) == (
        2, 17, 16)


def test_bad_tokens_and_settings_fail_before_compiling(gpt2):
    model, params = gpt2
    harness = Harness(model, params, IdTokenizer())
    with pytest.raises(ConfigError, match="token id 200 is outside the vocabulary"):
        harness.loglikelihood([LoglikelihoodRequest(text([5]), text([200]))])
    with pytest.raises(ConfigError, match="max_length=500 must be in"):
        Harness(model, params, IdTokenizer(), max_length=500)
    with pytest.raises(ConfigError, match="lacks"):
        Harness(model, params, object())
    with pytest.raises(ConfigError, match="must be a tuple of stop strings"):
        harness.generate_until([GenerateRequest(text([5]), "\n", 4)])


class SizedIdTokenizer(IdTokenizer):
    vocab_size = 64  # the model embeds 96 ids: 32 padded ones


def test_generation_keeps_to_the_tokenizers_ids_and_scoring_to_the_models_softmax(gpt2):
    from tests.test_decoding_vocab_limit import padded_ids_win

    model, params = gpt2
    params = padded_ids_win(params, 64)  # ids 64..95 now win every greedy step
    requests = [GenerateRequest(text(p), (), 5) for p in ([5, 9, 12], [7])]
    unlimited = Harness(model, params, IdTokenizer(), batch_size=2)  # no vocab_size: nothing to limit
    assert all(len(r.tokens) == 5 and min(r.tokens) >= 64 for r in unlimited.generate_until(requests))
    harness = Harness(model, params, SizedIdTokenizer(), batch_size=2)
    limited = harness.generate_until(requests)
    assert all(max(r.tokens, default=0) < 64 for r in limited) and any(r.tokens for r in limited)
    # Teacher-forced scores are the same with or without the limit: the full-vocabulary softmax.
    scored = [LoglikelihoodRequest(text([5, 9]), text([12, 40]))]
    assert harness.loglikelihood(scored)[0].log_prob == unlimited.loglikelihood(scored)[0].log_prob


def test_is_greedy_is_the_argmax_among_the_ids_generation_may_write(gpt2):
    # Teacher-forced accuracy counts a token right when it is the argmax: over the model's padded
    # vocabulary a padded id won every position, so the tokens greedy generation writes (never a
    # padded id) were all scored "not greedy", and p fell below what generation got right.
    from tests.test_decoding_vocab_limit import padded_ids_win

    model, params = gpt2
    params = padded_ids_win(params, 64)  # ids 64..95 outscore every real id after any input
    harness = Harness(model, params, SizedIdTokenizer(), batch_size=2)
    outputs = harness.generate_until([GenerateRequest(text(p), (), 4) for p in ([5, 9, 12], [7], [33, 34])])
    prompt, written = next((p, r.tokens) for p, r in zip(([5, 9, 12], [7], [33, 34]), outputs) if r.tokens)
    (scored,) = harness.loglikelihood([LoglikelihoodRequest(text(prompt), text(list(written)))])
    assert scored.is_greedy and scored.token_is_greedy.all()
    # Over every id (no vocab_size: nothing to limit, lm-eval's argmax) none of them is.
    (full,) = Harness(model, params, IdTokenizer(), batch_size=2).loglikelihood(
        [LoglikelihoodRequest(text(prompt), text(list(written)))])
    assert not full.token_is_greedy.any()
    np.testing.assert_array_equal(full.token_log_probs, scored.token_log_probs)  # log p unchanged
