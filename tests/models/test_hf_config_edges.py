"""Corners of Hugging Face configs read as transformers reads them: rope_scaling replacing
rope_parameters, LLaMA ignoring a sliding_window key, and BERT token type ids outside the
type table."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from research.models import from_hf, get_config
from research.models.encoder import Encoder
from research.models.hf import llama

VOCAB = 64
TOL = 1e-4


def _llama(**overrides) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _logits_match(folder: str, tokens: np.ndarray) -> tuple[transformers.PreTrainedModel, object]:
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    model, params = from_hf(folder)
    with torch.no_grad():
        expected = reference(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, expected, atol=TOL, rtol=0)
    return reference, model


def test_rope_scaling_replaces_rope_parameters_like_transformers(tmp_path):
    """transformers 5 saves rope_parameters (theta 1e6 here); a default-typed rope_scaling added
    by hand replaces that dict whole, so the theta falls back to 10000. Merging the two kept 1e6."""
    _llama(rope_parameters={"rope_type": "default", "rope_theta": 1e6}).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "default"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    tokens = np.random.RandomState(0).randint(0, VOCAB, (1, 48))
    reference, model = _logits_match(str(tmp_path), tokens)
    assert reference.config.rope_parameters["rope_theta"] == model.config.rope_theta == 10_000.0


@pytest.mark.parametrize("hf_config,theta", [
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rope_scaling": {"rope_type": "default"}}, 1e4),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rope_scaling": {"type": "default"},
      "rope_theta": 5e5}, 5e5),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}, "rope_scaling": {}}, 1e6),  # empty: not given
    ({"rope_parameters": {"rope_type": "default"}, "rope_theta": 2e5}, 2e5),
])
def test_rope_theta_follows_transformers_precedence(hf_config, theta):
    assert llama.config_from_hf({"model_type": "llama", **hf_config}).rope_theta == theta


def test_llama_ignores_a_sliding_window_key_like_transformers(tmp_path):
    """LlamaForCausalLM never reads sliding_window: attention stays fully causal (it was refused)."""
    _llama(sliding_window=4).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()).get("sliding_window") == 4
    _, model = _logits_match(str(tmp_path), np.random.RandomState(1).randint(0, VOCAB, (1, 16)))
    assert model.config.sliding_window is None


@pytest.mark.parametrize("types,bad", [([[0, 0, 0, 0, 1, 1, 1, 1]], 1), ([[0, 0, 0, -1, 0, 0, 0, 0]], -1)])
def test_out_of_range_token_type_ids_raise_one_line(types, bad):
    """jnp.take read type 1 of a one-row table as NaN, in every logit; transformers raises."""
    config = get_config("bert-test", vocab_size=97, max_len=16, type_vocab_size=1)
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, 97, (1, 8)))
    params = Encoder(config).init(jax.random.key(0), tokens)["params"]
    with pytest.raises(ValueError) as error:
        Encoder(config).apply({"params": params}, tokens, token_type_ids_BT=jnp.asarray(types))
    message = str(error.value)
    assert f"holds {bad}" in message and "type_vocab_size=1" in message and "\n" not in message
    # In range: finite logits, and the check costs a jitted call nothing (the ids are traced there).
    logits = jax.jit(Encoder(config).apply)({"params": params}, tokens, token_type_ids_BT=jnp.zeros_like(tokens))
    assert np.isfinite(np.asarray(logits)).all()


_LLAMA_JSON = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}
_T5_JSON = {"model_type": "t5", "vocab_size": VOCAB, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1,
            "num_heads": 2, "feed_forward_proj": "relu"}


@pytest.mark.parametrize("base, change, message", [
    # Each was a bare TypeError / ValueError / AttributeError traceback from the converter or the
    # config's own checks; the float width and the string eps were accepted and failed in Flax.
    (_LLAMA_JSON, {"rope_scaling": "linear"}, r"c/config.json: not a readable llama config.*ValueError"),
    (_T5_JSON, {"feed_forward_proj": None}, r"c/config.json: not a readable t5 config.*AttributeError"),
    (_LLAMA_JSON, {"num_key_value_heads": "2"}, r"num_kv_heads='2' must be a whole number \(or None\)"),
    (_LLAMA_JSON, {"num_hidden_layers": None}, r"num_layers=None must be a whole number\.$"),
    (_LLAMA_JSON, {"hidden_size": 16.0}, r"d_model=16.0 must be a whole number"),
    (_LLAMA_JSON, {"rms_norm_eps": "1e-6"}, r"norm_eps='1e-6' must be a number"),
    (_LLAMA_JSON, {"num_attention_heads": 0}, r"c/config.json: not a readable llama config.*ZeroDivisionError"),
    # Silent NaN logits (transformers: IndexError) and a bare ZeroDivisionError at trace time.
    (_T5_JSON, {"relative_attention_max_distance": 16}, r"relative_max_distance=16 must exceed .* >= 17\.$"),
    (_T5_JSON, {"relative_attention_num_buckets": 2}, r"relative_buckets=2 is too few"),
])
def test_config_json_values_of_the_wrong_type_are_one_line(tmp_path, base, change, message):
    from research.models.config import ConfigError
    from research.models.hf import hf_model_config

    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**base, **change}))
    with pytest.raises(ConfigError, match=message) as raised:
        hf_model_config(str(folder))
    assert len(str(raised.value).splitlines()) == 1
    with pytest.raises(ConfigError, match=message):  # before any weights are looked for
        from_hf(str(folder))
