"""Domain adaptation: continued pretraining from a Hugging Face folder or one of our checkpoints
on a folder of .txt / .md files lowers the loss on that text; a bad folder is one line."""
import random

import jax
import jax.numpy as jnp
import pytest
from flax.core import meta

from research.finetune import finetune_and_evaluate
from research.models import build_model, get_config, to_hf
from research.models.config import ConfigError

from tests.finetune.conftest import tiny_config

SUBJECTS = ("the pump", "valve seven", "the coolant loop", "reactor two", "the turbine")
STATES = ("is nominal", "reads high", "was vented", "needs service", "is offline")


def domain_folder(path, files=24):
    """Maintenance notes: a narrow domain a random model has never seen."""
    path.mkdir()
    rng = random.Random(0)
    for i in range(files):
        lines = [f"{rng.choice(SUBJECTS)} {rng.choice(STATES)}." for _ in range(12)]
        (path / f"log_{i}.{'md' if i % 2 else 'txt'}").write_text("\n".join(lines) + "\n")
    (path / "ignored.json").write_text("{}")
    return path


def domain_config(folder, data_dir, init, steps):
    config = tiny_config("domain_tiny", num_steps=steps)
    config.init, config.tokenizer = init, "char"
    config.data.update(dict(folder=str(folder), data_dir=str(data_dir), validation_fraction=0.25))
    config.opt.update(dict(learning_rate=3e-3, warmup_steps=1))
    return config


def test_continued_pretraining_from_hf_then_from_our_checkpoint_lowers_the_domain_loss(tmp_path):
    model = build_model(get_config("gpt2-tiny", num_layers=1, d_model=32))
    params = meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    to_hf(model, params, str(tmp_path / "hf"))
    folder = domain_folder(tmp_path / "notes")
    first = finetune_and_evaluate(domain_config(folder, tmp_path / "data", f"hf:{tmp_path / 'hf'}", 10),
                                  str(tmp_path / "from_hf"))
    assert first["eval_loss"] < first["before_eval_loss"] - 0.3, first
    # A second run from the first one's checkpoint starts where the first ended (same weights,
    # same validation text), and keeps lowering the loss.
    # tokenizer "" = the checkpoint's own: the first run's (char), found through its saved config.
    config = domain_config(folder, tmp_path / "data", f"checkpoint:{tmp_path / 'from_hf'}", 4)
    config.tokenizer = ""
    second = finetune_and_evaluate(config, str(tmp_path / "from_checkpoint"))
    assert second["before_eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)
    assert second["eval_loss"] < second["before_eval_loss"]


@pytest.mark.parametrize("make_folder,message", [
    (lambda p: p / "missing", r"^data.folder='.*missing' is not a folder; give a folder of .txt / .md files.$"),
    (lambda p: (p / "empty").mkdir() or p / "empty",
     r"^data.folder='.*empty' holds no non-empty .txt or .md file; put the domain text there"),
])
def test_a_bad_domain_folder_is_one_line_and_writes_nothing(tmp_path, make_folder, message):
    folder = make_folder(tmp_path)
    config = domain_config(folder, tmp_path / "data", "random", 2)
    with pytest.raises(ConfigError, match=message):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_t5_continued_pretraining_with_prefix_lm_trains_on_encoder_decoder_batches(tmp_path):
    """data.objective=prefix_lm on a T5 base: the bare name made decoder prefix-LM batches, and the
    encoder-decoder loss failed on them (KeyError 'encoder_inputs') after the run folder was written."""
    config = domain_config(domain_folder(tmp_path / "notes"), tmp_path / "data", "random", 3)
    config.model.preset, config.data.objective = "t5-tiny", "prefix_lm"
    result = finetune_and_evaluate(config, str(tmp_path / "run"))
    assert result["eval_count"] > 0 and result["eval_loss"] < result["before_eval_loss"], result


def test_an_objective_the_base_cannot_train_is_one_line_before_its_weights_load(tmp_path, monkeypatch):
    from research.finetune import base_model
    monkeypatch.setattr(base_model, "load_base_model", lambda *a, **k: pytest.fail("loaded the base model"))
    config = domain_config(domain_folder(tmp_path / "notes"), tmp_path / "data", "random", 2)
    config.data.objective = "masked_lm"  # a decoder base (gpt2-tiny)
    with pytest.raises(ConfigError, match=r"^objective='masked_lm' trains encoder models, not decoder; use one of"
                       ) as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    from research.finetune.checks import check_config
    with pytest.raises(ConfigError, match="trains encoder models"):  # the check before the workdir is claimed
        check_config(config)
