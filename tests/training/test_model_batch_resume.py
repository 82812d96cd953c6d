"""K models in one program stopping and resuming together: which models may resume as a group,
kill -9 and kills between the models' saves, and the checkpoints each model keeps (a model
trained together keeps what it would keep alone)."""
import sys

import pytest

from research.training import TrainingDivergedError, train_and_evaluate
from research.training.checkpointing import CheckpointError
from research.training.loop import train_together
from research.training.metrics import read_metrics

from tests.training.conftest import run_config
from tests.training.test_blocked_loop import kill_after_checkpoint
from tests.training.test_model_batch import _member
from tests.training.test_resume import assert_same_run, cli_overrides, per_step


def _saved(workdir):
    checkpoints = workdir / "checkpoints"
    return sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()), read_metrics(workdir)


def test_a_value_added_to_a_run_that_saved_once_is_refused_not_restarted(tokenizers, tmp_path):
    """Models that saved only their first (here: final) checkpoint, then a value added: the new
    model has no checkpoint and no run in its workdir, so it is refused in one line; the
    finished models keep their checkpoints and records (they once all restarted from step 0)."""
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=4, steps_per_call=4)
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 2e-3)
    train_and_evaluate(config, str(tmp_path / "run"))
    names = ("opt.learning_rate=0.001", "opt.learning_rate=0.002")
    from research.training.workdir import claimed_with
    assert claimed_with(str(tmp_path / "run" / names[0])) == [str(tmp_path / "run" / name) for name in names]
    before = {name: _saved(tmp_path / "run" / name) for name in names}
    config.batched.values = (1e-3, 2e-3, 5e-3)
    with pytest.raises(CheckpointError, match=r"model\(s\) 2 \(.*opt.learning_rate=0.005, new\) are behind the "
                                              r"others \(saved up to step 4\)") as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run" / "opt.learning_rate=0.005").exists()
    assert before == {name: _saved(tmp_path / "run" / name) for name in names}


def test_a_model_that_diverged_before_its_first_save_is_refused_on_rerun(tokenizers, tmp_path):
    """Restarting all from step 0 would diverge the same model again on every rerun, each time
    retraining the others: refused in one line, naming the step it diverged at."""
    base = run_config("gpt_tiny", tokenizers["plain"], num_steps=4, steps_per_call=2)
    base.opt.warmup_steps = 0
    configs = [_member(base, **{"opt.learning_rate": 1e-3}), _member(base, **{"opt.learning_rate": 1e35})]
    workdirs = [str(tmp_path / str(i)) for i in range(2)]
    results = train_together(configs, workdirs)
    assert isinstance(results[1], TrainingDivergedError) and "No good checkpoint" in str(results[1])
    # Named by its index and workdir (a model after the first: the test above has model 0 diverge).
    assert str(results[1]).startswith(f"model 1 ({workdirs[1]}): step ") and "not finite" in str(results[1])
    bad_step = int(str(results[1]).split("step ")[1].split(":")[0])
    assert [r["step"] for r in read_metrics(workdirs[1]) if "loss" in r] == list(range(1, bad_step))
    assert [r["step"] for r in read_metrics(workdirs[0]) if "loss" in r] == list(range(1, 5))
    before = _saved(tmp_path / "0")
    assert before[0] == ["4"]
    with pytest.raises(CheckpointError, match=rf"model\(s\) 1 \(.*, no checkpoint: diverged at step {bad_step}\) "
                                              r"are behind the others") as error:
        train_together(configs, workdirs)
    assert "\n" not in str(error.value) and _saved(tmp_path / "0") == before
    # Without it the first model resumes alone, untouched.
    assert train_together(configs[:1], workdirs[:1])[0]["eval_loss"] == pytest.approx(results[0]["eval_loss"])


@pytest.mark.parametrize("b_steps, b_claim, b_diverged, refused", [
    ((), "together", None, None),  # killed between the models' first saves: all restart
    ((), None, None, "new"),  # a value added since: no run in its workdir
    ((), "alone", None, "new"),  # first started alone (as the refusal advises), then added
    ((), "together", 2, "no checkpoint: diverged at step 2"),
    ((4,), "together", 6, "step 4: diverged at step 6"),  # would diverge again, the other redoing 4 -> 8
    ((4,), "together", None, None),  # killed between the models' saves of step 8
    ((4,), "together", 3, None),  # a NaN stop before the checkpoint it has since saved: stale
])
def test_which_models_may_resume_together(b_steps, b_claim, b_diverged, refused, tmp_path):
    """members.check_common_start on hand-made workdirs: model a saved up to the newest step
    (4 or 8, saves every 4), model b is behind."""
    import json
    import os
    from research.training import members
    a, b = tmp_path / "a", tmp_path / "b"
    for workdir, steps in ((a, (4,) if not b_steps else (4, 8)), (b, b_steps)):
        workdir.mkdir()
        for step in steps:
            (workdir / "checkpoints" / str(step) / "state").mkdir(parents=True)
    together = sorted(os.path.abspath(w) for w in (a, b))
    if b_claim:
        (b / "run.json").write_text(json.dumps({"fingerprint": {}, **({"trained_with": together}
                                                                      if b_claim == "together" else {})}))
    if b_diverged is not None:
        (b / members.DIVERGED_FILE).write_text(json.dumps({"step": b_diverged, "error": "nan"}))
    if refused is None:
        members.check_common_start([str(a), str(b)], 4)
    else:
        with pytest.raises(CheckpointError, match=rf"model\(s\) 1 \({b}, {refused}\) are behind") as error:
            members.check_common_start([str(a), str(b)], 4)
        assert "\n" not in str(error.value)


@pytest.mark.parametrize("b_claim, refused", [
    ("together", False),  # a kill between the saves of step 8 (keep_last=1): all restart, as documented
    ("alone", True),  # trained apart (a sweep's shards), one save behind: it restarted both from step 0
    (None, True),
])
def test_models_with_no_common_step_resume_together_only_when_trained_together(b_claim, refused, tmp_path):
    """keep_last=1: model a saved step 8, model b step 4, no step in common. Models trained apart
    were resumed together by deleting a's step 8 and restarting both from step 0 (logged as a kill
    between their saves); refused now, so a sweep continues each from its own checkpoint."""
    import json
    import os
    from research.training import members
    a, b = tmp_path / "a", tmp_path / "b"
    for workdir, step in ((a, 8), (b, 4)):
        (workdir / "checkpoints" / str(step) / "state").mkdir(parents=True)
    claims = {"together": {"trained_with": sorted(os.path.abspath(w) for w in (a, b))}, "alone": {}}
    if b_claim:
        (b / "run.json").write_text(json.dumps({"fingerprint": {}, **claims[b_claim]}))
    if not refused:
        members.check_common_start([str(a), str(b)], 4)
        return
    with pytest.raises(CheckpointError, match=rf"model\(s\) 1 \({b}, step 4, trained apart from the others: no "
                                              r"step in common\) are behind the others \(saved up to step 8\)"):
        members.check_common_start([str(a), str(b)], 4)
    assert sorted(os.listdir(a / "checkpoints")) == ["8"]


def test_records_of_a_run_stopped_before_its_first_save_are_not_kept_twice(tokenizers, tmp_path):
    """A kill (or NaN stop) before the first checkpoint leaves records but no checkpoint: the
    rerun starts from step 0 and its records replace them."""
    import shutil
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=3, steps_per_call=1)
    config.checkpoint.every_steps = 10
    train_and_evaluate(config, str(tmp_path / "run"))
    shutil.rmtree(tmp_path / "run" / "checkpoints")  # as if killed while saving the first checkpoint
    train_and_evaluate(config, str(tmp_path / "run"))
    steps = [r["step"] for r in read_metrics(tmp_path / "run")]
    assert steps == sorted(set(steps)) and [s for s in steps if s > 0] == [1, 2, 3]


def test_kill_9_batched_run_then_rerun_is_exact(tokenizers, compilation_cache, tmp_path):
    steps = 20  # killed once model 1 has saved step 4: 16 steps left to cut into
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=steps, steps_per_call=3)
    config.batched.field, config.batched.values = "train.seed", (0, 1)
    train_and_evaluate(config, str(tmp_path / "whole"))
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               f"--workdir={workdir}", *cli_overrides(config)]
    printed = kill_after_checkpoint(command, workdir / "train.seed=1" / "checkpoints" / "4", compilation_cache)
    final = {k: float(v) for k, v in (item.rsplit("=", 1) for item in printed.split() if "/" in item)}
    for name in ("train.seed=0", "train.seed=1"):
        assert_same_run(per_step(workdir / name), per_step(tmp_path / "whole" / name), steps)
        # The final line weighs each model's z_loss as the console line does (it printed the raw value).
        raw = [r["z_loss"] for r in read_metrics(workdir / name) if "z_loss" in r][-1]
        assert final[f"{name}/z_loss"] == pytest.approx(raw * config.train.z_loss, rel=1e-3)


def test_a_model_killed_between_the_models_saves_resumes_with_the_others(tokenizers, compilation_cache, tmp_path):
    """Model 1 lost its step-8 checkpoint (killed mid-save): both continue from step 4, exactly."""
    import shutil
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=10, steps_per_call=3)
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 2e-3)
    train_and_evaluate(config, str(tmp_path / "whole"))
    config.train.stop_after_steps = 8
    train_and_evaluate(config, str(tmp_path / "cut"))
    shutil.rmtree(tmp_path / "cut" / "opt.learning_rate=0.002" / "checkpoints" / "8")
    config.train.stop_after_steps = 0
    train_and_evaluate(config, str(tmp_path / "cut"))
    for name in ("opt.learning_rate=0.001", "opt.learning_rate=0.002"):
        assert_same_run(per_step(tmp_path / "cut" / name), per_step(tmp_path / "whole" / name), 10)


def test_models_far_apart_are_refused_and_a_kill_between_saves_restarts(tokenizers, tmp_path, caplog):
    """keep_last 1, saves every 4 of 12 steps. Model 1 left at step 4 while model 0 is at 12 (it
    was added, or diverged): one line, nothing deleted (they once all restarted from 0). Model 1
    at step 8 (a kill between the models' saves of step 12): no common step, so all restart."""
    import logging
    import shutil
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=12, steps_per_call=4)
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 2e-3)
    one = tmp_path / "run" / "opt.learning_rate=0.002" / "checkpoints"
    # Model 1's folder as keep_last 1 leaves it after its save of step 4, and of step 8: one run
    # to step 8 keeping both, each copy less the other step (the checkpoint of a step is the same
    # whatever is kept: a stop at 4, then at 8, cost a third run of ~2-3 s). Then keep_last 1
    # from step 12 on, which drops steps 4 and 8 (checked below).
    config.checkpoint.update(dict(keep_last=2, keep_best=0))
    config.train.stop_after_steps = 8
    train_and_evaluate(config, str(tmp_path / "run"))
    assert sorted(p.name for p in one.iterdir() if p.name.isdigit()) == ["4", "8"]
    for stop, other in ((4, "8"), (8, "4")):
        shutil.copytree(one, tmp_path / f"step{stop}")
        shutil.rmtree(tmp_path / f"step{stop}" / other)
    config.checkpoint.keep_last = 1
    config.train.stop_after_steps = 0
    train_and_evaluate(config, str(tmp_path / "run"))
    zero = tmp_path / "run" / "opt.learning_rate=0.001" / "checkpoints"
    shutil.rmtree(one)
    shutil.copytree(tmp_path / "step4", one)
    with pytest.raises(CheckpointError, match=r"model\(s\) 1 \(.*, step 4\) are behind the others \(saved up to "
                                              r"step 12\)") as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)
    assert [p.name for p in zero.iterdir() if p.name.isdigit()] == ["12"]
    assert [p.name for p in one.iterdir() if p.name.isdigit()] == ["4"]
    shutil.rmtree(one)
    shutil.copytree(tmp_path / "step8", one)
    with caplog.at_level(logging.WARNING, logger="research.training.members"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert any("all restart from step 0" in r.getMessage() for r in caplog.records)
    for directory in (zero, one):
        assert [p.name for p in directory.iterdir() if p.name.isdigit()] == ["12"]


def test_a_kill_between_the_models_saves_leaves_a_step_in_common(tokenizers, compilation_cache, tmp_path,
                                                                 monkeypatch, caplog):
    """keep_last 1, saves every 4 of 12 steps, the run dies between the models' saves of step 8:
    model 0 still holds step 4 (its save of 8 deleted it, and the group restarted from step 0),
    both resume from step 4, and each ends with keep_last's one step."""
    import logging
    from research.training import members as members_lib
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=12, steps_per_call=4)
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 2e-3)
    config.checkpoint.update(dict(keep_last=1, keep_best=0))
    save_member = members_lib.save_member

    def dies_before_model_1_saves_step_8(m, step, *args):
        if (m.index, step) == (1, 8):
            raise RuntimeError("killed")
        save_member(m, step, *args)

    monkeypatch.setattr(members_lib, "save_member", dies_before_model_1_saves_step_8)
    with pytest.raises(RuntimeError, match="killed"):
        train_and_evaluate(config, str(tmp_path))
    folders = [tmp_path / f"opt.learning_rate={v}" / "checkpoints" for v in ("0.001", "0.002")]
    saved = [sorted(int(p.name) for p in f.iterdir() if p.name.isdigit()) for f in folders]
    assert saved == [[4, 8], [4]]
    monkeypatch.setattr(members_lib, "save_member", save_member)
    with caplog.at_level(logging.INFO):
        train_and_evaluate(config, str(tmp_path))
    assert not any("restart from step 0" in r.getMessage() for r in caplog.records)
    assert [sorted(p.name for p in f.iterdir() if p.name.isdigit()) for f in folders] == [["12"], ["12"]]
    losses = [[r["step"] for r in read_metrics(str(f.parent)) if "loss" in r] for f in folders]
    assert losses == [list(range(1, 13))] * 2  # steps 5-8 recorded again, nothing twice


def test_models_that_diverge_between_saves_keep_their_last_good_checkpoint(tokenizers, tmp_path, monkeypatch):
    """keep_last 1, saves every 4 of 12 steps, models 1 and 2 diverge at step 10. Model 1, from the state
    after step 10, keeps step 8 only, as trained alone (step 4 was held for the group it then left);
    model 2, from the state saved at step 8, keeps step 4 too, the "last good checkpoint" its error
    names (the group's release dropped it). Model 0 keeps 12."""
    from research.training import members as members_lib
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=12, steps_per_call=2, eval_every_steps=2)
    config.batched.field, config.batched.values = "opt.learning_rate", (1e-3, 2e-3, 3e-3)
    config.checkpoint.update(dict(keep_last=1, keep_best=0))
    check = members_lib.stop_if_not_finite

    def models_1_and_2_diverge_at_step_10(members, step, finite, eval_metrics, *, stacked):
        check(members, step, finite, eval_metrics, stacked=stacked)
        if step == 10:
            for m, state_step in ((members[1], 10), (members[2], 8)):
                members_lib._stop_diverged(m, members, step, "forced", stacked=stacked, state_step=state_step)

    monkeypatch.setattr(members_lib, "stop_if_not_finite", models_1_and_2_diverge_at_step_10)
    with pytest.raises(TrainingDivergedError, match=r"2 of 3 models diverged \(the others finished\): model 1 .*"
                                                    r"Last good checkpoint: step 8 .*model 2 .*Last good checkpoint: "
                                                    r"step 4 "):
        train_and_evaluate(config, str(tmp_path))
    assert [sorted(p.name for p in (tmp_path / f"opt.learning_rate={v}" / "checkpoints").iterdir() if p.name.isdigit())
            for v in ("0.001", "0.002", "0.003")] == [["12"], ["8"], ["4", "8"]]
