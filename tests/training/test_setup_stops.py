"""A stop during a run's setup (Ctrl-C, SIGTERM before the first checkpoint): the workdir claim is
withdrawn with the records the setup wrote, or kept once the run has a checkpoint; the command
stops in one line whatever the cleanup meets."""
import logging
import subprocess
import sys

import pytest

from research.training import members as members_lib, metrics as metrics_lib, preemption, train_and_evaluate
from research.training import workdir as workdir_lib

from tests.signals import run_with_signal_during
from tests.training.conftest import run_config
from tests.training.test_resume import REPO, cli_overrides


def _assert_stopped_in_one_line(result, last_line):
    """A command stopped by SIGTERM: exit 143, `last_line` its last line on stderr, no traceback."""
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == last_line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


# The train loop's line for a SIGTERM its Guard took before the first step.
_NOTHING_SAVED = ("error: stopped by SIGTERM before training step 1; nothing new to save; rerun the same command to "
                  "continue.")


# A real SIGTERM once the workdir is claimed, before the train loop's Guard (as the tokenizer
# starts to build): its default action killed the process and left run.json, so a rerun with
# changed settings was refused as "another run" though nothing was saved.
# A second SIGTERM lands as the claim is withdrawn (SLURM's to the process group on top of a
# --workers parent's): it raised another TerminatedEarly there, which skipped the withdrawal.
_SIGTERM_AFTER_THE_CLAIM = """
import runpy, signal, sys
import research.data
from research.training import workdir
build_shared_tokenizer, unclaim = research.data.build_shared_tokenizer, workdir.unclaim
def sigterm_then_build(*args, **kwargs):
    signal.raise_signal(signal.SIGTERM)
    return build_shared_tokenizer(*args, **kwargs)
def sigterm_then_unclaim(*args, **kwargs):
    signal.raise_signal(signal.SIGTERM)
    return unclaim(*args, **kwargs)
research.data.build_shared_tokenizer, workdir.unclaim = sigterm_then_build, sigterm_then_unclaim
sys.argv = {argv!r}
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def test_sigterm_during_setup_is_one_line_exit_143_and_leaves_the_workdir_free(tmp_path):
    workdir = tmp_path / "run"
    script = _SIGTERM_AFTER_THE_CLAIM.format(argv=["experiments.pretrain", f"--workdir={workdir}",
                                                   "--config=experiments/configs/pretrain.py:gpt_tiny"])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    _assert_stopped_in_one_line(result, "error: stopped by SIGTERM without saving this step; rerun the same command "
                                        "to continue from the last checkpoint, or from the start if none was saved yet.")
    assert not (workdir / workdir_lib.RUN_FILE).exists()


def test_a_real_sigterm_during_setup_removes_the_setups_tensorboard_and_wandb_files(tokenizers, tmp_path,
                                                                                      monkeypatch):
    """A SIGTERM once the run's writers started (TensorBoard, W&B offline), before any save: exit
    143, one line, and the workdir holds none of the setup's files (a rerun showed the stale
    curves, W&B resumed the stopped setup's run id) beside what it held before."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    config.wandb.update(project="research-test", mode="offline")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's")
    result = run_with_signal_during("research.training.members", "restore_or_init", "SIGTERM", [
        "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny", f"--workdir={workdir}",
        *cli_overrides(config)])
    _assert_stopped_in_one_line(result, _NOTHING_SAVED)
    assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "notes.txt"], result.stderr[-3000:]


def _stopped_in_setup(monkeypatch, how):
    """Patch the loop so that a Ctrl-C lands during setup: taken by the Guard ("signal": the run
    raises Interrupted, nothing saved) or raised as KeyboardInterrupt (before the Guard, or a second one)."""
    if how == "signal":
        def should_stop(guard, step):
            guard.signal_name = "SIGINT"
            return True
        monkeypatch.setattr(preemption.Guard, "should_stop", should_stop)
        return preemption.Interrupted

    def restore_or_init(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(members_lib, "restore_or_init", restore_or_init)
    return KeyboardInterrupt


def _event_files(workdir):
    return sorted(p.name for p in (workdir / metrics_lib.TENSORBOARD_DIR).glob("events.out.tfevents.*"))


@pytest.mark.parametrize("how", ["signal", "keyboard_interrupt"])
def test_a_ctrl_c_during_setup_leaves_the_workdir_free_for_other_settings(how, tokenizers, tmp_path, monkeypatch):
    """Nothing was trained or saved, so the claim is withdrawn: rerunning with another
    train.seq_len is accepted (it was refused as 'holds another run'). The setup's records go
    with it (a rerun showed its curves beside its own); what the workdir held before stays."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    workdir = tmp_path / "run"
    earlier = workdir / metrics_lib.TENSORBOARD_DIR / "events.out.tfevents.1700000000.earlier"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier writer's events")
    with monkeypatch.context() as patch:
        stop = _stopped_in_setup(patch, how)
        with pytest.raises(stop):
            train_and_evaluate(config, str(workdir))
        assert not (workdir / workdir_lib.RUN_FILE).exists()
        assert _event_files(workdir) == [earlier.name] and earlier.read_bytes() == b"an earlier writer's events"
        assert not (workdir / metrics_lib.METRICS_FILE).exists()
        config.train.seq_len = 16
        with pytest.raises(stop):  # past the claim: the changed setting was accepted
            train_and_evaluate(config, str(workdir))


@pytest.mark.parametrize("how", ["signal", "keyboard_interrupt"])
def test_a_failing_discard_during_a_setup_stop_is_a_warning_and_the_stop_goes_on(how, tokenizers, tmp_path,
                                                                                 monkeypatch, caplog):
    """Removing the setup's records fails (a file it may not remove, W&B's finish raising): the
    stop is still what propagates (its one line, exit 130 / 143), and the claim is withdrawn; the
    failure is one warning line. The discard's error replaced the stop, with a traceback and exit 1."""
    def refused(writer):
        raise PermissionError(13, "Permission denied", writer.path)
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    workdir = tmp_path / "run"
    with monkeypatch.context() as patch:
        stop = _stopped_in_setup(patch, how)
        patch.setattr(metrics_lib.MetricWriter, "discard", refused)
        with caplog.at_level(logging.WARNING, logger=metrics_lib.__name__), pytest.raises(stop):
            train_and_evaluate(config, str(workdir))
    assert not (workdir / workdir_lib.RUN_FILE).exists()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == metrics_lib.__name__]
    assert "could not remove" in warning and "PermissionError" in warning and "\n" not in warning


# A real SIGTERM during setup (as restore_or_init is called), and the discard of the setup's
# records raising, as a permission error would.
_SIGTERM_AND_A_FAILING_DISCARD = """
import runpy, signal, sys
from research.training import members, metrics
restore_or_init = members.restore_or_init
def sigterm_then_restore(*args, **kwargs):
    signal.raise_signal(signal.SIGTERM)
    return restore_or_init(*args, **kwargs)
def refused(writer):
    raise PermissionError(13, "Permission denied", writer.path)
members.restore_or_init, metrics.MetricWriter.discard = sigterm_then_restore, refused
sys.argv = {argv!r}
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def test_a_real_sigterm_during_setup_whose_discard_fails_is_still_one_line_and_exit_143(tokenizers, tmp_path):
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    workdir = tmp_path / "run"
    script = _SIGTERM_AND_A_FAILING_DISCARD.format(argv=[
        "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny", f"--workdir={workdir}",
        *cli_overrides(config)])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    _assert_stopped_in_one_line(result, _NOTHING_SAVED)
    assert not (workdir / workdir_lib.RUN_FILE).exists()
    assert "could not remove the stopped setup's records" in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("at_block, claim_kept", [(1, False), (4, True)])
def test_a_second_ctrl_c_in_training_keeps_the_claim_only_once_a_checkpoint_was_saved(
        at_block, claim_kept, tokenizers, tmp_path, monkeypatch):
    """A KeyboardInterrupt (a second Ctrl-C) while the first blocks run, before any save: nothing
    exists to resume, so the claim is withdrawn; after the first save (step 2) it stays."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=6, steps_per_call=1)
    config.checkpoint.every_steps = config.train.eval_every_steps = 2
    workdir = tmp_path / "run"
    record_block = members_lib.record_block

    def interrupted_at(members, first, *args, **kwargs):
        if first >= at_block:
            raise KeyboardInterrupt
        return record_block(members, first, *args, **kwargs)
    monkeypatch.setattr(members_lib, "record_block", interrupted_at)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, str(workdir))
    assert (workdir / workdir_lib.RUN_FILE).exists() == claim_kept
    assert bool(list((workdir / "checkpoints").glob("[0-9]*"))) == claim_kept


def test_a_ctrl_c_during_the_setup_of_a_resumed_run_keeps_its_claim(tokenizers, tmp_path, monkeypatch):
    """With a checkpoint in the workdir the run exists: a stop during setup keeps run.json and
    the run's records, and a changed setting is still refused."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    trained = (_event_files(workdir), (workdir / metrics_lib.METRICS_FILE).read_text())
    config.train.num_steps = 4
    for how in ("signal", "keyboard_interrupt"):
        with monkeypatch.context() as patch:
            with pytest.raises(_stopped_in_setup(patch, how)):
                train_and_evaluate(config, str(workdir))
        assert (workdir / workdir_lib.RUN_FILE).exists()
        assert set(trained[0]) <= set(_event_files(workdir))
        assert (workdir / metrics_lib.METRICS_FILE).read_text() == trained[1]
    config.train.seq_len = 16
    with pytest.raises(workdir_lib.WorkdirError, match="holds another run"):
        train_and_evaluate(config, str(workdir))
