"""Fine-tuning runs loaded back: their resolved model, their tokenizer, LoRA adapters merged."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from experiments.configs.finetune import get_config
from research.training.checkpoint_loading import load_checkpoint, load_hf
from tests.finetune.conftest import tiny_config

TOKENS = np.random.default_rng(0).integers(1, 90, (2, 24)).astype(np.int32)
# Fields the llama-tiny preset sets otherwise: rebuilding the run from its preset loses them.
NON_DEFAULT = dict(sliding_window=4, rope_theta=500.0)
SENTINELS = 5


def _short(config) -> None:
    config.train.update(dict(num_steps=2, batch_size=8, seq_len=48, eval_batches=1, log_every_steps=1,
                             eval_every_steps=2))
    config.checkpoint.every_steps = 2
    config.opt.warmup_steps = 1
    config.data.update(dict(num_train=64, num_eval=16))
    config.generation_prompts = 0


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> tuple[str, str, str]:
    """(pretraining run, full SFT run started from it, the SFT's Hugging Face export)."""
    from experiments.configs import pretrain
    from research.finetune import finetune_and_evaluate
    from research.training import train_and_evaluate
    root = tmp_path_factory.mktemp("ft_from_checkpoint")
    base, sft, export = str(root / "base"), str(root / "sft"), str(root / "sft_hf")
    config = pretrain.get_config("gpt_tiny")
    config.model.update(preset="llama-tiny", num_layers=1, dtype="float32", **NON_DEFAULT)
    config.data.max_documents = 20
    # T5 sentinels appended to the run's SentencePiece model: its fine-tuned children must keep them.
    config.data.tokenizer.update(vocab_size=400, max_training_chars=60_000, num_extra_ids=SENTINELS)
    config.train.update(num_steps=2, batch_size=8, seq_len=32, log_every_steps=1, eval_every_steps=2,
                        eval_batches=1, progress_bar=False, peak_flops=1e9)
    config.opt.warmup_steps = 1
    config.checkpoint.every_steps = 2
    train_and_evaluate(config, base)
    config = get_config("sft_tiny")
    config.init, config.tokenizer, config.model.preset = f"checkpoint:{base}", "", "llama-tiny"
    _short(config)
    config.export_dir = export
    finetune_and_evaluate(config, sft)
    return base, sft, export


def test_a_full_finetune_run_loads_with_its_resolved_model_and_tokenizer(sft_run):
    base, sft, export = sft_run
    model_path = glob.glob(os.path.join(base, "tokenizers", "*.model"))[0]
    loaded = load_checkpoint(sft, tokenizer=model_path)
    for field, value in NON_DEFAULT.items():
        assert getattr(loaded.model.config, field) == value, field
    exported = load_hf(export, tokenizer=model_path)
    np.testing.assert_allclose(np.asarray(loaded.model.apply({"params": loaded.params}, TOKENS)),
                               np.asarray(exported.model.apply({"params": exported.params}, TOKENS)), atol=1e-5)
    own = load_checkpoint(sft)  # no tokenizer given: the base run's own, through the SFT's init
    assert own.tokenizer.vocab_size == load_checkpoint(base).tokenizer.vocab_size


def test_a_finetune_run_loaded_without_a_tokenizer_keeps_its_ancestors_sentinels(sft_run):
    """A fine-tuning run's config has no data.tokenizer: its ancestor's .model loaded with 0
    sentinels (vocabulary 400, not 405), so a sentinel id could not be decoded."""
    base, sft, _ = sft_run
    pretrained = load_checkpoint(base).tokenizer
    assert pretrained.vocab_size == 400 + SENTINELS
    assert load_checkpoint(sft).tokenizer.vocab_size == pretrained.vocab_size
    assert load_checkpoint(sft).tokenizer.decode([400 + SENTINELS - 1]) == pretrained.decode([400 + SENTINELS - 1])


def test_a_second_stage_starts_from_the_resolved_model(sft_run):
    from research.finetune.base_model import base_model_config, finetune_run_tokenizer, load_base_model
    base, sft, _ = sft_run
    section = {"preset": "llama-tiny", "dtype": "float32"}
    assert finetune_run_tokenizer(sft) == glob.glob(os.path.join(base, "tokenizers", "*.model"))[0]
    loaded = load_base_model(f"checkpoint:{sft}", section)
    predicted = base_model_config(f"checkpoint:{sft}", section)
    assert predicted == loaded.config == load_checkpoint(sft).model.config
    assert all(getattr(loaded.config, k) == v for k, v in NON_DEFAULT.items())


def test_a_random_init_run_finds_its_char_tokenizer(tmp_path):
    from research.finetune import finetune_and_evaluate
    config = tiny_config("sft_tiny")
    _short(config)
    finetune_and_evaluate(config, str(tmp_path / "sft"))
    loaded = load_checkpoint(str(tmp_path / "sft"))  # config.tokenizer="char"
    assert type(loaded.tokenizer).__name__ == "CharTokenizer"


def test_a_lora_run_loads_merged_into_its_base(tmp_path):
    from research.finetune import finetune_and_evaluate
    from research.finetune.base_model import load_lora_run
    config = tiny_config("sft_lora_tiny")
    _short(config)
    workdir = str(tmp_path / "lora")
    finetune_and_evaluate(config, workdir)
    loaded = load_checkpoint(workdir)  # its params hold only the adapters
    merged = load_lora_run(workdir)
    assert "token_embed" in loaded.params and loaded.step == 2 and "LoRA run" in loaded.source
    np.testing.assert_allclose(np.asarray(loaded.model.apply({"params": loaded.params}, TOKENS)),
                               np.asarray(merged_logits := loaded.model.apply({"params": merged.params}, TOKENS)),
                               atol=1e-6)
    assert merged_logits.shape[-1] == loaded.model.config.vocab_size


def test_a_finetune_run_whose_latest_step_is_damaged_loads_an_earlier_one(sft_run, tmp_path):
    """Its tokenizer and sentinels were read from the latest step's config whatever step was being
    loaded: a damaged latest step stopped --step=N and the fall-back to an intact step alike."""
    import shutil
    _, sft, _ = sft_run
    run = tmp_path / "sft"
    shutil.copytree(sft, run)
    shutil.copytree(run / "checkpoints" / "2", run / "checkpoints" / "4")
    (run / "checkpoints" / "4" / "config" / "metadata").write_text('{"trunc')
    intact = load_checkpoint(sft)
    for loaded in (load_checkpoint(str(run), step=2), load_checkpoint(str(run))):
        assert loaded.step == 2 and loaded.tokenizer.vocab_size == intact.tokenizer.vocab_size == 400 + SENTINELS


def test_a_lora_run_keeps_its_ancestors_sentinels_given_its_own_model_file_or_as_an_init(sft_run, tmp_path):
    """A LoRA run from a base with T5 sentinels, loaded with the base's .model given explicitly or
    used as an init with tokenizer '': its tokenizer lost the sentinels (vocabulary 400, not 405),
    as a full fine-tuning run's loader does not (a T5 LoRA run: 412 for 512, and domain adaptation
    from it was refused for want of sentinels)."""
    from research.finetune import finetune_and_evaluate
    from research.finetune.base_model import load_base_model
    base, _, _ = sft_run
    config = get_config("sft_lora_tiny")
    config.init, config.tokenizer, config.model.preset = f"checkpoint:{base}", "", "llama-tiny"
    _short(config)
    lora = str(tmp_path / "lora")
    finetune_and_evaluate(config, lora)
    model_path = glob.glob(os.path.join(base, "tokenizers", "*.model"))[0]
    assert load_checkpoint(lora).tokenizer.vocab_size == 400 + SENTINELS
    assert load_checkpoint(lora, tokenizer=model_path).tokenizer.vocab_size == 400 + SENTINELS
    child = load_base_model(f"checkpoint:{lora}", {"preset": "llama-tiny", "dtype": "float32"}, "")
    assert child.tokenizer.vocab_size == 400 + SENTINELS
