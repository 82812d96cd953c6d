"""A LoRA run's base as its run.json identifies it, and exports that would overwrite a base.

A LoRA checkpoint holds only adapters, merged at every load and resume into the base the run
started from: a seeded init (re-created from the run's seed), a checkpoint: run's recorded step, or
an hf: folder's files (their digest recorded at the first start). An export into such a folder, or
onto a URL the export cannot write, is refused before the workdir is claimed.
"""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from research.finetune import build_job, finetune_and_evaluate
from research.finetune.lora import BASE, merged_params
from research.finetune.trainer import lora_config
from research.models.config import ConfigError
from research.training.checkpoint_loading import load_checkpoint, restore_params
from tests.finetune.conftest import tiny_config


def _lora(num_steps: int, init: str = "random"):
    config = tiny_config("sft_lora_tiny", num_steps=num_steps)
    config.opt.warmup_steps = 0
    config.checkpoint.every_steps = 2
    # Short rows and one eval batch: compiling is most of these runs' time.
    config.train.update(dict(seq_len=32, eval_batches=1))
    config.data.update(dict(num_train=64, num_eval=8))
    if init != "random":  # the folder's own model, not the preset's tiny overrides
        config.init, config.model.num_layers, config.model.d_model = init, None, None
    return config


def _by_hand(config, run, step: int):
    """The model of `run`'s `step`: its adapters merged into the base its job starts from."""
    saved = restore_params(str(run / "checkpoints" / str(step)))
    return merged_params({**saved, BASE: build_job(config).initial_params()}, lora_config(config))


def _assert_same(loaded, expected) -> None:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), loaded, expected)


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory):
    """(hf folder, config, LoRA run from it with steps 2 and 4)."""
    import torch
    import transformers
    root = tmp_path_factory.mktemp("hf_lora")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=512, n_positions=128, n_embd=32, n_layer=1,
                                                         n_head=4)).save_pretrained(root / "base")
    config = _lora(4, f"hf:{root / 'base'}")
    finetune_and_evaluate(config, str(root / "run"))
    return root / "base", config, root / "run"


def test_a_random_init_lora_run_merges_any_step_into_its_seeded_base(tmp_path):
    """Only the latest step loaded ("records no base step"): the seeded base is the same at every step."""
    config = _lora(4)
    finetune_and_evaluate(config, str(tmp_path / "run"))
    loaded = load_checkpoint(str(tmp_path / "run"), step=2)
    assert loaded.step == 2 and "step 2 merged into random init" in loaded.source
    _assert_same(loaded.params, _by_hand(config, tmp_path / "run", 2))
    latest = load_checkpoint(str(tmp_path / "run")).params  # another model: step 2 is no alias of the latest
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(latest), jax.tree.leaves(loaded.params)))


def test_an_hf_lora_run_merges_any_step_while_its_folder_holds_the_files_it_started_from(hf_run, tmp_path):
    from research.finetune.run_identity import INIT_FILES_KEY, hf_files_digest
    folder, config, run = hf_run
    recorded = json.loads((run / "run.json").read_text())["fingerprint"]
    assert recorded[INIT_FILES_KEY] == hf_files_digest(str(folder))
    loaded = load_checkpoint(str(run), step=2)
    assert loaded.step == 2
    _assert_same(loaded.params, _by_hand(config, run, 2))
    # A run recorded before the digest: its folder at its start is unknown, so its latest step only.
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    record = json.loads((old / "run.json").read_text())
    del record["fingerprint"][INIT_FILES_KEY]
    (old / "run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"records no base step \(nor its hf: folder's files; .* latest step 4"):
        load_checkpoint(str(old), step=2)
    assert load_checkpoint(str(old)).step == 4


def test_an_hf_folder_whose_files_changed_since_the_run_started_is_refused_at_load_and_at_resume(hf_run):
    """An export into the base folder rewrote it: each rerun merged the adapters again into a merged model."""
    from safetensors.numpy import load_file, save_file
    folder, config, run = hf_run
    weights = folder / "model.safetensors"
    original = weights.read_bytes()
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("c_attn.weight"))
    tensors[key] = tensors[key] + np.float32(0.01)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    message = rf"^the run in '{run}' started from init=hf:{folder}, whose weight or config files changed since"
    try:
        for step in (None, 2):
            with pytest.raises(ConfigError, match=message):
                load_checkpoint(str(run), step=step)
        resumed = _lora(6, config.init)
        with pytest.raises(ConfigError, match=message + r".* in a new --workdir\.$") as error:
            finetune_and_evaluate(resumed, str(run))
        assert "\n" not in str(error.value)
    finally:
        weights.write_bytes(original)
    assert load_checkpoint(str(run), step=2).step == 2  # the files it started from again


def test_files_the_loader_does_not_read_or_a_base_gone_refuse_no_resume(hf_run, tmp_path):
    """A training_args.bin added beside the weights changed the digest and refused the resume; a base
    folder gone (an unmounted disk) made the claim call the run another one and offer to delete it."""
    from research.finetune.run_identity import hf_files_digest
    folder, config, run = hf_run
    before = hf_files_digest(str(folder))
    (folder / "training_args.bin").write_bytes(b"not the model")
    try:
        assert hf_files_digest(str(folder)) == before
        assert load_checkpoint(str(run), step=2).step == 2
    finally:
        (folder / "training_args.bin").unlink()
    moved = tmp_path / "away"
    folder.rename(moved)
    try:
        with pytest.raises(Exception) as error:
            finetune_and_evaluate(_lora(6, config.init), str(run))
        assert "another run" not in str(error.value) and "delete" not in str(error.value), error.value
        assert str(folder) in str(error.value)
    finally:
        moved.rename(folder)


def test_only_a_run_that_reloads_its_hf_init_records_its_files():
    """A full fine-tuning run restores every parameter from its own checkpoints: its base folder may
    change (reading gigabytes to hash it at every start bought nothing); LoRA and a preference run
    whose reference is its init read the folder again at every session."""
    from research.finetune.run_identity import INIT_FILES_KEY, finetune_fingerprint
    for preset, recorded in (("sft_tiny", False), ("sft_lora_tiny", True), ("dpo_tiny", True)):
        config = tiny_config(preset).to_dict()
        config["init"] = "hf:/nonexistent/folder"
        assert (INIT_FILES_KEY in finetune_fingerprint(config)) == recorded, preset


def test_a_preference_runs_hf_reference_is_identified_by_its_files(hf_run, tmp_path):
    """A reference given as 'hf:<folder>' is loaded again at every start, like a LoRA base: a folder
    rewritten between sessions resumed the run against another reference model, unrecorded."""
    from research.finetune.run_identity import finetune_fingerprint
    folder = tmp_path / "reference"
    shutil.copytree(hf_run[0], folder)
    config = tiny_config("dpo_tiny").to_dict()
    config["preference"]["reference"] = f"hf:{folder}"
    before = finetune_fingerprint(config)["preference.reference_files_sha256"]
    (folder / "README.md").write_text("not read by from_hf")  # another file: the same reference
    assert finetune_fingerprint(config)["preference.reference_files_sha256"] == before
    config_json = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config_json, "layer_norm_epsilon": 1e-3}))
    assert finetune_fingerprint(config)["preference.reference_files_sha256"] != before


def _never_past_the_checks(monkeypatch) -> None:
    from research.finetune import base_model, run, run_identity

    def never(*args, **kwargs):
        raise AssertionError("reached past check_config")
    for module, name in ((run_identity, "claim_workdir"), (run, "build_job"), (base_model, "load_base_model")):
        monkeypatch.setattr(module, name, never)


def test_an_export_dir_url_is_refused_before_the_claim(tmp_path, monkeypatch):
    """'gs://b/x' was written by os/open into a local folder ./gs:/b/x, and the export logged as done."""
    _never_past_the_checks(monkeypatch)
    config = tiny_config("sft_tiny", num_steps=1)
    config.export_dir = "gs://my-bucket/hf_out"
    with pytest.raises(ConfigError, match=r"^export_dir='gs://my-bucket/hf_out' is a URL, .* give a local folder, "
                                          r"then copy it there \(e\.g\. gcloud storage cp -r") as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["the init folder", "a folder in it", "the preference reference",
                                  "the base of a LoRA run init"])
def test_an_export_dir_in_a_hugging_face_folder_the_run_loads_is_refused_before_the_claim(case, hf_run, tmp_path,
                                                                                         monkeypatch):
    """Each rerun merged the adapters again into the export that had replaced its base."""
    folder, config, lora_run = hf_run
    _never_past_the_checks(monkeypatch)
    config = _lora(3, config.init)
    config.export_dir = str(folder / "sub") if case == "a folder in it" else str(folder)
    if case == "the preference reference":
        config = tiny_config("dpo_tiny", num_steps=1)
        config.preference.reference = f"hf:{folder}"
        config.export_dir = str(folder)
    if case == "the base of a LoRA run init":
        config.init = f"checkpoint:{lora_run}"
    via = rf" \(the base of checkpoint:{lora_run}\)" if case == "the base of a LoRA run init" else ""
    with pytest.raises(ConfigError, match=rf"^export_dir='{config.export_dir}' lies in the Hugging Face folder "
                                          rf"'{folder}' the run loads{via}: the export would overwrite") as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()
