"""What a sweep's command line may change: train.seed offsets the whole sweep, the fields the
sweep sets per run are refused when given, and --retry_failed in workers retries a run once."""
import io
import os
import subprocess
import sys

import pytest

from experiments.configs import scaling_laws
from experiments.scaling_laws import sweep, sweep_workers
from research.scaling.sweep_plan import SweepError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_configs(config):
    plan = sweep.plan_sweep(config)
    return plan, [sweep.run_config(config, run, plan.spec, tokenizer_path="t.model", peak_flops=1e9)
                  for run in plan.runs]


def test_train_seed_offsets_every_run_and_the_default_keeps_the_run_ids():
    """--config.train.seed=7 trained seed 0 again (each run got the plan's seed) and recorded 0."""
    default_plan, default_runs = _run_configs(scaling_laws.get_config("cpu_tiny"))
    assert {one.train.seed for one in default_runs} == {0, 1}  # seed 1: cpu_tiny's repeats (repeat_seeds=(1,))
    assert "ladder-L2-D28-262steps" in {run.run_id for run in default_plan.runs}  # ids as before: sweeps resume
    config = scaling_laws.get_config("cpu_tiny")
    config.train.seed = 7
    plan, runs = _run_configs(config)
    assert [one.train.seed for one in runs] == [run.seed for run in plan.runs]  # runs.csv's seed is the trained one
    assert [run.seed for run in plan.runs] == [7 + run.seed for run in default_plan.runs]
    assert [run.run_id for run in plan.runs] == [f"{run.run_id.split('-seed')[0]}-seed{7 + run.seed}"
                                                 for run in default_plan.runs]
    with pytest.raises(SweepError, match=r"^train.seed=-1 must be a whole number >= 0"):
        config.train.seed = -1
        sweep.plan_sweep(config)


def test_lr_check_trains_with_the_configs_seed(tmp_path, monkeypatch):
    from experiments.scaling_laws import lr_check
    from research.training import loop

    seeds = []
    monkeypatch.setattr(loop, "train_together", lambda configs, workdirs: seeds.extend(
        c.train.seed for c in configs) or [{"eval_loss": 1.0} for _ in configs])
    config = scaling_laws.get_config("test_tiny")
    config.train.seed = 3
    lr_check.check(config, str(tmp_path), [1e3], 5, [1.0, 2.0])
    assert seeds == [3, 3]


@pytest.mark.parametrize("field, value, fixed", [
    ("train.num_steps", 3, None), ("train.stop_after_steps", 2, 0), ("train.log_every_steps", 50, 1),
    ("train.progress_bar", True, False), ("opt.warmup_steps", 9, None)])
def test_fields_the_sweep_sets_per_run_are_refused_when_given(field, value, fixed):
    """They were accepted and replaced per run without a word."""
    section, name = field.split(".")
    config = scaling_laws.get_config("test_tiny")
    assert config[section][name] is None  # the presets leave them to the sweep
    config[section][name] = value
    with pytest.raises(SweepError) as error:
        sweep.plan_sweep(config)
    assert str(error.value).startswith(f"{field}={value!r}: the sweep sets it") and "\n" not in str(error.value)
    assert str(error.value).endswith(f"drop --config.{field}.")
    if fixed is not None:  # the value every run gets anyway is no conflict
        config[section][name] = fixed
        sweep.plan_sweep(config)


def test_a_field_the_sweep_sets_is_one_line_on_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.scaling_laws",
                             "--config=experiments/configs/scaling_laws.py:test_tiny", f"--workdir={tmp_path / 'w'}",
                             "--config.train.num_steps=3"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: train.num_steps=3: the sweep sets it for each run (each run's steps come from its budget in "
        "sweep.budgets, sweep.tokens_per_param or sweep.tokens, over train.batch_size x train.seq_len tokens a "
        "step; lr_check's from --steps); drop --config.train.num_steps."]
    assert not (tmp_path / "w").exists()


def test_retry_failed_in_two_workers_trains_a_run_that_fails_again_once(tmp_path, monkeypatch):
    """Each worker retried what it found failed: worker A retried the run, it diverged again, A
    wrote a new failed result and let the run go; worker B read that as 'failed before' and
    trained it again. Here the workers run one after the other, the order that showed it."""
    workdir = str(tmp_path / "sweep")
    overrides = {"sweep.non_embedding_params": (1e3,), "opt.learning_rate": 1e12, "opt.clip_norm": 0.0}
    config = scaling_laws.get_config("test_tiny")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value

    def diverged(run_config, run_dir):
        raise FloatingPointError("loss=nan")

    first = sweep.run_sweep(config, workdir, train_fn=diverged, out=io.StringIO())
    assert first.counts["failed"] == 1
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
    outputs = []

    def one_after_another(argvs, *, log_dir, poll, **_):
        codes = []
        for argv in argvs:
            result = subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            outputs.append(result.stdout + result.stderr)
            codes.append(result.returncode)
            poll()
        return codes

    monkeypatch.setattr(sweep_workers.workers_lib, "run_workers", one_after_another)
    args = ["--config=experiments/configs/scaling_laws.py:test_tiny", f"--workdir={workdir}",
            "--compilation_cache=False", *(f"--config.{k}={v!r}".replace(" ", "") for k, v in overrides.items()),
            "--workers=2", "--retry_failed"]
    counts = sweep_workers.train_in_workers(config, workdir, workers=2, args=args, retry_failed=True, out=io.StringIO())
    trained = [line for output in outputs for line in output.replace("\r", "\n").splitlines() if "FAILED:" in line]
    assert len(trained) == 1, outputs
    assert "TrainingDivergedError" in trained[0]
    assert counts == {"trained": 0, "skipped": 0, "failed": 1}
