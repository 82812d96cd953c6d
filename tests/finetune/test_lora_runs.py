"""LoRA runs end to end: a task head trains beside the adapters and is checkpointed with them."""
import jax
import numpy as np

from research.finetune import build_job, finetune_and_evaluate
from research.training.checkpoint_loading import restore_params
from research.training.metrics import read_metrics

from tests.finetune.conftest import tiny_config


def lora_config(preset, num_steps, rank=8):
    config = tiny_config(preset, num_steps=num_steps)
    config.opt.warmup_steps = 0
    config.lora.rank = rank
    return config


def test_a_classification_head_trains_under_lora_and_is_checkpointed(tmp_path):
    config = lora_config("classify_tiny", num_steps=3)
    finetune_and_evaluate(config, str(tmp_path))
    saved = restore_params(str(tmp_path / "checkpoints" / "3"))
    assert set(saved) == {"lora", "trained"} and set(saved["trained"]) == {"classifier"}
    initial = build_job(config).initial_params()["classifier"]
    assert all(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved["trained"]["classifier"]),
                                                          jax.tree.leaves(initial)))
    counted = [r["params_trainable"] for r in read_metrics(tmp_path) if "params_trainable" in r][0]
    assert counted == sum(np.size(x) for x in jax.tree.leaves(saved))  # adapters + the head


def test_a_lora_run_is_a_starting_point_and_a_reference_with_its_adapters_merged_into_its_base(tmp_path):
    """Its checkpoint holds only adapters: the base it was trained on (run.json) is loaded and
    the adapters merged, so the next run starts from exactly the model the LoRA run evaluated."""
    from research.finetune.base_model import load_base_model, load_reference
    lora_run = tmp_path / "sft_lora"
    trained = finetune_and_evaluate(lora_config("sft_lora_tiny", num_steps=3), str(lora_run))
    config = lora_config("sft_tiny", num_steps=1, rank=0)
    config.init, config.tokenizer = f"checkpoint:{lora_run}", ""
    started = finetune_and_evaluate(config, str(tmp_path / "sft_from_lora"))
    np.testing.assert_allclose(started["before_eval_loss"], trained["eval_loss"], rtol=1e-5)
    base = load_base_model(config.init, config.model)
    assert "LoRA run" in base.source and "lora" not in base.params
    reference_config, reference_params = load_reference(config.init)
    assert reference_config == base.config
    jax.tree.map(np.testing.assert_array_equal, reference_params, base.params)
    dpo = lora_config("dpo_tiny", num_steps=1, rank=0)
    dpo.preference.reference = f"checkpoint:{lora_run}"
    # One DPO step scores with that reference (it failed with ScopeParamNotFoundError at the first step).
    assert np.isfinite(finetune_and_evaluate(dpo, str(tmp_path / "dpo_from_lora"))["eval_loss"])


def test_the_exported_config_carries_the_fine_tuning_tokenizers_special_ids(tmp_path):
    """GPT-2's default bos/eos 50256 lie outside the char tokenizer's 512 ids: generate() would
    never stop on eos. The export names the tokenizer's own (char: pad 0, eos 1, no bos)."""
    import json

    from transformers import AutoModelForCausalLM
    config = lora_config("sft_lora_tiny", num_steps=2)
    config.export_dir = str(tmp_path / "hf")
    finetune_and_evaluate(config, str(tmp_path / "run"))
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (exported["bos_token_id"], exported["eos_token_id"], exported["pad_token_id"]) == (None, 1, 0)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert model.generation_config.eos_token_id == 1 and model.config.vocab_size == 512


def test_a_checkpoint_with_adapters_this_config_no_longer_builds_says_so(tmp_path, monkeypatch,
                                                                         young_gc_after_failed_reads):
    """Older code put an adapter on every path lora.targets matched, a fresh head's kernel too
    (where it trained nothing); the same config now builds adapters on the frozen base only, so
    such a run cannot resume. The restore error said "delete the damaged steps", of steps that
    are not damaged; it names the adapters that differ instead, and leaves the steps in place."""
    import pytest

    from research.finetune import trainer
    from research.finetune.lora import init_lora, split_trained
    from research.training.checkpointing import CheckpointError

    config = lora_config("classify_tiny", num_steps=2)
    config.lora.targets = ("kernel$",)
    _, head = split_trained(build_job(config).abstract_params, ("classifier",))
    with monkeypatch.context() as patch:  # the older code: the fresh classifier adapted too
        patch.setattr(trainer, "init_lora", lambda params, lora, key: init_lora({**params, **head}, lora, key))
        finetune_and_evaluate(config, str(tmp_path))
    resumed = lora_config("classify_tiny", num_steps=4)
    resumed.lora.targets = ("kernel$",)
    with pytest.raises(CheckpointError, match=r"^checkpoint step 2 in \S+ holds LoRA adapters other than those "
                                              r"lora.targets=\('kernel\$',\) gives now \(there only: \['classifier'\]; "
                                              r"here only: \[\]\): .* train it again in a new --workdir\.$") as error:
        finetune_and_evaluate(resumed, str(tmp_path))
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]  # nothing moved aside
