"""How a sweep stops: Ctrl-C / SIGTERM stop it with the run pending (not failed), between runs,
between the runs of a group and before a group trained as one program; a run the training
system refused before its first step does not lock its directory, and a fit skipped for plateau
runs names the fix that applies, and a workdir keeps the plan it was made with."""
import io
import json
import os

import pytest

from experiments.configs import scaling_laws
from experiments.scaling_laws import run_dirs, sweep, sweep_fit, sweep_train
from research.models.config import ConfigError
from research.training import preemption
from tests.scaling.test_sweep_run import law_trainer
from tests.signals import stop_request_during_training


def tiny_config():
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = False
    return config


def test_an_interrupted_run_stops_the_sweep_pending_and_a_rerun_trains_it(tmp_path):
    config = tiny_config()
    runs = sweep.plan_sweep(config).runs
    stopped = runs[2].run_id
    trained = []

    def interrupted_once(run_config, run_dir):
        if os.path.basename(run_dir) == stopped and not trained.count(stopped):
            trained.append(stopped)
            raise preemption.Interrupted("SIGTERM", 5, os.path.join(run_dir, "checkpoints"))
        trained.append(os.path.basename(run_dir))
        return law_trainer({})(run_config, run_dir)

    with pytest.raises(preemption.Interrupted, match="stopped by SIGTERM at step 5"):
        sweep.run_sweep(config, str(tmp_path), train_fn=interrupted_once, out=io.StringIO())
    assert trained == [r.run_id for r in runs[:3]]  # the sweep stopped: no later run started
    assert sweep.read_result(str(tmp_path / "runs" / stopped)) is None  # pending, not recorded as failed
    rows = {r["run"]: r["status"] for r in map(json.loads, open(tmp_path / "runs.jsonl"))}
    assert rows[stopped] == "pending" and rows[runs[0].run_id] == "ok"

    again = sweep.run_sweep(config, str(tmp_path), train_fn=interrupted_once, out=io.StringIO())
    assert again.counts == {"trained": 3, "skipped": 2, "failed": 0, "pending": 0}
    assert trained[3:] == [r.run_id for r in runs[2:]]


def test_a_signal_during_a_runs_last_steps_stops_the_sweep_before_the_next_run(tmp_path):
    """The run's Guard takes the signal, the run ends normally (it was at its last block), and the
    next run's Guard never sees it: the sweep must stop between the two."""
    config = tiny_config()
    runs = sweep.plan_sweep(config).runs
    started = []

    def signalled_in_first(run_config, run_dir):
        started.append(os.path.basename(run_dir))
        if len(started) == 1:
            stop_request_during_training()
        return law_trainer({})(run_config, run_dir)

    with pytest.raises(preemption.Interrupted, match="stopped by SIGTERM after") as stop:
        sweep.run_sweep(config, str(tmp_path), train_fn=signalled_in_first, out=io.StringIO())
    assert stop.value.exit_code == 143 and started == [runs[0].run_id]
    assert sweep.read_result(str(tmp_path / "runs" / runs[0].run_id))["status"] == "ok"  # its result is kept


def test_a_group_trained_together_that_is_interrupted_is_not_recorded_failed(monkeypatch, tmp_path):
    from research.training import loop

    def interrupted(configs, workdirs):
        raise preemption.Interrupted("SIGINT", 10, "somewhere")

    monkeypatch.setattr(loop, "train_together", interrupted)
    config = tiny_config()
    run = sweep.plan_sweep(config).runs[0]
    pending = [(run, config, str(tmp_path / name), name) for name in ("a", "b")]
    with pytest.raises(preemption.Interrupted, match="stopped by SIGINT"):
        sweep_train.train_group(pending)


def test_a_group_records_the_step_its_runs_resumed_from_together(monkeypatch, tmp_path):
    """Runs resumed as one program restart from the newest step all of them saved: each run's
    record named its own newest step (12 for a run that resumed at 8)."""
    from research.training import loop

    monkeypatch.setattr(loop, "train_together", lambda configs, workdirs: [RuntimeError("stood in")] * len(configs))
    config = tiny_config()
    run = sweep.plan_sweep(config).runs[0]
    for name, steps in (("a", (8, 12)), ("b", (4, 8))):
        for step in steps:
            (tmp_path / name / "checkpoints" / str(step) / "state").mkdir(parents=True)
    pending = [(run, config, str(tmp_path / name), name) for name in ("a", "b")]
    assert [r["resumed_from_step"] for r in sweep_train.train_group(pending)] == [8, 8]
    (tmp_path / "b" / "checkpoints" / "8" / "state").rmdir()
    (tmp_path / "b" / "checkpoints" / "8").rmdir()
    assert [r["resumed_from_step"] for r in sweep_train.train_group(pending)] == [0, 0]  # none in common: restart


def test_runs_the_devices_cannot_share_evenly_train_one_by_one(tmp_path):
    """train.models_across_devices: 3 runs of a group over 8 devices stopped the whole sweep with a
    ConfigError at that group (the sweep's own checks let it through); they train one by one."""
    import jax
    config = tiny_config()
    run = sweep.plan_sweep(config).runs[0]
    pending = [(run, config, str(tmp_path / name), name) for name in "abc"]
    assert sweep_train.can_resume_together(pending)
    config.train.models_across_devices = True
    assert jax.device_count() == 8 and not sweep_train.can_resume_together(pending)
    assert sweep_train.can_resume_together([(run, config, str(tmp_path / str(i)), str(i)) for i in range(8)])


def seed_pairs(monkeypatch, signal_in: str):
    """A sweep of 3 sizes x 2 seeds (each pair one group) whose training system is stood in for:
    research.training's train_and_evaluate (one run) and train_together (a group) write the
    records law_trainer writes. The first call of `signal_in` ("alone" or "together") takes a
    stop request during its last steps and ends normally. Returns (config, groups, started: the
    run ids each call trained, one list per call)."""
    import research.training
    from research.training import loop

    config = tiny_config()
    config.sweep.update(dict(non_embedding_params=(1e3, 2e3, 4e3), plan="isoflop", budgets=(4e7,),
                             models_per_budget=3, tokens_per_param=(), repeat_seeds=(1,)))
    groups = sweep_train.same_program_groups(sweep.plan_sweep(config).runs)
    started = []

    def train(way, configs, run_dirs):
        started.append([os.path.basename(d) for d in run_dirs])
        if way == signal_in and len(started) == 1:
            stop_request_during_training()
        return [law_trainer({})(c, d) for c, d in zip(configs, run_dirs)]

    monkeypatch.setattr(research.training, "train_and_evaluate", lambda c, d: train("alone", [c], [d])[0])
    monkeypatch.setattr(loop, "train_together", lambda cs, ds: train("together", cs, ds))
    return config, groups, started


def pending_runs(workdir) -> list[str]:
    return [r["run"] for r in map(json.loads, open(workdir / "runs.jsonl")) if r["status"] == "pending"]


def test_a_stop_during_a_group_member_trained_alone_stops_before_the_groups_next_member(monkeypatch, tmp_path):
    """A seed pair that cannot resume as one program (seed 0 saved, seed 1 has no checkpoint)
    trains one run at a time: a stop taken during seed 0's last steps must not start seed 1,
    which stays pending for the rerun (the check inside the group, not the one between groups)."""
    config, groups, started = seed_pairs(monkeypatch, signal_in="alone")
    first, second = (run.run_id for run in groups[0])
    (tmp_path / "runs" / first / "checkpoints" / "10" / "state").mkdir(parents=True)

    with pytest.raises(preemption.StoppedBetweenRuns, match="stopped by SIGTERM after the run it came during "
                                                            "ended; rerun the same command") as stop:
        sweep.run_sweep(config, str(tmp_path), out=io.StringIO())
    assert stop.value.exit_code == 143 and started == [[first]]  # seed 1 never started
    assert sweep.read_result(str(tmp_path / "runs" / first))["status"] == "ok"
    assert sweep.read_result(str(tmp_path / "runs" / second)) is None
    assert second in pending_runs(tmp_path)

    again = sweep.run_sweep(config, str(tmp_path), out=io.StringIO())
    assert again.counts == {"trained": 5, "skipped": 1, "failed": 0, "pending": 0}
    assert started[1] == [second]  # the rerun goes on with it first


def test_a_stop_during_a_run_stops_the_sweep_before_a_pending_group_trains_together(monkeypatch, tmp_path):
    """The check between groups on the path where a group trains as one program: a stop taken
    during the first pair's last steps starts neither of the other pairs; they stay pending."""
    config, groups, started = seed_pairs(monkeypatch, signal_in="together")

    with pytest.raises(preemption.StoppedBetweenRuns, match=r"stopped by SIGTERM after the run\(s\) it came during "
                                                             "ended; rerun the same command") as stop:
        sweep.run_sweep(config, str(tmp_path), out=io.StringIO())
    assert stop.value.exit_code == 143 and started == [[run.run_id for run in groups[0]]]
    assert sorted(pending_runs(tmp_path)) == sorted(run.run_id for group in groups[1:] for run in group)

    again = sweep.run_sweep(config, str(tmp_path), out=io.StringIO())
    assert again.counts == {"trained": 4, "skipped": 2, "failed": 0, "pending": 0}
    assert started[1:] == [[run.run_id for run in group] for group in groups[1:]]


def test_a_run_refused_before_its_first_step_does_not_lock_its_directory(tmp_path):
    """run_config.json is written before the training system validates the config; a config it
    refuses leaves a run with no checkpoint and no result, whose record the corrected command replaces."""
    config = tiny_config()

    def validating(run_config, run_dir):  # a refusal of the training system's (one the sweep cannot make first)
        if run_config.opt.learning_rate >= 1:
            raise ConfigError(f"opt.learning_rate={run_config.opt.learning_rate} must be below 1.")
        return law_trainer({})(run_config, run_dir)

    config.opt.learning_rate = 5.0
    with pytest.raises(ConfigError, match="must be below 1"):
        sweep.run_sweep(config, str(tmp_path), train_fn=validating, out=io.StringIO())
    config.opt.learning_rate = 1e-2
    outcome = sweep.run_sweep(config, str(tmp_path), train_fn=validating, out=io.StringIO())
    assert outcome.counts["trained"] == 5
    first = tmp_path / "runs" / outcome.plan.runs[0].run_id
    assert json.loads((first / run_dirs.RUN_CONFIG_FILE).read_text())["opt"]["learning_rate"] > 0
    # Once a run has a result, its config is what the result was trained with: still refused.
    config.opt.learning_rate = 3e-2
    with pytest.raises(sweep.SweepError, match="trained with a different config"):
        sweep.run_sweep(config, str(tmp_path), train_fn=validating, out=io.StringIO())


def test_a_fit_skipped_for_plateau_runs_counts_them_as_finished_and_names_the_plateau_rule(tmp_path):
    """It said "0 finished run(s) (0 failed, 5 on the early plateau) ... fix the failed ones
    (--retry_failed)": the runs had finished, and --retry_failed does nothing for them."""
    config = scaling_laws.get_config("test_tiny")
    config.sweep.tokens_per_param = (1.0, 2.0)  # one ratio cannot be fitted (sweep._check_fittable)
    config.fit.enabled = True

    def flat(run_config, run_dir):  # every run ends far above the corpus's bigram level
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
            for step in range(1, run_config.train.num_steps + 1):
                f.write(json.dumps({"step": step, "loss": 5.0, "num_tokens": 256}) + "\n")
            f.write(json.dumps({"step": run_config.train.num_steps, "eval_loss": 5.0}) + "\n")

    outcome = sweep.run_sweep(config, str(tmp_path), train_fn=flat, out=io.StringIO())
    assert outcome.fit is None and outcome.fit_note == (
        "fit skipped: 0 of 10 ended run(s) usable (0 failed, 10 finished on the early plateau); the fit needs >= 6: "
        "add runs, or train the plateau runs longer, or fit them anyway (--config.fit.plateau_rule=False).")


def test_a_plan_that_drops_runs_is_refused_before_anything_is_rewritten(tmp_path):
    """Run ids that do not overlap the old ones passed every run directory's check: plan.json and
    the tables were rewritten for the new plan and the old rows vanished (fit.json stayed)."""
    config = tiny_config()
    sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    written = lambda: {name: (tmp_path / name).read_bytes() for name in ("plan.json", "runs.csv", "runs.jsonl")}
    before = written()
    config.sweep.tokens_per_param = (2.0,)
    with pytest.raises(sweep.SweepError, match=f"{tmp_path} holds a sweep planned with other settings \\(5 of its 5 "
                                               "runs, e.g. .*, are not in this plan\\); use a new --workdir"):
        sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    assert written() == before
    config.sweep.tokens_per_param = (1.0, 2.0)  # only adds runs: every old row is kept
    outcome = sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    assert outcome.counts["skipped"] == 5 and outcome.counts["trained"] > 0


def test_a_fit_the_runs_no_longer_give_is_set_aside_not_left_beside_them(tmp_path):
    """Refitted with the plateau rule on, every run was flagged and the fit skipped, but the fit.json
    and plots made with the rule off stayed: 9 runs fitted, beside a runs.csv that used none."""
    config = scaling_laws.get_config("test_tiny")
    config.sweep.tokens_per_param = (1.0, 2.0)  # one ratio cannot be fitted (sweep._check_fittable)
    config.fit.enabled = True
    config.fit.plateau_rule = False

    lawful = law_trainer({})

    def high(run_config, run_dir):  # the law's losses raised far above the corpus's bigram level
        lawful(run_config, run_dir)
        path = os.path.join(run_dir, "metrics.jsonl")
        records = [json.loads(line) for line in open(path)]
        with open(path, "w") as f:
            f.writelines(json.dumps({k: v + 5.0 if "loss" in k else v for k, v in r.items()}) + "\n" for r in records)

    first = sweep.run_sweep(config, str(tmp_path), train_fn=high, out=io.StringIO())
    assert first.fit is not None
    written = [*first.fit["plots"], "fit.json", "exact"]
    before = {name: os.path.exists(tmp_path / name) for name in written}
    assert all(before.values()), before
    fit_bytes = (tmp_path / "fit.json").read_bytes()

    config.fit.plateau_rule = True
    second = sweep.run_sweep(config, str(tmp_path), train_fn=high, out=io.StringIO())
    aside = tmp_path / sweep_fit.SUPERSEDED_DIR
    assert second.fit is None and second.fit_note.startswith("fit skipped: 0 of 10 ended run(s) usable")
    assert f"moved to {aside}" in second.fit_note
    assert not any(os.path.exists(tmp_path / name) for name in written)  # nothing beside runs.csv contradicts it
    assert (aside / "fit.json").read_bytes() == fit_bytes and all((aside / name).exists() for name in written)


def test_setting_a_fit_aside_that_a_kill_interrupted_keeps_what_was_moved(tmp_path):
    """A kill while the earlier fit moved aside left part of it moved; the rerun deleted that part
    (it cleared the folder and started over) before moving the rest."""
    (tmp_path / "fit.json").write_text(json.dumps({"plots": ["law_contours.png", "loss_vs_compute.png"]}))
    (tmp_path / "loss_vs_compute.png").write_text("second")
    partial = tmp_path / (sweep_fit.SUPERSEDED_DIR + ".partial")
    partial.mkdir()
    (partial / "law_contours.png").write_text("first")  # moved before the kill
    (tmp_path / sweep_fit.SUPERSEDED_DIR).mkdir()
    (tmp_path / sweep_fit.SUPERSEDED_DIR / "fit.json").write_text("{}")  # an older superseded fit
    assert "moved to" in sweep_fit._set_aside_previous_fit(str(tmp_path))
    aside = tmp_path / sweep_fit.SUPERSEDED_DIR
    assert sorted(os.listdir(tmp_path)) == [sweep_fit.SUPERSEDED_DIR]
    assert sorted(os.listdir(aside)) == ["fit.json", "law_contours.png", "loss_vs_compute.png"]
    assert (aside / "law_contours.png").read_text() == "first" and "plots" in (aside / "fit.json").read_text()


def test_a_kill_while_plan_json_is_written_leaves_the_old_plan_whole(tmp_path, monkeypatch):
    """plan.json was written in place: a kill mid-write left half a file, which reads as no plan,
    and a plan dropping 3 of the 5 runs was then accepted. Now it is written aside and renamed."""
    config = tiny_config()
    sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    before = (tmp_path / "plan.json").read_bytes()

    class Killed(BaseException):
        pass

    def dying_write(f, text):  # a kill part way through writing a file (text or bytes)
        f.write(text[:len(text) // 2])
        f.flush()
        raise Killed

    opened = []
    real_open = open

    def open_and_watch(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and "plan.json" in os.path.basename(str(path)):
            opened.append(path)
            return _DyingFile(f, dying_write)
        return f

    monkeypatch.setattr("builtins.open", open_and_watch)
    with pytest.raises(Killed):
        sweep.prepare_sweep(config, str(tmp_path))
    monkeypatch.undo()
    assert opened and (tmp_path / "plan.json").read_bytes() == before
    config.sweep.tokens_per_param = (2.0,)
    with pytest.raises(sweep.SweepError, match="holds a sweep planned with other settings"):
        sweep._check_same_plan(str(tmp_path), sweep.plan_sweep(config))


class _DyingFile:
    """A text file whose write is replaced (the rest passes through)."""

    def __init__(self, f, write):
        self._f, self._write = f, write

    def write(self, text):
        return self._write(self._f, text)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()
