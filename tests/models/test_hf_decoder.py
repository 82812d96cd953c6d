"""Parity of research/models/hf (GPT-2, LLaMA, Mistral, Qwen2) with transformers on small random
models: logits, scan_layers import, exact export/import round trips, loading our export
in transformers, and config conversion errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from research.models import ConfigError, build_model, from_hf, get_config, layout, to_hf
from research.models.hf import CheckpointError, gpt2, hf_model_config, llama

VOCAB = 128
TOL = 1e-4


def _hf_model(arch: str) -> transformers.PreTrainedModel:
    """A small random transformers model with every weight perturbed (biases and norm
    scales start at 0 / 1 in transformers, which would hide mapping mistakes)."""
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    if arch == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                                                     **common))
    else:
        llama_like = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
                          **common)
        if arch == "mistral":
            config = transformers.MistralConfig(sliding_window=None, head_dim=8, **llama_like)
            model = transformers.MistralForCausalLM(config)
        elif arch.startswith("qwen2"):  # biases on q/k/v only; "-window": a 4-token window in every layer
            window = dict(use_sliding_window=True, sliding_window=4, max_window_layers=0) if arch.endswith("window") \
                else {}
            model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**window, **llama_like))
        else:
            config = transformers.LlamaConfig(tie_word_embeddings=arch == "llama-tied", **llama_like)
            model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _hf_logits(model: transformers.PreTrainedModel, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


def _our_logits(model, params, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens), segment_ids_BT=jnp.asarray(mask)))


@pytest.fixture(scope="module")
def batch():
    """Random tokens with right padding: row 1 ends in 3 padding tokens."""
    tokens = np.random.RandomState(0).randint(0, VOCAB, (2, 10))
    mask = np.ones_like(tokens)
    mask[1, 7:] = 0
    return tokens, mask


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-tied", "mistral", "qwen2", "qwen2-window"])
def saved(request, tmp_path_factory):
    """(transformers model, folder it was saved to with save_pretrained)."""
    model = _hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return model, str(folder)


def test_logits_match_transformers(saved, batch):
    hf_model, folder = saved
    model, params = from_hf(folder)
    tokens, mask = batch
    diff = np.abs(_our_logits(model, params, tokens, mask) - _hf_logits(hf_model, tokens, mask))
    assert diff[mask.astype(bool)].max() <= TOL


def test_scan_layers_import_gives_same_logits(saved, batch):
    _, folder = saved
    unrolled, unrolled_params = from_hf(folder)
    scanned, scanned_params = from_hf(folder, scan_layers=True)
    assert scanned.config.scan_layers and "layers" in scanned_params and "layers_0" not in scanned_params
    tokens, mask = batch
    np.testing.assert_allclose(_our_logits(scanned, scanned_params, tokens, mask),
                               _our_logits(unrolled, unrolled_params, tokens, mask), atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_export_then_import_is_exact(saved, tmp_path, scan_layers):
    _, folder = saved
    model, params = from_hf(folder, scan_layers=scan_layers)
    to_hf(model, params, str(tmp_path))
    again_model, again = from_hf(str(tmp_path), scan_layers=scan_layers)
    assert again_model.config == model.config.replace(name=tmp_path.name)
    assert jax.tree.structure(again) == jax.tree.structure(params)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), again, params)))


def _random_params(model, seed=0):
    """Random params of model's shapes, norm scales near 1 (init's RNG is slow to compile)."""
    abstract = layout.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    rng = np.random.RandomState(seed)
    def draw(path, leaf):
        noise = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        return jnp.asarray(1.0 + noise if jax.tree_util.keystr(path).endswith("['scale']") else noise)
    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.parametrize("preset,overrides,architecture", [
    ("gpt2-tiny", {}, "GPT2LMHeadModel"), ("llama-tiny", {}, "LlamaForCausalLM"),
    ("llama-tiny", {"qkv_bias": True}, "Qwen2ForCausalLM"),
    ("llama-tiny", {"qkv_bias": True, "sliding_window": 3}, "Qwen2ForCausalLM")])
def test_to_hf_folder_loads_in_transformers(tmp_path, batch, preset, overrides, architecture):
    model = build_model(get_config(preset, **overrides))
    params = _random_params(model)
    to_hf(model, params, str(tmp_path))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert type(hf_model).__name__ == architecture
    tokens, mask = batch
    diff = np.abs(_our_logits(model, params, tokens, mask) - _hf_logits(hf_model, tokens, mask))
    assert diff[mask.astype(bool)].max() <= TOL


def test_to_hf_carries_the_tokenizers_special_ids(tmp_path):
    # gpt2-tiny embeds 512 ids; GPT-2's default eos 50256 lies outside them, so transformers'
    # generate() would never stop on the model's real eos unless the export names it.
    import json
    from types import SimpleNamespace
    model = build_model(get_config("gpt2-tiny"))
    to_hf(model, _random_params(model), str(tmp_path), tokenizer=SimpleNamespace(bos_id=2, eos_id=1, pad_id=0))
    exported = json.loads((tmp_path / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"], exported["pad_token_id"]) == (2, 1, 0)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert hf_model.generation_config.eos_token_id == 1 < hf_model.config.vocab_size
    # Exported again without a tokenizer: the earlier generation_config.json (eos 1, stop id 7) stayed
    # and spoke for the new weights.
    to_hf(model, _random_params(model), str(tmp_path), tokenizer=SimpleNamespace(bos_id=2, eos_id=1, pad_id=0),
          stop_ids=(7,))
    to_hf(model, _random_params(model), str(tmp_path))
    assert not (tmp_path / "generation_config.json").exists()


@pytest.mark.parametrize("module,preset", [(gpt2, "gpt2-tiny"), (llama, "llama-tiny"), (llama, "tinyllama-1.1b")])
def test_config_round_trip(module, preset):
    config = get_config(preset)
    assert module.config_from_hf(module.config_to_hf(config)).replace(name=config.name) == config


def test_llama_reads_transformers4_rope_theta_and_defaults():
    # transformers 4 wrote rope_theta at the top level and left out default values.
    config = llama.config_from_hf({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                   "rope_theta": 500000.0, "rope_scaling": None})
    assert (config.rope_theta, config.d_ff, config.num_layers, config.kv_heads) == (500000.0, 11008, 32, 4)


@pytest.mark.parametrize("module,hf_config,expected", [
    (llama, {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "RoPE scaling 'llama3'"),
    (llama, {"rope_scaling": {"type": "linear", "factor": 2.0}}, "RoPE scaling 'linear'"),
    # transformers 5 saves rope_parameters; a rope_scaling added by hand applies there (it was ignored here).
    (llama, {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
             "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "RoPE scaling 'linear'"),
    (llama, {"attention_bias": True}, "attention_bias=true is not supported"),
    (llama, {"mlp_bias": True}, "mlp_bias=true is not supported"),
    (llama, {"hidden_act": "tanh"}, "activation 'tanh' is not supported"),
    # Qwen2's default layer_types window layers >= max_window_layers only; one window per model converts.
    (llama, {"model_type": "qwen2", "num_hidden_layers": 4, "use_sliding_window": True, "max_window_layers": 2},
     "qwen2: a sliding window in 2 of 4 layers"),
    (llama, {"model_type": "qwen2", "num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]},
     "qwen2: a sliding window in 1 of 2 layers"),
    (gpt2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=true is not supported"),
])
def test_unsupported_hf_config_raises(module, hf_config, expected):
    with pytest.raises(ConfigError) as error:
        module.config_from_hf(hf_config)
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("preset,overrides,expected", [
    ("gpt2-tiny", dict(norm="rmsnorm"), "cannot be expressed as GPT-2: norm='rmsnorm' (needs 'layernorm')"),
    ("gpt2-tiny", dict(num_kv_heads=2), "num_kv_heads=2 (needs 4)"),
    ("llama-tiny", dict(use_bias=True), "cannot be expressed as LLaMA: use_bias=True (needs False)"),
    ("t5-tiny", dict(qkv_bias=True), "cannot be expressed as T5: qkv_bias=True (needs False)"),
])
def test_to_hf_rejects_configs_the_architecture_cannot_express(tmp_path, preset, overrides, expected):
    model = build_model(get_config(preset, **overrides))
    with pytest.raises(ConfigError) as error:
        to_hf(model, {}, str(tmp_path))
    assert expected in str(error.value)


@pytest.mark.parametrize("arch,embedding", [("gpt2", "transformer.wte.weight"),
                                            ("llama-tied", "model.embed_tokens.weight")])
def test_tied_config_with_a_distinct_stored_head_loads_untied_like_transformers(tmp_path, batch, arch, embedding):
    # config.json says tie_word_embeddings=true, but the file stores an lm_head.weight of its own:
    # transformers keeps that head (untied), so dropping it would change every logit.
    from safetensors.torch import save_file
    hf_model = _hf_model(arch)
    hf_model.save_pretrained(tmp_path)
    state_dict = {k: v.detach().clone().contiguous() for k, v in hf_model.state_dict().items()}
    state_dict["lm_head.weight"] = state_dict[embedding] + 0.5 * torch.randn_like(state_dict[embedding])
    save_file(state_dict, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager").eval()
    assert reference.config.tie_word_embeddings and reference.lm_head.weight.data_ptr() != \
        reference.get_input_embeddings().weight.data_ptr()

    model, params = from_hf(str(tmp_path))
    assert not model.config.tie_embeddings
    # Fine-tuning's pre-claim checks read the config without the layers: it must be the same
    # (an lm_head LoRA target was refused there while the job's model had the head).
    assert hf_model_config(str(tmp_path)) == model.config
    tokens, mask = batch
    diff = np.abs(_our_logits(model, params, tokens, mask) - _hf_logits(reference, tokens, mask))
    assert diff[mask.astype(bool)].max() <= TOL
    # Asked to tie anyway, the import refuses rather than drop the stored head.
    with pytest.raises(CheckpointError, match="config ties the LM head but lm_head.weight differs from .*; leave "
                                              "tie_embeddings unset"):
        from_hf(str(tmp_path), tie_embeddings=True)

    # A stored head equal to the embedding stays tied.
    state_dict["lm_head.weight"] = state_dict[embedding].clone()
    save_file(state_dict, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    assert from_hf(str(tmp_path))[0].config.tie_embeddings
    assert hf_model_config(str(tmp_path)).tie_embeddings
