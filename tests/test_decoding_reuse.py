"""Decoding reuses what does not change: T5's cross-attention keys/values are projected once,
beams share their prompt's encoder output, and prefix-LM prompts are read bidirectionally."""
import jax
import jax.numpy as jnp
import numpy as np

from research.decoding import beam_search, generate
from research.decoding.adapters import adapter_for
from research.decoding.prompts import pad_prompts
from tests.test_decoding import _forward_encdec, _model

SOURCES = [[5, 6, 7, 8, 9], [10, 11]]


def test_t5_cross_attention_keys_values_are_projected_once():
    model, params = _model("t5-v1_1-tiny", num_layers=1, num_encoder_layers=1)
    adapter = adapter_for(model)
    prompts = pad_prompts(SOURCES, model.config.pad_token_id, "right")
    _, state, _ = jax.jit(adapter.prefill, static_argnums=2)(params, prompts, 4)
    assert state.cache.cross_attention is not None
    tokens, positions = jnp.asarray([3, 4]), jnp.ones((2,), jnp.int32)
    step = jax.jit(adapter.step)
    logits, _ = step(params, tokens, positions, state)
    # Later steps read the stored keys/values: the cross-attention key/value kernels are unused.
    cross = params["decoder_layers_0"]["cross_attention"]
    zeroed = {**params, "decoder_layers_0": {**params["decoder_layers_0"], "cross_attention": {
        **cross, "key": jax.tree.map(jnp.zeros_like, cross["key"]),
        "value": jax.tree.map(jnp.zeros_like, cross["value"])}}}
    np.testing.assert_array_equal(step(zeroed, tokens, positions, state)[0], logits)


def test_t5_beams_share_the_encoder_rows_and_score_like_full_forward():
    model, params = _model("t5-v1_1-tiny", num_layers=1, num_encoder_layers=1)
    adapter = adapter_for(model)
    prompts = pad_prompts(SOURCES, model.config.pad_token_id, "right")
    _, state, _ = jax.jit(adapter.prefill, static_argnums=2)(params, prompts, 4)
    tiled = jax.jit(adapter.select_rows)(state, jnp.repeat(jnp.arange(2), 3))
    assert tiled.encoded_BSD.shape[0] == 2 and tiled.cache.segment_BS.shape[0] == 6  # no copy per beam
    out = beam_search(model, params, SOURCES, num_beams=3, max_new_tokens=4, alpha=0.0)
    greedy = generate(model, params, SOURCES, max_new_tokens=4)
    assert np.all(np.asarray(out.scores_BW[:, 0]) >= np.asarray(greedy.log_probs_BN.sum(1)) - 1e-4)
    for b, source in enumerate(SOURCES):
        source_1S = np.zeros((1, 8), np.int32)  # fixed shapes: one compile; padding has segment id 0
        source_1S[0, :len(source)] = source
        for w in range(3):
            target = jnp.asarray([[model.config.decoder_start_token_id, *np.asarray(out.tokens_BWN[b, w, :3])]])
            log_probs = jax.nn.log_softmax(_forward_encdec(model, params, source_1S, target)[0], axis=-1)
            expected = sum(float(log_probs[i, int(out.tokens_BWN[b, w, i])]) for i in range(4))
            np.testing.assert_allclose(out.log_probs_BW[b, w], expected, atol=1e-3)


def test_prefix_lm_generation_reads_the_prompt_bidirectionally():
    model, params = _model("gpt2-tiny")
    prompts = [[3, 14, 15, 92, 65], [35, 7]]
    n = 5
    out = generate(model, params, prompts, max_new_tokens=n, bidirectional_prompt=True)
    forward = jax.jit(lambda tokens, prefix: model.apply({"params": params}, tokens, prefix_mask_BT=prefix))
    for b, prompt in enumerate(prompts):
        # Reference: full forward passes with the prompt as the prefix-LM prefix.
        buf, prefix = np.zeros((1, 16), np.int32), np.zeros((1, 16), np.int32)
        buf[0, :len(prompt)], prefix[0, :len(prompt)] = prompt, 1
        for i in range(n):
            buf[0, len(prompt) + i] = int(jnp.argmax(forward(buf, prefix)[0, len(prompt) + i - 1]))
        np.testing.assert_array_equal(out.tokens_BN[b], buf[0, len(prompt):len(prompt) + n])
    causal = generate(model, params, prompts, max_new_tokens=n)
    assert not np.array_equal(causal.tokens_BN, out.tokens_BN)  # the prompt's reading matters
