"""ModelConfig values that built a model of NaN logits are refused in one line at config time:
token ids outside the embedding table, RoPE's base <= 0 and a negative norm eps."""
import json

import pytest

from research.models import get_config
from research.models.config import ConfigError
from research.models.hf import hf_model_config, llama, t5

VOCAB = 512  # the tiny presets'


@pytest.mark.parametrize("name, field, value", [
    # Padded rows of a ragged batch generated token 0 at NaN log-probs (jnp.take fills with NaN).
    ("llama-tiny", "pad_token_id", VOCAB), ("gpt2-tiny", "pad_token_id", -1), ("t5-tiny", "pad_token_id", VOCAB),
    ("bert-test", "pad_token_id", VOCAB + 7),
    # T5's first decoder input: NaN from the first step.
    ("t5-tiny", "decoder_start_token_id", VOCAB),
])
def test_token_ids_outside_the_vocabulary_are_refused(name, field, value):
    with pytest.raises(ConfigError, match=rf"^{name}: {field}={value} is not a token of vocab_size={VOCAB}; give an "
                                          rf"id in \[0, {VOCAB}\), e\.g\. 0\.$"):
        get_config(name, **{field: value})
    assert getattr(get_config(name, **{field: VOCAB - 1}), field) == VOCAB - 1  # the last row is a token


@pytest.mark.parametrize("model_type, change, message", [
    ("llama", {"pad_token_id": 64}, r"^llama: pad_token_id=64 is not a token of vocab_size=64"),
    ("t5", {"decoder_start_token_id": 64}, r"t5: decoder_start_token_id=64 is not a token of vocab_size=64"),
])
def test_a_config_json_with_an_id_outside_the_vocabulary_is_refused(tmp_path, model_type, change, message):
    base = {"model_type": model_type, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "d_model": 16,
            "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_heads": 2, "feed_forward_proj": "relu", "pad_token_id": None}
    (tmp_path / "config.json").write_text(json.dumps({**base, **change}))
    with pytest.raises(ConfigError, match=message):  # transformers refuses the LLaMA one too
        hf_model_config(str(tmp_path))
    converter = {"llama": llama, "t5": t5}[model_type]
    assert converter.config_from_hf(base).pad_token_id == 0  # a null pad id is 0, as before
    if model_type == "llama":  # LLaMA-1 conversions write -1 (transformers counts it from the end): 0 too
        assert converter.config_from_hf({**base, "pad_token_id": -1}).pad_token_id == 0


@pytest.mark.parametrize("field, value, message", [
    ("rope_theta", 0.0, r"^llama-tiny: rope_theta=0\.0 must be positive"),
    ("rope_theta", -10_000.0, r"^llama-tiny: rope_theta=-10000\.0 must be positive"),
    ("rope_theta", float("nan"), r"^llama-tiny: rope_theta=nan must be positive"),
    ("norm_eps", -1.0, r"^llama-tiny: norm_eps=-1\.0 must be >= 0"),
])
def test_rope_theta_and_norm_eps_that_give_nan_logits_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        get_config("llama-tiny", **{field: value})
    assert get_config("llama-tiny", norm_eps=0.0).norm_eps == 0.0
    # Learned positions never read rope_theta.
    assert get_config("gpt2-tiny", rope_theta=0.0).rope_theta == 0.0
