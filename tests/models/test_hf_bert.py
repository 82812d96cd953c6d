"""BERT import/export: parity with transformers (random weights, CPU, float32) and exact
round trips of configs and parameters."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from research.models import get_config, layout
from research.models.config import ConfigError
from research.models.encoder import Encoder
from research.models.hf import CheckpointError
from research.models.hf import bert

B, T, V, TYPES, LABELS = 2, 10, 97, 3, 3
TOL = 1e-4


def _hf_config(**overrides):
    fields = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                  max_position_embeddings=24, type_vocab_size=TYPES, num_labels=LABELS,
                  attn_implementation="eager")
    return transformers.BertConfig(**{**fields, **overrides})


def _randomize(model):
    # HF initialises LayerNorms to 1/0 and biases to 0; noise everywhere makes a swapped or
    # transposed tensor visible in the outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _numpy(state_dict):
    return {k: v.detach().numpy().copy() for k, v in state_dict.items()}


@pytest.fixture(scope="module")
def hf_models():
    """BertForMaskedLM and BertForSequenceClassification sharing one random body."""
    torch.manual_seed(0)
    config = _hf_config(architectures=["BertForSequenceClassification"])
    mlm = _randomize(transformers.BertForMaskedLM(config))
    cls = _randomize(transformers.BertForSequenceClassification(config))
    missing, _ = cls.load_state_dict(mlm.state_dict(), strict=False)
    assert set(missing) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                            "classifier.bias"}
    state_dict = {**_numpy(mlm.state_dict()), **_numpy(cls.state_dict())}
    return config, mlm, cls, state_dict


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, V, (B, T))
    types = rng.integers(0, TYPES, (B, T))
    attention_mask = np.ones((B, T), np.int64)
    attention_mask[1, 6:] = 0  # right padding
    return tokens, types, attention_mask


@functools.partial(jax.jit, static_argnames=("config", "method"))
def _apply(params, tokens, types, segment_ids, config, method):
    return Encoder(config).apply({"params": params}, tokens, token_type_ids_BT=types, segment_ids_BT=segment_ids,
                                 method=method)


def _ours(params, config, inputs, method):
    tokens, types, attention_mask = (jnp.asarray(x, jnp.int32) for x in inputs)
    return np.asarray(_apply(params, tokens, types, attention_mask, config, method))


def _torch(model, inputs, **kwargs):
    tokens, types, attention_mask = (torch.from_numpy(x) for x in inputs)
    with torch.no_grad():
        return model(input_ids=tokens, token_type_ids=types, attention_mask=attention_mask, **kwargs)


def test_parity_with_transformers(hf_models, inputs):
    hf_config, mlm, cls, state_dict = hf_models
    config = bert.config_from_hf(hf_config.to_dict())
    assert (config.num_labels, config.activation, config.norm_eps, config.pooler) == (LABELS, "gelu", 1e-12, True)
    params = bert.params_from_hf(state_dict, config)
    real = inputs[2].astype(bool)

    logits = _ours(params, config, inputs, "__call__")
    np.testing.assert_allclose(logits[real], _torch(mlm, inputs).logits.numpy()[real], atol=TOL, rtol=0)

    body = _torch(cls.bert, inputs)
    hidden = _ours(params, config, inputs, "encode")
    np.testing.assert_allclose(hidden[real], body.last_hidden_state.numpy()[real], atol=TOL, rtol=0)
    np.testing.assert_allclose(_ours(params, config, inputs, "pool"), body.pooler_output.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(_ours(params, config, inputs, "classify"), _torch(cls, inputs).logits.numpy(),
                               atol=TOL, rtol=0)


def test_untied_tanh_gelu_and_bare_base_model(inputs):
    """Untied decoder + gelu_new from BertForMaskedLM; a prefix-less BertModel with no MLM head."""
    torch.manual_seed(1)
    hf_config = _hf_config(hidden_act="gelu_new", tie_word_embeddings=False, num_labels=2)
    mlm = _randomize(transformers.BertForMaskedLM(hf_config))
    state_dict = _numpy(mlm.state_dict())
    assert not np.array_equal(state_dict["cls.predictions.decoder.weight"],
                              state_dict["bert.embeddings.word_embeddings.weight"])
    config = bert.config_from_hf(hf_config.to_dict())
    assert (config.activation, config.tie_embeddings, config.num_labels) == ("gelu_tanh", False, 0)
    params = bert.params_from_hf(state_dict, config)
    assert "pooler" not in params  # BertForMaskedLM has none; nothing is invented
    real = inputs[2].astype(bool)
    np.testing.assert_allclose(_ours(params, config, inputs, "__call__")[real],
                               _torch(mlm, inputs).logits.numpy()[real], atol=TOL, rtol=0)
    exported = bert.params_to_hf(params, config)
    assert set(exported) == set(state_dict)
    for name in set(state_dict) - {"cls.predictions.bias"}:  # untied, HF leaves that one unused
        np.testing.assert_array_equal(exported[name], state_dict[name], err_msg=name)

    base = {k[len("bert."):]: v for k, v in state_dict.items() if k.startswith("bert.")}
    base_params = bert.params_from_hf(base, config)
    assert set(base_params) == set(params) - {"mlm_head"}
    np.testing.assert_allclose(_ours(base_params, config, inputs, "encode")[real],
                               _torch(mlm.bert, inputs).last_hidden_state.numpy()[real], atol=TOL, rtol=0)


def test_export_import_is_exact(hf_models):
    _, mlm, _, state_dict = hf_models
    config = get_config("bert-test", vocab_size=V, d_model=32, num_heads=4, d_ff=40, max_len=24,
                        type_vocab_size=TYPES, num_labels=LABELS)
    boxed = jax.jit(Encoder(config).init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    exported = bert.params_to_hf(boxed, config)  # boxed params are accepted
    assert set(exported) == set(state_dict)
    jax.tree.map(np.testing.assert_array_equal, bert.params_from_hf(exported, config), layout.unbox(boxed))

    # HF -> ours -> HF reproduces every tensor, and the export loads strictly into transformers.
    again = bert.params_to_hf(bert.params_from_hf(state_dict, config), config)
    assert set(again) == set(state_dict)
    for name, value in state_dict.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)
    fresh = transformers.BertForMaskedLM(_hf_config())
    fresh.load_state_dict({k: torch.tensor(v) for k, v in exported.items() if not k.startswith(
        ("bert.pooler", "classifier"))}, strict=True)

    # The scanned layout stacks the same tensors on a leading layers axis.
    scanned = config.replace(scan_layers=True)
    stacked = bert.params_from_hf(state_dict, scanned)
    assert stacked["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
    for name, value in bert.params_to_hf(stacked, scanned).items():
        np.testing.assert_array_equal(value, state_dict[name], err_msg=name)


def test_config_round_trip_and_transformers_accepts_it():
    config = get_config("bert-test", num_labels=4, activation="gelu_tanh", dropout_rate=0.05)
    hf = bert.config_to_hf(config)
    assert hf["model_type"] == "bert" and hf["architectures"] == ["BertForSequenceClassification"]
    hf_config = transformers.BertConfig(**hf)
    assert (hf_config.num_labels, hf_config.hidden_size, hf_config.layer_norm_eps) == (4, 64, 1e-12)
    assert bert.config_from_hf(hf_config.to_dict()) == config.replace(name="hf-bert")
    assert bert.config_to_hf(get_config("bert-tiny"))["architectures"] == ["BertForMaskedLM"]
    minilm = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 1536, "hidden_act": "gelu", "vocab_size": 30522, "_name_or_path": "minilm"}
    assert bert.config_from_hf(minilm).dim_per_head == 32


@pytest.mark.parametrize("hf,match", [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    ({"hidden_act": "gelu_fast"}, "gelu_fast"),
    ({"is_decoder": True}, "is_decoder"),
    ({"model_type": "roberta"}, "model_type='roberta'"),
])
def test_unsupported_hf_configs_fail_clearly(hf, match):
    with pytest.raises(ConfigError, match=match):
        bert.config_from_hf({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4, **hf})


def test_unexportable_configs_fail_clearly():
    with pytest.raises(ConfigError, match="norm_placement='pre'"):
        bert.config_to_hf(get_config("bert-test", norm_placement="pre"))
    with pytest.raises(ConfigError, match="type_vocab_size >= 1"):
        bert.config_to_hf(get_config("bert-test", type_vocab_size=0))


def test_bad_state_dicts_fail_clearly(hf_models):
    hf_config, _, _, state_dict = hf_models
    config = bert.config_from_hf(hf_config.to_dict())
    incomplete = {k: v for k, v in state_dict.items() if k != "bert.encoder.layer.1.output.dense.weight"}
    with pytest.raises(CheckpointError, match="encoder.layer.1.output.dense.weight"):
        bert.params_from_hf(incomplete, config)
    with pytest.raises(CheckpointError, match="misshapen"):
        bert.params_from_hf(state_dict, config.replace(d_ff=48))
    with pytest.raises(CheckpointError, match="does not use"):
        bert.params_from_hf(state_dict, config.replace(num_layers=1))
    untied = {**state_dict, "cls.predictions.decoder.weight": state_dict["cls.predictions.decoder.weight"] + 1}
    with pytest.raises(CheckpointError, match="tie_embeddings=False"):
        bert.params_from_hf(untied, config)
    params = bert.params_from_hf(state_dict, config)
    no_wo = {**params, "layers_1": {**params["layers_1"], "mlp": {"wi": params["layers_1"]["mlp"]["wi"]}}}
    with pytest.raises(CheckpointError, match="layers_1/mlp/wo/kernel"):
        bert.params_to_hf(no_wo, config)


def test_tf_era_layernorm_names_and_ignored_buffers(hf_models):
    hf_config, _, _, state_dict = hf_models
    config = bert.config_from_hf(hf_config.to_dict())
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state_dict.items()}
    legacy["bert.embeddings.position_ids"] = np.arange(24)[None]
    legacy["cls.seq_relationship.weight"] = np.zeros((2, 32), np.float32)
    expected = bert.params_from_hf(state_dict, config)
    jax.tree.map(np.testing.assert_array_equal, bert.params_from_hf(legacy, config), expected)


def test_checkpoint_folder_loads_in_transformers(tmp_path, hf_models, inputs):
    """to_hf writes a folder BertForMaskedLM.from_pretrained reads; from_hf reads it back."""
    from research.models import build_model, from_hf, to_hf

    hf_config, _, _, state_dict = hf_models
    config = bert.config_from_hf(hf_config.to_dict()).replace(num_labels=0)
    to_hf(build_model(config), bert.params_from_hf(state_dict, config.replace(num_labels=LABELS)), str(tmp_path))
    loaded = transformers.BertForMaskedLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    for name, value in loaded.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), state_dict[name], err_msg=name)
    from safetensors.numpy import load_file
    assert not any(name.startswith("classifier") for name in load_file(str(tmp_path / "model.safetensors")))
    model, params = from_hf(str(tmp_path))
    assert model.config.num_labels == 0 and "classifier" not in params
    real = inputs[2].astype(bool)
    np.testing.assert_allclose(_ours(params, model.config, inputs, "__call__")[real],
                               _torch(loaded, inputs).logits.numpy()[real], atol=TOL, rtol=0)


def test_tied_config_with_a_distinct_stored_decoder_loads_untied_like_transformers(tmp_path, hf_models, inputs):
    # tie_word_embeddings=true, but the file stores an MLM decoder of its own: transformers keeps it.
    from safetensors.torch import save_file
    from research.models import from_hf

    _, mlm, _, _ = hf_models
    mlm.save_pretrained(tmp_path)
    state_dict = {k: v.detach().clone().contiguous() for k, v in mlm.state_dict().items()}
    embedding = state_dict["bert.embeddings.word_embeddings.weight"]
    state_dict["cls.predictions.decoder.weight"] = embedding + 0.5 * torch.randn_like(embedding)
    save_file(state_dict, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reference = transformers.BertForMaskedLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    decoder, embeddings = reference.cls.predictions.decoder.weight, reference.bert.embeddings.word_embeddings.weight
    assert reference.config.tie_word_embeddings and decoder.data_ptr() != embeddings.data_ptr()

    model, params = from_hf(str(tmp_path))
    assert not model.config.tie_embeddings
    real = inputs[2].astype(bool)
    np.testing.assert_allclose(_ours(params, model.config, inputs, "__call__")[real],
                               _torch(reference, inputs).logits.numpy()[real], atol=TOL, rtol=0)
