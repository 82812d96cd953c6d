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
