"""Fit a finished sweep: research.scaling.report on runs.csv, plus what only a sweep knows.

fit.json gets a "sweep" section beside the fit module's report:
  runs               finished / failed counts and each failed run's error (left out of every fit)
  approach1_curves   Approach 1 over the training curves (curves.csv), not just final losses
  compute_optimal    Approach 3's N_opt, D_opt and tokens per parameter at each sweep budget
                     and at fit.compute_budget
  loss_by_budget     each budget's (N, loss) in order of N and its best loss (IsoFLOP sweeps)
  loss_by_model      each model's (D, loss) in order of D
  irreducible        on the synthetic corpus: the source's entropy rate and the bound
                     reachable with the sweep's windows (research/scaling/synthetic_bound.py)
                     beside the fitted E, all in nats per character
The fit is redone only when its inputs (runs.csv, curves.csv, the fit settings) changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Sequence

import ml_collections

from research.scaling import RunTableError, fit_envelope, read_runs_csv
from research.scaling.laws import ChinchillaLaw
from research.scaling.report import fit_run_table
from research.scaling.sweep_records import json_safe

MIN_RUNS = 5  # Approach 3 has five parameters


def fit_sweep(config: ml_collections.ConfigDict, workdir: str, plan: Any,
              records: Sequence[dict]) -> tuple[dict | None, str]:
    """(fit.json's content, a note) for the sweep in `workdir`; (None, why) when it cannot be fitted."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    if len(ok) < MIN_RUNS:
        return None, (f"fit skipped: {len(ok)} finished run(s) ({len(failed)} failed); the fit needs >= {MIN_RUNS}. "
                      "Add runs or fix the failed ones (--retry_failed).")
    fit_settings = config.fit.to_dict()
    digest = hashlib.sha256()
    for name in ("runs.csv", "curves.csv"):
        with open(os.path.join(workdir, name), "rb") as f:
            digest.update(f.read())
    digest.update(json.dumps(fit_settings, sort_keys=True).encode())
    fit_path = os.path.join(workdir, "fit.json")
    if os.path.exists(fit_path):
        with open(fit_path) as f:
            previous = json.load(f)
        if previous.get("sweep", {}).get("inputs_sha256") == digest.hexdigest():
            return previous, "fit unchanged (same runs and settings): kept fit.json\n" + summary(previous)

    report = fit_run_table(os.path.join(workdir, "runs.csv"), workdir, compute_budget=fit_settings["compute_budget"],
                           bootstrap_samples=fit_settings["bootstrap"], init_grid=fit_settings["init_grid"],
                           seed=fit_settings["seed"])
    fitted = report["approach3"]
    law = ChinchillaLaw(**{k: fitted[k] for k in ("E", "A", "B", "alpha", "beta")})
    budgets = sorted({*plan.spec.budgets, float(fit_settings["compute_budget"])})
    report["sweep"] = {
        "inputs_sha256": digest.hexdigest(), "param_count": plan.spec.param_count, "plan": plan.spec.plan,
        "runs": {"finished": len(ok), "failed": [{"run": r["run"], "error": r["error"]} for r in failed]},
        "approach1_curves": _approach1_curves(os.path.join(workdir, "curves.csv")),
        "compute_optimal": [_allocation(law, c) for c in budgets],
        "loss_by_budget": _loss_by(ok, "C", "N", "C"), "loss_by_model": _loss_by(ok, "model", "D", "N"),
        "irreducible": _irreducible(config, fitted["E"]),
    }
    with open(fit_path, "w") as f:
        json.dump(json_safe(report), f, indent=2)
    return report, summary(report)


def _approach1_curves(curves_csv: str) -> dict:
    try:
        return fit_envelope(read_runs_csv(curves_csv)).as_dict()
    except RunTableError as error:
        return {"skipped": str(error)}


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


def _irreducible(config: ml_collections.ConfigDict, fitted_E: float) -> dict | None:
    """The synthetic corpus's true irreducible loss beside the fitted E (nats per character)."""
    if config.data.source != "synthetic":
        return None
    from research.scaling.synthetic_bound import window_bound_nats
    from research.scaling.synthetic_corpus import markov_source

    s = config.data.synthetic
    source = markov_source(s.source_seed, alphabet=s.alphabet, order=s.order, concentration=s.concentration)
    rate = source.entropy_rate_nats()
    bound = window_bound_nats(source, s.doc_chars, config.train.seq_len)
    return {"entropy_rate": rate, "window_bound": bound, "fitted_E": fitted_E, "fitted_E_minus_bound": fitted_E - bound,
            "note": "nats per character: the entropy rate, and the lowest loss reachable when each window of "
                    "seq_len starts without the characters before it (one eos target per document not included)"}


def summary(report: dict) -> str:
    """The fit's headline numbers as a few lines of text."""
    fit3, sweep = report["approach3"], report["sweep"]
    lines = [f"fit of {report['num_runs']} runs (N = {sweep['param_count']} parameters); "
             f"{len(sweep['runs']['failed'])} failed run(s) left out"]
    for failed in sweep["runs"]["failed"]:
        lines.append(f"  failed: {failed['run']}: {failed['error']}")
    lines.append(f"approach 3: L(N, D) = {fit3['E']:.4g} + {fit3['A']:.4g} / N^{fit3['alpha']:.3g} + "
                 f"{fit3['B']:.4g} / D^{fit3['beta']:.3g}; N_opt ∝ C^{fit3['a']:.3g}, D_opt ∝ C^{fit3['b']:.3g}")
    for name in ("approach2", "approach1"):  # a whole approach skipped is {"skipped": reason}
        if not isinstance(report[name].get("skipped"), str):
            lines.append(f"{name}: N_opt ∝ C^{report[name]['a']:.3g}, D_opt ∝ C^{report[name]['b']:.3g}")
    for profile in report["approach2"].get("profiles", []):
        lines.append(f"  IsoFLOP C={profile['compute']:.3g}: N_opt={profile['N_opt']:.3g}, "
                     f"D_opt={profile['D_opt']:.3g}, {profile['D_opt'] / profile['N_opt']:.3g} tokens/parameter"
                     + (" (extrapolated)" if profile["extrapolated"] else ""))
    if "skipped" not in sweep["approach1_curves"]:
        lines.append(f"approach1 (training curves): N_opt ∝ C^{sweep['approach1_curves']['a']:.3g}, "
                     f"D_opt ∝ C^{sweep['approach1_curves']['b']:.3g}")
    for row in sweep["compute_optimal"]:
        lines.append(f"approach 3 compute-optimal at C={row['C']:.3g}: N={row['N_opt']:.3g}, D={row['D_opt']:.3g}, "
                     f"{row['tokens_per_parameter']:.3g} tokens/parameter, loss {row['loss']:.4g}")
    for group in sweep["loss_by_budget"]:
        pairs = ", ".join(f"{n:.3g}:{l:.3f}" for n, l in zip(group["N"], group["loss"]))
        lines.append(f"C={group['C']:.3g}: best loss {group['best_loss']:.4f}; N:loss {pairs}")
    for group in sweep["loss_by_model"]:
        pairs = ", ".join(f"{d:.3g}:{l:.3f}" for d, l in zip(group["D"], group["loss"]))
        lines.append(f"{group['model']} (N={group['N']:.3g}): best loss {group['best_loss']:.4f}; D:loss {pairs}")
    irreducible = sweep["irreducible"]
    if irreducible:
        lines.append(f"irreducible loss: fitted E={irreducible['fitted_E']:.4f} vs the source's entropy rate "
                     f"{irreducible['entropy_rate']:.4f} and the reachable bound {irreducible['window_bound']:.4f} "
                     "nats/char")
    return "\n".join(lines)

