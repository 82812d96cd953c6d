"""Parity of EncoderDecoder with transformers' T5ForConditionalGeneration (random weights, CPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from research.models import get_config
from research.models.config import ConfigError
from research.models.encoder_decoder import EncoderDecoder
from research.models.hf import CheckpointError
from research.models.hf import t5

B, S, T = 2, 11, 7
ENCODER_LENGTHS, DECODER_LENGTHS = (11, 6), (7, 4)  # row 1 is right-padded on both sides


def _reference(feed_forward_proj: str, tied: bool) -> transformers.T5ForConditionalGeneration:
    # Asymmetric layer counts and short max_distance exercise the layer mapping and the
    # logarithmic buckets (offsets >= 4 are log-bucketed here).
    hf_config = transformers.T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
        relative_attention_num_buckets=16, relative_attention_max_distance=20, dropout_rate=0.0,
        feed_forward_proj=feed_forward_proj, tie_word_embeddings=tied, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(hf_config).eval().float()
    with torch.no_grad():
        # Norm scales start at 1: perturb every tensor so a swapped mapping cannot hide.
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
        if not tied:
            # transformers 5 ties lm_head to shared even when asked not to: untie by hand.
            model.lm_head.weight = torch.nn.Parameter(0.3 * torch.randn_like(model.shared.weight))
    assert (model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()) == tied
    assert model.config.scale_decoder_outputs == tied
    return model


def _hf_config_dict(model: transformers.T5ForConditionalGeneration, tied: bool) -> dict:
    # transformers 5 writes tie_word_embeddings=True always; describe the reference as it is.
    return {**model.config.to_dict(), "tie_word_embeddings": tied}


def _inputs():
    rng = np.random.default_rng(0)
    encoder_mask = (np.arange(S)[None] < np.array(ENCODER_LENGTHS)[:, None]).astype(np.int64)
    decoder_mask = (np.arange(T)[None] < np.array(DECODER_LENGTHS)[:, None]).astype(np.int64)
    encoder_tokens = rng.integers(2, 96, (B, S)) * encoder_mask
    decoder_tokens = rng.integers(2, 96, (B, T)) * decoder_mask
    return encoder_tokens, encoder_mask, decoder_tokens, decoder_mask


@pytest.mark.parametrize("feed_forward_proj,tied", [("relu", True), ("gated-gelu", False)])
def test_matches_transformers(feed_forward_proj, tied):
    reference = _reference(feed_forward_proj, tied)
    config = t5.config_from_hf(_hf_config_dict(reference, tied))
    assert (config.tie_embeddings, config.scale_tied_logits, config.gated_mlp) == (tied, tied, not tied)
    assert (config.encoder_layers, config.num_layers) == (2, 3)
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    params = t5.params_from_hf(state_dict, config)
    model = EncoderDecoder(config)

    encoder_tokens, encoder_mask, decoder_tokens, decoder_mask = _inputs()
    with torch.no_grad():
        as_torch = lambda x: torch.from_numpy(np.asarray(x))
        want_logits = reference(input_ids=as_torch(encoder_tokens), attention_mask=as_torch(encoder_mask),
                                decoder_input_ids=as_torch(decoder_tokens),
                                decoder_attention_mask=as_torch(decoder_mask)).logits.numpy()
        want_encoded = reference.encoder(input_ids=as_torch(encoder_tokens),
                                         attention_mask=as_torch(encoder_mask)).last_hidden_state.numpy()

    kwargs = dict(encoder_segment_ids_BS=jnp.asarray(encoder_mask, jnp.int32),
                  decoder_segment_ids_BT=jnp.asarray(decoder_mask, jnp.int32))
    logits = jax.jit(model.apply)({"params": params}, jnp.asarray(encoder_tokens), jnp.asarray(decoder_tokens),
                                  **kwargs)
    encoded = jax.jit(lambda p, x, s: model.apply({"params": p}, x, encoder_segment_ids_BS=s, method="encode"))(
        params, jnp.asarray(encoder_tokens), kwargs["encoder_segment_ids_BS"])
    real_t, real_s = decoder_mask.astype(bool), encoder_mask.astype(bool)
    assert np.abs(np.asarray(logits)[real_t] - want_logits[real_t]).max() <= 1e-4
    assert np.abs(np.asarray(encoded)[real_s] - want_encoded[real_s]).max() <= 1e-4
    assert np.abs(want_logits[real_t]).max() > 0.1  # the comparison is not between near-zero logits

    # Export: the keys transformers expects, loadable strictly, and import(export) is exact.
    exported = t5.params_to_hf(params, config)
    assert set(exported) == set(reference.state_dict())
    fresh = _reference(feed_forward_proj, tied)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    for key, value in reference.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key].numpy(), value.numpy(), err_msg=key)
    jax.tree.map(np.testing.assert_array_equal, t5.params_from_hf(exported, config), params)


def test_config_round_trip_and_scan_layout():
    for name in ("t5-small", "t5-v1_1-base", "t5-tiny"):
        config = get_config(name)
        back = t5.config_from_hf(t5.config_to_hf(config))
        assert back == config.replace(name=back.name, num_encoder_layers=config.encoder_layers), name
        assert transformers.T5Config(**t5.config_to_hf(config)).scale_decoder_outputs == config.scale_tied_logits

    reference = _reference("gated-gelu", tied=False)
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    config = t5.config_from_hf(_hf_config_dict(reference, tied=False)).replace(scan_layers=True)
    stacked = t5.params_from_hf(state_dict, config)
    assert stacked["encoder_layers"]["mlp"]["wo"]["kernel"].shape == (2, 48, 32)
    assert stacked["decoder_layers"]["cross_attention"]["query"]["kernel"].shape == (3, 32, 4, 8)
    exported = t5.params_to_hf(stacked, config)
    assert set(exported) == set(state_dict)
    for key, value in exported.items():
        np.testing.assert_array_equal(value, state_dict[key], err_msg=key)


def test_bad_inputs_fail_with_one_line():
    with pytest.raises(ConfigError, match="feed_forward_proj='fancy-gelu'"):
        t5.config_from_hf({"model_type": "t5", "feed_forward_proj": "fancy-gelu"})
    with pytest.raises(ConfigError, match="activation 'mish'"):
        t5.config_from_hf({"model_type": "t5", "feed_forward_proj": "gated-mish"})
    with pytest.raises(ConfigError, match="cannot be expressed as T5.*norm='layernorm'"):
        t5.config_to_hf(get_config("t5-tiny", norm="layernorm"))

    reference = _reference("relu", tied=True)
    config = t5.config_from_hf(_hf_config_dict(reference, tied=True))
    state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    partial = dict(state_dict)
    del partial["decoder.block.0.layer.1.EncDecAttention.k.weight"], partial["encoder.final_layer_norm.weight"]
    with pytest.raises(CheckpointError, match="lacks 2 tensor.*final_layer_norm.*EncDecAttention.k.weight"):
        t5.params_from_hf(partial, config)
    with pytest.raises(CheckpointError, match=r"config does not describe.*decoder\.block\.2\."):
        t5.params_from_hf(state_dict, config.replace(num_layers=2))
    with pytest.raises(CheckpointError, match=r"q.weight has shape \(32, 32\) but the config implies \(16, 32\)"):
        t5.params_from_hf(state_dict, config.replace(head_dim=4))
    untied_head = {**state_dict, "lm_head.weight": state_dict["shared.weight"] + 1}
    with pytest.raises(CheckpointError, match="config ties the LM head but lm_head.weight differs"):
        t5.params_from_hf(untied_head, config)
    # Untying it (as transformers 5 does) would leave the v1.0 scaling on an untied head.
    with pytest.raises(ConfigError, match="scale_decoder_outputs=false"):
        t5.config_for_weights(config, untied_head)


def test_v1_1_resaved_by_transformers5_loads_untied(tmp_path):
    # transformers 5 writes tie_word_embeddings=true for every T5 and records the (absent) scaling
    # as scale_decoder_outputs=false; the distinct lm_head.weight in the file is what unties it.
    import json
    from research.models import from_hf

    from research.models.hf import hf_model_config

    reference = _reference("gated-gelu", tied=False)
    reference.save_pretrained(tmp_path, max_shard_size="20KB")  # sharded: the head is read from its own shard
    assert (tmp_path / "model.safetensors.index.json").exists()
    written = json.loads((tmp_path / "config.json").read_text())
    assert (written["tie_word_embeddings"], written["scale_decoder_outputs"]) == (True, False)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path), attn_implementation="eager")
    assert reloaded.lm_head.weight.data_ptr() != reloaded.shared.weight.data_ptr()

    model, params = from_hf(str(tmp_path))
    assert (model.config.tie_embeddings, model.config.scale_tied_logits) == (False, False)
    assert hf_model_config(str(tmp_path)) == model.config  # what fine-tuning's pre-claim checks read
    encoder_tokens, encoder_mask, decoder_tokens, decoder_mask = _inputs()
    with torch.no_grad():
        want = reloaded.eval()(input_ids=torch.from_numpy(encoder_tokens),
                               attention_mask=torch.from_numpy(encoder_mask),
                               decoder_input_ids=torch.from_numpy(decoder_tokens),
                               decoder_attention_mask=torch.from_numpy(decoder_mask)).logits.numpy()
    logits = model.apply({"params": params}, jnp.asarray(encoder_tokens), jnp.asarray(decoder_tokens),
                         encoder_segment_ids_BS=jnp.asarray(encoder_mask, jnp.int32),
                         decoder_segment_ids_BT=jnp.asarray(decoder_mask, jnp.int32))
    real = decoder_mask.astype(bool)
    assert np.abs(np.asarray(logits)[real] - want[real]).max() <= 1e-4


def test_gated_exact_gelu_export_keeps_the_activation():
    # transformers reads feed_forward_proj="gated-gelu" as the tanh GELU; an exact-GELU gated MLP
    # must be written so transformers (and our import) read it back as exact.
    config = get_config("t5-v1_1-tiny", activation="gelu", vocab_size=96)
    hf_config = t5.config_to_hf(config)
    assert t5.config_from_hf(hf_config).activation == "gelu"
    reference = transformers.T5ForConditionalGeneration(
        transformers.T5Config(**hf_config, attn_implementation="eager")).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(0.1 * torch.randn_like(param))
    params = t5.params_from_hf({k: v.numpy() for k, v in reference.state_dict().items()}, config)
    encoder_tokens, _, decoder_tokens, _ = _inputs()
    with torch.no_grad():
        want = reference(input_ids=torch.from_numpy(encoder_tokens),
                         decoder_input_ids=torch.from_numpy(decoder_tokens)).logits.numpy()
    logits = EncoderDecoder(config).apply({"params": params}, jnp.asarray(encoder_tokens), jnp.asarray(decoder_tokens))
    # Unscaled v1.1 logits reach ~40 here: the tolerance is relative (the tanh GELU is off by ~4e-4 of it).
    assert np.abs(np.asarray(logits) - want).max() <= 1e-5 * np.abs(want).max()
