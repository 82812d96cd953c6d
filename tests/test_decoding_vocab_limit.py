"""vocab_limit: decoding never chooses an id >= the limit (a model vocabulary padded above its
tokenizer), in greedy, sampled and beam search, while log-probabilities stay the model's own
over its full vocabulary. The model is rigged so the padded ids win every step without the
limit; otherwise these tests could pass with a limit that does nothing."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decoding import beam_search, generate, sampling, vocab_limit_for
from research.models import ConfigError
from tests.test_decoding import PROMPTS, _forward, _model, _sequence_log_probs

LIMIT = 400  # gpt2-tiny embeds 512 ids: as a 400-piece tokenizer's run does
N = 6


def padded_ids_win(params: dict, vocab_limit: int, seed: int = 0) -> dict:
    """GPT-2-style params (tied head, final LayerNorm with a bias) in which every id >=
    vocab_limit outscores every real id after any input.

    The final hidden state is h = n + b with |n| <= sqrt(D) (LayerNorm, scale set to 1) and
    b = 10 sqrt(D) u for a unit vector u, so h.u >= 9 sqrt(D) and |h| <= 11 sqrt(D). Padded
    rows c u with c > 11/9 max|real row| then beat every real row's h.e <= |h| |e|.
    """
    table = np.array(params["token_embed"]["embedding"], np.float32)
    dim = table.shape[1]
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    c = 2.0 * np.linalg.norm(table[:vocab_limit], axis=1).max() + 1.0
    # Slightly different lengths, so the padded ids do not tie with each other.
    table[vocab_limit:] = c * u * (1.0 + 0.01 * rng.random(len(table) - vocab_limit))[:, None]
    final_norm = dict(params["final_norm"], scale=jnp.ones((dim,), jnp.float32),
                      bias=jnp.asarray(10.0 * np.sqrt(dim) * u, jnp.float32))
    return {**params, "final_norm": final_norm, "token_embed": {"embedding": jnp.asarray(table)}}


@functools.lru_cache(maxsize=None)
def _rigged():
    model, params = _model("gpt2-tiny")
    return model, padded_ids_win(params, LIMIT)


SAMPLED = [dict(temperature=1.0), dict(temperature=0.8, top_k=40), dict(temperature=2.0, top_p=0.9)]


def test_without_a_limit_the_rigged_model_emits_padded_ids():
    model, params = _rigged()
    greedy = np.asarray(generate(model, params, PROMPTS, max_new_tokens=N).tokens_BN)
    assert np.all(greedy >= LIMIT)
    sampled = generate(model, params, PROMPTS, max_new_tokens=N, rng=jax.random.key(0), **SAMPLED[1]).tokens_BN
    assert np.all(np.asarray(sampled) >= LIMIT)
    beams = beam_search(model, params, PROMPTS, num_beams=3, max_new_tokens=N).tokens_BWN
    assert np.all(np.asarray(beams)[:, 0] >= LIMIT)


def test_greedy_with_a_limit_is_the_argmax_over_real_ids_and_reports_full_vocab_log_probs():
    model, params = _rigged()
    out = generate(model, params, PROMPTS, max_new_tokens=N, vocab_limit=LIMIT)
    tokens = np.asarray(out.tokens_BN)
    assert tokens.max() < LIMIT
    for b, prompt in enumerate(PROMPTS):
        ids = list(prompt)
        for _ in range(N):  # reference: full forward passes, argmax over the first LIMIT logits
            ids.append(int(jnp.argmax(_forward(model, params, np.pad(ids, (0, 24 - len(ids)))[None])[0, len(ids) - 1,
                                                                                                  :LIMIT])))
        np.testing.assert_array_equal(tokens[b], ids[len(prompt):])
        # The limit restricts the choice, not the distribution: log p is the full-vocab softmax
        # (tiny here, since the padded ids hold nearly all the mass), as scoring computes it.
        np.testing.assert_allclose(out.log_probs_BN[b], _sequence_log_probs(model, params, prompt, tokens[b]),
                                   rtol=1e-4)


@pytest.mark.parametrize("options", SAMPLED)
def test_sampling_with_a_limit_never_draws_a_padded_id(options):
    model, params = _rigged()
    prompts = PROMPTS * 3
    out = generate(model, params, prompts, max_new_tokens=N, rng=jax.random.key(1), vocab_limit=LIMIT, **options)
    tokens = np.asarray(out.tokens_BN)
    assert tokens.max() < LIMIT and len({tuple(row) for row in tokens}) > 1  # real draws, not one fixed output


def test_beam_search_with_a_limit_never_extends_by_a_padded_id():
    model, params = _rigged()
    out = beam_search(model, params, PROMPTS, num_beams=3, max_new_tokens=N, alpha=0.0, vocab_limit=LIMIT)
    assert np.asarray(out.tokens_BWN).max() < LIMIT and np.all(np.isfinite(out.scores_BW))
    for b, prompt in enumerate(PROMPTS):  # scores are full-vocabulary log-probabilities
        for w in range(3):
            expected = _sequence_log_probs(model, params, prompt, np.asarray(out.tokens_BWN[b, w]))
            np.testing.assert_allclose(out.log_probs_BW[b, w], expected.sum(), rtol=1e-4)


def test_a_limit_that_excludes_nothing_is_the_unlimited_program():
    model, params = _model("gpt2-tiny")
    unlimited = generate(model, params, PROMPTS, max_new_tokens=N)
    compiled = sampling._generate._cache_size()
    same = generate(model, params, PROMPTS, max_new_tokens=N, vocab_limit=model.config.vocab_size)
    assert sampling._generate._cache_size() == compiled  # normalized to None: no second program
    np.testing.assert_array_equal(same.tokens_BN, unlimited.tokens_BN)
    np.testing.assert_array_equal(same.log_probs_BN, unlimited.log_probs_BN)
    generate(model, params, PROMPTS, max_new_tokens=N, vocab_limit=LIMIT)
    compiled = sampling._generate._cache_size()
    generate(model, params, PROMPTS, max_new_tokens=N, vocab_limit=LIMIT)
    assert sampling._generate._cache_size() == compiled  # a static int: one program per limit, not per call


@pytest.mark.parametrize("limit", [0, 513, True, 3.5, -1])
def test_a_bad_limit_is_one_line(limit):
    model, params = _model("gpt2-tiny")
    with pytest.raises(ConfigError, match=r"vocab_limit=.* must be an int in \[1, 512\]"):
        generate(model, params, PROMPTS, max_new_tokens=N, vocab_limit=limit)
    with pytest.raises(ConfigError, match=r"vocab_limit=.* must be an int in \[1, 512\]"):
        beam_search(model, params, PROMPTS, num_beams=2, max_new_tokens=N, vocab_limit=limit)


def test_vocab_limit_for_is_the_tokenizers_size_only_when_smaller():
    class Sized:
        def __init__(self, vocab_size):
            self.vocab_size = vocab_size

    assert vocab_limit_for(Sized(400), 512) == 400
    assert vocab_limit_for(Sized(512), 512) is None and vocab_limit_for(Sized(600), 512) is None
    assert vocab_limit_for(object(), 512) is None and vocab_limit_for(None, 512) is None
