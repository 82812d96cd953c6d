"""Several steps per compiled call change nothing but speed: same losses, same eval and
checkpoint steps, exact resume after kill -9 (tests/training/test_resume.py::
test_kill_9_then_rerun_the_command_is_exact runs the command with steps_per_call=3)."""
import os
import signal
import subprocess
import time

import pytest

from research.models.config import ConfigError
from research.training import blocks, train_and_evaluate
from research.training.metrics import read_metrics

from tests.training.conftest import run_config
from tests.training.test_resume import REPO, assert_same_run, per_step


def test_block_plan_ends_calls_at_every_boundary():
    is_boundary = blocks.boundary_test(4, 6, end_step=11)
    plan = list(blocks.block_plan(0, 11, 5, is_boundary))
    ends = [sum(plan[:i + 1]) for i in range(len(plan))]
    assert plan[0] == 1 and sum(plan) == 11 and max(plan) <= 5
    assert {4, 6, 8, 11} <= set(ends)  # every evaluation / checkpoint step ends a call
    assert list(blocks.block_plan(8, 11, 5, is_boundary)) == [1, 2]  # resumed at a checkpoint


def test_auto_block_length_is_long_for_small_steps_and_one_for_large():
    assert blocks.auto_block_len(1e6, 1e11, 10_000) == blocks.MAX_AUTO_BLOCK
    assert blocks.auto_block_len(1e13, 1e11, 10_000) == 1
    assert blocks.auto_block_len(1e6, 1e11, blocks.MAX_BLOCK_BYTES // 3) == 3


def test_block_length_never_exceeds_the_longest_block_of_the_run():
    # Every block's batches are stacked to the full length: 10**6 steps per call for an 8-step
    # run once padded 10**6 batches (8.9 GB).
    common = dict(flops_per_step=1e6, peak_flops=1e11, batch_bytes=10_000)
    assert blocks.resolve_block_len(10**6, **common, longest_block=8) == 8
    assert blocks.resolve_block_len(5, **common, longest_block=8) == 5
    assert blocks.resolve_block_len(0, **common, longest_block=3) == 3  # auto would pick MAX_AUTO_BLOCK
    assert blocks.resolve_block_len(0, **common) == blocks.MAX_AUTO_BLOCK
    # The run's longest block: its evaluation / checkpoint interval, and its length rounded up to
    # a power of two (runs of 80 and 100 steps still share the 128-step program).
    assert blocks.longest_block(8, 4, 4) == 4 and blocks.longest_block(8, 100, 100) == 8
    assert blocks.longest_block(80, 500, 500) == blocks.longest_block(100, 500, 500) == 128
    assert blocks.longest_block(1, 0, 5) == 1


def test_blocked_steps_are_bit_identical_to_one_step_per_call(tokenizers, compilation_cache, tmp_path):
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=9, eval_every_steps=4)
    config.model.dropout_rate = 0.1  # per-step dropout keys must match too
    config.checkpoint.every_steps = 6
    config.train.steps_per_call = 1
    one = train_and_evaluate(config, str(tmp_path / "one"))
    config.train.steps_per_call = 5  # calls of 1, 3 (to step 4), 2 (to 6), 2 (to 8), 1
    blocked = train_and_evaluate(config, str(tmp_path / "blocked"))
    assert_same_run(per_step(tmp_path / "blocked"), per_step(tmp_path / "one"), 9)
    evals = lambda w: [(r["step"], r["eval_loss"]) for r in read_metrics(w) if "eval_loss" in r]
    assert evals(tmp_path / "blocked") == evals(tmp_path / "one") and [s for s, _ in evals(tmp_path / "one")] == \
        [4, 6, 8, 9]
    assert blocked == one
    assert sorted(int(d) for d in os.listdir(tmp_path / "blocked" / "checkpoints") if d.isdigit()) == [6, 9]


@pytest.mark.parametrize("field, value, message", [
    ("steps_per_call", -2, r"train.steps_per_call=-2 must be >= 1, or 0"),
    # It trained nothing and reported the untrained model's eval loss, exit 0, claiming the workdir.
    ("stop_after_steps", -3, r"train.stop_after_steps=-3 must be >= 0"),
    ("peak_flops", -5.0, r"train.peak_flops=-5.0 must be a FLOP/s figure >= 0"),
    # nan passed a "< 0" check: compiled, then stopped at step 1 as a divergence (lower the learning rate).
    ("z_loss", float("nan"), r"train.z_loss=nan must be a finite number >= 0"),
    ("z_loss", -1e-4, r"train.z_loss=-0.0001 must be a finite number >= 0"),
])
def test_bad_loop_settings_are_one_line_before_compiling(tokenizers, tmp_path, field, value, message):
    config = run_config("gpt_tiny", tokenizers["plain"])
    config.train[field] = value
    with pytest.raises(ConfigError, match=message) as error:
        train_and_evaluate(config, str(tmp_path))
    assert "\n" not in str(error.value)
    assert not os.path.exists(tmp_path / "run.json")  # nothing claimed: the corrected command may use it


def kill_after_checkpoint(command, checkpoint_dir, env):
    """Start `command`, SIGKILL it once `checkpoint_dir` exists, rerun it; returns the rerun's stdout."""
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not checkpoint_dir.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{output[-3000:]}"
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    return rerun.stdout


def test_runs_differing_in_length_and_learning_rate_share_the_compiled_train_program(tokenizers, tmp_path):
    """The optimizer's numbers are traced inputs of the train program, not constants in it: a
    scaling sweep's runs of one model at several budgets compile it once (with a persistent
    cache, once per sweep). Counted as XLA compilations of programs named after the train
    block while the second run trains; the suite's persistent compilation cache (tests/conftest.py)
    is what the sweep's own cache (experiments/scaling_laws) is here."""
    import jax
    assert jax.config.jax_compilation_cache_dir  # each run's train program is a new function: only
    # the persistent cache, keyed by the program's text, can serve the second run
    compiled: list[str] = []
    original = jax._src.compiler.backend_compile_and_load

    def counting(backend, module, *args, **kwargs):
        compiled.append(str(module.operation.attributes["sym_name"]))
        return original(backend, module, *args, **kwargs)

    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=4)
    config.train.steps_per_call = 3
    train_and_evaluate(config, str(tmp_path / "short"))
    config.train.num_steps, config.opt.learning_rate, config.opt.warmup_steps = 7, 3e-3, 2
    jax._src.compiler.backend_compile_and_load = counting
    try:
        train_and_evaluate(config, str(tmp_path / "long"))
    finally:
        jax._src.compiler.backend_compile_and_load = original
    assert not any("block_step" in name for name in compiled), compiled
