"""SIGTERM (SLURM / TPU preemption) and Ctrl-C: save at the end of the current block of steps,
exit cleanly, rerun is exact."""
import itertools
import logging
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

from research import early_interrupts
from research.training import blocks, preemption, train_and_evaluate
from research.training.checkpoint_loading import best_step, checkpoint_steps_in, saved_eval_loss
from research.training.checkpointing import CheckpointError
from research.training.metrics import read_metrics

from tests.signals import run_with_signal_during
from tests.training.conftest import run_config
from tests.training.test_checkpoint_fallback import _truncate_files
from tests.training.test_resume import REPO, assert_same_run, cli_overrides, latest_checkpoint, per_step


def _logged_step(workdir, step):
    """Whether the run has logged `step` (it is training, past compilation)."""
    try:
        return f'"step": {step},' in (workdir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return False


def test_sigterm_saves_the_current_step_and_the_rerun_is_exact(tokenizers, compilation_cache, tmp_path):
    steps = 20  # SIGTERM once step 3 is logged: 17 steps left for it to land in
    # Blocks of up to 3 steps, cut at the evaluation steps (every 4): the stop comes at the end of a block.
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=steps, steps_per_call=3)
    config.model.dropout_rate = 0.1
    config.checkpoint.every_steps = 1000  # only the last step is a scheduled save: the stop's save is the signal's
    train_and_evaluate(config, str(tmp_path / "whole"))
    workdir = tmp_path / "preempted"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    process = subprocess.Popen(command, cwd=REPO, env=compilation_cache, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not _logged_step(workdir, 3) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, f"{process.returncode}\n{stderr[-3000:]}"
    last = stderr.strip().splitlines()[-1]
    stopped_at = latest_checkpoint(workdir)
    assert last == (f"error: stopped by SIGTERM at step {stopped_at}; checkpoint saved in {workdir}/checkpoints; "
                    "rerun the same command to continue."), stderr[-3000:]
    assert "Traceback" not in stderr
    print(f"stopped at step {stopped_at}")
    assert 3 <= stopped_at < steps
    plan = blocks.block_plan(0, steps, 3, blocks.boundary_test(4, 1000, end_step=steps))
    block_ends = set(itertools.accumulate(plan))
    assert stopped_at in block_ends, (stopped_at, sorted(block_ends))
    # The rerun in this process (the same config the command was built from): what is under test
    # is the real process's stop and the checkpoint it saved. The command's own rerun after a
    # stop is test_resume.py::test_kill_9_then_rerun_the_command_is_exact's (and
    # test_model_batch.py::test_kill_9_batched_run_then_rerun_is_exact's); a second process
    # start cost this test ~4 s of its ~22 s on 2 busy cores.
    train_and_evaluate(config, str(workdir))
    assert_same_run(per_step(workdir), per_step(tmp_path / "whole"), steps)


def test_ctrl_c_before_training_is_one_line_and_exit_130(tokenizers, tmp_path):
    """Ctrl-C while the run is still setting up (here: right after the workdir is claimed)."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=40)
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (workdir / "run.json").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, f"{process.returncode}\n{stderr[-3000:]}"
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGINT") and (last.endswith("rerun the same command to continue.") or
                                                            last.endswith("or from the start if none was saved yet.")), last


COMMANDS = [("experiments.pretrain", "experiments/configs/pretrain.py:gpt_tiny"),
            ("experiments.finetune", "experiments/configs/finetune.py:sft_tiny"),
            ("experiments.emergence", "experiments/configs/emergence.py:micro"),
            ("experiments.scaling_laws", "experiments/configs/scaling_laws.py:cpu_tiny")]
# Runs a command as `python -m` would, with a real SIGINT (or SIGTERM) delivered while it imports
# JAX (the command's first second or two: JAX's gc callback swallowed a KeyboardInterrupt raised
# there, and the run trained to the end with exit 0; a SIGTERM killed it with no line).
_SIGNAL_AT_JAX_IMPORT = """
import importlib.abc, runpy, signal, sys
class SignalAtJaxImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "jax":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.{signal_name})
        return None
sys.meta_path.insert(0, SignalAtJaxImport())
sys.argv = {argv!r}
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def _signal_while_importing_jax(tmp_path, module, config, signal_name, exit_code):
    workdir = tmp_path / "run"
    script = _SIGNAL_AT_JAX_IMPORT.format(signal_name=signal_name,
                                          argv=[module, f"--config={config}", f"--workdir={workdir}"])
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (f"stopped by {signal_name} before any work started; rerun the "
                                                      "same command to start.")
    assert "Traceback" not in result.stderr and not workdir.exists()


# Each command installs research.early_interrupts.remember_early_interrupts before its imports and
# calls experiments.cli.stop_if_interrupted_early after them (finetune with guarded=False); the
# signal's name and exit code come from that shared code. So each command is run once and each
# signal at least twice: SIGINT for pretrain, finetune, scaling_laws; SIGTERM for finetune, emergence.
@pytest.mark.parametrize("module, config", [c for c in COMMANDS if c[0] != "experiments.emergence"])
def test_ctrl_c_while_a_command_imports_jax_is_one_line_and_exit_130(tmp_path, module, config):
    _signal_while_importing_jax(tmp_path, module, config, "SIGINT", 130)


@pytest.mark.parametrize("module, config", [c for c in COMMANDS if c[0] in ("experiments.finetune",
                                                                            "experiments.emergence")])
def test_sigterm_while_a_command_imports_jax_is_one_line_and_exit_143(tmp_path, module, config):
    """A scheduler's stop in a command's first seconds: remembered like a Ctrl-C (its default
    action killed the process with no line), then the same one-line stop, with SIGTERM's 143."""
    _signal_while_importing_jax(tmp_path, module, config, "SIGTERM", 143)


@pytest.mark.parametrize("module, config", [c for c in COMMANDS if c[0] in ("experiments.emergence",
                                                                       "experiments.scaling_laws")])
def test_a_sigterm_anywhere_in_a_main_is_one_line_and_exit_143(tmp_path, module, config):
    """A real SIGTERM as a study checks its --workdir, before its try (a SIGTERM raises
    TerminatedEarly anywhere in a main from stop_if_interrupted_early on): it ended in a
    traceback, exit 1."""
    workdir = tmp_path / "study"
    result = run_with_signal_during("research.atomic_files", "unwritable_reason", "SIGTERM",
                                    [module, f"--config={config}", f"--workdir={workdir}"])
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: stopped by SIGTERM without saving this step; rerun the same command to continue from the last "
        "checkpoint(s), or from the start where none was saved yet."), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not workdir.exists()



@pytest.fixture
def early_handlers():
    """Restores what research.early_interrupts changes in this process (both signals' handlers,
    sys.unraisablehook, the remembered signals, its own state)."""
    originals, original_hook = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}, sys.unraisablehook
    state = {name: getattr(early_interrupts, name) for name in ("_guarded", "_default_unraisablehook", "_terminating")}
    yield
    for signum, handler in originals.items():
        signal.signal(signum, handler)
    sys.unraisablehook = original_hook
    for name, value in state.items():
        setattr(early_interrupts, name, value)
    for flag in (early_interrupts.EARLY_SIGINT, early_interrupts.EARLY_SIGTERM, early_interrupts._taken):
        flag.clear()


class _Unraisable:  # what Python hands sys.unraisablehook
    exc_traceback, err_msg, object = None, "Exception ignored in", None

    def __init__(self, error):
        self.exc_type, self.exc_value = type(error), error


def test_before_main_a_ctrl_c_is_only_remembered_and_a_second_breaks_off(early_handlers):
    early_interrupts.remember_early_interrupts()
    signal.raise_signal(signal.SIGINT)  # no KeyboardInterrupt: an import in progress is not broken off
    assert early_interrupts.interrupted_early()
    with pytest.raises(KeyboardInterrupt):  # a second: a hang during the imports can still be stopped
        signal.raise_signal(signal.SIGINT)
    # A Guard takes the remembered Ctrl-C once; a later Guard (a notebook's next run) does not see it.
    assert early_interrupts.take_early_interrupt() and not early_interrupts.take_early_interrupt()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by a job a script started in the background
    early_interrupts.remember_early_interrupts()
    early_interrupts.watch_early_interrupts()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_ctrl_c_that_python_swallowed_during_setup_still_stops_the_run(early_handlers):
    """Python ignores a KeyboardInterrupt raised in a gc callback or __del__ (seen in the test above:
    the run went on and exited 0, printing a traceback); the Guard installed afterwards must still
    see the Ctrl-C, and that traceback is not printed (other unraisable errors still are)."""
    reported = []
    sys.unraisablehook = lambda unraisable: reported.append(unraisable.exc_value)  # stands for Python's
    early_interrupts.watch_early_interrupts()
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass  # swallowed, as Python does inside a gc callback
    guard = preemption.Guard().install()
    try:
        assert guard.requested and guard.signal_name == "SIGINT" and guard.should_stop(0)
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGINT) == early_interrupts._early_sigint
    assert not preemption.Guard().requested  # a Guard never installed sees nothing
    sys.unraisablehook(_Unraisable(KeyboardInterrupt()))
    sys.unraisablehook(_Unraisable(ValueError("a real problem")))
    assert [str(e) for e in reported] == ["a real problem"]


def test_a_stop_during_held_work_acts_once_the_work_is_done(early_handlers):
    """Fine-tuning's last checkpoint: a Ctrl-C inside the checkpointer's close broke off orbax's wait
    (its finalize thread printed tracebacks, the step's tmp folder stayed, the step was lost)."""
    handler = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with preemption.stops_held():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)  # held too; acted on once
            done.append("committed")
    assert done == ["committed"] and signal.getsignal(signal.SIGINT) == handler
    with preemption.stops_held():  # nothing held: nothing raised
        done.append("again")
    assert done == ["committed", "again"]


def test_a_second_ctrl_c_that_python_swallowed_stops_at_the_next_block_end(early_handlers):
    """Seen once in about 11 double Ctrl-Cs of two models trained together: the second Ctrl-C's
    KeyboardInterrupt was raised inside jax's garbage-collection callback, printed as "Exception
    ignored" and lost, and the run went on to the first one's save instead of stopping at once."""
    guard = preemption.Guard().install()
    try:
        signal.raise_signal(signal.SIGINT)  # the first: a stop request, nothing raised
        assert guard.requested
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # swallowed, as Python does inside a gc callback
        with pytest.raises(KeyboardInterrupt):  # the loop asks at every block's end
            guard.should_stop(7)
    finally:
        guard.uninstall()


def test_a_sigterm_before_the_guard_is_remembered_and_the_guard_stops_for_it_with_143(early_handlers, monkeypatch):
    """SIGTERM's default action killed a command in setup; now it is remembered during the imports,
    raised as TerminatedEarly (a KeyboardInterrupt: the loop withdraws its claim) once the main
    watches, and a Guard installed after one that Python swallowed stops for SIGTERM, exit 143."""
    early_interrupts.remember_early_interrupts()
    # Taken from its default action (which would end this test process with the signal below).
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    signal.raise_signal(signal.SIGTERM)  # only remembered: the imports go on
    assert early_interrupts.interrupted_early() == "SIGTERM"
    early_interrupts.watch_early_interrupts()
    with pytest.raises(early_interrupts.TerminatedEarly):
        signal.raise_signal(signal.SIGTERM)
    guard = preemption.Guard().install()
    try:
        assert guard.signal_name == "SIGTERM" and guard.should_stop(0)
        assert preemption.Interrupted(guard.signal_name, 0, saved=False).exit_code == 143
    finally:
        guard.uninstall()
    assert early_interrupts.interrupted_early() is None
    assert signal.getsignal(signal.SIGTERM) == early_interrupts._early_sigterm
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # an inherited ignore is kept
    early_interrupts.watch_early_interrupts()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    # After jax.distributed.initialize (launch.multihost) JAX's preemption notifier owns SIGTERM,
    # installed in C where getsignal still reports SIG_DFL: left to it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    early_interrupts.remember_early_interrupts()
    early_interrupts.watch_early_interrupts()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# A Ctrl-C / SIGTERM whose handler runs inside a finalizer: Python drops what it raises there
# ("Exception ignored in ..."). It was hidden and left to a later Guard; where none came (a
# --workers parent, the work after a run, a dry run) a SIGTERM was lost and the command exited 0.
# A process of its own: before, an unguarded swallowed SIGTERM took its default action.
_SWALLOWED = """
import signal, sys
from research import early_interrupts
early_interrupts.watch_early_interrupts(quiet_when_swallowed={guarded})
if {in_the_hook}:  # the signal lands while the hook reports another error (Python's hook, printing)
    def report(unraisable):
        signal.raise_signal(signal.{signal_name})
        print("reported", repr(unraisable.exc_value))
    early_interrupts._default_unraisablehook = report
class Finalizer:
    def __del__(self):
        if {in_the_hook}:
            raise ValueError("a real problem")
        signal.raise_signal(signal.{signal_name})
try:
    Finalizer()
    print("went on")
except KeyboardInterrupt as stop:
    print("stopped:", type(stop).__name__)
"""


@pytest.mark.parametrize("guarded", [True, False])
@pytest.mark.parametrize("signal_name, raised", [("SIGTERM", "TerminatedEarly"), ("SIGINT", "KeyboardInterrupt")])
@pytest.mark.parametrize("in_the_hook", [False, True])
def test_a_signal_python_swallowed_is_raised_again_at_the_next_statement(guarded, signal_name, raised, in_the_hook):
    script = _SWALLOWED.format(guarded=guarded, signal_name=signal_name, in_the_hook=in_the_hook)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    reported = ["reported ValueError('a real problem')"] if in_the_hook else []
    assert result.stdout.splitlines() == [*reported, f"stopped: {raised}"]
    assert result.stderr == ""  # no "Exception ignored" report of it


def test_a_second_sigterm_while_the_first_is_handled_adds_nothing(early_handlers):
    """SLURM signals the whole process group, a --workers parent its workers: a second SIGTERM
    raised another TerminatedEarly inside the handling of the first (the loop withdrawing its
    claim), which left run.json behind, or escaped the main with a traceback."""
    early_interrupts.watch_early_interrupts()
    handled = []
    with pytest.raises(early_interrupts.TerminatedEarly):
        try:
            signal.raise_signal(signal.SIGTERM)
        except early_interrupts.TerminatedEarly:
            signal.raise_signal(signal.SIGTERM)  # nothing raised here: the first stops the command
            handled.append("the first")
            raise
    assert handled == ["the first"]
    # A Guard takes it (it stops for it); a SIGTERM after that Guard raises again.
    preemption.Guard().install().uninstall()
    with pytest.raises(early_interrupts.TerminatedEarly):
        signal.raise_signal(signal.SIGTERM)


def test_a_second_sigterm_while_the_stop_save_finishes_skips_no_close(tokenizers, tmp_path, monkeypatch,
                                                                      early_handlers):
    """The Guard was uninstalled before checkpointer.close() waited for the stop's save: a second
    SIGTERM there (SLURM signals the whole process group) met pretrain's early handler, which raised
    inside close(), so the metric writers were never closed and the stop's line was lost."""
    from research.training import metrics as metrics_lib
    from research.training.checkpointing import Checkpointer
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=4)
    early_interrupts.watch_early_interrupts()  # as experiments.pretrain's main does before training
    closed = []
    close_checkpointer, close_writer = Checkpointer.close, metrics_lib.MetricWriter.close

    def checkpointer_close(checkpointer):
        signal.raise_signal(signal.SIGTERM)  # the second SIGTERM, while the stop's save is being committed
        close_checkpointer(checkpointer)
        closed.append("checkpointer")

    def should_stop(guard, step):  # as if the first SIGTERM came during the first block (step 1)
        guard.signal_name = "SIGTERM"
        return step >= 1

    monkeypatch.setattr(Checkpointer, "close", checkpointer_close)
    monkeypatch.setattr(metrics_lib.MetricWriter, "close", lambda w: (close_writer(w), closed.append("writer")))
    monkeypatch.setattr(preemption.Guard, "should_stop", should_stop)
    try:
        with pytest.raises(preemption.Interrupted, match=r"stopped by SIGTERM at step 1; checkpoint saved in "):
            train_and_evaluate(config, str(tmp_path))
    except KeyboardInterrupt as error:  # TerminatedEarly: let it fail this test, not end the pytest session
        pytest.fail(f"{type(error).__name__} raised while closing; closed: {closed}")
    assert closed == ["checkpointer", "writer"] and latest_checkpoint(tmp_path) == 1


def test_models_trained_together_stop_at_a_block_end_and_resume_past_a_damaged_step(
        tokenizers, compilation_cache, tmp_path, monkeypatch, caplog, young_gc_after_failed_reads):
    """K=2 models (own seeds, own data): the stop is asked once per block, both save the block's last
    step; a rerun whose model 1 finds that step damaged takes both back to their last common intact
    step, and the result equals the uninterrupted run bit for bit."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=8, steps_per_call=3)  # calls 1, 3, 3, 1
    config.batched.field, config.batched.values = "train.seed", (0, 1)
    members = ("train.seed=0", "train.seed=1")
    train_and_evaluate(config, str(tmp_path / "whole"))
    asked = []

    def should_stop(guard, step):  # as if SIGTERM arrived during the block that ends at step 7
        asked.append(step)
        guard.signal_name = "SIGTERM"
        return step >= 5

    with monkeypatch.context() as patch:
        patch.setattr(preemption.Guard, "should_stop", should_stop)
        with pytest.raises(preemption.Interrupted, match=r"stopped by SIGTERM at step 7; checkpoint saved in "):
            train_and_evaluate(config, str(tmp_path / "stopped"))
    assert asked == [0, 1, 4, 7]  # before the first step, then at each block's last step
    assert [latest_checkpoint(tmp_path / "stopped" / m) for m in members] == [7, 7]
    _truncate_files(tmp_path / "stopped" / members[1] / "checkpoints" / "7")
    with caplog.at_level(logging.WARNING, logger="research.training.checkpointing"):
        train_and_evaluate(config, str(tmp_path / "stopped"))
    assert any("step 7" in r.getMessage() and "resumed from step 4" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "stopped" / members[1] / "checkpoints.damaged" / "7").is_dir()
    for m in members:
        assert_same_run(per_step(tmp_path / "stopped" / m), per_step(tmp_path / "whole" / m), 8)


def test_a_stop_after_one_of_the_models_diverged_names_only_the_saved_ones(tokenizers, tmp_path, monkeypatch):
    """K=2, model 0 diverged at step 2 (no checkpoint), then Ctrl-C: the line must not claim a
    checkpoint for model 0 nor promise that the same command continues (a rerun refuses model 0,
    naming it as having no checkpoint); dropping its value, as the line says, continues model 1."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=8, steps_per_call=3)
    config.opt.warmup_steps = 0
    config.batched.field, config.batched.values = "opt.learning_rate", (1e35, 1e-3)
    bad, good = tmp_path / "opt.learning_rate=1e+35", tmp_path / "opt.learning_rate=0.001"

    def should_stop(guard, step):  # as if Ctrl-C came during the block that ends at step 7
        guard.signal_name = "SIGINT"
        return step >= 5

    with monkeypatch.context() as patch:
        patch.setattr(preemption.Guard, "should_stop", should_stop)
        with pytest.raises(preemption.Interrupted) as stop:
            train_and_evaluate(config, str(tmp_path))
    assert str(stop.value) == (
        f"stopped by SIGINT at step 7; checkpoint saved in {good}/checkpoints; model(s) 0 ({bad}, diverged at "
        "step 2) were not saved, and a rerun cannot continue them together with the others: with --config.batched "
        "drop their value(s) (opt.learning_rate=1e+35) from batched.values (or train them in a run of their own), "
        "then rerun to continue the others.")
    assert stop.value.exit_code == 130 and latest_checkpoint(good) == 7 and latest_checkpoint(bad) is None
    with pytest.raises(CheckpointError, match=rf"model\(s\) 0 \({re.escape(str(bad))}, no checkpoint\) are behind"):
        train_and_evaluate(config, str(tmp_path))
    config.batched.values = (1e-3,)
    assert "opt.learning_rate=0.001/eval_loss" in train_and_evaluate(config, str(tmp_path))
    assert latest_checkpoint(good) == 8


def test_a_stop_on_an_evaluation_step_saves_its_eval_loss_for_best(tokenizers, tmp_path):
    """stop_after_steps (or a signal) on an evaluation step that is not a save step saved it with
    eval_loss=inf though it was just evaluated: keep_best ranked it last and step='best' named an
    older, worse step."""
    # Saves (and, for keep_best, evaluations) every 4 steps, evaluations every 5: step 10 is only evaluated.
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=24, steps_per_call=3, eval_every_steps=5,
                        stop_after_steps=10)
    train_and_evaluate(config, str(tmp_path))
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(str(tmp_path)) if "eval_loss" in r}
    root = str(tmp_path / "checkpoints")
    assert sorted(evals) == [4, 5, 8, 10] and 10 in checkpoint_steps_in(root)
    assert saved_eval_loss(f"{root}/10") == pytest.approx(evals[10], rel=1e-6)
    assert best_step(root) == min(checkpoint_steps_in(root), key=lambda step: (evals[step], -step))
