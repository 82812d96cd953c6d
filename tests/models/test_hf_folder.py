"""from_hf on the folder layouts transformers produces (safetensors, sharded safetensors,
pytorch_model.bin) and its one-line errors for bad folders and mismatched weights."""
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from research.models import ConfigError, from_hf
from research.models.decoder import Decoder
from research.models.hf import CheckpointError, gpt2


@pytest.fixture(scope="module")
def hf_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def expected(hf_gpt2):
    """Our params converted straight from the in-memory state dict."""
    state_dict = {name: t.numpy() for name, t in hf_gpt2.state_dict().items()}
    return gpt2.params_from_hf(state_dict, gpt2.config_from_hf(hf_gpt2.config.to_dict()))


@pytest.fixture
def folder(hf_gpt2, tmp_path):
    path = tmp_path / "tiny-gpt2"
    hf_gpt2.save_pretrained(path)
    return path


def _assert_same(params, expected):
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), params, expected)))


def test_safetensors_folder(folder, expected):
    assert (folder / "model.safetensors").exists()
    model, params = from_hf(str(folder))
    assert isinstance(model, Decoder) and model.config.name == "tiny-gpt2"
    _assert_same(params, expected)


def test_sharded_safetensors_folder(hf_gpt2, tmp_path, expected):
    hf_gpt2.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    _assert_same(from_hf(str(tmp_path))[1], expected)


def _bin_folder(hf_model, folder, path, dtype=torch.float32):
    """A pytorch_model.bin folder (transformers 5 only saves safetensors)."""
    os.makedirs(path)
    shutil.copy(folder / "config.json", path / "config.json")
    torch.save({name: t.to(dtype) for name, t in hf_model.state_dict().items()}, path / "pytorch_model.bin")
    return path


def test_pytorch_bin_folder(hf_gpt2, folder, tmp_path, expected):
    path = _bin_folder(hf_gpt2, folder, tmp_path / "bin")
    _assert_same(from_hf(str(path))[1], expected)


def test_a_bin_of_parameters_saved_from_named_parameters_loads(hf_gpt2, folder, tmp_path, expected):
    # nn.Parameters (requires_grad) raised "Can't call numpy() on Tensor that requires grad"; transformers loads it.
    path = tmp_path / "params_bin"
    os.makedirs(path)
    shutil.copy(folder / "config.json", path / "config.json")
    torch.save(dict(hf_gpt2.named_parameters()), path / "pytorch_model.bin")
    params = from_hf(str(path))[1]
    assert {k for k in dict(hf_gpt2.named_parameters())} < set(hf_gpt2.state_dict())  # (buffers left out)
    _assert_same(params, expected)


def test_a_gpt2_pad_id_past_the_vocabulary_reads_as_zero(folder):
    # GPT-2 has no padding_idx, so transformers loads such a folder: padded columns are masked, pad with 0.
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "pad_token_id": config["vocab_size"]}))
    assert from_hf(str(folder))[0].config.pad_token_id == 0


def test_an_export_removes_a_peft_adapter_an_earlier_save_left_in_the_folder(folder, tmp_path, caplog):
    # transformers applied the adapter on top of the exported weights: the folder scored as another model.
    from research.models.hf import to_hf
    model, params = from_hf(str(folder))
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"stale")
    with caplog.at_level("WARNING"):
        to_hf(model, params, str(folder))
    assert not (folder / "adapter_config.json").exists() and not (folder / "adapter_model.safetensors").exists()
    assert any("adapter_config.json, adapter_model.safetensors" in r.getMessage() for r in caplog.records)


def test_bfloat16_bin_loads_with_param_dtype_override(hf_gpt2, folder, tmp_path, expected):
    path = _bin_folder(hf_gpt2, folder, tmp_path / "bin16", dtype=torch.bfloat16)
    model, params = from_hf(str(path), param_dtype="bfloat16", dtype="bfloat16")
    assert model.config.param_dtype == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype("bfloat16")}
    _assert_same(params, jax.tree.map(lambda x: x.astype("bfloat16"), expected))


def test_bin_without_torch_says_how_to_fix(hf_gpt2, folder, tmp_path, monkeypatch):
    path = _bin_folder(hf_gpt2, folder, tmp_path / "bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match=r"pytorch_model\.bin.* needs PyTorch \(pip install torch\)"):
        from_hf(str(path))


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist"):
        from_hf(str(tmp_path / "nowhere"))


def test_missing_config(folder):
    os.remove(folder / "config.json")
    with pytest.raises(FileNotFoundError, match=r"config\.json' is missing"):
        from_hf(str(folder))


def test_missing_weights(folder):
    os.remove(folder / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no weights in '.*tiny-gpt2': expected model\.safetensors"):
        from_hf(str(folder))


def test_missing_shard(hf_gpt2, tmp_path):
    hf_gpt2.save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values()))[-1]
    os.remove(tmp_path / shard)
    with pytest.raises(FileNotFoundError, match=rf"lists shard '{shard}', which is missing"):
        from_hf(str(tmp_path))


@pytest.mark.parametrize("index, message", [("{not json", r"is not a valid checkpoint index \(JSONDecodeError"),
                                            ('{"metadata": {}}', r"is not a valid checkpoint index \(KeyError"),
                                            ('{"weight_map": [1]}', r"weight_map is not a mapping")])
def test_a_damaged_index_is_one_line(hf_gpt2, tmp_path, index, message):
    """A truncated or hand-edited model.safetensors.index.json was a JSONDecodeError / KeyError
    traceback through every CLI (they catch the checkpoint errors, not these)."""
    from research.models.hf.checkpoint_files import CheckpointError, read_tensors_ending_with
    hf_gpt2.save_pretrained(tmp_path, max_shard_size="20KB")
    (tmp_path / "model.safetensors.index.json").write_text(index)
    for read in (lambda: from_hf(str(tmp_path)), lambda: read_tensors_ending_with(str(tmp_path), ("wte.weight",))):
        with pytest.raises(CheckpointError, match=message):
            read()


def test_unsupported_model_type_lists_supported(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bloom"}))
    with pytest.raises(ConfigError, match=r"model_type='bloom'; supported: bert, gpt2, llama, mistral, qwen2, t5\.$"):
        from_hf(str(folder))


def test_unknown_override(folder):
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['scan'\]"):
        from_hf(str(folder), scan=True)


def _edit_weights(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(folder):
    _edit_weights(folder, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"gpt2 checkpoint is missing tensors h\.1\.mlp\.c_fc\.bias;"):
        from_hf(str(folder))


def test_unexpected_tensor_is_named(folder):
    _edit_weights(folder, lambda t: t.update({"transformer.h.2.ln_1.weight": np.ones(16, np.float32)}))
    with pytest.raises(CheckpointError, match=r"tensors this config does not use: h\.2\.ln_1\.weight;"):
        from_hf(str(folder))


def test_override_that_does_not_fit_the_weights(folder):
    with pytest.raises(CheckpointError,
                       match=r"misshapen tensors h\.0\.mlp\.c_fc\.weight \(16, 64\) \(expected \(16, 32\)\)"):
        from_hf(str(folder), d_ff=32)
