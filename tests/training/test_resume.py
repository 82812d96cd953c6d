"""A stopped or killed run, rerun, continues exactly as if it had never stopped."""
import os
import signal
import subprocess
import sys
import time

import pytest

from research.training import train_and_evaluate
from research.training.checkpointing import CheckpointConfig, Checkpointer
from research.training.metrics import read_metrics

from tests.training.conftest import run_config, tokenizer_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_STEP = ("loss", "total_loss", "grad_norm", "learning_rate", "num_tokens")


def per_step(workdir):
    """{step: record} of the train steps; one record per step (a resumed run rewrites its tail)."""
    records = [r for r in read_metrics(workdir) if "loss" in r]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"duplicate or unordered steps {steps}"
    return {r["step"]: r for r in records}


def assert_same_run(resumed, uninterrupted, num_steps):
    assert sorted(resumed) == sorted(uninterrupted) == list(range(1, num_steps + 1))
    for step in uninterrupted:
        for key in PER_STEP:  # bit-exact: same keys, same batches, same compiled program
            assert resumed[step][key] == uninterrupted[step][key], (step, key)


def latest_checkpoint(workdir):
    return Checkpointer(os.path.join(workdir, "checkpoints"), CheckpointConfig()).latest_step()


def cli_overrides(config, prefix="config"):
    """--config.a.b=value flags that rebuild `config` from its preset (mesh rules excepted)."""
    flags = []
    for key, value in config.items():
        name = f"{prefix}.{key}"
        if hasattr(value, "items"):
            flags += cli_overrides(value, name)
        elif value is not None and key != "rules":
            flags.append(f"--{name}={value}")
    return flags


@pytest.mark.parametrize("preset", ["bert_tiny", "t5_tiny"])
def test_stop_and_rerun_is_exact(preset, tokenizers, compilation_cache, tmp_path):
    """masked LM and span corruption, with dropout on: 8 steps == 5 steps, stop, rerun. Step 5
    is neither an evaluation nor a checkpoint step: the stop saves it but adds no evaluation."""
    config = run_config(preset, tokenizer_for(preset, tokenizers))
    config.model.dropout_rate = 0.1
    train_and_evaluate(config, str(tmp_path / "whole"))
    config.train.stop_after_steps = 5
    train_and_evaluate(config, str(tmp_path / "resumed"))
    assert latest_checkpoint(tmp_path / "resumed") == 5
    config.train.stop_after_steps = 0  # the same command again
    train_and_evaluate(config, str(tmp_path / "resumed"))
    assert_same_run(per_step(tmp_path / "resumed"), per_step(tmp_path / "whole"), 8)
    evaluations = [{r["step"]: r["eval_loss"] for r in read_metrics(tmp_path / run) if "eval_loss" in r}
                   for run in ("resumed", "whole")]
    assert evaluations[0] == evaluations[1] and sorted(evaluations[1]) == [4, 8]
    if preset == "t5_tiny":
        # Loading the run back keeps its T5 sentinels: they once decoded as "<extra_id_-100>".
        from research.training.checkpoint_loading import load_checkpoint
        tokenizer = load_checkpoint(str(tmp_path / "whole")).tokenizer
        assert tokenizer.num_extra_ids == config.data.tokenizer.num_extra_ids == 100
        assert tokenizer.decode([tokenizer.vocab_size - 1, tokenizer.vocab_size - 2]) == "<extra_id_0><extra_id_1>"


def test_kill_9_then_rerun_the_command_is_exact(tokenizers, compilation_cache, tmp_path):
    """causal LM: the real command, SIGKILLed after its first checkpoint, then rerun. Three steps
    per compiled call (blocks of 1, 3 to step 4, ...): the blocked loop's kill -9 resume is this test."""
    steps = 20  # killed once step 4 is saved: steps 5-20 (4 saves, 4 evals) are left to cut into
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=steps, steps_per_call=3)
    config.model.dropout_rate = 0.1
    train_and_evaluate(config, str(tmp_path / "whole"))
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    process = subprocess.Popen(command, cwd=REPO, env=compilation_cache, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "4").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{output[-3000:]}"
    assert 4 <= latest_checkpoint(workdir) < steps
    rerun = subprocess.run(command, cwd=REPO, env=compilation_cache, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert_same_run(per_step(workdir), per_step(tmp_path / "whole"), steps)


def test_stops_off_the_checkpoint_grid_keep_the_grid_with_keep_every_steps(tokenizers, tmp_path):
    """A stop saves where its block ends, off the every_steps grid. With keep_last alone those
    saves pushed grid steps out: an emergence study stopped at steps 1, 3, 5 kept checkpoints
    [3, 4, 5, 6, 8] and drew its curves along training through them, not [2, 4, 6, 8]. With
    keep_every_steps the grid stays and an off-grid save lives only while it is the latest."""
    from research.training.checkpoint_loading import checkpoint_steps_in
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=8, eval_every_steps=2)
    config.checkpoint.update(every_steps=2, keep_last=2, keep_best=0, keep_every_steps=2)
    saved = []
    for stop in (1, 3, 0):
        config.train.stop_after_steps = stop
        train_and_evaluate(config, str(tmp_path))
        saved.append(checkpoint_steps_in(str(tmp_path / "checkpoints")))
    assert saved == [[1], [2, 3], [2, 4, 6, 8]]
    with pytest.raises(Exception, match="keep_every_steps=-2 >= 0"):
        CheckpointConfig(keep_every_steps=-2)
    # Only saved steps are kept: with saves every 4, "keep every 6" kept nothing of its grid, unsaid.
    with pytest.raises(Exception, match=r"^checkpoint.keep_every_steps=6 is not a multiple of "
                                        r"checkpoint.every_steps=4: only multiples of every_steps are saved"):
        CheckpointConfig(every_steps=4, keep_every_steps=6)
    CheckpointConfig(every_steps=4, keep_every_steps=8)
