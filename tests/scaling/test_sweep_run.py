"""Sweeps that run: end to end through the training system (interrupt, resume, skip on rerun),
and the bookkeeping around failed runs and the fit, with a stand-in trainer."""
import csv
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiments.configs import scaling_laws
from experiments.scaling_laws import run_dirs, sweep, sweep_train
from research.models import get_config, sizing
from research.scaling.laws import ChinchillaLaw

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def sweep_command(workdir, *flags):
    """The real command on 3 runs (28, 60 and 159 steps), its XLA compiling without LLVM's
    expensive passes: this test is about the sweep's bookkeeping, not the generated code."""
    command = [sys.executable, "-m", "experiments.scaling_laws",
               "--config=experiments/configs/scaling_laws.py:test_tiny", f"--workdir={workdir}",
               *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
    return command, env


# The early-plateau rule is off: this test is about the bookkeeping (status "ok" for every
# finished run), and these few-step runs all sit on the plateau (tested in test_study_rules.py).
OVERRIDES = {"sweep.non_embedding_params": "(1e3,2e3,4e3)", "sweep.tokens_per_param": "(8.0,)",
             "fit.enabled": "False"}  # 3 runs of one ratio: no design a fit could use (sweep._check_fittable)


def worker_pids(workdir) -> list[int]:
    """Live processes training runs of this sweep as workers."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "--sweep_worker" in argv and f"--workdir={workdir}" in argv:
            pids.append(int(pid))
    return pids


def checkpoint_steps(run_dir) -> list[int]:
    directory = run_dir / "checkpoints"
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []


def test_sweep_in_two_workers_killed_resumes_finished_runs_are_skipped(tmp_path):
    """The README's command on a 2-core machine: two worker processes take runs, largest first.
    kill -9 of the command kills its workers too; the same command again skips the finished
    runs, resumes the interrupted ones from their checkpoints, and fits."""
    from research.training.metrics import read_metrics

    workdir = tmp_path / "sweep"
    command, env = sweep_command(workdir, "--workers=2")
    config = scaling_laws.get_config("test_tiny")
    config.sweep.update(dict(non_embedding_params=(1e3, 2e3, 4e3), tokens_per_param=(8.0,)))
    config.fit.enabled = False
    runs = sweep.plan_sweep(config).runs
    run_dirs = {run.run_id: workdir / "runs" / run.run_id for run in runs}

    def interrupted() -> list[str]:  # runs with a checkpoint and no result yet
        return [r for r, d in run_dirs.items() if checkpoint_steps(d) and not (d / sweep.RESULT_FILE).exists()]

    # kill -9 once a run has finished while another is part-way (a checkpoint, no result).
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600  # a loaded shared machine can take minutes for the first run
    while process.poll() is None and time.time() < deadline and not (
            any((d / sweep.RESULT_FILE).exists() for d in run_dirs.values()) and interrupted()):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, output
    deadline = time.time() + 30
    while worker_pids(workdir) and time.time() < deadline:
        time.sleep(0.1)
    assert not worker_pids(workdir), "the workers outlived the killed command"
    logs = sorted(os.listdir(workdir / "workers"))
    assert logs == ["worker-0.log", "worker-1.log"], logs
    finished = [r for r, d in run_dirs.items() if (d / sweep.RESULT_FILE).exists()]
    killed_at = {r: max(checkpoint_steps(run_dirs[r])) for r in interrupted()}
    assert finished and killed_at, output
    rows = read_csv(workdir / "runs.csv")  # rewritten after each result: it may lag behind the last one
    assert all(r["status"] == "pending" or (r["status"] == "ok" and r["run"] in finished) for r in rows), rows

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # the same command
    assert result.returncode == 0, result.stdout + result.stderr
    for run_id in finished:
        assert f"{run_id}: finished before (ok), skipped" in result.stdout
    for run_id, step in killed_at.items():
        assert re.search(rf"{run_id}: .*resumed at step {step}\)", result.stdout), result.stdout
    assert f"trained {3 - len(finished)}, skipped {len(finished)} finished, 0 failed, 0 pending" in result.stdout
    assert "fit disabled (fit.enabled=False)" in result.stdout
    for run in runs:  # each step trained once: the killed attempt's steps, then the resumed ones
        steps = [r["step"] for r in read_metrics(str(run_dirs[run.run_id])) if "loss" in r]
        assert steps == list(range(1, run.num_steps + 1)), run.run_id

    def must_not_train(run_config, run_dir):
        raise AssertionError(f"{run_dir} was finished and must be skipped")

    outcome = sweep.run_sweep(config, str(workdir), train_fn=must_not_train, out=io.StringIO())  # a third time
    assert outcome.counts == {"trained": 0, "skipped": 3, "failed": 0, "pending": 0}
    rows = read_csv(workdir / "runs.csv")
    assert [r["run"] for r in rows] == [run.run_id for run in runs]
    assert [r["resumed_from_step"] for r in rows] == [str(killed_at.get(run.run_id, 0)) for run in runs]
    for row, record in zip(rows, outcome.records):
        N, D, num_steps = int(row["N"]), int(row["D"]), int(row["steps"])
        assert row["status"] == "ok" and D == num_steps * 8 * 32 and 0 < int(row["D_loss_tokens"]) <= D
        assert float(row["C_6ND"]) == 6 * N * D < float(row["C_exact"]) and row["C"] == ""
        assert float(row["loss"]) == float(row["eval_loss"]) == record["curve"]["eval_loss"][-1]
        assert math.isfinite(float(row["loss"])) and len(record["curve"]["train_loss"]) == num_steps
        assert int(row["N_non_embedding"]) == N < int(row["N_total"])
    assert float(rows[2]["loss"]) < float(rows[1]["loss"]) < float(rows[0]["loss"])  # bigger and longer: lower
    with open(workdir / "runs.jsonl") as f:
        assert [json.loads(line)["run"] for line in f] == [run.run_id for run in runs]


LAW = ChinchillaLaw(E=1.0, A=30.0, B=60.0, alpha=0.4, beta=0.35)


def law_trainer(fail: dict[str, str], seed_factor: dict[int, float] | None = None):
    """Writes the metrics records the training loop writes, with losses from LAW; a run named in
    `fail` raises (or, for "nan", ends with a NaN validation loss); a run whose train.seed is in
    `seed_factor` ends with its validation loss times that factor (run-to-run noise)."""
    def train(run_config, run_dir):
        name = os.path.basename(run_dir)
        sizes = {k: run_config.model[k] for k in ("d_model", "num_layers", "num_heads", "d_ff", "vocab_size",
                                                  "max_len")}
        N = sizing.param_counts(get_config(run_config.model.preset, **sizes)).non_embedding
        tokens = run_config.train.batch_size * run_config.train.seq_len
        steps = run_config.train.num_steps
        if fail.get(name, "nan") != "nan":
            raise RuntimeError(fail[name])
        with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
            for step in range(1, steps + 1):
                loss = float(LAW.loss(N, step * tokens))
                f.write(json.dumps({"step": step, "loss": loss, "num_tokens": tokens}) + "\n")
            factor = (seed_factor or {}).get(run_config.train.seed, 1.0)
            final = float("nan") if name in fail else factor * float(LAW.loss(N, steps * tokens))
            f.write(json.dumps({"step": steps, "eval_loss": final}) + "\n")
        return {}
    return train


def test_failed_runs_are_reported_and_left_out_of_the_fit(tmp_path):
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = True  # (test_tiny alone is a smoke test, not fitted)
    config.sweep.update(dict(non_embedding_params=(1e3, 2e3, 4e3, 8e3, 1.6e4), plan="isoflop",
                             budgets=(2e8, 6e8, 2e9), models_per_budget=3, tokens_per_param=()))
    # These losses come from LAW, not from training on the corpus: the corpus's bigram level,
    # which the early-plateau rule compares with, means nothing for them.
    config.fit.plateau_rule = False
    plan = sweep.plan_sweep(config)
    assert len(plan.runs) == 9
    oom, diverged = plan.runs[1].run_id, plan.runs[2].run_id  # both at the smallest budget
    workdir = str(tmp_path / "sweep")
    fail = {oom: "RESOURCE_EXHAUSTED: out of memory\nallocating 4.2 GB", diverged: "nan"}
    out = io.StringIO()
    outcome = sweep.run_sweep(config, workdir, train_fn=law_trainer(fail), out=out)
    assert outcome.counts == {"trained": 7, "skipped": 0, "failed": 2, "pending": 0}
    rows = {r["run"]: r for r in read_csv(os.path.join(workdir, "runs.csv"))}
    assert rows[oom]["status"] == rows[diverged]["status"] == "failed"
    assert rows[oom]["loss"] == rows[diverged]["loss"] == ""  # never a number a fit could use, never 0
    assert rows[oom]["error"] == "RuntimeError: RESOURCE_EXHAUSTED: out of memory"
    assert "no finite validation loss" in rows[diverged]["error"]
    assert f"{oom}: N=" in out.getvalue() and "FAILED: RuntimeError" in out.getvalue()

    fit = outcome.fit
    assert fit["num_runs"] == 7 and len(fit["excluded"]) == 2
    assert {f["run"] for f in fit["sweep"]["runs"]["failed"]} == {oom, diverged}
    assert fit["approach3"]["E"] == pytest.approx(LAW.E, rel=0.05)
    assert [p["compute"] for p in fit["approach2"]["profiles"]] == [6e8, 2e9]  # 2e8 has 1 size left
    irreducible = fit["sweep"]["irreducible"]
    assert irreducible["window_bound"] > irreducible["entropy_rate"]
    # The source's own predictor on the eval batches the runs were scored on (every one of them).
    oracle = irreducible["eval_set_oracle"]
    assert oracle["batches"] == config.train.eval_batches and oracle["targets"] > 0
    assert oracle["loss"] == pytest.approx(irreducible["window_bound"], abs=0.1)  # one batch: 256 targets
    assert f"the source's own loss on the eval batches {oracle['loss']:.4f}" in out.getvalue()
    assert [g["C"] for g in fit["sweep"]["loss_by_budget"]] == [2e8, 6e8, 2e9]
    assert "approach 3 (nominal): L(N, D) = " in out.getvalue() and "irreducible loss (exact): fitted E=" in out.getvalue()
    assert set(fit["exact"]) >= {"approach1", "approach2", "approach3", "kaplan"} and fit["exact"]["approach3"]["E"] > 0
    assert set(fit["sweep"]["n_opt_exponents"]) == {"nominal", "exact"}
    assert set(fit["sweep"]["held_out"]) == {"nominal", "exact"}  # here: skipped, 4 runs below the largest budget
    leave_out = fit["sweep"]["leave_out"]  # the 7 finished runs only: the smallest budget keeps 1 of its 3
    assert set(leave_out) == {"smallest_size", "largest_size", "smallest_budget", "largest_budget"}
    assert leave_out["smallest_budget"]["runs_left_out"] == 1 and leave_out["smallest_budget"]["runs"] == 6
    assert leave_out["largest_budget"]["skipped"] == "4 design points would remain; Approach 3 needs 5"
    assert f"smallest budget (1 runs) E={leave_out['smallest_budget']['E']:.4f}" in out.getvalue()
    with open(os.path.join(workdir, "fit.json")) as f:
        assert json.load(f)["sweep"]["inputs_sha256"] == fit["sweep"]["inputs_sha256"]

    out = io.StringIO()
    again = sweep.run_sweep(config, workdir, train_fn=law_trainer({}), out=out)  # failed runs stay failed
    assert again.counts["skipped"] == 9 and "fit unchanged" in out.getvalue()
    open(os.path.join(workdir, "fit.json"), "w").close()  # left empty (say, a disk that filled up)
    out = io.StringIO()
    refit = sweep.run_sweep(config, workdir, train_fn=law_trainer({}), out=out)
    assert "fit unchanged" not in out.getvalue() and refit.fit["approach3"]["E"] == fit["approach3"]["E"]
    with open(os.path.join(workdir, "fit.json")) as f:
        assert json.load(f)["sweep"]["inputs_sha256"] == fit["sweep"]["inputs_sha256"]
    config.fit.enabled = False
    retried = sweep.run_sweep(config, workdir, train_fn=law_trainer({}), retry_failed=True, out=io.StringIO())
    assert retried.counts == {"trained": 2, "skipped": 7, "failed": 0, "pending": 0}
    assert all(r["status"] == "ok" for r in retried.records)


def test_a_changed_config_cannot_reuse_a_run_directory(tmp_path):
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = False
    sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    written = lambda: {name: ((tmp_path / name).read_text(), os.stat(tmp_path / name).st_mtime_ns)
                       for name in ("plan.json", "runs.csv")}
    tables = written()
    config.opt.learning_rate = 3e-2
    with pytest.raises(sweep.SweepError, match="trained with a different config \\(sections \\['opt'\\] differ\\)"):
        sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    # Refused before the plan and tables were rewritten for the changed config (and so before
    # any worker starts: inside one it surfaced as a worker's exit code).
    assert written() == tables
    # The loss the fit reads is the mean over train.eval_batches batches: another count would mix
    # losses measured on different evaluation sets in one fit.
    config.opt.learning_rate = scaling_laws.get_config("test_tiny").opt.learning_rate
    config.train.eval_batches += 3
    with pytest.raises(sweep.SweepError, match="trained with a different config \\(sections \\['train'\\] differ"):
        sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    # A tokenizer setting trains another tokenizer: the runs left to train would read other ids than the
    # finished ones, in one fit (it was left out of the comparison with the model's path).
    config.train.eval_batches -= 3
    config.data.tokenizer.max_training_chars = 5000
    with pytest.raises(sweep.SweepError, match="trained with a different config \\(sections \\['data'\\] differ"):
        sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    assert written() == tables


def test_seed_repeats_train_together_each_with_its_own_record(tmp_path):
    from research.training.metrics import read_metrics

    config = scaling_laws.get_config("test_tiny")
    config.sweep.update(dict(non_embedding_params=(1e3, 2e3, 4e3), plan="isoflop", budgets=(4e7,),
                             models_per_budget=3, tokens_per_param=(), repeat_seeds=(1,)))
    config.fit.enabled = False
    plan = sweep.plan_sweep(config)
    groups = sweep_train.same_program_groups(plan.runs)
    assert [[r.seed for r in g] for g in groups] == [[0, 1]] * 3  # each size with its repeat
    out = io.StringIO()
    outcome = sweep.run_sweep(config, str(tmp_path), out=out)
    assert outcome.counts == {"trained": 6, "skipped": 0, "failed": 0, "pending": 0}, out.getvalue()
    rows = read_csv(tmp_path / "runs.csv")
    assert [r["run"] for r in rows] == [r.run_id for r in plan.runs] and {r["status"] for r in rows} == {"ok"}
    for group in groups:  # the same model from two seeds: its own metrics, a different curve
        a, b = ([m["loss"] for m in read_metrics(str(tmp_path / "runs" / r.run_id)) if "loss" in m] for r in group)
        assert len(a) == len(b) == group[0].num_steps and a != b


def test_a_run_config_a_kill_left_empty_is_rewritten_until_the_run_has_started(tmp_path):
    """A sweep killed between creating a run's run_config.json and writing it (before the write
    was atomic) left an empty file, and every rerun then died on it."""
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = False
    sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    runs = sorted(os.listdir(tmp_path / "runs"))
    unstarted, started = tmp_path / "runs" / runs[0], tmp_path / "runs" / runs[1]
    expected = json.loads((unstarted / run_dirs.RUN_CONFIG_FILE).read_text())
    for name in os.listdir(unstarted):  # as the kill left it: a claim and an empty config
        if name not in (".claim", run_dirs.RUN_CONFIG_FILE):
            shutil.rmtree(unstarted / name) if (unstarted / name).is_dir() else os.remove(unstarted / name)
    (unstarted / run_dirs.RUN_CONFIG_FILE).write_text("")
    again = sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    assert again.counts["trained"] == 1 and json.loads((unstarted / run_dirs.RUN_CONFIG_FILE).read_text()) == expected
    assert not [n for n in os.listdir(unstarted) if ".tmp" in n]

    (started / run_dirs.RUN_CONFIG_FILE).write_text("")  # a finished run's proof of its config is gone: stop
    with pytest.raises(sweep.SweepError, match=f"{run_dirs.RUN_CONFIG_FILE} is unreadable .* the run has started"):
        sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())


def test_a_group_that_cannot_resume_together_goes_on_run_by_run(tmp_path):
    """Seed 1 diverged before its first save while seed 0 saved and the sweep was killed: the
    pair cannot resume as one program (research.training.members), so each run goes on alone
    (seed 0 from its checkpoint) instead of both being recorded as failed on every rerun."""
    import json
    from research.training import members
    config = scaling_laws.get_config("test_tiny")
    dirs = [tmp_path / "seed0", tmp_path / "seed1"]
    pending = [(None, config, str(d), None) for d in dirs]
    (dirs[0] / "checkpoints" / "10" / "state").mkdir(parents=True)
    dirs[1].mkdir()
    (dirs[1] / "run.json").write_text(json.dumps({"fingerprint": {}, "trained_with": sorted(map(str, dirs))}))
    assert sweep_train.can_resume_together(pending)  # killed between the pair's first saves: they restart together
    (dirs[1] / members.DIVERGED_FILE).write_text(json.dumps({"step": 3, "error": "nan"}))
    assert not sweep_train.can_resume_together(pending)


def test_a_token_plan_is_fitted_with_approach_1_over_final_losses(tmp_path):
    """A token plan's runs have no FLOP budget (runs.csv's C is blank): Approach 1 over final
    losses labelled every run with a NaN budget, grouped none of them, and the fit died on
    "attempt to get argmin of an empty sequence" once any run was usable."""
    config = scaling_laws.get_config("test_tiny")  # plan="tokens"
    # One ratio cannot be fitted (sweep._check_fittable; Approach 1's frontier was one model per
    # compute, N_opt ∝ C^0.5 by construction); these span LAW's optimum, ~12-18 tokens per parameter.
    config.sweep.tokens_per_param = (4.0, 16.0, 64.0)
    config.fit.enabled = True
    config.fit.plateau_rule = False  # the law's losses sit below this corpus's bigram level
    outcome = sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    assert outcome.fit is not None, outcome.fit_note
    final = outcome.fit["sweep"]["approach1_final"]["nominal"]
    assert 0 < final["a"] < 1 and final["envelope_points"] >= 3, final  # Approach 1 ran (not skipped)


def test_shards_sharing_a_workdir_keep_their_worker_logs_apart():
    from experiments.scaling_laws.sweep_workers import workers_log_dir
    assert workers_log_dir("/w", 0, 1) == "/w/workers"  # one job: where the README's sweep keeps them
    assert [workers_log_dir("/w", i, 3) for i in range(3)] == [f"/w/workers/shard{i}" for i in range(3)]


def test_a_run_whose_own_warmup_the_schedule_refuses_is_named_before_any_run_trains(tmp_path):
    # Only the shortest run's warmup overlapped the wsd decay: it failed in its turn, after the longer
    # runs had trained, and the corrected command was then refused as another config.
    config = scaling_laws.get_config("test_tiny")
    config.opt.update(dict(schedule="wsd", decay_fraction=0.1))
    config.sweep.warmup_fraction = 0.88
    trained = []
    with pytest.raises(sweep.SweepError, match=r"^run \S+ \(\d+ steps, opt\.warmup_steps=\d+\): opt\.warmup_steps=\d+ "
                                               r"overlaps the wsd decay"):
        sweep.run_sweep(config, str(tmp_path), train_fn=lambda *a, **k: trained.append(a), out=io.StringIO())
    assert not trained and not (tmp_path / "runs").exists()


def test_a_tokenizer_file_swapped_for_another_of_the_same_size_is_another_config(tmp_path):
    # Its path is left out of a run's identity (the sweep's own model moves with the workdir): another
    # given file of the same vocab_size was accepted, and its runs joined the finished ones in one fit.
    from research.data import DataConfig, build_tokenizer

    def tokenizer(source_seed):
        config = scaling_laws.get_config("test_tiny")
        config.data.synthetic.source_seed = source_seed
        return build_tokenizer(DataConfig(**config.data.to_dict()), str(tmp_path / f"tok{source_seed}")).path
    first, other = tokenizer(0), tokenizer(7)
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = False
    config.data.tokenizer.model_path = first
    sweep.run_sweep(config, str(tmp_path / "sweep"), train_fn=law_trainer({}), out=io.StringIO())
    sweep.run_sweep(config, str(tmp_path / "sweep"), train_fn=law_trainer({}), out=io.StringIO())  # the same
    config.data.tokenizer.model_path = other
    with pytest.raises(sweep.SweepError, match=r"trained with a different config \(sections \['data'\] differ"):
        sweep.run_sweep(config, str(tmp_path / "sweep"), train_fn=law_trainer({}), out=io.StringIO())
