"""Fine-tuning runs loaded as a starting point, a reference or a reward model: which base step a
LoRA run merges into, run.json's absolute init and tokenizer followed from another directory,
and head-model runs (reward, tagging) refused in one line instead of a traceback."""
from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest

from research.models.config import ConfigError
from tests.finetune.conftest import tiny_config

TOKENS = np.random.default_rng(0).integers(1, 60, (2, 16)).astype(np.int32)


def _config(preset: str, num_steps: int = 1, **fields):
    """A one-layer `preset` run of `num_steps` steps, saved at every step (no warmup: step 1 moves)."""
    config = tiny_config(preset, num_steps=num_steps)
    config.train.eval_batches = 1
    config.checkpoint.update(every_steps=1, keep_best=0)
    config.opt.warmup_steps = 0
    config.data.update(dict(num_train=16, num_eval=8))
    config.update(fields)
    return config


def _train(preset: str, workdir: str, num_steps: int = 1, **fields) -> str:
    from research.finetune import finetune_and_evaluate
    finetune_and_evaluate(_config(preset, num_steps, **fields), workdir)
    return workdir


def _logits(config, params) -> np.ndarray:
    from research.models import build_model
    return np.asarray(build_model(config).apply({"params": params}, TOKENS))


def _edit_run_json(workdir: str, **changes) -> None:
    """Rewrite fields of run.json's fingerprint (None removes one): a copied run, or an older record."""
    path = os.path.join(workdir, "run.json")
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    for key, value in changes.items():
        record["fingerprint"].pop(key, None) if value is None else record["fingerprint"].update({key: value})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f)


@pytest.fixture(scope="module")
def moved_base(tmp_path_factory) -> dict:
    """A LoRA run L (steps 1, 2) trained on step 1 of a base P, whose run was continued to step 2
    afterwards (allowed); with L's logits as loaded before P moved."""
    from research.finetune.base_model import load_lora_run
    root = tmp_path_factory.mktemp("moved_base")
    base, lora = str(root / "P"), str(root / "L")
    _train("sft_tiny", base)
    _train("sft_lora_tiny", lora, 2, init=f"checkpoint:{base}", tokenizer="")
    before = load_lora_run(lora)
    _train("sft_tiny", base, 2)  # the same run resumed: its latest step is now 2
    return dict(root=root, base=base, lora=lora, config=before.config, before=_logits(before.config, before.params))


def test_a_lora_run_merges_into_the_base_step_it_was_trained_on(moved_base):
    """Its base's latest step was taken: after the base run went on, init=checkpoint:L (eval loss
    5.852 -> 5.761 in the audit), preference.reference and load_checkpoint changed silently."""
    from research.finetune.base_model import load_base_model, load_lora_run, load_reference
    from research.training.checkpoint_loading import load_checkpoint
    lora, before = moved_base["lora"], moved_base["before"]
    base_now = load_checkpoint(moved_base["base"])
    assert base_now.step == 2 and not np.allclose(_logits(base_now.model.config, base_now.params),
                                                  _logits(base_now.model.config,
                                                          load_checkpoint(moved_base["base"], step=1).params))
    merged = load_lora_run(lora)
    assert "P/checkpoints step 1" in merged.source
    models = [(merged.config, merged.params), load_reference(f"checkpoint:{lora}")]
    loaded = load_checkpoint(lora)
    started = load_base_model(f"checkpoint:{lora}", {})
    models += [(loaded.model.config, loaded.params), (started.config, started.params)]
    for config, params in models:
        np.testing.assert_allclose(_logits(config, params), before, atol=1e-6)


def test_an_earlier_step_of_a_lora_run_merges_into_the_same_recorded_base_step(moved_base):
    """Every step of L trained on P's step 1 (a resume on a moved base is refused), so any step of
    L merges into it; it was refused as "the base is read as it is now"."""
    from research.training.checkpoint_loading import load_checkpoint
    loaded = load_checkpoint(moved_base["lora"], step=1)
    assert loaded.step == 1 and "L/checkpoints step 1 merged" in loaded.source
    assert "P/checkpoints step 1" in loaded.source


def test_a_lora_run_whose_base_step_is_gone_is_refused_in_one_line(moved_base):
    from research.finetune.base_model import load_base_model
    root = moved_base["root"]
    base, lora = str(root / "P_pruned"), str(root / "L_pruned")
    shutil.copytree(moved_base["base"], base)
    shutil.copytree(moved_base["lora"], lora)
    shutil.rmtree(os.path.join(base, "checkpoints", "1"))  # e.g. checkpoint.keep_last removed it
    _edit_run_json(lora, init=f"checkpoint:{base}")
    with pytest.raises(ConfigError, match=r"trained on step 1 of its base .*P_pruned.*no longer holds it") as error:
        load_base_model(f"checkpoint:{lora}", {})
    assert "\n" not in str(error.value) and "train the LoRA run again" in str(error.value)


def test_a_lora_run_recorded_without_its_base_step_warns_and_takes_the_latest(moved_base, caplog):
    from research.finetune.base_model import load_lora_run
    from research.training.checkpoint_loading import load_checkpoint
    lora = str(moved_base["root"] / "L_old")
    shutil.copytree(moved_base["lora"], lora)
    _edit_run_json(lora, init_checkpoint_step=None)  # a run.json written before the field existed
    with caplog.at_level(logging.WARNING, logger="research.finetune.base_model"):
        merged = load_lora_run(lora)
    assert "records no base step" in caplog.text and "P/checkpoints step 2" in merged.source
    with pytest.raises(ConfigError, match="records no base step"):  # nor can an earlier step say its base
        load_checkpoint(lora, step=1)


@pytest.fixture(scope="module")
def relative_runs(tmp_path_factory) -> str:
    """In <root>/a, runs launched with relative paths: base_sft (tokenizer tok.model), and from
    init=checkpoint:base_sft with the base's tokenizer a reward run rm and an SFT run sft2."""
    from research.data.config import TokenizerConfig
    from research.data.tokenizer import train_tokenizer
    root = tmp_path_factory.mktemp("relative")
    (root / "a").mkdir()
    (root / "b").mkdir()
    texts = [f"{i} + {j} = {i + j}\nWhat is the capital of France? Paris." for i in range(60) for j in range(5)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root / "a")
        train_tokenizer(texts, TokenizerConfig(vocab_size=300, max_training_chars=50_000), "tok.model")
        _train("sft_tiny", "base_sft", tokenizer="tok.model")
        for preset, workdir in (("reward_tiny", "rm"), ("sft_tiny", "sft2")):
            _train(preset, workdir, init="checkpoint:base_sft", tokenizer="")
    return str(root)


def test_a_runs_init_chain_is_followed_through_run_json_from_another_directory(relative_runs, monkeypatch):
    """The saved init 'checkpoint:base_sft' is relative to <root>/a: from <root>/b it was
    "checkpoint directory 'base_sft' does not exist" (or a same-named folder there, silently)."""
    from research.finetune.base_model import finetune_run_sentinels, finetune_run_tokenizer, load_base_model
    from research.training.checkpoint_loading import load_checkpoint
    a = os.path.join(relative_runs, "a")
    monkeypatch.chdir(os.path.join(relative_runs, "b"))
    tokenizer = os.path.join(a, "tok.model")
    assert finetune_run_tokenizer(os.path.join(a, "sft2")) == tokenizer
    assert finetune_run_tokenizer(os.path.join(a, "base_sft")) == tokenizer  # its own, saved relative
    assert finetune_run_sentinels(os.path.join(a, "sft2")) == 0
    started = load_base_model(f"checkpoint:{a}/sft2", {})
    assert started.tokenizer.vocab_size == 300
    assert load_checkpoint(os.path.join(a, "base_sft")).tokenizer.vocab_size == 300


def test_a_reward_model_launched_elsewhere_scores_from_another_directory(relative_runs, monkeypatch):
    from research.finetune.reward_source import load_reward_model
    monkeypatch.chdir(os.path.join(relative_runs, "b"))
    score = load_reward_model(os.path.join(relative_runs, "a", "rm"))
    rewards = score([[{"role": "user", "content": "The capital of France?"}]] * 2, ["Paris", "Rome"])
    assert rewards.shape == (2,) and np.isfinite(rewards).all()


def test_a_reward_run_is_refused_as_a_base_or_reference_in_one_line(relative_runs, tmp_path, monkeypatch):
    """It gave a device_put traceback as init and a flax ScopeParamNotFoundError as reference."""
    from research.finetune import finetune_and_evaluate
    from research.finetune.base_model import base_model_config, load_base_model, load_reference
    from research.training.checkpoint_loading import load_checkpoint
    monkeypatch.chdir(os.path.join(relative_runs, "a"))  # where its relative init resolves, fix or not
    rm = os.path.join(relative_runs, "a", "rm")
    attempts = [lambda: load_base_model(f"checkpoint:{rm}", {}), lambda: base_model_config(f"checkpoint:{rm}", {}),
                lambda: load_reference(f"checkpoint:{rm}"), lambda: load_checkpoint(rm)]
    for attempt in attempts:
        with pytest.raises(ConfigError, match=r"is a path='reward' run: a scalar reward head") as error:
            attempt()
        assert "\n" not in str(error.value) and f"reward_model:{rm}" in str(error.value)
    assert "init=checkpoint:" in str(pytest.raises(ConfigError, attempts[0]).value)
    assert "preference.reference=checkpoint:" in str(pytest.raises(ConfigError, attempts[2]).value)
    workdir = str(tmp_path / "sft")
    with pytest.raises(ConfigError, match="start from its base"):
        finetune_and_evaluate(_config("sft_tiny", init=f"checkpoint:{rm}", tokenizer=""), workdir)
    assert not os.path.exists(workdir)  # refused before any training; nothing left claimed


def test_a_tagging_run_is_refused_as_a_base_in_one_line(tmp_path):
    """Its {body, head} tree was told it "lacks" the body's own modules (as a further tagger's
    init) or failed deep in flax. A classification run is a zoo model with a classifier: it loads."""
    from research.finetune.base_model import load_base_model
    tag = _train("tag_tiny", str(tmp_path / "tag"))
    with pytest.raises(ConfigError, match=r"init=checkpoint:.* is a path='token_classification' run") as error:
        load_base_model(f"checkpoint:{tag}", {})
    assert "\n" not in str(error.value) and "start from its base (random)" in str(error.value)
