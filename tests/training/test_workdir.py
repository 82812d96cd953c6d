"""A workdir is bound to one run: checked before anything is written, refused in one line."""
import json
import os
import subprocess
import sys

import pytest

from experiments.configs import pretrain
from research.data.config import DataError
from research.training import resume_changes as resume_lib, workdir as workdir_lib, workdir_lock
from research.training.workdir import WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**model):
    config = pretrain.get_config("gpt_tiny")
    config.model.update(model)
    return config.to_dict()


def test_first_claim_records_the_run_and_the_same_run_is_accepted(tmp_path):
    workdir = str(tmp_path / "run")
    workdir_lib.claim(workdir, _config())
    recorded = json.load(open(os.path.join(workdir, workdir_lib.RUN_FILE)))["fingerprint"]
    assert recorded["model.name"] == "gpt2-tiny" and recorded["objective"] == "causal_lm"
    # Fields free to change on resume: steps, learning rate, compute dtype, mesh.
    again = pretrain.get_config("gpt_tiny")
    again.train.num_steps, again.opt.learning_rate, again.model.dtype = 900, 1e-4, "bfloat16"
    again.mesh.shape = (1, -1, 1)
    workdir_lib.claim(workdir, again.to_dict())
    # The attention kernel computes the same attention: a run may move to a host where another one works.
    again.model.attention_kernel = "xla"
    workdir_lib.claim(workdir, again.to_dict())
    # A run.json written while the kernel was part of the run's identity still resumes under another.
    old = json.load(open(os.path.join(workdir, workdir_lib.RUN_FILE)))
    old["fingerprint"]["model.attention_kernel"] = "auto"
    json.dump(old, open(os.path.join(workdir, workdir_lib.RUN_FILE), "w"))
    workdir_lib.claim(workdir, again.to_dict())


@pytest.mark.parametrize("change, named", [
    (dict(d_model=128), "model.d_model: 64 there, 128 now"),
    (dict(preset="llama-tiny"), "model.name: 'gpt2-tiny' there, 'llama-tiny' now"),
])
def test_workdir_of_another_run_is_refused_naming_the_difference(change, named, tmp_path):
    workdir = str(tmp_path / "run")
    workdir_lib.claim(workdir, _config())
    before = sorted(os.listdir(workdir))
    with pytest.raises(WorkdirError) as error:
        workdir_lib.claim(workdir, _config(**change))
    message = str(error.value)
    assert "\n" not in message and "holds another run" in message and named in message, message
    assert sorted(os.listdir(workdir)) == before


def test_clipping_turned_on_or_off_is_refused_naming_it(tmp_path):
    """Clipping on or off changes the optimizer state's tree: it passed the claim, and the restore
    then called every checkpoint damaged and advised deleting them."""
    workdir = str(tmp_path / "run")
    config = pretrain.get_config("gpt_tiny")
    workdir_lib.claim(workdir, config.to_dict())
    config.opt.clip_norm = 0.5  # another value: the same state, free on resume
    workdir_lib.claim(workdir, config.to_dict())
    config.opt.clip_norm = 0.0
    with pytest.raises(WorkdirError, match=r"holds another run \(opt.clip_norm>0: true there, false now\); .* a large "
                                           r"opt.clip_norm \(e.g. 1e9\) in place of 0 keeps it") as error:
        workdir_lib.claim(workdir, config.to_dict())
    assert "\n" not in str(error.value)


def test_a_run_file_recorded_before_clipping_was_in_the_fingerprint(tmp_path):
    """Its run.json lacks opt.clip_norm>0: taken from the newest checkpoint's config, else not compared."""
    workdir = tmp_path / "run"
    clipped, unclipped = pretrain.get_config("gpt_tiny"), pretrain.get_config("gpt_tiny")
    unclipped.opt.clip_norm = 0.0
    workdir_lib.claim(str(workdir), clipped.to_dict())
    old = json.loads((workdir / workdir_lib.RUN_FILE).read_text())
    del old["fingerprint"]["opt.clip_norm>0"]
    (workdir / workdir_lib.RUN_FILE).write_text(json.dumps(old))
    step_config = workdir / "checkpoints" / "100" / "config"
    step_config.mkdir(parents=True)
    (step_config / "metadata").write_text(json.dumps(clipped.to_dict()))
    with pytest.raises(WorkdirError, match=r"opt.clip_norm>0: true there, false now"):
        workdir_lib.claim(str(workdir), unclipped.to_dict())
    workdir_lib.claim(str(workdir), clipped.to_dict())  # and records it from now on
    assert json.loads((workdir / workdir_lib.RUN_FILE).read_text())["fingerprint"]["opt.clip_norm>0"] is True
    other = tmp_path / "no_checkpoint"
    workdir_lib.claim(str(other), clipped.to_dict())
    (other / workdir_lib.RUN_FILE).write_text(json.dumps(old))
    workdir_lib.claim(str(other), unclipped.to_dict())  # nothing saved: nothing to resume, nothing to compare


def test_workdir_without_run_file_is_checked_against_its_checkpoint_config(tmp_path):
    """Workdirs written before run.json existed: the newest checkpoint's saved config decides."""
    step_config = tmp_path / "run" / "checkpoints" / "100" / "config"
    step_config.mkdir(parents=True)
    (step_config / "metadata").write_text(json.dumps(_config()))
    with pytest.raises(WorkdirError, match="model.num_heads: 4 there, 2 now"):
        workdir_lib.claim(str(tmp_path / "run"), _config(num_heads=2))


def test_a_workdir_moved_with_the_files_around_it_is_the_same_run(tmp_path):
    """A sweep's runs/<id> and its tokenizers/ moved together (a study copied to or from a Colab
    Drive): its interrupted runs were refused as another run on the tokenizer's new path."""
    def config(root):
        run = _config()
        run["data"]["tokenizer"]["model_path"] = str(root / "tokenizers" / "t.model")
        return run
    old_root, new_root = tmp_path / "a" / "study", tmp_path / "b" / "renamed" / "study"
    workdir_lib.claim(str(old_root / "runs" / "x"), config(old_root))
    new_root.parent.mkdir(parents=True)
    os.rename(old_root, new_root)
    workdir_lib.claim(str(new_root / "runs" / "x"), config(new_root))
    record = json.load(open(new_root / "runs" / "x" / workdir_lib.RUN_FILE))
    assert record["workdir"] == str(new_root / "runs" / "x")
    assert record["fingerprint"]["data.tokenizer.model_path"] == str(new_root / "tokenizers" / "t.model")
    # A file that did not move with it is another tokenizer: still another run.
    with pytest.raises(WorkdirError, match=r"data.tokenizer.model_path: '.*/b/renamed/study/tokenizers/t.model' "
                                           r"there, '.*/elsewhere/tokenizers/t.model' now"):
        workdir_lib.claim(str(new_root / "runs" / "x"), config(tmp_path / "elsewhere"))


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_uncreatable_workdir_is_one_line_and_nothing_is_created(where, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    workdir = str(blocker / "run") if where == "under_a_file" else f"/proc/research_test_{os.getpid()}/run"
    with pytest.raises(WorkdirError, match="--workdir=.* is a file|cannot create --workdir=") as error:
        workdir_lib.claim(workdir, _config())
    assert "\n" not in str(error.value)
    assert not os.path.exists(workdir)


def test_failure_before_first_checkpoint_leaves_no_new_workdir(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    old.mkdir()
    for workdir in (new, old):
        with pytest.raises(DataError):
            with workdir_lib.removed_if_failed(str(workdir), (DataError,)):
                workdir_lib.claim(str(workdir), _config())
                raise DataError("bad corpus")
    assert not new.exists()  # created by the failed run: removed
    assert old.exists()  # the user's directory: kept
    with pytest.raises(RuntimeError):  # not a bad input: kept for inspection
        with workdir_lib.removed_if_failed(str(tmp_path / "crash"), (DataError,)):
            workdir_lib.claim(str(tmp_path / "crash"), _config())
            raise RuntimeError("crash")
    assert (tmp_path / "crash").exists()


def _other_process_claiming(workdir: str, **model) -> subprocess.Popen:
    """A process that claims `workdir` (as a run starting would) and then trains for ever."""
    script = ("import sys; from tests.training.test_workdir import _config; from research.training import workdir; "
              f"workdir.claim({workdir!r}, _config(**{model!r})); print('ready', flush=True); sys.stdin.read()")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    return process


def test_a_workdir_another_live_process_trains_in_is_refused_in_one_line(tmp_path):
    """Two commands on one workdir trained side by side, each exit 0: their checkpoints replaced each
    other's steps and metrics.jsonl held both runs' rows interleaved."""
    workdir = str(tmp_path / "run")
    other = _other_process_claiming(workdir)
    try:
        before = {name: open(os.path.join(workdir, name), "rb").read() for name in os.listdir(workdir)}
        for config in (_config(), _config(d_model=128)):  # the same run or another: both wait for it
            with pytest.raises(WorkdirError) as error:
                workdir_lib.claim(workdir, config)
            assert str(error.value) == (f"--workdir={workdir} is in use: pid {other.pid} on {os.uname().nodename} is "
                                        "training there now; wait for it to end (or stop it), or use another --workdir.")
        assert {name: open(os.path.join(workdir, name), "rb").read() for name in os.listdir(workdir)} == before
        with pytest.raises(DataError):  # a command that failed on it must not delete the live run's workdir
            with workdir_lib.removed_if_failed(workdir, (DataError,)):
                raise DataError("created by the other process in the same moment")
        assert os.path.isfile(os.path.join(workdir, workdir_lib.RUN_FILE))
    finally:
        other.kill()
        other.wait()
    workdir_lib.claim(workdir, _config())  # its process is gone: the same run resumes
    workdir_lock.release([workdir])


def test_a_run_killed_before_its_first_checkpoint_is_replaced_by_the_next_command(tmp_path, caplog):
    """A kill -9 (or an out-of-memory kill) before the first save left run.json claimed: a corrected
    command was refused as another run until the workdir was deleted by hand. Nothing of that run
    can be resumed, and its process is gone: the next command takes the workdir over. A run that
    saved a checkpoint is still kept, and so is one whose process lives."""
    import logging
    workdir = str(tmp_path / "run")
    other = _other_process_claiming(workdir)
    other.kill()
    other.wait()
    with caplog.at_level(logging.WARNING, logger="research.training.workdir"):
        workdir_lib.claim(workdir, _config(d_model=128))
    recorded = json.load(open(os.path.join(workdir, workdir_lib.RUN_FILE)))["fingerprint"]
    assert recorded["model.d_model"] == 128
    assert [r.getMessage() for r in caplog.records] == [
        f"--workdir={workdir} recorded a run that stopped before its first checkpoint (model.d_model: 64 there, 128 "
        "now): this run replaces it"]
    # While this process's run is in it, another run is refused (as from any live process).
    with pytest.raises(WorkdirError, match="holds another run"):
        workdir_lib.claim(workdir, _config())
    workdir_lock.release([workdir])
    os.makedirs(os.path.join(workdir, "checkpoints", "10"))  # it saved: kept
    with pytest.raises(WorkdirError, match="holds another run"):
        workdir_lib.claim(workdir, _config())
    assert not workdir_lock.holds(workdir)  # a refusal gives up the locks it took


def test_a_run_recorded_before_a_model_field_existed_resumes_at_its_default(tmp_path):
    """model.sliding_window (2026-12-06) entered every fingerprint; a run.json written before it
    lacks the key, and every earlier run was refused on resume as 'holds another run ()'."""
    workdir = str(tmp_path / "run")
    workdir_lib.claim(workdir, _config(preset="llama-tiny"))
    workdir_lock.release([workdir])
    run_file = os.path.join(workdir, workdir_lib.RUN_FILE)
    old = json.load(open(run_file))
    del old["fingerprint"]["model.sliding_window"]
    json.dump(old, open(run_file, "w"))
    os.makedirs(os.path.join(workdir, "checkpoints", "5"))  # it saved: a run to resume, not to replace
    workdir_lib.claim(workdir, _config(preset="llama-tiny"))
    workdir_lock.release([workdir])
    with pytest.raises(WorkdirError, match=r"holds another run \(model.sliding_window: .* 8 now\)"):
        workdir_lib.claim(workdir, _config(preset="llama-tiny", sliding_window=8))  # not the default: another run


def test_schedule_change_on_resume_is_one_warning_with_both_learning_rates():
    saved = pretrain.get_config("gpt_tiny").to_dict()  # 300 steps, warmup 30, cosine, 3e-3
    assert resume_lib.schedule_change(saved, saved, 100) is None
    longer = pretrain.get_config("gpt_tiny")
    longer.train.num_steps = 600
    warning = resume_lib.schedule_change(saved, longer.to_dict(), 100)
    assert "\n" not in warning and "train.num_steps 300 -> 600" in warning
    from research.training.optimizers import OptimizerConfig, make_schedule
    opt = {k: v for k, v in saved["opt"].items()}
    was = float(make_schedule(OptimizerConfig(total_steps=300, **opt))(100))
    now = float(make_schedule(OptimizerConfig(total_steps=600, **opt))(100))
    assert now > was  # a longer cosine is higher at the same step
    # schedule(100) is the rate of the next update, logged at step 101 (it read "at step 100").
    assert f"learning rate of step 101, the next, was {was:.3g}, is now {now:.3g}" in warning


def test_a_changed_batch_size_or_optimizer_number_on_resume_is_one_warning():
    """They resumed silently, while a learning-rate change got a line."""
    saved = pretrain.get_config("gpt_tiny").to_dict()
    assert resume_lib.resume_changes(saved, saved, 100) is None
    for field, value in (("train.microbatches", 2), ("opt.learning_rate", 1e-4), ("train.num_steps", 600)):
        other = pretrain.get_config("gpt_tiny")  # the same gradient; a schedule change (schedule_change's)
        other[field.split(".")[0]][field.split(".")[1]] = value
        assert resume_lib.resume_changes(saved, other.to_dict(), 100) is None, field
    other = pretrain.get_config("gpt_tiny")
    other.train.batch_size = 2 * saved["train"]["batch_size"]
    warning = resume_lib.resume_changes(saved, other.to_dict(), 100)
    assert warning == ("resuming at step 100 with train.batch_size 16 -> 32: the saved data position belongs to "
                       "batch size 16, so the data that follows is neither the saved run's stream nor a fresh run's.")
    # Both resumed silently: another loss from here on; eval losses (and keep_best) over other batches.
    for field, value, consequence in (("z_loss", 0.1, "minimise another loss than the saved run's"),
                                      ("eval_batches", 2, "score another set of validation batches")):
        other = pretrain.get_config("gpt_tiny")
        other.train[field] = value
        warning = resume_lib.resume_changes(saved, other.to_dict(), 100)
        assert warning.startswith(f"resuming at step 100 with train.{field} {json.dumps(saved['train'][field])} -> "
                                  f"{json.dumps(value)}: ") and consequence in warning and "\n" not in warning
    # A changed dropout resumed silently (a compute dtype too), while z_loss got a line.
    for field, value in (("dropout_rate", 0.3), ("dtype", "bfloat16")):
        before, other = pretrain.get_config("gpt_tiny"), pretrain.get_config("gpt_tiny")
        before.model[field] = 0.1 if field == "dropout_rate" else "float32"
        other.model[field] = value
        warning = resume_lib.resume_changes(before.to_dict(), other.to_dict(), 100)
        assert warning is not None and warning.startswith(f"resuming at step 100 with model.{field} ")
        assert "another dropout or compute precision" in warning and "\n" not in warning
    for field, value in (("b1", 0.8), ("b2", 0.999), ("eps", 1e-6), ("weight_decay", 0.0), ("clip_norm", 0.5)):
        other = pretrain.get_config("gpt_tiny")
        other.opt[field] = value
        warning = resume_lib.resume_changes(saved, other.to_dict(), 100)
        assert warning.startswith(f"resuming at step 100 with opt.{field} {json.dumps(saved['opt'][field])} -> "
                                  f"{json.dumps(value)}: the steps that follow apply the new optimizer value(s)")
        assert "\n" not in warning


def test_resuming_with_another_batch_size_and_weight_decay_says_so(tokenizers, tmp_path, caplog):
    import logging
    from tests.training.conftest import run_config
    from research.training import train_and_evaluate
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2, stop_after_steps=1)
    train_and_evaluate(config, str(tmp_path))
    config.train.update(batch_size=16, stop_after_steps=0)
    config.opt.weight_decay = 0.0
    with caplog.at_level(logging.WARNING, logger="research.training.members"):
        train_and_evaluate(config, str(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming at step 1")]
    assert warnings == ["resuming at step 1 with train.batch_size 8 -> 16, opt.weight_decay 0.1 -> 0.0: the saved data "
                        "position belongs to batch size 8, so the data that follows is neither the saved run's stream "
                        "nor a fresh run's; the steps that follow apply the new optimizer value(s) to a state built "
                        "with the old, as neither the saved run nor a fresh run of this config would."]


@pytest.mark.parametrize("bad", [dict(train=dict(seq_len=4096)), dict(model=dict(vocab_size=100))])
def test_a_bad_input_found_by_the_loop_leaves_the_workdir_unclaimed(bad, tokenizers, tmp_path):
    """A seq_len past the model's max_len (checked before the claim) or a vocabulary the
    tokenizer does not fit in (checked with the tokenizer, after it): one line, and the user's
    existing workdir records no run, so the corrected command is not refused as another run."""
    from tests.training.conftest import run_config
    from research.training import train_and_evaluate
    workdir = tmp_path / "mine"
    workdir.mkdir()
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    good = config.to_dict()
    for section, fields in bad.items():
        config[section].update(fields)
    with pytest.raises(DataError) as error:
        train_and_evaluate(config, str(workdir))
    assert "\n" not in str(error.value) and not (workdir / workdir_lib.RUN_FILE).exists()
    import ml_collections
    train_and_evaluate(ml_collections.ConfigDict(good), str(workdir))
    assert (workdir / workdir_lib.RUN_FILE).exists() and (workdir / "checkpoints" / "2").exists()


def test_rerunning_a_finished_run_with_fewer_steps_is_one_line(tokenizers, tmp_path):
    """It once exited 0 having trained nothing, with a warning that 'the rest of the run
    follows the new schedule'."""
    from tests.training.conftest import run_config
    from research.models.config import ConfigError
    from research.training import train_and_evaluate
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=4)
    train_and_evaluate(config, str(tmp_path / "run"))
    config.train.num_steps = 2
    with pytest.raises(ConfigError, match=r"holds a checkpoint at step 4, past train.num_steps=2; set "
                                          r"train.num_steps=4 or more") as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)
    # Another run's config as well (seq_len): that is the line, not advice on num_steps, which,
    # followed, met the refusal.
    config.train.seq_len = 16
    with pytest.raises(ConfigError, match=r"holds another run \(train.seq_len: 32 there, 16 now\)"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_stop_after_steps_at_or_below_the_step_reached_says_so_and_trains_nothing(tokenizers, tmp_path, caplog):
    """It once exited 0 having trained nothing and printed an empty line (a stop at or before
    the restored step is never reached). Not an error: a study reruns every size's session,
    and a scheduler may resubmit a session that ended."""
    from tests.training.conftest import run_config
    from research.training import train_and_evaluate
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=4)
    workdir = tmp_path / "run"
    finished = train_and_evaluate(config, str(workdir))
    records = (workdir / "metrics.jsonl").read_text()
    for stop in (2, 4):
        config.train.stop_after_steps = stop
        caplog.clear()
        result = train_and_evaluate(config, str(workdir))
        assert (f"train.stop_after_steps={stop}: --workdir={workdir} already saved step 4, so this session trains "
                "nothing; give a later step, or 0 to train to train.num_steps=4.") in caplog.text
        # The restored model's evaluation is what the session reports (a stop below the restored
        # step returned {}: `python -m experiments.pretrain` printed an empty line).
        assert result["eval_loss"] == pytest.approx(finished["eval_loss"], rel=1e-6), stop
    assert (workdir / "metrics.jsonl").read_text() == records


def test_a_rerun_of_a_finished_run_says_it_trained_nothing_and_where_the_results_are(tokenizers, tmp_path, caplog):
    """It printed only the restored model's evaluation, as if it had just trained."""
    import logging
    from tests.training.conftest import run_config
    from research.training import train_and_evaluate
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    records = (workdir / "metrics.jsonl").read_text()
    line = (f"the run in --workdir={workdir} had already finished at step 2 (train.num_steps=2): nothing was "
            f"trained; its results are in {workdir}/metrics.jsonl, its checkpoints in {workdir}/checkpoints; the "
            "metrics reported evaluate the last checkpoint. Raise train.num_steps to train on.")
    assert line not in caplog.text  # not on the run that trained
    with caplog.at_level(logging.WARNING, logger="research.training"):
        assert "eval_loss" in train_and_evaluate(config, str(workdir))
    assert line in caplog.text and (workdir / "metrics.jsonl").read_text() == records


def test_the_finished_line_of_models_trained_together_names_each_workdir():
    line = workdir_lib.already_finished(["w/opt.learning_rate=0.001", "w/opt.learning_rate=0.003"], 8)
    assert line.startswith("the 2 runs in w/opt.learning_rate=0.001, w/opt.learning_rate=0.003 had already finished "
                           "at step 8 (train.num_steps=8): nothing was trained; their results are in each one's "
                           "metrics.jsonl") and "\n" not in line


def test_a_schedule_change_of_models_trained_together_names_each_model(tokenizers, tmp_path, caplog):
    """K=2 resumed with a longer schedule: each model's warning said the same words with no
    model named, as if one run had warned twice."""
    import logging
    from tests.training.conftest import run_config
    from research.training import train_and_evaluate
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 3e-3)
    train_and_evaluate(config, str(tmp_path))
    config.train.num_steps = 4
    with caplog.at_level(logging.WARNING, logger="research.training.members"):
        train_and_evaluate(config, str(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if "changed learning-rate schedule" in r.getMessage()]
    assert [w.split(": resuming")[0] for w in warnings] == [
        f"model {i} ({tmp_path}/opt.learning_rate={lr})" for i, lr in enumerate(("0.001", "0.003"))]
