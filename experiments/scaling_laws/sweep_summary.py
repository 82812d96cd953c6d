"""The few lines a finished sweep's fit prints (experiments/scaling_laws/sweep_fit.py writes
fit.json; this reads its content back as text)."""
from __future__ import annotations


def summary(report: dict) -> str:
    """The fit's headline numbers as a few lines of text."""
    fit3, sweep = report["approach3"], report["sweep"]
    runs = sweep["runs"]
    points = report.get("design_points", report["num_runs"])
    merged = f" at {points} design points (seeds of one N and D merged)" if points != report["num_runs"] else ""
    lines = [f"fit of {report['num_runs']} runs{merged} (N = {sweep['param_count']} parameters); "
             f"{len(runs['failed'])} failed and {len(runs['plateau'])} early-plateau run(s) left out"]
    not_applied = runs.get("plateau_rule", {}).get("not_applied")
    if not_applied:
        lines.append(f"plateau rule not applied: {not_applied}")
    for failed in runs["failed"]:
        lines.append(f"  failed: {failed['run']}: {failed['error']}")
    for flat in runs["plateau"]:
        lines.append(f"  plateau: {flat['run']}: loss {flat['loss']:.4f} (H_1 = {runs['plateau_rule']['order1_entropy']:.4f})")
    for accounting, fit in (("nominal", fit3), ("exact", report["exact"]["approach3"])):
        interval = fit.get("intervals", {}).get("E")
        along = fit.get("optimum_exact_flops")
        optimum = (f"N_opt ∝ C^{along['a']:.3g} along C = f(N) D, f = {along['flops_per_token']['coefficient']:.3g} "
                   f"N^{along['flops_per_token']['exponent']:.3g} FLOPs/token (C^{fit['a']:.3g} along 6ND)"
                   if along else f"N_opt ∝ C^{fit['a']:.3g}" if fit.get("a") is not None
                   else f"no N_opt exponent: {fit.get('optimum_skipped')}")
        lines.append(f"approach 3 ({accounting}): L(N, D) = {fit['E']:.4g} + {fit['A']:.4g} / N^{fit['alpha']:.3g} + "
                     f"{fit['B']:.4g} / D^{fit['beta']:.3g}; {optimum}"
                     + (f"; E 80% interval [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""))
    for accounting, exponents in sweep["n_opt_exponents"].items():
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in exponents.items()
                          if v is not None and not isinstance(v, (dict, list)))
        lines.append(f"N_opt exponent a ({accounting}): {shown}")
        simulated = exponents.get("simulated_at_design")
        if simulated:
            text = ", ".join(f"{k} median {v['median']:.3g} (bias {v['bias']:+.3g}, 10th-90th percentile "
                             f"{v['p10']:.3g}-{v['p90']:.3g})" if "median" in v else f"{k} never fitted"
                             for k, v in simulated["estimators"].items())
            gap = simulated["gaps"].get("approach1_final-approach2")
            if gap and "gap_quantile_1_2" in exponents:
                text += (f"; approach 1 - 2 gaps there {gap['p10']:+.3g} to {gap['p90']:+.3g} (10th-90th), the "
                         f"observed one at quantile {exponents['gap_quantile_1_2']:.2f}")
            lines.append(f"  at this design, {simulated['datasets']} datasets from approach 3's law "
                         f"(a = {simulated['true']:.3g}) with the seed noise: {text}")
        intervals = exponents.get("intervals_80") or {}
        if any(intervals.values()):
            text = ", ".join(f"{k} [{v[0]:.3g}, {v[1]:.3g}]" for k, v in intervals.items() if v)
            agree = exponents.get("intervals_agree")
            verdict = ("they share [{:.3g}, {:.3g}]".format(*exponents["intervals_overlap"]) if agree else
                       "cannot judge: fewer than two intervals" if agree is None else "they share no value")
            lines.append(f"  80% intervals of a (approaches 1 and 2 under the seed noise, 3 bootstrap): {text}; "
                         f"{verdict}")
    for profile in report["approach2"].get("profiles", []):
        lines.append(f"  IsoFLOP C={profile['compute']:.3g}: N_opt={profile['N_opt']:.3g}, "
                     f"D_opt={profile['D_opt']:.3g}, {profile['D_opt'] / profile['N_opt']:.3g} tokens/parameter"
                     + ("" if not profile["extrapolated"] else " (extrapolated)" if profile.get("in_fit", True)
                        else " (extrapolated: left out of N_opt(C))"))
    for accounting, approach2 in (("nominal", report["approach2"]), ("exact", report["exact"]["approach2"])):
        reasons = approach2.get("skipped")
        if isinstance(reasons, str):  # no Approach 2 at all
            lines.append(f"approach 2 ({accounting}): skipped: {reasons}")
        for reason in reasons if isinstance(reasons, list) else []:
            lines.append(f"approach 2 ({accounting}) left out {reason}")
    for accounting, held in sweep["held_out"].items():
        if "skipped" in held:
            lines.append(f"held-out budget ({accounting}): skipped: {held['skipped']}")
        else:
            lines.append(f"held-out budget C={held['compute']:.3g} ({accounting}): observed best loss "
                         f"{held['observed_best_loss']:.4f}; predicted at that run {held['predicted_at_best_run']:.4f} "
                         f"({held['relative_error_at_best_run']:+.2%}), predicted optimum {held['predicted_optimum']:.4f} "
                         f"({held['relative_error_optimum']:+.2%})")
    if sweep["seed_noise"]:
        lines.append(f"seed noise: {sweep['seed_noise']['relative_std']:.2%} relative std of loss over "
                     f"{sweep['seed_noise']['groups']} repeated run(s)")
    if sweep.get("compute_optimal_skipped"):
        lines.append(f"approach 3 compute-optimal: skipped: {sweep['compute_optimal_skipped']}")
    for row in sweep["compute_optimal"]:
        lines.append(f"approach 3 compute-optimal at C={row['C']:.3g}: N={row['N_opt']:.3g}, D={row['D_opt']:.3g}, "
                     f"{row['tokens_per_parameter']:.3g} tokens/parameter, loss {row['loss']:.4g}")
    for group in sweep["loss_by_budget"]:
        pairs = ", ".join(f"{n:.3g}:{l:.3f}" for n, l in zip(group["N"], group["loss"]))
        lines.append(f"C={group['C']:.3g}: best loss {group['best_loss']:.4f}; N:loss {pairs}")
    edges = {k: v for k, v in (sweep.get("leave_out") or {}).items() if isinstance(v, dict) and "E" in v}
    if edges:
        lines.append("approach 3 without one edge of the design (nominal): " + "; ".join(
            f"{name.replace('_', ' ')} ({v['runs_left_out']} runs) E={v['E']:.4f} "
            + ("a=-" if v["a"] is None else f"a={v['a']:.3f}")
            for name, v in edges.items()))
    irreducible = sweep["irreducible"]
    if irreducible:
        for accounting in ("nominal", "exact"):
            row = irreducible[accounting]
            lines.append(f"irreducible loss ({accounting}): fitted E={row['fitted_E']:.4f} "
                         f"({row['relative_gap']:+.1%} from the reachable bound {irreducible['window_bound']:.4f}; "
                         f"entropy rate {irreducible['entropy_rate']:.4f} nats/char{_oracle_text(irreducible)}); "
                         f"interval contains the bound: {row['interval_contains_bound']}")
    return "\n".join(lines)


def _oracle_text(irreducible: dict) -> str:
    oracle = irreducible.get("eval_set_oracle") or {}
    return f"; the source's own loss on the eval batches {oracle['loss']:.4f}" if "loss" in oracle else ""
