"""python -m experiments.scaling_laws.fit (research.scaling.report): fit.json, plots, bad input.

In-process tests call the report function; the CLI itself runs in a subprocess, since its
absl flags must not meet other experiments' flags in a shared test process.
"""
import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from research.scaling import RunTable, RunTableError, isoflop_runs
from research.scaling.chinchilla_fit import COARSE_GRID, fit_chinchilla_law
from research.scaling.report import fit_run_table

from tests.scaling.synthetic import TRUE_LAW, chinchilla_like_runs


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    table = chinchilla_like_runs()
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["N", "D", "loss", "status"])
        writer.writerows([n, d, loss, "ok"] for n, d, loss in zip(table.N, table.D, table.loss))
        writer.writerow([1e9, 1e10, "nan", "ok"])
        writer.writerow([1e9, 1e10, 2.0, "preempted"])
    return str(path)


def test_writes_fit_json_and_plots(runs_csv, tmp_path):
    out = tmp_path / "fit"
    report = fit_run_table(runs_csv, str(out), compute_budget=5.76e23, predict=(7e10, 1.4e12),
                           bootstrap_samples=4, init_grid="coarse")
    saved = json.loads((out / "fit.json").read_text())
    assert saved["num_runs"] == 240 and len(saved["excluded"]) == 2
    fit3 = saved["approach3"]
    assert {"E", "A", "B", "alpha", "beta", "a", "b", "G", "intervals"} <= set(fit3)
    assert fit3["E"] == pytest.approx(TRUE_LAW.E, rel=0.01)
    assert fit3["a"] == pytest.approx(fit3["beta"] / (fit3["alpha"] + fit3["beta"]))
    assert saved["approach2"]["a"] == pytest.approx(TRUE_LAW.a, abs=0.03)
    assert "a" in saved["approach1"]  # the frontier of final losses
    assert {"N", "D", "C"} == set(saved["kaplan"])
    plan = saved["prediction"]["approach3"]
    assert 6 * plan["N_opt"] * plan["D_opt"] == pytest.approx(5.76e23)
    assert plan["tokens_per_parameter"] == pytest.approx(plan["D_opt"] / plan["N_opt"])
    assert {"approach1", "approach2", "loss_at"} <= set(saved["prediction"])
    assert saved["prediction"]["loss_at"]["loss"] == pytest.approx(TRUE_LAW.loss(7e10, 1.4e12), rel=0.01)
    assert sorted(report["plots"]) == ["isoflop.png", "law_contours.png", "loss_vs_compute.png"]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_fail_before_fitting(runs_csv, tmp_path):
    with pytest.raises(RunTableError, match="--compute_budget=-1 must be a positive"):
        fit_run_table(runs_csv, str(tmp_path), compute_budget=-1.0)
    few = tmp_path / "few.csv"
    few.write_text("N,D,loss\n1e8,1e9,3\n2e8,1e9,2.9\n")
    with pytest.raises(RunTableError, match="at least 5 finished runs, the table has 2"):
        fit_run_table(str(few), str(tmp_path / "out"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.scaling_laws.fit", *args], capture_output=True,
                          text=True, timeout=120)


def test_command_line_errors_are_one_line(tmp_path):
    """main's own check (--predict_N without --predict_D) in a command; a bad table's message
    in-process. main prints every RunTableError of fit_run_table (this one too) as "error: <message>"
    alone on stderr with exit code 1: the --seed=-1 command of test_a_negative_seed_is_refused_before_fitting
    checks that path, one process for all such messages."""
    bad = tmp_path / "bad.csv"
    bad.write_text("params,D,loss\n1e8,1e9,3\n")
    out = f"--output_dir={tmp_path / 'out'}"
    message = f"{bad}: missing column(s) N (found params, D, loss); a run table needs columns N, D, loss."
    with pytest.raises(RunTableError, match=f"^{re.escape(message)}$"):
        fit_run_table(str(bad), str(tmp_path / "out"))
    result = run_cli(f"--runs_csv={bad}", out, "--predict_N=1e9")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: pass --predict_N and --predict_D together")
    assert not (tmp_path / "out").exists()


def test_an_output_dir_under_a_file_is_one_line_before_fitting(runs_csv, tmp_path):
    """It was a NotADirectoryError traceback from os.makedirs. The whole message in-process: the
    command prints a RunTableError as that one line (the --seed=-1 command of
    test_a_negative_seed_is_refused_before_fitting checks, stderr whole), a process not started here."""
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "fit"
    message = (f"--output_dir={out} cannot be used: {tmp_path / 'afile'} is a file, not a directory; choose another "
               "--output_dir.")
    with pytest.raises(RunTableError, match=f"^{re.escape(message)}$"):
        fit_run_table(runs_csv, str(out))


def test_too_few_bootstrap_resamples_are_refused_before_fitting(tmp_path):
    """--bootstrap=5 gave 10th-90th percentile "intervals" that move with the resampling; 0 (none)
    and 100 or more pass the check and reach the table (here, one the fit refuses). One command
    shows main checks the count before the table; the other counts go through main's check,
    experiments.scaling_laws.fit.bootstrap_error, in-process (the CLI passing 0 and 100 on to the
    fit: test_the_cli_prints_each_budget_approach_2_left_out, test_a_negative_seed_is_refused_before_fitting)."""
    from experiments.scaling_laws.fit import bootstrap_error
    bad = tmp_path / "bad.csv"
    bad.write_text("params,D,loss\n1e8,1e9,3\n")
    message = ("--bootstrap={} must be 0 (no intervals) or at least 100 resamples (fewer give percentile "
               "intervals that move with the resampling); pass --bootstrap=4000, or --bootstrap=0 for none.")
    result = run_cli(f"--runs_csv={bad}", f"--output_dir={tmp_path / 'out'}", "--bootstrap=5")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == "error: " + message.format(5)
    for count in (99, -1):
        assert bootstrap_error(count) == message.format(count)
    for count in (0, 100):
        assert bootstrap_error(count) is None
        with pytest.raises(RunTableError, match=r"missing column\(s\) N"):
            fit_run_table(str(bad), str(tmp_path / "out"), bootstrap_samples=count)
    assert not (tmp_path / "out").exists()


def test_seeds_of_one_point_are_fitted_as_that_point(tmp_path):
    """A budget repeated with a second seed enters every fit once, at the geometric mean of its
    seeds: the fit equals that of the table holding the means, and differs from the one that
    counts the seeds as two runs each (which weighs the repeated budget twice)."""
    C, N, D = isoflop_runs(np.geomspace(6e18, 3e21, 5), 6, 4e7, 1.6e10)
    loss = TRUE_LAW.sample(N, D, rel_noise=0.01, seed=3)
    repeated = C == C.min()
    shift = np.exp(np.random.default_rng(4).normal(0.0, 0.01, repeated.sum()))
    seed0, seed1 = loss[repeated] * shift, loss[repeated] / shift * 1.01  # their geometric mean: loss * 1.005

    def write(name, rows):
        path = tmp_path / name
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["N", "D", "loss", "C", "seed"])
            writer.writerows(rows)
        return str(path)

    points = list(zip(N, D, np.where(repeated, loss * np.sqrt(1.01), loss), C, [0] * len(N)))
    seeds = [(*r, 0) for r, rep in zip(zip(N, D, loss, C), repeated) if not rep]
    seeds += [(*r, 0) for r in zip(N[repeated], D[repeated], seed0, C[repeated])]
    seeds += [(*r, 1) for r in zip(N[repeated], D[repeated], seed1, C[repeated])]
    fits = {name: fit_run_table(write(f"{name}.csv", rows), str(tmp_path / name), bootstrap_samples=0,
                                init_grid="coarse")
            for name, rows in (("points", points), ("seeds", seeds))}
    assert fits["seeds"]["num_runs"] == len(N) + repeated.sum() and fits["seeds"]["design_points"] == len(N)
    for key in ("E", "alpha", "beta", "a"):  # equal to the solver's tolerance (the rows come in another order)
        assert fits["seeds"]["approach3"][key] == pytest.approx(fits["points"]["approach3"][key], rel=1e-6)
    assert fits["seeds"]["approach2"]["a"] == pytest.approx(fits["points"]["approach2"]["a"], rel=1e-6)
    # Counted as two runs each, the repeated budget pulls the fit elsewhere.
    first_seed = loss.copy()
    first_seed[repeated] = seed0
    doubled = RunTable(np.concatenate([N, N[repeated]]), np.concatenate([D, D[repeated]]),
                       np.concatenate([first_seed, seed1]))
    assert abs(fit_chinchilla_law(doubled, grid=COARSE_GRID).law.E - fits["points"]["approach3"]["E"]) > 1e-4


def test_a_fitted_law_without_an_optimum_is_reported_not_a_crash(runs_csv, tmp_path, monkeypatch):
    """A fit of too few runs can come out with an exponent <= 0 (a sweep's test preset gave
    beta = -0.733): the compute-optimal allocation is then skipped with the reason, instead
    of complex numbers and a traceback after every run had trained."""
    import dataclasses
    from research.scaling import report as report_lib
    from research.scaling.laws import NoOptimumError
    real = report_lib.fit_chinchilla_law

    def rising_with_D(*args, **kwargs):
        fit = real(*args, **kwargs)
        flip = lambda law: dataclasses.replace(law, beta=-abs(law.beta))
        return dataclasses.replace(fit, law=flip(fit.law), bootstrap_laws=[flip(fit.bootstrap_laws[0]),
                                                                            *fit.bootstrap_laws[1:]])

    monkeypatch.setattr(report_lib, "fit_chinchilla_law", rising_with_D)
    report = fit_run_table(runs_csv, str(tmp_path / "nominal"), compute_budget=5.76e23, bootstrap_samples=4,
                           init_grid="coarse")
    skipped = report["prediction"]["approach3"]["skipped"]
    assert "no compute-optimal allocation" in skipped and "beta=-" in skipped
    saved = json.loads((tmp_path / "nominal" / "fit.json").read_text())
    assert saved["approach3"]["G"] is None and saved["approach3"]["beta"] < 0
    assert (tmp_path / "nominal" / "law_contours.png").exists()
    from research.scaling.laws import ChinchillaLaw
    law = ChinchillaLaw(**{k: saved["approach3"][k] for k in ("E", "A", "B", "alpha", "beta")})
    with pytest.raises(NoOptimumError, match="does not fall with both N and D"):
        law.compute_optimal(1e20)
    # Nor are N_opt's exponents: beta / (alpha + beta) of such a law is the exponent of nothing.
    assert saved["approach3"]["a"] is None and saved["approach3"]["b"] is None
    assert saved["approach3"]["optimum_skipped"] == skipped and "a" not in saved["approach3"]["intervals"]


def test_no_exponents_of_a_law_without_an_optimum_under_exact_accounting_either(runs_csv, tmp_path, monkeypatch):
    """report.py's optimum_exact_flops (a along C = f(N) D) and the sweep's n_opt_exponents read the
    law's a without asking optimum_problem(): a sweep printed 'approach3=-35.2' for beta = -0.733."""
    import dataclasses
    from experiments.scaling_laws.sweep_fit import _exponents
    from experiments.scaling_laws.sweep_summary import summary
    from research.scaling import report as report_lib
    real = report_lib.fit_chinchilla_law
    monkeypatch.setattr(report_lib, "fit_chinchilla_law", lambda *a, **k: dataclasses.replace(
        real(*a, **k), law=dataclasses.replace(real(*a, **k).law, beta=-0.733)))
    with open(runs_csv) as f:
        rows = list(csv.DictReader(f))
    exact_csv = tmp_path / "exact.csv"
    with open(exact_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["N", "N_total", "D", "C_exact", "loss", "status"])
        writer.writerows([r["N"], 1.2 * float(r["N"]), r["D"], 7.0 * float(r["N"]) * float(r["D"]), r["loss"],
                          r["status"]] for r in rows)
    report = fit_run_table(str(exact_csv), str(tmp_path / "exact"), accounting="exact", bootstrap_samples=0,
                           init_grid="coarse")
    fit3 = report["approach3"]
    assert fit3["a"] is None and "optimum_exact_flops" not in fit3 and "beta=-0.733" in fit3["optimum_skipped"]
    exponents = _exponents(report, {}, None)
    assert exponents["approach3"] is None and exponents["approach3_skipped"] == fit3["optimum_skipped"]
    sweep_report = {**report, "exact": report, "sweep": {
        "runs": {"failed": [], "plateau": []}, "param_count": "non_embedding", "n_opt_exponents": {"exact": exponents},
        "held_out": {}, "leave_out": {}, "compute_optimal": [], "irreducible": None, "seed_noise": None,
        "loss_by_budget": []}}
    text = summary(sweep_report)
    assert "approach 3 (exact)" in text and "no N_opt exponent: the fitted law" in text


def test_the_cli_prints_each_budget_approach_2_left_out(tmp_path):
    """An IsoFLOP vertex outside its budget's sizes is left out of N_opt(C), and the command says
    so with the reason (it had entered the fit with no word at the fit level: a = 0.512 for 0.556)."""
    from tests.scaling.test_isoflop_envelope import extrapolated_budget_table

    law, table = extrapolated_budget_table()
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["N", "D", "loss", "C"])
        writer.writerows(zip(table.N, table.D, table.loss, table.budget))
    result = run_cli(f"--runs_csv={path}", f"--output_dir={tmp_path / 'out'}", "--bootstrap=0", "--init_grid=coarse")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    left_out = [line for line in lines if line.startswith("approach2: left out ")]
    assert len(left_out) == 1 and left_out[0].startswith("approach2: left out C=1e+12: vertex N_opt=")
    assert "(extrapolated)" in left_out[0]
    a = float(next(line for line in lines if line.startswith("approach2: N_opt")).split("C^")[1].split(",")[0])
    assert a == pytest.approx(law.a, abs=0.005)
    saved = json.loads((tmp_path / "out" / "fit.json").read_text())
    assert [p["in_fit"] for p in saved["approach2"]["profiles"]] == [True, True, True, False]


def test_the_sweep_summary_names_budgets_approach_2_left_out():
    from experiments.scaling_laws.sweep_summary import summary
    from research.scaling import fit_isoflop
    from tests.scaling.test_isoflop_envelope import extrapolated_budget_table

    law, table = extrapolated_budget_table()
    approach2 = fit_isoflop(table).as_dict()
    approach3 = {**law.as_dict(), "intervals": {}}
    report = {"num_runs": len(table), "approach3": approach3, "approach2": approach2,
              "exact": {"approach3": approach3, "approach2": {"skipped": "Approach 2 needs IsoFLOP profiles"}},
              "sweep": {"runs": {"failed": [], "plateau": []}, "param_count": "non_embedding", "n_opt_exponents": {},
                        "held_out": {}, "leave_out": {}, "compute_optimal": [], "irreducible": None,
                        "seed_noise": None, "loss_by_budget": []}}
    lines = summary(report).splitlines()
    assert sum("(extrapolated: left out of N_opt(C))" in line for line in lines) == 1
    assert [line for line in lines if line.startswith("approach 2 (")] == [
        f"approach 2 (nominal) left out {approach2['skipped'][0]}",
        "approach 2 (exact): skipped: Approach 2 needs IsoFLOP profiles"]


def test_a_report_another_writes_leaves_no_fit_json_and_a_refit_without_profiles_drops_its_plot(runs_csv, tmp_path):
    """Two regressions on one earlier fit (one fit of the table fewer):
    - The sweep adds its sections and writes fit.json once, atomically; the intermediate report
      used to be written to the same path first, so a kill in between left half a fit.json.
    - isoflop.png from an earlier fit stayed beside a fit that had no profiles (Approach 2
      skipped): a plot the fit.json beside it did not describe. (Which plots a refit removes does
      not depend on an earlier fit.json: report.py looks for the file itself.)"""
    out = tmp_path / "fit"
    earlier = fit_run_table(runs_csv, str(out), bootstrap_samples=0, init_grid="coarse", write_json=False)
    assert not (out / "fit.json").exists() and (out / "law_contours.png").exists() and earlier["approach3"]
    assert "isoflop.png" in earlier["plots"] and (out / "isoflop.png").exists()
    rows = list(csv.reader(open(runs_csv)))
    # Two runs per budget, other sizes at each: no budget holds the 3 runs of a parabola. (One run per
    # N kept each N's last row, all of the largest budget: one profile, which Approach 3 refuses.)
    by_budget: dict = {}
    for row in rows[1:]:
        if row[3] == "ok":
            by_budget.setdefault(round(6 * float(row[0]) * float(row[1]), -15), []).append(row)
    one_budget = tmp_path / "no_profiles.csv"
    with open(one_budget, "w", newline="") as f:
        csv.writer(f).writerows([rows[0]] + [r for i, rs in enumerate(by_budget.values()) for r in rs[2 * i:2 * i + 2]])
    report = fit_run_table(str(one_budget), str(out), bootstrap_samples=0, init_grid="coarse")
    assert isinstance(report["approach2"], str) or "skipped" in str(report["approach2"])
    assert "isoflop.png" not in report["plots"] and not (out / "isoflop.png").exists()


def test_a_negative_seed_is_refused_before_fitting(runs_csv, tmp_path):
    """--seed=-1 ran the whole grid fit, then np.random.default_rng(-1) raised a traceback and no
    fit.json was written; the sweep refuses such a fit.seed before training."""
    out = tmp_path / "out"
    message = "--seed=-1 (the bootstrap's seed) must be a whole number >= 0, e.g. --seed=0."
    with pytest.raises(RunTableError, match=f"^{re.escape(message)}$"):
        fit_run_table(runs_csv, str(out), bootstrap_samples=100, init_grid="coarse", seed=-1)
    result = run_cli(f"--runs_csv={runs_csv}", f"--output_dir={out}", "--bootstrap=100", "--init_grid=coarse",
                     "--seed=-1")
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()


def test_a_loss_at_prediction_states_its_compute_in_the_fits_accounting(tmp_path):
    """fit_run_table(predict=(N, D)) reports C beside the predicted loss: under exact accounting the
    fitted f(N) D (6 N D under nominal), where N is N_total and every other C of the report is
    f(N) D. It was 6 N D there too: up to 1.53x off on cpu_tiny's ladder, 0.8% here."""
    from research.scaling.laws import ChinchillaLaw, PowerLaw
    law = ChinchillaLaw(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)
    rows = []
    for budget in (1e15, 1e16, 1e17):
        for n in np.geomspace(1e6, 1e8, 6):
            d = budget / (6 * n)
            rows.append(dict(N=n, N_total=n + 3e6, D=d, loss=float(law.loss(n, d)), C=budget,
                             C_exact=(6 * (n + 3e6) + 2e6) * d))
    path = tmp_path / "runs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    predict = (5e7, 1e10)
    report = fit_run_table(str(path), str(tmp_path / "exact"), accounting="exact", predict=predict,
                           bootstrap_samples=0, init_grid="coarse")
    compute = report["prediction"]["loss_at"]["compute"]
    per_token = PowerLaw(**report["approach3"]["optimum_exact_flops"]["flops_per_token"])
    assert compute == pytest.approx(per_token(predict[0]) * predict[1], rel=1e-9)
    assert compute > 1.005 * 6 * predict[0] * predict[1]
