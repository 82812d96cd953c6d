"""Whole fine-tuning runs: a reward model learns a separable preference; a killed LoRA-DPO
run, rerun, is bit-exact; a reference with another vocabulary is one line."""
import signal
import subprocess
import sys
import time

import pytest

from research.finetune import finetune_and_evaluate
from research.models import build_model, get_config, to_hf
from research.models.config import ConfigError
from research.training.checkpointing import CheckpointConfig, Checkpointer
from research.training.metrics import read_metrics

from tests.finetune.conftest import REPO, tiny_config
from tests.training.test_resume import cli_overrides

PER_STEP = ("loss", "total_loss", "grad_norm", "learning_rate", "accuracy")


def per_step(workdir):
    return {r["step"]: r for r in read_metrics(workdir) if "loss" in r}


def test_reward_model_learns_a_separable_preference(tmp_path):
    config = tiny_config("reward_tiny", num_steps=30)
    final = finetune_and_evaluate(config, str(tmp_path))
    assert final["before_eval_accuracy"] < 0.8  # an untrained head ranks pairs at about chance
    assert final["eval_accuracy"] > 0.9 and final["eval_loss"] < 0.3 < final["before_eval_loss"]


def test_killed_lora_dpo_run_resumes_exactly(compilation_cache, tmp_path):
    """Model dropout and LoRA dropout on (their keys fold in the step), 8 devices; the
    subprocesses reuse the whole run's compiled programs through the persistent cache. DPO turns
    dropout off by default (trl's disable_dropout): this run turns it back on."""
    steps = 12
    config = tiny_config("dpo_lora_tiny", num_steps=steps)
    config.disable_dropout = False
    config.checkpoint.every_steps = 4
    config.model.dropout_rate = 0.1
    config.lora.dropout = 0.1
    finetune_and_evaluate(config, str(tmp_path / "whole"))
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.finetune", "--config=experiments/configs/finetune.py:dpo_lora_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    env = {**compilation_cache, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "4").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{output[-3000:]}"
    checkpoints = Checkpointer(str(workdir / "checkpoints"), CheckpointConfig())
    assert 4 <= checkpoints.latest_step() < steps
    checkpoints.close()
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed, whole = per_step(workdir), per_step(tmp_path / "whole")
    assert sorted(resumed) == sorted(whole) == list(range(1, steps + 1))
    for step in whole:
        for key in PER_STEP:
            assert resumed[step][key] == whole[step][key], (step, key)
    # The checkpoint holds the adapters only: the frozen base is reloaded from its source.
    import orbax.checkpoint as ocp
    tree = ocp.PyTreeCheckpointer().metadata(str(workdir / "checkpoints" / str(steps) / "state"))
    tree = tree.item_metadata.tree if hasattr(tree, "item_metadata") else tree.tree
    assert set(tree["params"]) == {"lora"}


def test_stop_after_steps_then_rerun_has_the_records_of_a_run_that_never_stopped(tmp_path):
    """Step 5 is neither an evaluation nor a checkpoint step: stopping there saves it, and
    the continued run's losses and evaluations are the uninterrupted run's."""
    config = tiny_config("sft_tiny", num_steps=8)
    config.checkpoint.every_steps = 4
    config.opt.warmup_steps = 2
    finetune_and_evaluate(config, str(tmp_path / "whole"))
    config.train.stop_after_steps = 5
    finetune_and_evaluate(config, str(tmp_path / "resumed"))
    assert Checkpointer(str(tmp_path / "resumed" / "checkpoints"), CheckpointConfig()).latest_step() == 5
    config.train.stop_after_steps = 0
    finetune_and_evaluate(config, str(tmp_path / "resumed"))
    resumed, whole = per_step(tmp_path / "resumed"), per_step(tmp_path / "whole")
    assert sorted(resumed) == sorted(whole) == list(range(1, 9))
    for step in whole:
        assert [resumed[step][key] for key in PER_STEP[:4]] == [whole[step][key] for key in PER_STEP[:4]], step
    evaluations = [{r["step"]: r["eval_loss"] for r in read_metrics(tmp_path / run) if "eval_loss" in r}
                   for run in ("resumed", "whole")]
    assert evaluations[0] == evaluations[1] and sorted(evaluations[1]) == [0, 4, 8]
    # A stop at or below the restored step trains nothing and reports the restored model (it returned
    # no eval_loss when the stop lay below it).
    config.train.stop_after_steps = 3
    again = finetune_and_evaluate(config, str(tmp_path / "resumed"))
    assert again["eval_loss"] == pytest.approx(evaluations[0][8], rel=1e-6)
    assert per_step(tmp_path / "resumed") == resumed


def test_a_reference_with_another_vocabulary_is_one_line(tmp_path):
    reference = build_model(get_config("gpt2-tiny", num_layers=1, d_model=32, vocab_size=200))
    import jax
    import jax.numpy as jnp
    from flax.core import meta
    params = meta.unbox(jax.jit(reference.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    to_hf(reference, params, str(tmp_path / "reference"))
    config = tiny_config("dpo_tiny")
    config.preference.reference = f"hf:{tmp_path / 'reference'}"
    with pytest.raises(ConfigError, match=r"^the reference model '.*' has vocabulary size 200 but the policy "
                                          r"'gpt2-tiny' has 512; use a reference trained with the policy's tokenizer"):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset", ["tag_tiny", "classify_tiny"])
def test_evaluation_does_not_count_the_rows_that_pad_a_last_short_batch(preset, tmp_path):
    """24 eval records at batch 16: the last batch holds 8 all-zero rows whose labels read class 0.
    Tagging counted their positions (seen at 30 records, batch 8 against 6: accuracy 0.374 against
    0.264, F1 0.329 against 0.232); classification counted 32 records in its loss."""
    before = {}
    for batch_size in (8, 16):  # 8 divides 24: no padding
        config = tiny_config(preset, num_steps=1)
        config.train.update(dict(batch_size=batch_size, eval_batches=100))
        config.opt.warmup_steps = 0
        config.data.num_eval = 24
        result = finetune_and_evaluate(config, str(tmp_path / str(batch_size)))
        before[batch_size] = {k: v for k, v in result.items() if k.startswith("before_eval")}
    if preset == "classify_tiny":
        assert before[8]["before_eval_count"] == 24
    assert before[16] == pytest.approx(before[8], rel=1e-6)
