"""Fit a finished sweep: research.scaling.report on runs.csv, plus what only a sweep knows.

Before fitting, runs still on the early plateau (research/scaling/plateau.py) get status
"plateau" in runs.csv and are left out of every fit. fit.json then holds the report of
research.scaling.report under nominal accounting (N non-embedding, C = 6 N D) and, under
"exact", the same fits with total N and sizing's exact FLOPs (plots in workdir/exact/),
and a "sweep" section:
  runs               finished / failed / plateau counts and each left-out run's reason, and
                     the plateau rule's H_1, or why the rule was not applied (printed too)
  approach1_final    Approach 1 over each model's final losses (one point per (N, D), each the
                     end of a schedule that spans exactly that run's D; never a loss read
                     from the middle of an unannealed cosine), both accountings
  n_opt_exponents    a of N_opt ∝ C^a from Approaches 1, 2 and 3 side by side, both
                     accountings, the largest pairwise gap, and each approach's 80% interval
                     (1 and 2: refits under the measured seed noise; 3: its bootstrap) with
                     whether the three share a value, and simulated_at_design: Approaches 1
                     and 2 on copies of this design drawn from Approach 3's law with the seed
                     noise, their bias and spread (research/scaling/noise_intervals.py)
  held_out           Approach 3 fitted without the largest budget, predicting its best loss
                     (research/scaling/held_out.py), both accountings
  leave_out          Approach 3 refitted without the smallest / largest size and budget in
                     turn: E, alpha, beta and a of each (research/scaling/leave_out.py), nominal
  seed_noise         runs repeated with another seed: the spread of their log losses
  compute_optimal    Approach 3's N_opt, D_opt and tokens per parameter at each sweep budget
                     and at fit.compute_budget
  loss_by_budget     each budget's (N, loss) in order of N and its best loss (IsoFLOP sweeps)
  loss_by_model      each model's (D, loss) in order of D
  learning_rates     each run's learning rate (the sweep's width and run-length rules)
  irreducible        on the synthetic corpus: the source's entropy rate and the bound
                     reachable with the sweep's windows (research/scaling/synthetic_bound.py)
                     beside the fitted E and its interval, all in nats per character
The fit is redone only when its inputs (runs.csv, the fit settings, FIT_METHOD_VERSION) changed.
Every fit sees one point per (N, D): runs repeated with another seed enter at their geometric
mean loss (RunTable.merge_replicates); seed_noise is measured on them before they are merged.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Sequence

import ml_collections
import numpy as np

from experiments.scaling_laws.sweep_summary import summary
from research.atomic_files import write_text_atomically
from research.scaling import RunTable, RunTableError, fit_envelope
from research.scaling.chinchilla_fit import MIN_DESIGN_POINTS
from research.scaling.held_out import predict_held_out_budget
from research.scaling.isoflop import fit_isoflop
from research.scaling.laws import ChinchillaLaw, PowerLaw
from research.scaling.leave_out import leave_out_fits
from research.scaling.noise_intervals import common_point, gap_quantile, noise_interval, simulate_estimator_bias
from research.scaling.plateau import PLATEAU_STATUS, mark_plateau_runs, rule_problem
from research.scaling.report import fit_run_table
from research.scaling.run_table import read_runs_csv
from research.scaling.sweep_records import json_safe, write_tables

MIN_RUNS = MIN_DESIGN_POINTS  # more than Approach 3's five parameters (chinchilla_fit says why)
SIMULATED_DATASETS = 60  # simulated copies of the design per accounting (_simulated_at_design)
ORDER1_TOKENS = 2_000_000  # per split, for the bigram level on real text
ACCOUNTING_COLUMNS = {"nominal": ("N", "C_6ND"), "exact": ("N_total", "C_exact")}
# Part of the fit's input digest: bumped whenever the same runs would give another fit.json,
# so a rerun never keeps a fit the present code would not write. 2: seeds merged (2026-12-03);
# 3: no exponents for a law without an optimum; 4: Approach 1 keeps bracketed optima only and reads
# N_opt between rungs by default, its frontier (and Kaplan's L(C)) counts each budget once (envelope.py);
# Approach 2 leaves extrapolated IsoFLOP vertices out of N_opt(C) (isoflop.py); 5: runs.csv's one row
# per run id is read as final losses, not one-point curves (envelope.py), and Approach 3's bootstrap
# refits each resample from 8 more starts (chinchilla_fit.BOOTSTRAP_STARTS); 6: the allocation's
# intervals (a, b, G) leave out resamples without an optimum, Approach 3 needs >= 3 sizes and token
# counts, a held-out budget of one size reads FLOPs per token from every run (held_out.py), and
# num_converged leaves out starts whose objective was not finite (lbfgs.py). 7: Approach 3 refuses designs
# whose log N and log D lie on one line and those of <= 5 distinct points (chinchilla_fit.design_problem),
# and the plateau rule is not applied where H_1 is within its margin of the reachable loss.
FIT_METHOD_VERSION = 7


def fit_sweep(config: ml_collections.ConfigDict, workdir: str, plan: Any,
              records: Sequence[dict]) -> tuple[dict | None, str]:
    """(fit.json's content, a note) for the sweep in `workdir`; (None, why) when it cannot be fitted."""
    order1, not_applied = _plateau_level(config, plan, workdir)
    records = mark_plateau_runs(records, order1)
    write_tables(records, workdir)  # runs.csv now says which runs the plateau rule left out
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    plateau = [r for r in records if r["status"] == PLATEAU_STATUS]
    if len(ok) < MIN_RUNS:
        # Name the fix that applies: plateau runs finished fine, --retry_failed would not touch them.
        fixes = ["add runs"] + (["retry the failed ones (--retry_failed)"] if failed else []) + (
            ["train the plateau runs longer, or fit them anyway (--config.fit.plateau_rule=False)"] if plateau else [])
        return None, (f"fit skipped: {len(ok)} of {len(ok) + len(failed) + len(plateau)} ended run(s) usable "
                      f"({len(failed)} failed, {len(plateau)} finished on the early plateau); the fit needs >= "
                      f"{MIN_RUNS}: {', or '.join(fixes)}." + _set_aside_previous_fit(workdir))
    fit_settings = config.fit.to_dict()
    digest = hashlib.sha256()
    with open(os.path.join(workdir, "runs.csv"), "rb") as f:
        digest.update(f.read())
    digest.update(json.dumps(fit_settings, sort_keys=True).encode())
    digest.update(f"fit method {FIT_METHOD_VERSION}".encode())
    fit_path = os.path.join(workdir, "fit.json")
    previous = _read_previous_fit(fit_path)
    if previous is not None:
        if previous.get("sweep", {}).get("inputs_sha256") == digest.hexdigest():
            return previous, "fit unchanged (same runs and settings): kept fit.json\n" + summary(previous)

    runs_csv = os.path.join(workdir, "runs.csv")
    common = dict(compute_budget=fit_settings["compute_budget"], bootstrap_samples=fit_settings["bootstrap"],
                  init_grid=fit_settings["init_grid"], seed=fit_settings["seed"])
    # The sweep's report is written once, whole, below: a kill before that leaves the last fit.json.
    report = fit_run_table(runs_csv, workdir, write_json=False, **common)
    exact = fit_run_table(runs_csv, os.path.join(workdir, "exact"), accounting="exact", **common)
    report["exact"] = {k: exact[k] for k in ("approach1", "approach2", "approach3", "kaplan", "prediction", "plots")}
    fitted = report["approach3"]
    law = ChinchillaLaw(**{k: fitted[k] for k in ("E", "A", "B", "alpha", "beta")})
    budgets = sorted({*plan.spec.budgets, float(fit_settings["compute_budget"])})
    seed_noise = _seed_noise(ok)
    noise = seed_noise and seed_noise["relative_std"]
    approach1_final = {a: _approach1_final(ok, a, noise, fit_settings["seed"]) for a in ACCOUNTING_COLUMNS}
    report["sweep"] = {
        "inputs_sha256": digest.hexdigest(), "param_count": plan.spec.param_count, "plan": plan.spec.plan,
        "runs": {"finished": len(ok), "failed": [{"run": r["run"], "error": r["error"]} for r in failed],
                 "plateau": [{"run": r["run"], "loss": r["loss"]} for r in plateau],
                 "plateau_rule": {"order1_entropy": order1, "rule": "final loss > H_1 - margin (plateau.py)",
                                  "not_applied": not_applied}},
        "approach1_final": approach1_final,
        "n_opt_exponents": {a: _exponents(report if a == "nominal" else report["exact"], approach1_final[a],
                                          _approach2_spread(runs_csv, a, noise, fit_settings["seed"]),
                                          _simulated_at_design(ok, a, report if a == "nominal" else report["exact"],
                                                               noise, fit_settings["seed"]))
                            for a in ACCOUNTING_COLUMNS},
        "held_out": {a: _held_out(runs_csv, a, fit_settings["init_grid"]) for a in ACCOUNTING_COLUMNS},
        "leave_out": _leave_out(runs_csv, fit_settings["init_grid"]),
        "seed_noise": seed_noise,
        "compute_optimal": [] if law.optimum_problem() else [_allocation(law, c) for c in budgets],
        "compute_optimal_skipped": law.optimum_problem(),
        "loss_by_budget": _loss_by(ok, "C", "N", "C"), "loss_by_model": _loss_by(ok, "model", "D", "N"),
        "learning_rates": _learning_rates(config, ok),
        "irreducible": _irreducible(config, {"nominal": report["approach3"], "exact": exact["approach3"]},
                                    plan, workdir),
    }
    write_text_atomically(fit_path, json.dumps(json_safe(report), indent=2))  # never half a fit.json
    return report, summary(report)


def _plateau_level(config: ml_collections.ConfigDict, plan: Any, workdir: str) -> tuple[float | None, str | None]:
    """(H_1 for the plateau rule, None) or (None, why the rule is not applied: turned off, no
    H_1, or H_1 within the rule's margin of the reachable loss, plateau.rule_problem).

    Only the errors of reading the corpus and its tokenizer switch the rule off (DataError is
    a ValueError; a missing file or dataset an OSError): no estimate means no plateau flags,
    never a failed fit, and the summary says so. Any other exception is a bug and propagates:
    catching every Exception had turned, e.g., an AttributeError into a rule silently off."""
    if not config.fit.get("plateau_rule", True):
        return None, "turned off (fit.plateau_rule=False)"
    try:
        order1 = order1_entropy(config, plan, workdir)
    except (ValueError, OSError) as error:
        return None, f"no bigram level H_1 for this corpus: {type(error).__name__}: {error}"
    problem = rule_problem(order1, _reachable_loss(config))  # H_1 at the bound: every run would be flagged
    return (None, problem) if problem else (order1, None)


def _reachable_loss(config: ml_collections.ConfigDict) -> float | None:
    """The lowest eval loss reachable in expectation (nats per target): known on the synthetic
    corpus only (research/scaling/synthetic_bound.py)."""
    if config.data.source != "synthetic":
        return None
    from research.scaling.synthetic_bound import window_bound_nats
    from research.scaling.synthetic_corpus import source_of
    return window_bound_nats(source_of(config.data.synthetic), config.data.synthetic.doc_chars, config.train.seq_len)


def order1_entropy(config: ml_collections.ConfigDict, plan: Any, workdir: str) -> float:
    """H(X_t+1 | X_t) of the training text in nats per token: exact on the synthetic corpus;
    otherwise the held-out cross-entropy of a bigram model counted on up to ORDER1_TOKENS
    training tokens, over up to ORDER1_TOKENS validation tokens (research/scaling/plateau.py
    says why not the plug-in entropy). Errors reading the corpus or tokenizer propagate
    (_plateau_level decides which ones switch the rule off)."""
    if config.data.source == "synthetic":
        from research.scaling.synthetic_bound import context_entropies_nats
        from research.scaling.synthetic_corpus import source_of
        return float(context_entropies_nats(source_of(config.data.synthetic))[1])
    from research import data as data_lib
    from research.scaling.plateau import bigram_cross_entropy_nats
    # The sweep's one tokenizer: the given model, or the one it trained into the workdir.
    tokenizer = data_lib.build_tokenizer(plan.data_config, workdir)

    def token_sequences(split: str) -> list[list[int]]:
        documents = data_lib.document_source(plan.data_config, split)
        sequences, total = [], 0
        for i in range(len(documents)):
            sequences.append(tokenizer.encode(documents[i]))
            total += len(sequences[-1])
            if total >= ORDER1_TOKENS:
                break
        return sequences
    return bigram_cross_entropy_nats(token_sequences("train"), token_sequences("validation"), tokenizer.vocab_size)


SUPERSEDED_DIR = "fit_superseded"  # an earlier fit that the runs, as runs.csv now reads them, no longer give


def _set_aside_previous_fit(workdir: str) -> str:
    """Move an earlier fit (fit.json, its plots, exact/) into SUPERSEDED_DIR when this sweep can
    no longer be fitted (e.g. the plateau rule now leaves too few runs): left in place they would
    report a fit that runs.csv contradicts. Returns the sentence saying so ("" if there was none).
    The files gather in SUPERSEDED_DIR.partial, renamed when all are there: a rerun after a kill
    part way goes on filling it, and an older superseded fit is replaced only then."""
    fit_path = os.path.join(workdir, "fit.json")
    aside = os.path.join(workdir, SUPERSEDED_DIR)
    partial = aside + ".partial"
    if not os.path.exists(fit_path) and not os.path.isdir(partial):
        return ""
    previous = _read_previous_fit(fit_path) or _read_previous_fit(os.path.join(partial, "fit.json")) or {}
    os.makedirs(partial, exist_ok=True)
    for name in [*previous.get("plots", []), "exact", "fit.json"]:  # fit.json last: it marks work left to do
        source, target = os.path.join(workdir, name), os.path.join(partial, name)
        if os.path.lexists(source):
            if os.path.isdir(target):
                shutil.rmtree(target)
            shutil.move(source, target)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(partial, aside)
    return f" The earlier fit (fit.json, its plots, exact/), which runs.csv no longer gives, is moved to {aside}."


def _read_previous_fit(fit_path: str) -> dict | None:
    """The last fit.json, or None (none yet, or unreadable: it is derived from runs.csv, so refit)."""
    try:
        with open(fit_path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _approach1_final(ok: Sequence[dict], accounting: str, noise: float | None, seed: int) -> dict:
    """Approach 1 with each model's finished runs as its curve: every point is a final loss;
    N_opt read between the ladder's rungs (research/scaling/envelope.py; the plain argmin's
    exponent, every grid value with the ladder's ends, is kept as argmin_a). With the seed noise measured, a_interval_80 is the 10th-90th percentile of a over
    copies of the losses, each multiplied by exp(normal(0, noise)) (research/scaling/noise_intervals.py):
    how far run-to-run noise alone moves Approach 1's exponent. Its N_opt is the best of a few discrete
    sizes at each compute, so one run's noise can move a whole rung. At the cpu_tiny design
    (_simulated_at_design: the sweep's fitted law, its 0.54% seed noise, 60 copies, seeds merged)
    a's median sat 0.011 below the law's (nominal accounting; 0.036 exact), 10th-90th 0.34-0.49
    (2026-12-03, README's run; +0.002 and -0.024 with the seeds unmerged). Under an earlier
    design and law it sat 0.115 below: between budgets only some sizes' runs reach, and where the
    optimum leaves the top of them the bracketed points that remain are those where noise
    favoured a smaller size."""
    table = _design_table(ok, accounting)
    try:
        points = table.merge_replicates()
        result = fit_envelope(points, between_sizes=True).as_dict()
        result["argmin_a"] = fit_envelope(points, between_sizes=False, bracketed=False).N_opt.exponent
    except RunTableError as error:
        return {"skipped": str(error)}
    # Noise is drawn per run, then the seeds of a point merged, as in the real fit.
    spread = noise_interval(table, lambda t: fit_envelope(t.merge_replicates(), between_sizes=True).N_opt.exponent,
                            noise or 0.0, seed=seed)
    if spread:
        result["a_interval_80"], result["a_resamples"] = spread["interval"], spread["resamples"]
    return result


def _design_table(ok: Sequence[dict], accounting: str) -> RunTable:
    """The finished runs under `accounting`, each model's runs one curve, grouped by budget."""
    n_column, c_column = ACCOUNTING_COLUMNS[accounting]
    column = lambda name: np.array([np.nan if r.get(name) is None else r[name] for r in ok], float)
    budget = column("C")
    # A token plan's runs have no FLOP budget (C None): grouped by their compute instead. A NaN
    # label made every group empty, and the fit died (argmin of an empty sequence).
    return RunTable(column(n_column), column("D"), column("loss"), run=np.array([r["model"] for r in ok]),
                    budget=budget if np.all(np.isfinite(budget)) else None, flops=column(c_column),
                    seed=np.array([str(r["seed"]) for r in ok]))



def _simulated_at_design(ok: Sequence[dict], accounting: str, report: dict, noise: float | None,
                         seed: int) -> dict | None:
    """Approaches 1 and 2 on SIMULATED_DATASETS copies of this sweep's design whose losses are
    Approach 3's law plus the measured seed noise: each one's bias and spread at this design
    (research/scaling/noise_intervals.simulate_estimator_bias). None without measured noise."""
    fitted = report["approach3"]
    if not noise or fitted.get("optimum_skipped"):  # no optimum: no true exponent to compare with
        return None
    law = ChinchillaLaw(**{k: fitted[k] for k in ("E", "A", "B", "alpha", "beta")})
    along = fitted.get("optimum_exact_flops")
    flops_per_token = PowerLaw(**along["flops_per_token"]) if along else None
    table = _design_table(ok, accounting)
    estimators = {"approach1_final": lambda t: fit_envelope(t.merge_replicates(), between_sizes=True).N_opt.exponent,
                  "approach2": lambda t: fit_isoflop(t.merge_replicates()).N_opt.exponent}
    result = simulate_estimator_bias(table, lambda t: law.loss(t.N, t.D), law.optimal_exponents(flops_per_token)[0],
                                     estimators, noise, datasets=SIMULATED_DATASETS, seed=seed)
    return {"law": "approach3", "noise": noise, **result}


def _approach2_spread(runs_csv: str, accounting: str, noise: float | None, seed: int) -> dict | None:
    """What the seed noise alone does to Approach 2's exponent (research/scaling/noise_intervals.py)."""
    try:
        table = read_runs_csv(runs_csv, accounting)
        fit_isoflop(table.merge_replicates())
    except RunTableError:
        return None
    return noise_interval(table, lambda t: fit_isoflop(t.merge_replicates()).N_opt.exponent, noise or 0.0, seed=seed)


def _exponents(report: dict, approach1_final: dict, approach2_spread: dict | None,
               simulated: dict | None = None) -> dict:
    """a of N_opt ∝ C^a by Approaches 1, 2 and 3, their largest gap, and their 80% intervals:
    Approaches 1 and 2 under the seed noise (refits on noisy copies of the losses), Approach 3
    its bootstrap. intervals_agree: the three intervals share a value (None: fewer than two
    intervals). The calibrated check is gap_quantile_1_2: where the observed difference of
    Approaches 1 and 2 falls among the differences of the simulated copies of this design."""
    # Under exact accounting Approach 3's optimum lies along C = f(N) D, not 6 N D (report.py).
    approach3 = report["approach3"].get("optimum_exact_flops", report["approach3"])
    values = {"approach1_final": approach1_final.get("a"), "approach1_frontier": report["approach1"].get("a"),
              "approach2": report["approach2"].get("a"), "approach3": approach3.get("a")}
    if approach3 is not report["approach3"]:
        values["approach3_along_6ND"] = report["approach3"]["a"]
    if "optimum_skipped" in report["approach3"]:  # no optimum, so no exponent (report._approach3)
        values["approach3_skipped"] = report["approach3"]["optimum_skipped"]
    main = [values[k] for k in ("approach1_final", "approach2", "approach3") if values[k] is not None]
    values["max_gap_1_2_3"] = float(max(main) - min(main)) if len(main) >= 2 else None
    interval = approach1_final.get("a_interval_80")
    if interval:  # do Approaches 2 and 3 fall inside what the seed noise does to Approach 1?
        values["approach2_3_in_approach1_interval"] = all(
            values[k] is not None and interval[0] <= values[k] <= interval[1] for k in ("approach2", "approach3"))
    intervals = {"approach1_final": interval, "approach2": approach2_spread and approach2_spread["interval"],
                 "approach3": approach3.get("intervals", {}).get("a")}
    verdict = common_point(intervals)
    values.update(intervals_80=intervals, intervals_overlap=verdict["overlap"], intervals_agree=verdict["agree"])
    if approach2_spread:
        values["approach2_failed_resamples"] = approach2_spread["failed"]
    values["simulated_at_design"] = simulated
    gap = (simulated or {}).get("gaps", {}).get("approach1_final-approach2")
    if gap and values["approach1_final"] is not None and values["approach2"] is not None:
        values["gap_quantile_1_2"] = gap_quantile(gap, values["approach1_final"] - values["approach2"])
    return values


def _held_out(runs_csv: str, accounting: str, init_grid: str) -> dict:
    from research.scaling.chinchilla_fit import COARSE_GRID, PAPER_GRID
    try:
        table = read_runs_csv(runs_csv, accounting)
        return predict_held_out_budget(table, grid=PAPER_GRID if init_grid == "paper" else COARSE_GRID).as_dict()
    except RunTableError as error:
        return {"skipped": str(error)}


def _leave_out(runs_csv: str, init_grid: str) -> dict:
    """Approach 3 refitted without each edge of the design (research/scaling/leave_out.py),
    nominal accounting only (each refit costs a grid fit, ~3 s)."""
    from research.scaling.chinchilla_fit import COARSE_GRID, PAPER_GRID
    try:
        return leave_out_fits(read_runs_csv(runs_csv, "nominal"), grid=PAPER_GRID if init_grid == "paper"
                              else COARSE_GRID)
    except RunTableError as error:
        return {"skipped": str(error)}


def _seed_noise(ok: Sequence[dict]) -> dict | None:
    """Runs that differ only in train.seed: std of log loss within each pair or group (the
    run-to-run noise, as a relative loss error), pooled over groups."""
    groups: dict[tuple, list[float]] = {}
    for r in ok:
        groups.setdefault((r["model"], r["steps"]), []).append(np.log(r["loss"]))
    repeated = [np.asarray(v) for v in groups.values() if len(v) >= 2]
    if not repeated:
        return None
    squares = sum(float(np.sum((v - v.mean()) ** 2)) for v in repeated)
    dof = sum(v.size - 1 for v in repeated)
    return {"groups": len(repeated), "relative_std": float(np.sqrt(squares / dof)),
            "pairs": [[float(np.exp(x)) for x in v] for v in repeated]}


def _learning_rates(config: ml_collections.ConfigDict, ok: Sequence[dict]) -> dict:
    return {r["run"]: config.opt.learning_rate * r.get("learning_rate_scale", 1.0) for r in ok}


def _allocation(law: ChinchillaLaw, compute: float) -> dict:
    N, D = (float(v) for v in law.compute_optimal(compute))
    return {"C": compute, "N_opt": N, "D_opt": D, "tokens_per_parameter": D / N, "loss": float(law.loss(N, D))}


def _loss_by(records: Sequence[dict], group: str, order: str, sort_by: str) -> list[dict]:
    """Finished runs grouped by `group` (groups in order of `sort_by`), each group's
    (order, loss) pairs sorted by `order`."""
    groups: dict[Any, list[dict]] = {}
    for r in records:
        if r[group] is not None:
            groups.setdefault(r[group], []).append(r)
    out = []
    for key, rows in sorted(groups.items(), key=lambda item: min(r[sort_by] for r in item[1])):
        pairs = sorted((r[order], r["loss"]) for r in rows)
        out.append({group: key, order: [x for x, _ in pairs], "loss": [y for _, y in pairs],
                    "best_loss": min(y for _, y in pairs), **({"N": rows[0]["N"]} if group == "model" else {})})
    return out


def _irreducible(config: ml_collections.ConfigDict, approach3: dict[str, dict], plan: Any,
                 workdir: str) -> dict | None:
    """The synthetic corpus's reachable loss beside each accounting's fitted E and its interval
    (nats per character), and the floor measured on the very validation batches the runs were
    scored on. The bound does not depend on the accounting: only N's does."""
    if config.data.source != "synthetic":
        return None
    from research import data as data_lib
    from research.scaling.synthetic_bound import eval_set_oracle_nats, window_bound_nats
    from research.scaling.synthetic_corpus import source_of

    s = config.data.synthetic
    source = source_of(s)
    rate = source.entropy_rate_nats()
    bound = window_bound_nats(source, s.doc_chars, config.train.seq_len)
    try:  # the source's own predictor on the runs' eval batches: the bound as these batches realise it
        oracle = eval_set_oracle_nats(plan.data_config, data_lib.build_tokenizer(plan.data_config, workdir),
                                      batch_size=config.train.batch_size, seq_len=config.train.seq_len,
                                      num_batches=config.train.eval_batches)
    except ValueError as error:  # a tokenizer that is not one piece per letter: no oracle, never a failed fit
        oracle = {"error": str(error)}
    out = {"entropy_rate": rate, "window_bound": bound, "eval_set_oracle": oracle,
           "note": "the entropy rate in nats per character; in nats per target (characters and eos), as the "
                   "eval loss: the lowest loss reachable in expectation when each window of seq_len starts "
                   "without the characters before it, and the loss of the source's own predictor on the runs' "
                   "eval batches (eval_set_oracle)"}
    for accounting, fit in approach3.items():
        interval = fit.get("intervals", {}).get("E")
        out[accounting] = {"fitted_E": fit["E"], "E_interval": interval,
                           "relative_gap": (fit["E"] - bound) / bound,
                           "within_5_percent": abs(fit["E"] - bound) <= 0.05 * bound,
                           "interval_contains_bound": None if not interval else interval[0] <= bound <= interval[1]}
    out["fitted_E"] = approach3["nominal"]["E"]
    return out
