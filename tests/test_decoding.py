"""Generation: greedy / sampling / beam search against full forward passes (no cache)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decoding import beam_search, filter_logits, generate, length_penalty
from research.decoding import sampling
from research.models import ConfigError, ModelConfig, build_model, get_config
from research.models.layout import stack_layers, unbox

PROMPTS = [[3, 14, 15, 92, 65], [35], [89, 79, 32, 38, 46, 26, 43]]
N = 8
WIDTH = 24  # fixed buffer of the reference forward passes: one compile per model


@functools.lru_cache(maxsize=None)
def _model(name: str, **overrides):
    config = get_config(name, **overrides)
    model = build_model(config)
    tokens = jnp.ones((1, 4), jnp.int32)
    args = (tokens, tokens) if config.family == "encoder_decoder" else (tokens,)
    shapes = unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(0)

    # numpy, not model.init: compiling the threefry init costs seconds per model. The std
    # of 0.16 (8x the usual 0.02) makes logits peaked enough that no argmax is a near-tie
    # that float reassociation between the cached and the full forward pass could flip.
    def init(path, leaf):
        name = path[-1].key
        if name in ("scale", "bias"):
            return jnp.full(leaf.shape, 1.0 if name == "scale" else 0.0, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.16, leaf.shape), leaf.dtype)

    return model, jax.tree_util.tree_map_with_path(init, shapes)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, tokens_BT):
    return model.apply({"params": params}, tokens_BT)


@functools.partial(jax.jit, static_argnums=0)
def _forward_encdec(model, params, source_BS, target_BT):
    return model.apply({"params": params}, source_BS, target_BT,
                       encoder_segment_ids_BS=(source_BS != model.config.pad_token_id).astype(jnp.int32))


def _argmax_rollout(model, params, prompt, n):
    """Greedy continuation by re-running the full causal forward pass (no cache) each step."""
    buf = np.zeros((1, WIDTH), np.int32)
    buf[0, :len(prompt)] = prompt
    for i in range(n):  # right-padding is harmless: position t only sees tokens <= t
        buf[0, len(prompt) + i] = int(jnp.argmax(_forward(model, params, buf)[0, len(prompt) + i - 1]))
    return buf[0, len(prompt):len(prompt) + n]


def _full_logits(model, params, tokens):
    """Logits [WIDTH, V] of one sequence from the full forward pass (right-padded)."""
    buf = np.zeros((1, WIDTH), np.int32)
    buf[0, :len(tokens)] = tokens
    return _forward(model, params, buf)[0]


def _sequence_log_probs(model, params, prompt, continuation):
    """log p(continuation[j] | prompt, continuation[:j]) from one full forward pass."""
    log_probs_TV = jax.nn.log_softmax(_full_logits(model, params, list(prompt) + list(continuation)))
    rows = np.arange(len(continuation)) + len(prompt) - 1
    return np.asarray(log_probs_TV[rows, np.asarray(continuation)])


@pytest.mark.parametrize("name,dtype", [("gpt2-tiny", "float32"), ("llama-tiny", "float32"),
                                        ("gpt2-tiny", "bfloat16"), ("llama-tiny", "bfloat16")])
def test_greedy_equals_full_forward_argmax_rollout(name, dtype):
    # bfloat16: a cached step's LM head was a bf16 x bf16 -> float32 dot, which XLA:CPU's dot
    # thunk cannot run ("Unsupported element type for DotThunk::Execute"): every bf16 decoder's
    # generate, sampled or greedy, and beam search died on a CPU.
    model, params = _model(name, dtype=dtype)
    out = generate(model, params, PROMPTS, max_new_tokens=N)
    assert out.tokens_BN.shape == (len(PROMPTS), N)
    np.testing.assert_array_equal(out.lengths_B, N)
    for b, prompt in enumerate(PROMPTS):
        np.testing.assert_array_equal(out.tokens_BN[b], _argmax_rollout(model, params, prompt, N))


def test_each_batched_result_equals_its_prompt_generated_alone():
    model, params = _model("llama-tiny")  # RoPE: the per-example positions under left padding matter most
    out = generate(model, params, PROMPTS, max_new_tokens=N)
    # One compile per prompt shape, so only the shortest prompt: the most padded in the
    # batch, here padded further (to P=8) as pad_to_multiple must not change results.
    alone = generate(model, params, [PROMPTS[1]], max_new_tokens=N, pad_to_multiple=8)
    np.testing.assert_array_equal(alone.tokens_BN[0], out.tokens_BN[1])
    np.testing.assert_allclose(alone.log_probs_BN[0], out.log_probs_BN[1], atol=1e-4)


def test_log_probs_are_unfiltered_full_forward_log_probs():
    model, params = _model("gpt2-tiny")
    out = generate(model, params, PROMPTS, max_new_tokens=N, temperature=0.7, top_k=20, rng=jax.random.key(3))
    for b, prompt in enumerate(PROMPTS):
        expected = _sequence_log_probs(model, params, prompt, out.tokens_BN[b])
        np.testing.assert_allclose(out.log_probs_BN[b], expected, atol=1e-4)
        # Sampled tokens come from the top-20, yet the reported log-probs are at temperature 1.
        logits_TV = _full_logits(model, params, prompt + list(out.tokens_BN[b]))
        ranks = [int(jnp.sum(logits_TV[len(prompt) - 1 + j] > logits_TV[len(prompt) - 1 + j, t]))
                 for j, t in enumerate(out.tokens_BN[b])]
        assert max(ranks) < 20


def test_sampling_is_reproducible_and_top_k_one_is_greedy():
    model, params = _model("gpt2-tiny")
    sample = functools.partial(generate, model, params, PROMPTS, max_new_tokens=N, temperature=0.7, top_k=20)
    first, again = sample(rng=jax.random.key(1)), sample(rng=jax.random.key(1))
    np.testing.assert_array_equal(first.tokens_BN, again.tokens_BN)
    assert not np.array_equal(first.tokens_BN, sample(rng=jax.random.key(2)).tokens_BN)
    compiled = sampling._generate._cache_size()
    sample(rng=jax.random.key(1), temperature=0.5)  # temperature is traced: no recompilation
    assert sampling._generate._cache_size() == compiled
    greedy = generate(model, params, PROMPTS, max_new_tokens=N)
    np.testing.assert_array_equal(sample(rng=jax.random.key(1), top_k=1).tokens_BN, greedy.tokens_BN)


def test_filter_logits_keeps_exactly_the_nucleus():
    probs = np.array([[0.15, 0.5, 0.05, 0.3]], np.float32)
    logits = jnp.log(probs)
    kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()
    assert kept(top_p=0.7) == [False, True, False, True]  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    assert kept(top_p=0.81) == [True, True, False, True]
    assert kept(top_p=0.1) == [False, True, False, False]  # the argmax always survives
    # Even below float32's smallest normal (0 on XLA:CPU): it once kept no token, and every sample was id 0.
    assert kept(top_p=1e-40) == [False, True, False, False]
    assert kept(top_p=1.0) == [True, True, True, True]
    assert kept(top_k=3, top_p=None) == [True, True, False, True]
    assert kept(top_k=1, top_p=0.99) == [False, True, False, False]
    # Draws from the filtered distribution renormalise over the nucleus: 0.5 / 0.8 and 0.3 / 0.8.
    draws = jax.random.categorical(jax.random.key(0), filter_logits(logits, top_p=0.7)[0], shape=(4000,))
    counts = np.bincount(np.asarray(draws), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0, 0.625, 0, 0.375], atol=0.03)


def test_tempered_filtering_keeps_what_transformers_warpers_keep():
    import torch
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    rng = np.random.default_rng(0)
    # Continuous logits (no ties, where ours keeps every token tied with the threshold) at three spreads.
    logits = (rng.normal(size=(60, 50)) * np.repeat([0.5, 2.0, 8.0], 20)[:, None]).astype(np.float32)
    for temperature in (0.3, 1.0, 2.5):
        for top_k in (0, 1, 7):
            for top_p in (0.05, 0.5, 0.9, 0.99, 1.0):
                expected = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits))
                expected = TopKLogitsWarper(top_k)(None, expected) if top_k else expected
                expected = TopPLogitsWarper(top_p)(None, expected) if top_p < 1 else expected
                ours = filter_logits(sampling.temper(jnp.asarray(logits), temperature), top_k=top_k,
                                     top_p=top_p if top_p < 1 else None)
                np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(expected.numpy()))
                np.testing.assert_allclose(jax.nn.softmax(ours), torch.softmax(expected, -1).numpy(), atol=1e-6)


def test_a_tiny_temperature_samples_the_greedy_tokens():
    # logits / 1e-38 overflowed float32 to +-inf, and the softmax of that was NaN: garbage draws.
    model, params = _model("gpt2-tiny")
    greedy = generate(model, params, PROMPTS, max_new_tokens=N)
    for top_k in (0, 20):
        cold = generate(model, params, PROMPTS, max_new_tokens=N, temperature=1e-38, top_k=top_k,
                        rng=jax.random.key(1))
        np.testing.assert_array_equal(cold.tokens_BN, greedy.tokens_BN)
        np.testing.assert_allclose(cold.log_probs_BN, greedy.log_probs_BN, atol=1e-6)


def test_stop_tokens_end_each_sequence_and_pad_the_rest():
    model, params = _model("gpt2-tiny")
    free = np.asarray(generate(model, params, PROMPTS, max_new_tokens=N).tokens_BN)
    stop = int(free[0, 2])
    out = generate(model, params, PROMPTS, max_new_tokens=N, stop_tokens=[stop])
    pad = model.config.pad_token_id
    for b in range(len(PROMPTS)):
        hits = np.flatnonzero(free[b] == stop)
        length = hits[0] + 1 if hits.size else N
        assert int(out.lengths_B[b]) == length
        np.testing.assert_array_equal(out.tokens_BN[b, :length], free[b, :length])
        np.testing.assert_array_equal(out.tokens_BN[b, length:], pad)
        np.testing.assert_array_equal(out.log_probs_BN[b, length:], 0.0)
    assert int(out.lengths_B[0]) <= 3


def test_beam_width_one_without_stop_tokens_equals_greedy():
    model, params = _model("llama-tiny")
    greedy = generate(model, params, PROMPTS, max_new_tokens=N)
    for alpha in (0.0, 0.6):  # alpha only rescales the one beam's score (traced: one compile)
        beams = beam_search(model, params, PROMPTS, num_beams=1, max_new_tokens=N, alpha=alpha)
        np.testing.assert_array_equal(beams.tokens_BWN[:, 0], greedy.tokens_BN)
        np.testing.assert_array_equal(beams.lengths_BW[:, 0], N)
        np.testing.assert_allclose(beams.scores_BW[:, 0],
                                   greedy.log_probs_BN.sum(axis=1) / length_penalty(N, alpha), atol=1e-4)


def test_beam_scores_are_penalized_full_forward_log_probs():
    model, params = _model("gpt2-tiny")
    free = np.asarray(generate(model, params, PROMPTS, max_new_tokens=N).tokens_BN)
    alpha, stop = 0.6, int(free[0, 4])
    out = beam_search(model, params, PROMPTS[:2], num_beams=3, max_new_tokens=N, alpha=alpha, stop_tokens=[stop])
    assert np.all(np.diff(np.asarray(out.scores_BW), axis=1) <= 0)  # best first
    for b, prompt in enumerate(PROMPTS[:2]):
        for w in range(3):
            length = int(out.lengths_BW[b, w])
            tokens = np.asarray(out.tokens_BWN[b, w])
            assert (stop in tokens[:length - 1]) is False and (length == N or tokens[length - 1] == stop)
            log_prob = _sequence_log_probs(model, params, prompt, tokens[:length]).sum()
            np.testing.assert_allclose(out.log_probs_BW[b, w], log_prob, atol=1e-3)
            np.testing.assert_allclose(out.scores_BW[b, w], log_prob / ((5 + length) / 6) ** alpha, atol=1e-3)


MODEL_CALLS: list[int] = []  # token counts of BigramTable calls, appended at run time


class BigramTable(nn.Module):
    """A parameter-free 'LM' whose next-token distribution depends only on the last token."""

    config: ModelConfig
    probs: tuple[tuple[float, ...], ...]  # probs[prev][next]

    def __call__(self, tokens_BT, *, positions_BT=None, segment_ids_BT=None, cache=None):
        jax.debug.callback(lambda t: MODEL_CALLS.append(int(t)), tokens_BT.shape[1])
        logits_BTV = jnp.log(jnp.asarray(self.probs, jnp.float32))[tokens_BT]
        return logits_BTV, cache._replace(index=cache.index + tokens_BT.shape[1])


def _bigram(probs):
    config = ModelConfig(name="bigram", family="decoder", vocab_size=len(probs), d_model=4, num_layers=1,
                         num_heads=1, d_ff=4, max_len=16)
    return BigramTable(config, tuple(map(tuple, probs)))


def test_beam_search_finds_the_sequence_greedy_misses():
    # From 0: A (1) is likeliest, but every continuation of A is poor; B (2) -> C (3) is sure.
    model = _bigram([[1e-4, 0.5, 0.4, 0.0999], [0.25] * 4, [0.05, 0.05, 1e-4, 0.8999], [1e-4, 1e-4, 1e-4, 0.9997]])
    greedy = generate(model, {}, [[0]], max_new_tokens=2)
    assert greedy.tokens_BN[0, 0] == 1 and np.isclose(greedy.log_probs_BN.sum(), np.log(0.5 * 0.25), atol=1e-4)
    beams = beam_search(model, {}, [[0]], num_beams=2, max_new_tokens=2, alpha=0.0)
    np.testing.assert_array_equal(beams.tokens_BWN[0, 0], [2, 3])
    np.testing.assert_allclose(beams.scores_BW[0, 0], np.log(0.4 * 0.8999), atol=1e-5)


def test_beam_width_one_with_a_stop_token_keeps_a_short_finished_hypothesis():
    # From 0: 1 (0.6) is likeliest and the stop token 3 (0.4) second; from 1: 1 (0.5), 2 (0.4), 3 (0.1).
    # Greedy runs 1, 1, 1 (p 0.15); width 1 finishes [3] at step 1 (p 0.4) and, once the alive
    # beam (p 0.3 after two steps) can no longer beat it, returns it.
    model = _bigram([[0.0, 0.6, 0.0, 0.4], [0.0, 0.5, 0.4, 0.1], [0.25] * 4, [0.25] * 4])
    greedy = generate(model, {}, [[0]], max_new_tokens=3, stop_tokens=[3])
    np.testing.assert_array_equal(greedy.tokens_BN, [[1, 1, 1]])
    np.testing.assert_allclose(greedy.log_probs_BN.sum(), np.log(0.15), atol=1e-5)
    beams = beam_search(model, {}, [[0]], num_beams=1, max_new_tokens=3, alpha=0.0, stop_tokens=[3])
    np.testing.assert_array_equal(beams.tokens_BWN[0, 0], [3, 0, 0])
    assert int(beams.lengths_BW[0, 0]) == 1
    np.testing.assert_allclose(beams.log_probs_BW[0, 0], np.log(0.4), atol=1e-5)
    # Without the stop token the same search is greedy's 1, 1, 1 again.
    free = beam_search(model, {}, [[0]], num_beams=1, max_new_tokens=3, alpha=0.0)
    np.testing.assert_array_equal(free.tokens_BWN[0, 0], [1, 1, 1])


def test_length_penalty_alpha_trades_log_prob_for_length():
    # From 0: the stop token 3 (0.6) ends at once; 1 (0.4) continues with 1 (0.9) each step.
    model = _bigram([[0.0, 0.4, 0.0, 0.6], [0.0, 0.9, 0.0, 0.1], [0.25] * 4, [0.25] * 4])
    search = functools.partial(beam_search, model, {}, [[0]], num_beams=2, max_new_tokens=3, stop_tokens=[3])
    short = search(alpha=0.0)
    np.testing.assert_array_equal(short.tokens_BWN[0, 0], [3, 0, 0])
    np.testing.assert_allclose(short.scores_BW[0, 0], np.log(0.6), atol=1e-5)
    # log 0.324 / (8/6)^3 = -0.475 beats log 0.6 / 1 = -0.511 once alpha = 3.
    long = search(alpha=3.0)
    np.testing.assert_array_equal(long.tokens_BWN[0, 0], [1, 1, 1])
    np.testing.assert_allclose(long.scores_BW[0, 0], np.log(0.4 * 0.9 * 0.9) / length_penalty(3, 3.0), atol=1e-5)
    np.testing.assert_allclose(length_penalty(3, 3.0), (8 / 6) ** 3, rtol=1e-6)


def test_generation_loop_exits_once_every_row_has_stopped():
    # Token 3 stops; from 0 it is certain, from 1 it follows 1 after one step (1 -> 2 -> 3 ...).
    model = _bigram([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.25] * 4])
    MODEL_CALLS.clear()
    out = generate(model, {}, [[0, 0], [1]], max_new_tokens=8, stop_tokens=[3])
    jax.effects_barrier()
    np.testing.assert_array_equal(out.tokens_BN, [[3, 0, 0, 0, 0, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out.lengths_B, [1, 2])
    assert MODEL_CALLS == [2, 1]  # the prefill (P=2), then one step: not the 7 steps of max_new_tokens


def test_beam_search_under_scan_layers_matches_unrolled():
    model, params = _model("gpt2-tiny")
    scanned = build_model(model.config.replace(scan_layers=True))
    free = np.asarray(generate(model, params, PROMPTS, max_new_tokens=N).tokens_BN)
    # The same request as test_beam_scores_are_penalized_full_forward_log_probs (compiled once).
    kwargs = dict(num_beams=3, max_new_tokens=N, alpha=0.6, stop_tokens=[int(free[0, 4])])
    unrolled_out = beam_search(model, params, PROMPTS[:2], **kwargs)
    scanned_out = beam_search(scanned, stack_layers(params, "layers"), PROMPTS[:2], **kwargs)
    np.testing.assert_array_equal(scanned_out.tokens_BWN, unrolled_out.tokens_BWN)
    np.testing.assert_allclose(scanned_out.scores_BW, unrolled_out.scores_BW, atol=1e-4)


def test_encoder_decoder_greedy_equals_full_forward_rollout():
    model, params = _model("t5-v1_1-tiny", num_layers=1, num_encoder_layers=1)  # one layer each: half the compile
    sources = [[5, 6, 7, 8, 9], [10, 11]]
    out = generate(model, params, sources, max_new_tokens=6)
    for b, source in enumerate(sources):
        # Fixed shapes (one compile): the source is right-padded with segment id 0.
        source_1S = np.zeros((1, 8), np.int32)
        source_1S[0, :len(source)] = source
        target = np.zeros((1, WIDTH), np.int32)
        target[0, 0] = model.config.decoder_start_token_id
        for i in range(6):
            logits_TV = _forward_encdec(model, params, source_1S, target)[0]
            target[0, i + 1] = int(jnp.argmax(logits_TV[i]))
        np.testing.assert_array_equal(out.tokens_BN[b], target[0, 1:7])
    beams = beam_search(model, params, sources, num_beams=1, max_new_tokens=6, alpha=0.0)
    np.testing.assert_array_equal(beams.tokens_BWN[:, 0], out.tokens_BN)


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[list(range(100))], max_new_tokens=40), "exceeds max_len=128.*at most 29"),
    # A prompt that alone fills the table: no max_new_tokens can help (it once advised "at most -473").
    (dict(prompts=[list(range(200))], max_new_tokens=4), "longest prompt is 200 tokens.*shorten it to at most 128"),
    (dict(prompts=[], max_new_tokens=4), "non-empty list"),
    (dict(prompts=[[1, 2], []], max_new_tokens=4), r"prompts\[1\]"),
    (dict(prompts=[[1, 512]], max_new_tokens=4), "token id 512"),
    (dict(prompts=[[1]], max_new_tokens=0), "max_new_tokens=0"),
    (dict(prompts=[[1]], max_new_tokens=4, temperature=0.5), "rng="),
    # Raw key data of the wrong length passed the check and failed inside the trace.
    (dict(prompts=[[1]], max_new_tokens=4, temperature=0.5, rng=np.zeros(3, np.uint32)), r"rng=an array of shape \(3,\)"),
    (dict(prompts=[[1]], max_new_tokens=4, top_p=0.0), "top_p=0.0"),
    (dict(prompts=[[1]], max_new_tokens=4, top_k=513), "top_k=513"),
    (dict(prompts=[[1]], max_new_tokens=4, stop_tokens=[600]), "stop_tokens"),
])
def test_bad_requests_fail_before_compiling(kwargs, message):
    model, params = _model("gpt2-tiny")
    with pytest.raises(ConfigError, match=message):
        generate(model, params, **kwargs)


def test_bad_beam_requests_fail():
    model, params = _model("gpt2-tiny")
    with pytest.raises(ConfigError, match="num_beams=0"):
        beam_search(model, params, [[1]], num_beams=0, max_new_tokens=4)
    encoder = build_model(get_config("bert-test"))
    with pytest.raises(ConfigError, match="'encoder' model"):
        generate(encoder, {}, [[1]], max_new_tokens=4)
