"""Designs the laws cannot be fitted to are refused in one line (Approach 3's collinear or
too-small designs, a sweep of one tokens-per-parameter ratio); a run's unreadable result.json,
an lr_check whose multipliers all diverged, and a corpus whose H_1 sits at its reachable loss
(the early-plateau rule) no longer end in a traceback or in every run left out."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import scaling_laws
from experiments.scaling_laws import run_dirs, sweep
from research.scaling import COARSE_GRID, ChinchillaLaw, RunTable, RunTableError, fit_chinchilla_law
from research.scaling.sweep_plan import SweepError
from tests.scaling.test_sweep_run import law_trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAW = ChinchillaLaw(E=1.8, A=400.0, B=2000.0, alpha=0.34, beta=0.37)
COLLINEAR = "N and D move together"


def _fit(N, D, seed=0):
    N, D = np.asarray(N, float), np.asarray(D, float)
    return fit_chinchilla_law(RunTable.from_arrays(N, D, LAW.sample(N, D, rel_noise=0.005, seed=seed)),
                              grid=COARSE_GRID)


@pytest.mark.parametrize("name", ["one ratio", "one budget", "one budget, 6 significant digits",
                                  "one budget, whole steps"])
def test_approach3_refuses_runs_whose_log_N_and_log_D_lie_on_one_line(name):
    """Rank of [1, log N, log D] 2: E, alpha, beta came back arbitrary (a 0.14 .. 0.63 across
    noise seeds for a true 0.52), with an allocation and no warning."""
    N = np.geomspace(1e6, 1e9, 12)
    D = {"one ratio": 20 * N, "one budget": 1e19 / (6 * N),
         "one budget, 6 significant digits": np.array([float(f"{d:.6g}") for d in 1e19 / (6 * N)])}.get(name)
    if name == "one budget, whole steps":  # cpu_tiny's smallest profile: D in whole steps of 1,024 tokens
        N = np.geomspace(2e3, 6e4, 6)
        D = np.round(3.16e10 / (6 * N) / 1024) * 1024
    with pytest.raises(RunTableError, match=COLLINEAR) as error:
        _fit(N, D)
    assert "\n" not in str(error.value) and "add runs at other budgets or tokens-per-parameter ratios" in str(error.value)


def test_approach3_needs_more_distinct_points_than_its_five_parameters():
    N, D = [1e6, 1e7, 1e8, 1e6, 1e8], [1e9, 1e8, 1e10, 1e10, 1e8]  # 3 sizes, 3 token counts, not on a line
    with pytest.raises(RunTableError, match=r"more distinct \(N, D\) points than its 5 parameters .* the table has 5"):
        _fit(N, D)
    with pytest.raises(RunTableError, match="the table has 5: add runs"):  # a repeated point is still one point
        _fit(N + [1e6], D + [1e9])
    assert _fit(N + [1e7], D + [1e10]).objective >= 0.0  # 6 points: fitted


def test_the_fit_command_on_one_budget_is_one_line_exit_1(tmp_path):
    """It exited 0 printing E=3.22, a=0.612 for a single IsoFLOP profile."""
    N = np.geomspace(1e6, 1e8, 6)
    D = 1e17 / (6 * N)
    path = tmp_path / "onebudget.csv"
    path.write_text("N,D,loss,C\n" + "".join(f"{n},{d},{loss},1e17\n" for n, d, loss in
                                               zip(N, D, LAW.sample(N, D, rel_noise=0.005, seed=0))))
    result = subprocess.run([sys.executable, "-m", "experiments.scaling_laws.fit", f"--runs_csv={path}",
                             f"--output_dir={tmp_path / 'out'}", "--bootstrap=0", "--init_grid=coarse"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: Approach 3 cannot separate") and COLLINEAR in line


def test_a_sweep_of_one_tokens_per_parameter_ratio_is_refused_before_training():
    config = scaling_laws.get_config("test_tiny")  # plan="tokens", tokens_per_param=(1.0,): a smoke test, not fitted
    config.fit.enabled = True
    for ratios in ((1.0,), (8.0,)):
        config.sweep.tokens_per_param = ratios
        with pytest.raises(SweepError, match=rf"sweep.tokens_per_param=\({ratios[0]},\) gives one tokens-per-parameter "
                                             r"ratio .* --config.fit.enabled=False\.$") as error:
            sweep.plan_sweep(config)
        assert "\n" not in str(error.value)
    config.sweep.update(dict(tokens_per_param=(), tokens=(4096.0,)))  # one token count: D the same for every run
    with pytest.raises(SweepError, match=r"^the planned runs: Approach 3 needs runs at >= 3 distinct .* and 1: add runs"):
        sweep.plan_sweep(config)
    config.sweep.update(dict(tokens_per_param=(1.0, 2.0), tokens=()))
    runs = sweep.plan_sweep(config).runs  # two ratios: 10 runs Approach 3 can fit
    assert len(runs) == 10
    config.sweep.tokens_per_param = (1.0,)
    config.fit.enabled = False  # trained without fitting
    assert len(sweep.plan_sweep(config).runs) == 5


@pytest.mark.parametrize("preset", ["cpu_tiny", "tokens_tiny", "stdlib_tiny", "gpu_host"])
def test_the_presets_designs_pass_the_checks(preset):
    plan = sweep.plan_sweep(scaling_laws.get_config(preset))
    from research.scaling.chinchilla_fit import design_problem
    assert design_problem(np.array([r.N for r in plan.runs], float), np.array([r.tokens for r in plan.runs], float)) is None


def test_a_truncated_result_json_counts_as_not_finished_and_the_run_trains_again(tmp_path, capfd):
    """A cut-short result.json was a JSONDecodeError traceback through the sweep command, on
    every rerun."""
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = False
    sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    run_dir = tmp_path / "runs" / sweep.plan_sweep(config).runs[2].run_id
    path = run_dir / run_dirs.RESULT_FILE
    whole = json.loads(path.read_text())
    path.write_text(path.read_text()[:40])
    capfd.readouterr()
    again = sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer({}), out=io.StringIO())
    assert again.counts == {"trained": 1, "skipped": 4, "failed": 0, "pending": 0}
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {path} is unreadable (JSONDecodeError); the run counts as not finished and resumes "
                        "from its checkpoints (or trains again), which rewrites it."]  # once, not per read
    rewritten = json.loads(path.read_text())
    assert rewritten["status"] == "ok" and rewritten["loss"] == whole["loss"]
    path.write_text("[1, 2]")  # JSON, but no run record
    assert run_dirs.read_result(str(run_dir)) is None


def test_lr_check_with_every_multiplier_diverged_names_none_and_writes_null(tmp_path, monkeypatch, capsys):
    """best_multiplier None met ':g' (TypeError), and lr_check.json was never written."""
    from experiments.scaling_laws import lr_check
    from research.training import loop

    monkeypatch.setattr(loop, "train_together", lambda configs, workdirs: [{"eval_loss": float("nan")} for _ in configs])
    rows = lr_check.check(scaling_laws.get_config("test_tiny"), str(tmp_path), [1e3], 5, [1.0, 2.0])
    assert rows[0]["best_multiplier"] is None
    assert capsys.readouterr().out.rstrip().endswith("-> best: none (all diverged)")
    saved = json.loads((tmp_path / "lr_check.json").read_text())  # strict JSON: no NaN
    assert saved[0]["eval_loss"] == [None, None] and saved[0]["best_multiplier"] is None
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def _synthetic_config(**fields):
    config = scaling_laws.get_config("test_tiny")
    config.data.synthetic.update(fields)
    return config


@pytest.mark.parametrize("fields", [dict(order=1), dict(alphabet="abcdefgh", order=3, concentration=0.1,
                                                         zipf_exponent=1.0, hierarchical=True)])
def test_the_plateau_rule_is_not_applied_where_H1_is_at_the_reachable_loss(fields, tmp_path):
    """An order-1 corpus (H_1 1.1775, reachable 1.1874) or a hierarchical order-3 one whose H_1
    (0.188) is near its entropy rate (reachable 0.175): the source's own predictor was flagged
    'plateau', every run left out and the fit skipped with advice that could not help."""
    from experiments.scaling_laws.sweep_fit import _plateau_level
    from research.scaling.plateau import mark_plateau_runs

    config = _synthetic_config(**fields)
    order1, reason = _plateau_level(config, None, str(tmp_path))
    assert order1 is None and "within 0.05 nats of the lowest reachable loss" in reason, reason
    assert "\n" not in reason
    assert mark_plateau_runs([{"status": "ok", "loss": 0.17}], order1)[0]["status"] == "ok"


@pytest.mark.parametrize("preset, fields, h1", [("cpu_tiny", {}, 1.9588), ("test_tiny", {}, 1.8469)])
def test_the_plateau_rule_still_applies_where_the_bound_is_well_below_H1(preset, fields, h1, tmp_path):
    """cpu_tiny: H_1 1.9588 against a reachable 1.5249 nats per target."""
    from experiments.scaling_laws.sweep_fit import _plateau_level
    from research.scaling.plateau import rule_problem

    order1, reason = _plateau_level(scaling_laws.get_config(preset), None, str(tmp_path))
    assert reason is None and order1 == pytest.approx(h1, abs=1e-4)
    assert rule_problem(1.96, None) is None and rule_problem(1.96, 1.91) is None and rule_problem(1.96, 1.92)


def test_a_sweep_left_with_five_usable_points_is_skipped_not_interpolated(tmp_path):
    """With 5 design points Approach 3's 5 parameters interpolate them: the fit is skipped."""
    config = scaling_laws.get_config("test_tiny")
    config.fit.enabled = True  # (test_tiny alone is a smoke test, not fitted)
    config.sweep.update(dict(plan="isoflop", budgets=(2e8, 6e8, 2e9), models_per_budget=3, tokens_per_param=()))
    config.fit.plateau_rule = False  # losses from the law, not the corpus
    runs = sweep.plan_sweep(config).runs
    fail = {run.run_id: "nan" for run in runs[:4]}
    outcome = sweep.run_sweep(config, str(tmp_path), train_fn=law_trainer(fail), out=io.StringIO())
    assert outcome.fit is None and outcome.fit_note.startswith(
        "fit skipped: 5 of 9 ended run(s) usable (4 failed, 0 finished on the early plateau); the fit needs >= 6: ")
