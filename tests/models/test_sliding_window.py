"""Mistral's sliding window (ModelConfig.sliding_window) against transformers' MistralForCausalLM
(float32, eager): query q sees key k iff k <= q and k > q - W. Logits below, at and past the
window, packed documents, cached decoding, greedy generation and the export round trip."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from research.decoding import generate
from research.models import ConfigError, build_model, from_hf, get_config, to_hf
from research.models.attention_kernels import (jax_dot_product_attention, reference_attention,
                                               segment_attention_mask, splash_attention)
from research.models.decoder import init_decoder_cache

VOCAB = 64
TOL = 1e-4


def _mistral(window: int, max_pos: int) -> transformers.MistralForCausalLM:
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=max_pos, sliding_window=window, rope_theta=500.0,
        # No eos: transformers' generate would stop there, ours (no stop_tokens) goes on.
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=None, pad_token_id=0, attn_implementation="eager")
    model = transformers.MistralForCausalLM(config)
    with torch.no_grad():  # large enough weights that a dropped window changes the argmax
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


# (window, max_position_embeddings): a window inside the context, and one as long as it, which
# still masks the positions RoPE runs past max_position_embeddings (it was dropped on import).
@pytest.fixture(scope="module", params=[(6, 64), (16, 16)], ids=["w6-p64", "w16-p16"])
def mistral(request, tmp_path_factory):
    window, max_pos = request.param
    hf_model = _mistral(window, max_pos)
    folder = tmp_path_factory.mktemp(f"mistral_w{window}")
    hf_model.save_pretrained(folder)
    model, params = from_hf(str(folder))
    return hf_model, model, params, window, str(folder)


def test_import_keeps_the_window(mistral):
    _, model, _, window, _ = mistral
    assert model.config.sliding_window == window


def test_logits_match_transformers_below_at_and_past_the_window(mistral):
    hf_model, model, params, w, _ = mistral
    apply = jax.jit(model.apply)
    rng = np.random.RandomState(0)
    for t in (w - 1, w, w + 1, 2 * w + 3):
        tokens = rng.randint(0, VOCAB, (2, t))
        ours = np.asarray(apply({"params": params}, jnp.asarray(tokens)))
        np.testing.assert_allclose(ours, _hf_logits(hf_model, tokens), atol=TOL, rtol=0, err_msg=f"T={t}")


def test_scanned_and_rematerialized_layers_keep_the_window(mistral):
    """nn.scan carries the mask (its window a static field) into one compiled block."""
    hf_model, _, _, w, folder = mistral
    model, params = from_hf(folder, scan_layers=True, remat="full")
    tokens = np.random.RandomState(5).randint(0, VOCAB, (1, 2 * w + 3))
    ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, _hf_logits(hf_model, tokens), atol=TOL, rtol=0)


def test_packed_documents_each_get_their_own_window(mistral):
    hf_model, model, params, w, _ = mistral
    rng = np.random.RandomState(1)
    doc_a, doc_b = rng.randint(0, VOCAB, w + 3), rng.randint(0, VOCAB, w + 5)
    tokens = np.concatenate([doc_a, doc_b, [0, 0]])[None]
    segments = np.asarray([[1] * len(doc_a) + [2] * len(doc_b) + [0, 0]])
    positions = np.concatenate([np.arange(len(doc_a)), np.arange(len(doc_b)), [0, 0]])[None]
    ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens), segment_ids_BT=jnp.asarray(
        segments), positions_BT=jnp.asarray(positions)))[0]
    np.testing.assert_allclose(ours[:len(doc_a)], _hf_logits(hf_model, doc_a[None])[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(ours[len(doc_a):len(doc_a) + len(doc_b)], _hf_logits(hf_model, doc_b[None])[0],
                               atol=TOL, rtol=0)


def test_cached_decoding_equals_transformers_past_the_window(mistral):
    """A prefill of w - 2 tokens, then one token per step, well past the window."""
    hf_model, model, params, w, _ = mistral
    t, prefill = 2 * w + 3, w - 2
    tokens = np.random.RandomState(2).randint(0, VOCAB, (1, t))
    apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, cache=c))
    cache = init_decoder_cache(model.config, 1, t)
    logits, cache = apply(params, jnp.asarray(tokens[:, :prefill]), cache)
    steps = [np.asarray(logits)[0]]
    for i in range(prefill, t):
        logits, cache = apply(params, jnp.asarray(tokens[:, i:i + 1]), cache)
        steps.append(np.asarray(logits)[0])
    np.testing.assert_allclose(np.concatenate(steps), _hf_logits(hf_model, tokens)[0], atol=TOL, rtol=0)


def test_generate_greedy_equals_transformers_past_the_window(mistral):
    """Two prompts of different lengths in one (left-padded) batch, each against transformers
    alone: the window counts tokens, not the padding before them."""
    hf_model, model, params, w, _ = mistral
    rng = np.random.RandomState(3)
    prompts = [list(rng.randint(3, VOCAB, 5)), list(rng.randint(3, VOCAB, w + 2))]
    new = 2 * w + 4
    out = generate(model, params, prompts, max_new_tokens=new)
    generation = transformers.GenerationConfig(max_new_tokens=new, do_sample=False, pad_token_id=0)
    for row, prompt in enumerate(prompts):
        with torch.no_grad():
            expected = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                         dtype=torch.long), generation_config=generation)[0, len(prompt):].tolist()
        assert len(expected) == new and [int(i) for i in np.asarray(out.tokens_BN)[row][:new]] == expected, row


def test_export_round_trip_keeps_the_window(mistral, tmp_path):
    hf_model, model, params, w, _ = mistral
    to_hf(model, params, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"], saved["sliding_window"]) == (
        "mistral", ["MistralForCausalLM"], w)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert isinstance(reloaded, transformers.MistralForCausalLM) and reloaded.config.sliding_window == w
    tokens = np.random.RandomState(4).randint(0, VOCAB, (1, 2 * w + 3))
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens), atol=TOL, rtol=0)
    again, _ = from_hf(str(tmp_path))
    assert again.config.replace(name=model.config.name) == model.config


def test_config_without_a_window_still_exports_as_llama(tmp_path):
    model = build_model(get_config("llama-tiny"))
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    to_hf(model, params, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llama" and "sliding_window" not in saved


@pytest.mark.parametrize("overrides,expected", [
    (dict(sliding_window=0), "sliding_window=0 must be a positive int"),
    (dict(sliding_window=True), "sliding_window=True must be a positive int"),
    (dict(sliding_window=4.0), "sliding_window=4.0 must be a positive int"),
    (dict(sliding_window=4, position="learned"), "sliding_window belongs to decoder models with position='rope'"),
])
def test_bad_windows_fail_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as error:
        get_config("llama-tiny", **overrides)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_prefix_lm_with_a_window_is_refused_in_one_line():
    model = build_model(get_config("llama-tiny", sliding_window=4))
    tokens = jnp.ones((1, 8), jnp.int32)
    with pytest.raises(ConfigError, match=r"prefix_mask_BT \(prefix LM\) is not supported with sliding_window=4"):
        model.init(jax.random.key(0), tokens, prefix_mask_BT=jnp.ones_like(tokens))


def test_the_windowed_mask_is_transformers_rule():
    segments = jnp.ones((1, 7), jnp.int32)
    dense = np.asarray(segment_attention_mask(segments, segments, causal=True, window=3).dense_BTS[0])
    q, k = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    np.testing.assert_array_equal(dense, (k <= q) & (k > q - 3))


def _qkv(b, t, h, kv, dh, seed):
    rng = np.random.default_rng(seed)
    draw = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return draw(b, t, h, dh), draw(b, t, kv, dh), draw(b, t, kv, dh)


@pytest.mark.parametrize("kernel", ["dot_product_attention", "splash"])
def test_fused_kernels_apply_the_window(kernel):
    """Packed and padded rows, GQA: each kernel equals the reference on the windowed mask.
    Splash reads the window from the mask (a local band), not the dense array."""
    t = 128  # splash's smallest block
    q, k, v = _qkv(2, t, 4, 2, 8, seed=5)
    cut, pad = t // 3, t // 8
    segments = jnp.asarray([[1] * cut + [2] * (t - cut - pad) + [0] * pad, [1] * t], jnp.int32)
    mask = segment_attention_mask(segments, segments, causal=True, window=20)
    fn = {"dot_product_attention": jax_dot_product_attention, "splash": splash_attention}[kernel]
    valid = (segments > 0)[:, :, None, None]
    ours = jax.jit(lambda q, k, v: fn(q, k, v, mask, scale=0.35))(q, k, v)
    reference = reference_attention(q, k, v, mask.dense_BTS, scale=0.35)
    np.testing.assert_allclose(jnp.where(valid, ours, 0), jnp.where(valid, reference, 0), atol=1e-5, rtol=1e-5)
    unwindowed = reference_attention(q, k, v, segment_attention_mask(segments, segments, causal=True).dense_BTS,
                                     scale=0.35)
    assert float(jnp.abs(jnp.where(valid, unwindowed - reference, 0)).max()) > 1e-2  # the window mattered
