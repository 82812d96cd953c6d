"""Sweep planning: ladders, IsoFLOP and token-budget layouts, per-run configs, presets, bad input."""
import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import scaling_laws
from experiments.scaling_laws import sweep
from research.models import get_config, sizing
from research.scaling.sweep_plan import (SweepError, SweepSpec, estimated_seconds, ladder_models,
                                         learning_rate_scale, plan_runs, warmup_steps)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LADDER = (5e3, 1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5)


def test_generated_ladder_hits_its_targets_and_rebuilds_from_overrides():
    models = ladder_models(SweepSpec(non_embedding_params=LADDER, budgets=(1e11,)), vocab_size=23, seq_len=64)
    assert [m.params_non_embedding for m in models] == sorted(m.params_non_embedding for m in models)
    for target, model in zip(LADDER, models):
        assert abs(model.params_non_embedding / target - 1) < 0.25, (target, model.name)
        # config.model = preset + overrides rebuilds exactly the planned model (what the loop will train).
        rebuilt = get_config(model.overrides.pop("preset"), **model.overrides)
        assert rebuilt.replace(name=model.name) == model.config
        assert model.params_total == sizing.param_counts(rebuilt).total
        assert model.train_flops_per_token == sizing.flops_per_token(rebuilt, 64, include_embedding=True).train
    zoo = ladder_models(SweepSpec(presets=("gpt2-tiny", "llama-tiny"), budgets=(1e11,)), vocab_size=40, seq_len=64)
    assert [m.config.vocab_size for m in zoo] == [40, 40]  # sized for the sweep's tokenizer
    assert {m.name: m.overrides["preset"] for m in zoo} == {"gpt2-tiny": "gpt2-tiny", "llama-tiny": "llama-tiny"}


def test_isoflop_plan_centres_each_budget_on_the_prior_optimum():
    spec = SweepSpec(non_embedding_params=LADDER, budgets=(3e10, 1e11, 3e11), models_per_budget=5)
    models = ladder_models(spec, vocab_size=23, seq_len=64)
    runs = plan_runs(spec, models, batch_size=16, seq_len=64)
    assert len(runs) == 15 and len({r.run_id for r in runs}) == 15 and len({r.model.name for r in runs}) >= 5
    for budget in spec.budgets:
        mine = [r for r in runs if r.budget == budget]
        sizes = [r.N for r in mine]
        assert len(mine) == 5 and sizes == sorted(sizes)
        optimum = math.sqrt(budget / (6 * 20.0))
        assert min(sizes) < optimum < max(sizes)
        for run in mine:
            assert run.tokens == run.num_steps * 16 * 64 and run.num_steps >= spec.min_steps
            assert run.compute_6nd == pytest.approx(budget, rel=0.02)  # D rounds to whole steps
            assert run.compute_exact == run.model.train_flops_per_token * run.tokens > run.compute_6nd
    assert estimated_seconds(runs, 1e12, 0.5) == pytest.approx(sum(r.compute_exact for r in runs) / 5e11)


def test_token_plan_and_per_run_schedule():
    spec = SweepSpec(non_embedding_params=(5e3, 2e4), plan="tokens", tokens_per_param=(5.0, 20.0), min_steps=5,
                     warmup_fraction=0.1)
    runs = plan_runs(spec, ladder_models(spec, vocab_size=23, seq_len=64), batch_size=16, seq_len=64)
    assert [(r.model.name, r.tokens_per_param_target) for r in runs] == [
        (runs[0].model.name, 5.0), (runs[0].model.name, 20.0), (runs[2].model.name, 5.0), (runs[2].model.name, 20.0)]
    for run in runs:
        assert run.budget is None and abs(run.tokens / (run.tokens_per_param_target * run.N) - 1) < 0.1
    absolute = SweepSpec(non_embedding_params=(5e3, 2e4), plan="tokens", tokens=(1e5, 4e5), min_steps=5)
    runs = plan_runs(absolute, ladder_models(absolute, vocab_size=23, seq_len=64), batch_size=16, seq_len=64)
    assert [r.tokens for r in runs] == [round(d / 1024) * 1024 for d in (1e5, 4e5, 1e5, 4e5)]
    config = scaling_laws.get_config("cpu_tiny")
    one = sweep.run_config(config, runs[1], spec, tokenizer_path="/tok.model", peak_flops=1e9)
    assert "sweep" not in one and "fit" not in one
    assert one.train.num_steps == runs[1].num_steps and one.train.log_every_steps == 1
    assert one.opt.warmup_steps == warmup_steps(spec, runs[1].num_steps) == round(0.1 * runs[1].num_steps)
    assert (one.opt.schedule, one.opt.min_lr_ratio) == ("cosine", 0.1)  # decays to 10% over this run
    assert one.data.tokenizer.model_path == "/tok.model" and one.model.d_model == runs[1].model.config.d_model
    assert one.model.dtype == "float32" and one.model.preset == "gpt2-tiny"


@pytest.mark.parametrize("ladder", ["generated", "presets"])
def test_recorded_sizes_are_those_of_the_model_each_run_trains(ladder):
    """A config.model field the sweep does not set per run (num_kv_heads here; on a preset ladder
    also d_model, num_layers, ...) trains every run's model: N, N_total and C_exact, which runs.csv
    records and every fit reads, count that model (they counted the plan's: 14,496 parameters
    recorded for 12,496 trained)."""
    config = scaling_laws.get_config("test_tiny")
    if ladder == "presets":
        config.sweep.update(dict(presets=("llama-tiny", "llama-20m"), non_embedding_params=(), plan="tokens",
                                 budgets=(), tokens_per_param=(1e-3,), min_steps=1))
        config.fit.enabled = False
        config.train.seq_len = 32
    plain = {r.run_id: r for r in sweep.plan_sweep(config).runs}
    config.model.num_kv_heads = 1
    plan = sweep.plan_sweep(config)
    for run in plan.runs:
        fields = {k: v for k, v in sweep.run_config(config, run, plan.spec, tokenizer_path="/tok.model",
                                                    peak_flops=1.0).model.to_dict().items() if v is not None}
        trained = get_config(fields.pop("preset"), **fields)  # as the train loop builds it
        assert trained.kv_heads == 1
        counts = sizing.param_counts(trained)
        assert (run.model.params_non_embedding, run.model.params_total) == (counts.non_embedding, counts.total)
        exact = sizing.flops_per_token(trained, config.train.seq_len, include_embedding=True).train * run.tokens
        assert run.compute_exact == pytest.approx(exact, rel=1e-12)
        same = [r for r in plain.values() if r.model.name == run.model.name]
        assert same and run.model.params_non_embedding < same[0].model.params_non_embedding  # the field mattered


def test_a_sweep_sized_before_the_model_fields_counted_is_named_and_its_results_read_as_trained(tmp_path):
    """A sweep run with --config.model.num_kv_heads=1 before its sizes counted it: its IsoFLOP step
    counts (so run ids) differ now, and a rerun says why instead of "restore the settings", which
    never changed; a result.json written then is read with the sizes of the model it trained (it
    kept N 888 for 816 trained beside corrected rows in runs.csv and the fit)."""
    import json

    from research.scaling import sweep_records
    config = scaling_laws.get_config("test_tiny")
    sized_before = sweep.plan_sweep(config)  # the old sizing: config.model's fields left out
    (tmp_path / "plan.json").write_text(json.dumps([sweep_records.planned_record(r) for r in sized_before.runs]))
    config.model.num_kv_heads = 1
    plan = sweep.plan_sweep(config)
    with pytest.raises(SweepError, match=r"holds a sweep planned when ladder-\S+ was sized at [\d,]+ parameters; it "
                                         r"trains [\d,]+ \(config.model fields such as num_kv_heads .*use a new "
                                         r"--workdir\.$"):
        sweep._check_same_plan(str(tmp_path), plan)
    run = plan.runs[0]
    stale = {**sweep_records.planned_record(run), "status": "ok", "loss": 2.5,
             **{k: sweep_records.planned_record(sized_before.runs[0])[k] for k in ("N", "N_total", "C_exact")}}
    assert stale["N_total"] != run.model.params_total
    (tmp_path / "runs" / run.run_id).mkdir(parents=True)
    (tmp_path / "runs" / run.run_id / "result.json").write_text(json.dumps(stale))
    record = sweep._all_records(plan.runs, str(tmp_path / "runs"))[0]
    assert (record["status"], record["loss"]) == ("ok", 2.5)
    assert (record["N"], record["N_total"], record["C_exact"]) == (run.N, run.model.params_total, run.compute_exact)


@pytest.mark.parametrize("preset", scaling_laws.PRESETS)
def test_every_preset_plans(preset):
    config = scaling_laws.get_config(preset)
    plan = sweep.plan_sweep(config)
    assert len({r.model.name for r in plan.runs}) >= (5 if preset != "test_tiny" else 3)
    if preset == "cpu_tiny":
        # >= 4 budgets over >= 1.5 decades, >= 6 sizes each, >= 2 layers, seed repeats at one budget.
        budgets = sorted(plan.spec.budgets)
        assert len(budgets) >= 4 and np.log10(budgets[-1] / budgets[0]) >= 1.5
        for budget in budgets:
            assert len({r.model.name for r in plan.runs if r.budget == budget}) >= 6, budget
        assert min(r.model.config.num_layers for r in plan.runs) >= 2
        repeats = [r for r in plan.runs if r.seed != 0]
        assert len(repeats) >= 6 and {r.budget for r in repeats} == {budgets[0]}
        assert {(r.model.name, r.num_steps) for r in repeats} <= {(r.model.name, r.num_steps) for r in plan.runs
                                                                   if r.seed == 0}
        # Learning rate per run by the 1/width rule and the run-length rule, recorded on each run.
        for r in plan.runs:
            rule = plan.spec.lr_reference_width / r.model.config.d_model * min(1.0, (500 / r.num_steps) ** 0.5)
            assert r.learning_rate_scale == pytest.approx(rule)
        rates = {r.run_id: config.opt.learning_rate * r.learning_rate_scale for r in plan.runs}
        assert rates["ladder-L2-D28-262steps"] == pytest.approx(2e-2 * 32 / 28)  # short: the width rule alone
        assert rates["ladder-L2-D20-16020steps"] == pytest.approx(2e-2 * 32 / 20 * (500 / 16020) ** 0.5)
        assert max(rates.values()) < 4e-2  # below the rate at which D12 stalled on the plateau
        assert {r.model.config.position for r in plan.runs} == {"rope"}
        assert sum(r.tokens for r in plan.runs) < 1.2e8
    text = sweep.describe_plan(plan, config.estimate.peak_flops, config.estimate.mfu)
    assert "an estimate from FLOPs" in text and "the MFU an assumption" in text and plan.runs[-1].run_id in text


@pytest.mark.parametrize("sweep_fields, message", [
    (dict(non_embedding_params=()), "ladder is empty"),
    (dict(non_embedding_params=(), presets=("gpt2-tinyy",)), "unknown model preset 'gpt2-tinyy'. Did you mean"),
    (dict(non_embedding_params=(), presets=("bert-test",)), "'bert-test' is a encoder model"),
    (dict(budgets=(1e6,)), "C=1e\\+06 FLOPs is too small for any model"),
    (dict(budgets=(2.5e9,)), "only 2 model\\(s\\), a parabola needs 3"),
    (dict(budgets=()), "sweep.budgets=\\(\\) must be positive"),
    (dict(plan="tokens", tokens_per_param=(1e-3,)), "every run would be shorter than min_steps"),
    (dict(plan="tokens", tokens_per_param=(5.0,), tokens=(1e6,)), "needs exactly one"),
    (dict(non_embedding_params=(1e4, 1.01e4)), "appear twice"),
    (dict(plan="chinchilla"), "sweep.plan='chinchilla'"),
    (dict(models_per_budget=2), "needs >= 3"),
    (dict(repeat_budget=5e10), "repeat_budget=5e\\+10 is not one of sweep.budgets"),
    (dict(min_layers=0), "sweep.min_layers=0 must be >= 1"),
    (dict(lr_scale_cap=-1.0), "lr_scale_cap=-1.0 >= 0"),
    (dict(lr_horizon_steps=-5), "sweep.lr_horizon_steps=-5 must be >= 0"),
    (dict(lr_horizon_exponent=1.5), "lr_horizon_exponent=1.5 in \\[0, 1\\]"),
    (dict(position="alibi"), "sweep.position='alibi'"),
    (dict(bogus=1), "unknown field\\(s\\) \\['bogus'\\]"),
    # --config.sweep.budgets=abc arrives as ('abc',); it once became a tuple of letters (TypeError)
    (dict(budgets=("abc",)), r"sweep.budgets=\('abc',\) must be a tuple of numbers, e.g. --config.sweep.budgets="),
    (dict(non_embedding_params=("abc",)), r"sweep.non_embedding_params=\('abc',\) must be a tuple of numbers"),
    (dict(plan="tokens", tokens_per_param=("abc",)), r"sweep.tokens_per_param=\('abc',\) must be a tuple"),
    (dict(aspect=0), r"sweep.aspect=0 \(d_model per layer of generated models\) must be a whole number >= 1"),
    (dict(aspect=-4), r"sweep.aspect=-4 "),  # it said "ladder sizes [...] appear twice"
    (dict(tokens_per_param_prior=0.0), r"sweep.tokens_per_param_prior=0.0 must be a positive number"),
    (dict(tokens_per_param_prior=-20.0), r"sweep.tokens_per_param_prior=-20.0 must be a positive number"),
    (dict(repeat_seeds=(0,)), r"sweep.repeat_seeds=\(0,\) repeats seed 0, which every run already trains with"),
    (dict(repeat_seeds=(1, 1)), r"sweep.repeat_seeds=\(1, 1\) repeats a seed; give distinct extra seeds"),
])
def test_bad_sweeps_fail_before_training_with_one_line(sweep_fields, message):
    config = scaling_laws.get_config("cpu_tiny")
    config.sweep.update({k: v for k, v in sweep_fields.items() if k in config.sweep})
    for key in set(sweep_fields) - set(config.sweep):
        config.sweep[key] = sweep_fields[key]
    _refused_in_one_line(config, message, SweepError if "preset" not in message else Exception)


def _refused_in_one_line(config, message: str, error_type: type = SweepError) -> None:
    """plan_sweep(config) raises error_type matching `message`, in one line."""
    with pytest.raises(error_type, match=message) as error:
        sweep.plan_sweep(config)
    assert "\n" not in str(error.value)


def test_one_isoflop_budget_is_refused_before_training_when_the_laws_are_fitted():
    """It trained every run; then the fit found one profile (Approaches 1 and 2 and the held-out
    prediction skipped) and still printed the N_opt exponent of Approach 3's undetermined law."""
    config = scaling_laws.get_config("cpu_tiny")
    config.sweep.budgets = config.sweep.budgets[:1]
    _refused_in_one_line(config, r"sweep.budgets=\(31600000000.0,\) holds one FLOP budget: the scaling-law fits "
                                 r"need IsoFLOP profiles at >= 2 budgets .* --config.fit.enabled=False")
    config.fit.enabled = False  # one profile, trained without fitting
    assert {r.budget for r in sweep.plan_sweep(config).runs} == {3.16e10}


@pytest.mark.parametrize("fit_fields, message", [
    (dict(bootstrap=-5), r"fit.bootstrap=-5 must be 0 \(no intervals\) or a whole number >= 100"),
    (dict(bootstrap=1), r"fit.bootstrap=1 must be 0 \(no intervals\) or a whole number >= 100"),
    (dict(seed=-1), r"fit.seed=-1 \(the bootstrap's seed\) must be a whole number >= 0"),  # it failed after training
    (dict(compute_budget=-1.0), r"fit.compute_budget=-1.0 must be a positive number of FLOPs"),
    (dict(init_grid="fine"), r"fit.init_grid='fine' is not one of \('paper', 'coarse'\)"),
])
def test_bad_fit_settings_fail_before_training_with_one_line(fit_fields, message):
    """The fit reads its section only once every run has trained: checked with the plan."""
    config = scaling_laws.get_config("cpu_tiny")
    config.fit.update(fit_fields)
    _refused_in_one_line(config, message)
    config.fit.enabled = False  # a sweep that does not fit does not need them
    sweep.plan_sweep(config)


@pytest.mark.parametrize("train_fields, message", [
    (dict(batch_size=0), r"train.batch_size=0 must be a whole number >= 1"),  # was a ZeroDivisionError
    (dict(batch_size=-8), r"train.batch_size=-8 must be a whole number >= 1"),  # said "steps of -256 tokens"
    (dict(seq_len=0), r"train.seq_len=0 must be a whole number >= 1"),  # said "ladder-1e+03: max_len=0"
])
def test_bad_train_sizes_name_the_train_field(train_fields, message):
    config = scaling_laws.get_config("test_tiny")
    config.train.update(train_fields)
    _refused_in_one_line(config, message)


# main checks --workdir before its --dry_run branch, one check for both: each kind of workdir
# (the file itself, a folder under it) is run once, one with --dry_run and one without.
@pytest.mark.parametrize("dry_run, under", [(True, ""), (False, "sweep")], ids=["file_dry_run", "under_file"])
def test_a_workdir_under_a_file_is_one_line_before_any_work(tmp_path, dry_run, under):
    (tmp_path / "file").write_text("kept")
    workdir = tmp_path / "file" / under if under else tmp_path / "file"
    result = subprocess.run([sys.executable, "-m", "experiments.scaling_laws", f"--workdir={workdir}",
                             "--config=experiments/configs/scaling_laws.py:test_tiny"] + ["--dry_run"] * dry_run,
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        f"error: --workdir={workdir} cannot be used: {tmp_path / 'file'} is a file, not a directory; choose "
        "another --workdir."], result.stderr
    assert (tmp_path / "file").read_text() == "kept"


def test_cli_dry_run_and_a_budget_too_small_for_any_model():
    command = [sys.executable, "-m", "experiments.scaling_laws",
               "--config=experiments/configs/scaling_laws.py:cpu_tiny", "--dry_run", "--config.sweep.budgets=(1e5,)"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: sweep.budgets: C=1e+05 FLOPs is too small for any model at min_steps=80 x 1024 tokens (the smallest "
        "model needs 8.65e+08); raise the budget or add smaller models."]
    result = subprocess.run(command[:-1], cwd=REPO, capture_output=True, text=True, timeout=120)
    estimate = scaling_laws.get_config("cpu_tiny").estimate
    assert result.returncode == 0 and "30 runs" in result.stdout
    assert f"h at {estimate.mfu:.0%} MFU of {estimate.peak_flops:.3g} FLOP/s" in result.stdout
    # An unknown preset's exact line: tests/test_cli.py::test_unknown_preset_is_one_line.


def test_a_sigterm_during_a_dry_run_says_it_wrote_nothing_exit_143():
    """It printed the training stop's line (continue from the last checkpoint(s)), though a dry
    run writes nothing. The SIGTERM is real, raised as the dry run plans the sweep."""
    from tests.signals import run_with_signal_during
    result = run_with_signal_during("experiments.scaling_laws.sweep", "plan_sweep", "SIGTERM", [
        "experiments.scaling_laws", "--config=experiments/configs/scaling_laws.py:test_tiny", "--dry_run"], timeout=120)
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "stopped by SIGTERM during the dry run (it writes nothing); rerun it to print the plan."]
    assert "runs" not in result.stdout


def test_learning_rate_scale_by_width_and_run_length():
    spec = SweepSpec(non_embedding_params=(1e4,), plan="tokens", tokens_per_param=(10.0,), lr_reference_width=32,
                     lr_scale_cap=2.0, lr_horizon_steps=500, lr_horizon_exponent=0.5)
    assert learning_rate_scale(spec, 16, 500) == 2.0  # 32 / 16 = 2, not longer than the horizon
    assert learning_rate_scale(spec, 8, 100) == 2.0  # 32 / 8 = 4, capped at 2
    assert learning_rate_scale(spec, 64, 2000) == pytest.approx(0.5 * 0.5)  # (500 / 2000) ** 0.5
    assert learning_rate_scale(spec, 32, 4500) == pytest.approx(1 / 3)
    off = dataclasses.replace(spec, lr_horizon_steps=0)
    assert learning_rate_scale(off, 64, 2000) == 0.5


def test_gpu_host_windows_straddle_each_budgets_optimum_without_repeating_data():
    """The ladder once ended at 2.56e8, so at 3.16e18 FLOPs (N_opt 1.6e8 at 20 tokens per
    parameter) the window held 5 sizes below the optimum and 1 above, and its smallest model
    read the 1M-document corpus 18 times."""
    import math
    config = scaling_laws.get_config("gpu_host")
    plan = sweep.plan_sweep(config)
    for budget in config.sweep.budgets:
        sizes = sorted({r.N for r in plan.runs if r.budget == budget})
        optimum = math.sqrt(budget / (6 * config.sweep.tokens_per_param_prior))
        assert len(sizes) == 6 and sum(n > optimum for n in sizes) >= 2 and sum(n < optimum for n in sizes) >= 2
    corpus_tokens = config.data.synthetic.num_documents * config.data.synthetic.doc_chars
    assert max(r.tokens for r in plan.runs) <= corpus_tokens


def test_the_config_docstring_states_the_presets_own_sizes():
    """It said tokens_tiny was 20.8M tokens "about as long as cpu_tiny" (it is 19.1M tokens and a
    seventh of the FLOPs) and cpu_tiny's rate "capped at 4e-2" (lr_scale_cap=0: no cap)."""
    doc = " ".join(scaling_laws.__doc__.split())
    totals = {}
    for preset in ("tokens_tiny", "cpu_tiny"):
        runs = sweep.plan_sweep(scaling_laws.get_config(preset)).runs
        totals[preset] = (sum(r.tokens for r in runs), sum(r.compute_exact for r in runs))
    flops = lambda value: f"{value:.3g}".replace("e+", "e")  # 1.51e12, as the docstring writes it
    assert f"{totals['tokens_tiny'][0] / 1e6:.1f}M tokens, {flops(totals['tokens_tiny'][1])} FLOPs" in doc
    assert f"cpu_tiny's {flops(totals['cpu_tiny'][1])}" in doc
    assert totals["tokens_tiny"][1] / totals["cpu_tiny"][1] == pytest.approx(1 / 7, rel=0.1)  # "about a seventh"
    assert scaling_laws.get_config("cpu_tiny").sweep.lr_scale_cap == 0.0 and "capped at" not in doc
    assert "no cap, lr_scale_cap=0" in doc and "(500 / steps) ** 0.5" in doc


def test_a_tokens_plan_repeats_its_smallest_token_budget_with_repeat_seeds():
    """plan='tokens' ignored sweep.repeat_seeds (only runs with a FLOP budget were repeated):
    tokens_tiny with repeat_seeds=(1, 2) planned its 15 runs and no -seed run. Now every model's
    run at the smallest ratio (token count), or at the one repeat_budget names, is repeated."""
    config = scaling_laws.get_config("tokens_tiny")
    config.sweep.repeat_seeds = (1, 2)
    runs = sweep.plan_sweep(config).runs
    firsts = [r.run_id for r in runs if r.tokens_per_param_target == 40.0 and not r.seed]
    assert len(runs) == 25 and len(firsts) == 5
    assert [r.run_id for r in runs if r.seed] == [f"{run_id}-seed{s}" for run_id in firsts for s in (1, 2)]
    spec = SweepSpec(non_embedding_params=(5e3, 2e4), plan="tokens", tokens=(1e5, 4e5), min_steps=5,
                     repeat_budget=4e5, repeat_seeds=(1,))
    runs = plan_runs(spec, ladder_models(spec, vocab_size=23, seq_len=64), batch_size=16, seq_len=64)
    assert [(r.tokens, r.seed) for r in runs if r.seed] == [(round(4e5 / 1024) * 1024, 1)] * 2
    # cpu_tiny switched to tokens: its own repeat_seeds=(1,) repeat the smallest ratio, its
    # FLOP budgets are the IsoFLOP plan's (unused); a FLOP budget as repeat_budget is refused.
    config = scaling_laws.get_config("cpu_tiny")
    config.sweep.update(dict(plan="tokens", tokens_per_param=(40.0, 120.0)))
    assert {(r.tokens_per_param_target, r.seed) for r in sweep.plan_sweep(config).runs if r.seed} == {(40.0, 1)}
    config.sweep.repeat_budget = 3.16e10
    _refused_in_one_line(config, r"sweep.repeat_budget=3.16e\+10 is not one of sweep.tokens_per_param=\(40.0, 120.0\) "
                                 r"\(plan='tokens'\); repeat runs of an existing budget, e.g. repeat_budget=40.")
