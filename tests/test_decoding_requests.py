"""What a decoding request may ask: the learned-position limit, checked against transformers
at its boundary, and the argument types generate / beam_search accept or refuse in one line."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from research.decoding import beam_search, generate, sampling
from research.models import ConfigError, from_hf
from tests.test_decoding import _bigram

N_POSITIONS = 16


@pytest.fixture(scope="module")
def gpt2_16(tmp_path_factory):
    """(transformers GPT-2 with a 16-row position table, the same weights loaded here)."""
    import torch
    import transformers
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=40, n_positions=N_POSITIONS, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3,
        eos_token_id=1, bos_token_id=1, pad_token_id=0)).eval()
    folder = tmp_path_factory.mktemp("gpt2_16")
    hf_model.save_pretrained(folder)
    model, params = from_hf(str(folder))
    assert model.config.max_len == N_POSITIONS
    return hf_model, model, params


def _hf_greedy(hf_model, prompt: list[int], max_new_tokens: int) -> list[int]:
    import torch
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


# The last new token is never fed back, so prompt + max_new_tokens may exceed the table by one.
@pytest.mark.parametrize("prompt_len, max_new_tokens", [(N_POSITIONS, 1), (10, N_POSITIONS - 10 + 1)])
def test_generation_fills_the_learned_position_table_as_transformers_does(gpt2_16, prompt_len, max_new_tokens):
    hf_model, model, params = gpt2_16
    prompt = list(range(2, 2 + prompt_len))
    expected = _hf_greedy(hf_model, prompt, max_new_tokens)
    assert len(expected) == max_new_tokens
    out = generate(model, params, [prompt], max_new_tokens=max_new_tokens)
    assert np.asarray(out.tokens_BN[0]).tolist() == expected
    # Beam search makes the same request: without stop tokens width 1 is greedy.
    beams = beam_search(model, params, [prompt], num_beams=1, max_new_tokens=max_new_tokens, alpha=0.0)
    assert np.asarray(beams.tokens_BWN[0, 0]).tolist() == expected


@pytest.mark.parametrize("prompt_len, max_new_tokens, message", [
    (10, 8, r"longest prompt \+ max_new_tokens - 1 = 17 exceeds max_len=16.*at most 7"),
    (N_POSITIONS + 1, 1, "longest prompt is 17 tokens, more than max_len=16.*at most 16 tokens"),
])
def test_one_position_past_the_table_is_refused(gpt2_16, prompt_len, max_new_tokens, message):
    _, model, params = gpt2_16
    prompt = list(range(2, 2 + prompt_len))
    with pytest.raises(ConfigError, match=message):
        generate(model, params, [prompt], max_new_tokens=max_new_tokens)
    with pytest.raises(ConfigError, match=message):
        beam_search(model, params, [prompt], num_beams=2, max_new_tokens=max_new_tokens)


# A bigram table over 4 ids: compiles in a fraction of a second, and sampling it is not greedy.
TABLE = [[0.1, 0.4, 0.3, 0.2], [0.3, 0.1, 0.2, 0.4], [0.25] * 4, [0.4, 0.3, 0.2, 0.1]]


def test_numpy_integers_are_integers_and_compile_as_python_ints():
    model = _bigram(TABLE)
    sample = dict(max_new_tokens=6, temperature=1.0, rng=jax.random.key(0))
    plain = generate(model, {}, [[0], [1]], top_k=2, **sample)
    compiled = sampling._generate._cache_size()
    numpy_k = generate(model, {}, [[0], [1]], top_k=np.int64(2), **sample)
    np.testing.assert_array_equal(numpy_k.tokens_BN, plain.tokens_BN)
    assert sampling._generate._cache_size() == compiled  # np.int64(2) is the program top_k=2 compiled
    beams = beam_search(model, {}, [[0]], num_beams=2, max_new_tokens=3)
    numpy_beams = beam_search(model, {}, [[0]], num_beams=np.int32(2), max_new_tokens=np.int64(3),
                              pad_to_multiple=np.int64(1), vocab_limit=np.int64(4))
    np.testing.assert_array_equal(numpy_beams.tokens_BWN, beams.tokens_BWN)


def test_one_stop_id_none_and_top_p_none_mean_what_their_spelled_out_forms_do():
    model = _bigram(TABLE)
    greedy = dict(max_new_tokens=6)
    np.testing.assert_array_equal(generate(model, {}, [[0], [1]], stop_tokens=3, **greedy).tokens_BN,
                                  generate(model, {}, [[0], [1]], stop_tokens=[3], **greedy).tokens_BN)
    np.testing.assert_array_equal(generate(model, {}, [[0]], stop_tokens=None, **greedy).tokens_BN,
                                  generate(model, {}, [[0]], **greedy).tokens_BN)
    search = lambda stop_tokens: beam_search(model, {}, [[0]], num_beams=2, max_new_tokens=3, stop_tokens=stop_tokens)
    np.testing.assert_array_equal(search(np.int64(3)).tokens_BWN, search([3]).tokens_BWN)
    sample = dict(max_new_tokens=6, temperature=1.0, rng=jax.random.key(0))
    np.testing.assert_array_equal(generate(model, {}, [[0], [1]], top_p=None, **sample).tokens_BN,
                                  generate(model, {}, [[0], [1]], top_p=1.0, **sample).tokens_BN)
    # The raw key data of jax.random.PRNGKey is a key too.
    generate(model, {}, [[0]], max_new_tokens=2, temperature=1.0, rng=jax.random.PRNGKey(0))


@pytest.mark.parametrize("options, message", [
    (dict(stop_tokens="3"), r"stop_tokens='3' must be a token id or a list of token ids"),
    (dict(stop_tokens=[1.5]), r"stop_tokens=\[1.5\] must be a token id"),
    (dict(temperature="0.7", rng=jax.random.key(0)), r"temperature='0.7' must be a number >= 0"),
    (dict(temperature=1.0, top_p="0.9", rng=jax.random.key(0)), r"top_p='0.9' must be a number in \(0, 1\]"),
    (dict(temperature=1.0, rng=0), r"rng=0 must be one jax.random key, e.g. rng=jax.random.key\(0\)"),
    (dict(temperature=1.0, rng=jax.random.split(jax.random.key(0), 2)), r"rng=an array of shape \(2,\)"),
])
def test_bad_sampling_arguments_are_one_line(options, message):
    model = _bigram(TABLE)
    with pytest.raises(ConfigError, match=message) as error:
        generate(model, {}, [[0]], max_new_tokens=2, **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("options, message", [
    (dict(alpha=None), r"alpha=None must be a finite number"),
    (dict(stop_tokens=[[3]]), r"stop_tokens=\[\[3\]\] must be a token id"),
])
def test_bad_beam_arguments_are_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        beam_search(_bigram(TABLE), {}, [[0]], num_beams=2, max_new_tokens=2, **options)


def test_a_request_past_int32_positions_is_one_line_for_every_family():
    # A RoPE / relative-position model has no table to overflow; jax's OverflowError came first.
    for search in (lambda n: generate(_bigram(TABLE), {}, [[0, 1]], max_new_tokens=n),
                   lambda n: beam_search(_bigram(TABLE), {}, [[0, 1]], num_beams=2, max_new_tokens=n)):
        with pytest.raises(ConfigError, match=r"max_new_tokens=2147483646 with a 2-token prompt passes 2147483647 "
                                              r"positions"):
            search(2**31 - 2)
