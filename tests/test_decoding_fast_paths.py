"""The decoding loop's fast paths keep greedy results: argmax without a variadic reduce, the
KV cache read in place, and a tied LM head read from a [D, V] copy made once per generation.
(Greedy outputs against full forward passes are checked in test_decoding.py.)"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.decoding import sampling
from research.decoding.adapters import adapter_for
from research.decoding.prompts import pad_prompts
from research.decoding.sampling import greedy_choice
from tests.test_decoding import PROMPTS, _model


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_greedy_choice_is_argmax_with_ties_infinities_and_nans(dtype):
    logits = np.random.default_rng(0).normal(size=(8, 300)).astype(np.float32)
    logits[1, [5, 200]] = 10.0  # a tie: the first index wins
    logits[2, [9, 3]] = np.nan  # the first NaN wins, as in argmax
    logits[3] = -np.inf
    logits[4, [7, 2]] = np.inf
    logits[5, 8], logits[5, 1] = np.nan, np.inf  # a NaN after a larger-looking +inf still wins
    logits = jnp.asarray(logits, dtype)
    chosen = jax.jit(greedy_choice)(logits)
    assert chosen.dtype == jnp.int32
    np.testing.assert_array_equal(chosen, jnp.argmax(logits, axis=-1))


@pytest.mark.parametrize("name, tied", [("gpt2-tiny", True), ("llama-tiny", False)])
def test_prepared_step_gives_the_models_own_logits(name, tied):
    model, params = _model(name)
    adapter = adapter_for(model)
    prepared = adapter.prepare(params)
    assert (prepared.head_DV is not None) == tied
    if tied:
        assert prepared.head_DV.shape == (model.config.d_model, model.config.vocab_size)
    prompts = pad_prompts(PROMPTS, model.config.pad_token_id, "left")
    logits_BV, cache, positions_B = jax.jit(adapter.prefill, static_argnums=2)(prepared, prompts, 2)
    direct_BV, _ = jax.jit(adapter.prefill, static_argnums=2)(adapter.prepare(params)._replace(head_DV=None),
                                                               prompts, 2)[:2]
    np.testing.assert_allclose(logits_BV, direct_BV, rtol=1e-5, atol=1e-5)
    tokens_B = greedy_choice(logits_BV)
    step = jax.jit(adapter.step)
    np.testing.assert_allclose(step(prepared, tokens_B, positions_B, cache)[0],
                               step(prepared._replace(head_DV=None), tokens_B, positions_B, cache)[0],
                               rtol=1e-5, atol=1e-5)


def test_decoding_loop_copies_neither_the_cache_nor_the_tied_head():
    model, params = _model("gpt2-tiny")
    config = model.config
    prompts = pad_prompts(PROMPTS, config.pad_token_id, "left")
    new_tokens = 5
    hlo = sampling._generate.lower(params, prompts, jnp.zeros((0,), jnp.int32), jax.random.key(0), jnp.float32(1),
                                   jnp.float32(1), model=model, max_new_tokens=new_tokens, greedy=True, top_k=0,
                                   nucleus=False).compile().as_text()
    batch, slots = prompts.tokens_BP.shape[0], prompts.tokens_BP.shape[1] + new_tokens
    # Sizes of one layer's cache and of the embedding table: a per-step transpose or copy of
    # either re-reads all of it at every token.
    big_sizes = {batch * slots * config.kv_heads * config.dim_per_head, config.vocab_size * config.d_model}
    moved = []
    for line in hlo.splitlines():
        op = re.match(r"\s*(?:ROOT )?%\S+ = f32\[([\d,]*)\]\S* (transpose|copy)\(", line)
        if op and "/while/body/" in line and np.prod([int(d) for d in op.group(1).split(",")]) in big_sizes:
            moved.append(line.strip()[:160])
    assert not moved, "the decoding step moves a whole cache or table:\n" + "\n".join(moved)
