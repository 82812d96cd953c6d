"""Seed noise of the emergence study's curves across sizes: finished runs of one study that
differ only in train.seed, read side by side.

    python -m experiments.emergence --config=experiments/configs/emergence.py:cpu_tiny --workdir=/tmp/em_s0
    python -m experiments.emergence --config=experiments/configs/emergence.py:cpu_tiny --workdir=/tmp/em_s1 \\
        --config.train.seed=1
    python -m experiments.emergence_seeds --workdirs=/tmp/em_s0,/tmp/em_s1 \\
        --sizes=d24-l2,d32-l2,d48-l2,d64-l2 --output_dir=/tmp/em_seeds

Why: one run gives one model per size, and a size's per-digit accuracy p at the end can
depend on the seed more than on the size (in cpu_tiny the 2-layer sizes left their early
plateau at steps 1500-3000 of 4000, or never, varying with the seed). A curve across sizes from one seed may then show the mirage where another seed
does not, and the item-bootstrap intervals of one run cannot tell: they hold the models
fixed. This reads each workdir's final evaluations, per item (runs/<size>/evals), and writes
to --output_dir:
  seeds.csv       per answer-length task, size and seed: exact match, p and p^L at the end, with
                  80% item-bootstrap intervals (study_report.mirage_table);
  seed_spread.csv per task, size and metric: mean, standard deviation and range over the seeds;
  size_steps.csv  per task, metric and pair of consecutive sizes: the rise of the seed mean, its
                  standard error (sqrt(sd_a^2 / n_a + sd_b^2 / n_b)) and whether Welch's t test
                  finds it at RESOLVED_LEVEL: whether the seeds tell the two sizes apart;
  verdicts.csv    per seed, whether that seed's curve across --sizes shows the mirage (the rule of
                  research.evaluation.study_report.sharpening_verdict), and which of --sizes
                  show it along training (the run's report/mirage_verdicts.csv);
  onsets.csv      per seed and size: the step at which p left its early plateau (onset_step, on
                  the shortest answer length's checkpoint curve) and p at the end at the longest
                  length; seeds.md adds Spearman's rank correlation of that final p with the
                  onset step and with the size, over every (seed, size), and which is resolved;
                  and p_after_onset: p at the longest length a fixed number of steps after each
                  size's onset (the most every size that left the plateau trained past its onset),
                  with its correlation with the size: whether size sets p once the onset is matched;
  seeds.md        the tables, and the count of seeds that show the mirage.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
from absl import app, flags
from scipy import stats

from experiments.emergence_runs import STUDY_DIGESTS, recorded_study
from experiments.emergence_report import breakthroughness_pair, one_row_per_setting
from research.models.config import ConfigError
from research.training.workdir import ADDED_LATER

P = "teacher_forced_accuracy"
SHAPE_METRICS = ("exact_match", P)
# A rise between consecutive sizes counts as resolved by the seeds when Welch's two-sided t test
# of the two sizes' seed means rejects "no rise" at this level. With 2 or 3 seeds the t
# quantile (12.7 at 1 degree of freedom, 2.78 at 4) is far above a normal 2: a z rule would call
# a step with no true rise resolved 18% of the time at 2 seeds.
RESOLVED_LEVEL = 0.05
# A checkpoint has left the early plateau when its p is above the median p of every earlier
# checkpoint by this much. cpu_tiny's plateau sits at p 0.2 (2 digits) with item noise near 0.01
# (1,000 items), and leaving it took p to 0.3-0.5 within one or two checkpoints of 250 steps.
ONSET_RISE = 0.1
# The digest a run records of its tokenizer file (workdir.run_fingerprint): of its name too, which a
# study's own tokenizer takes from its workdir's mixture path, so two seeds' always differ; their
# files' contents are compared instead (_tokenizer_contents).
_TOKENIZER_DIGEST = "data.tokenizer.model_file_sha256"
# Fields allowed to differ between the runs: the seed, and paths inside each workdir (the rest of
# what may differ is left out of emergence_runs.recorded_study: FREE_STUDY_FIELDS).
_MAY_DIFFER = ("train.seed", "data.file_patterns", "data.tokenizer.model_path", _TOKENIZER_DIGEST)


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_seed_run(workdir: str, sizes: Sequence[str], num_shots: int = 0) -> dict[str, Any]:
    """{workdir, seed, fingerprints {size: ...}, rows}: the final evaluation of every size in
    `sizes` at `num_shots`, one row per answer-length task (the one with the most items), with
    per-item values."""
    if not os.path.isdir(workdir):
        raise ConfigError(f"--workdirs names {workdir!r}, which is not a directory; give finished emergence "
                          "study workdirs.")
    results = os.path.join(workdir, "report", "results.json")
    if not all(os.path.exists(os.path.join(workdir, "report", n)) for n in ("results.json", "mirage.json")):
        raise ConfigError(f"{workdir!r} has no finished report (report/results.json and mirage.json): finish its "
                          "study first (rerun the same experiments.emergence command).")
    for name in ("mirage_verdicts.json", "mirage_along_training.json"):
        if not os.path.exists(os.path.join(workdir, "report", name)):
            raise ConfigError(f"{workdir!r} has no report/{name} (a report written before it existed): rerun its "
                              "experiments.emergence command, which rewrites the report without training.")
    params = {r["size"]: r["params_non_embedding"] for r in _read_json(results)["rows"]}
    # The answer-length tasks: those of the study's final evaluation (eval.final_tasks), which its
    # report's mirage table holds.
    tasks = {r["task"] for r in _read_json(os.path.join(workdir, "report", "mirage.json"))["rows"]}
    fingerprints, rows = {}, []
    for size in sizes:
        run_dir = os.path.join(workdir, "runs", size)
        evals = os.path.join(run_dir, "evals")
        steps = sorted(int(n[len("step_"):-len(".json")]) for n in os.listdir(evals)
                       if n.startswith("step_") and n.endswith(".json")) if os.path.isdir(evals) else []
        if size not in params or not steps:
            raise ConfigError(f"--sizes names {size!r}, which {workdir!r} has not trained and evaluated; its sizes: "
                              f"{sorted(params)}.")
        fingerprints[size] = _read_json(os.path.join(run_dir, "run.json"))["fingerprint"]
        candidates = [{**row, "size": size, "step": steps[-1], "params_non_embedding": params[size]}
                      for row in _read_json(os.path.join(evals, f"step_{steps[-1]}.json"))["rows"]
                      if row["task"] in tasks and row["num_shots"] == num_shots
                      and {P, "answer_tokens"} <= set(row.get("items") or {})]
        final = one_row_per_setting(candidates, most_items=True)  # as the study's own report chooses
        if not final:
            raise ConfigError(f"{workdir!r} has no per-item final evaluation of {size} at num_shots={num_shots}; "
                              "give the shots of the study's eval.final_shots.")
        rows.extend(final)
    seeds = {f["train.seed"] for f in fingerprints.values()}
    study, trained = recorded_study(workdir, list(sizes))
    # Per size: run.json's fingerprint, and the training identity (every optimizer number) it lacks.
    fingerprints = {size: {**fingerprint, **trained[size]} for size, fingerprint in fingerprints.items()}
    return {"workdir": workdir, "seed": seeds.pop(), "study": study, "fingerprints": fingerprints, "rows": rows}


def check_same_study(runs: Sequence[dict[str, Any]]) -> None:
    """One line when the runs are not one study at different seeds: their whole study config
    (emergence_runs.recorded_study) and every size's training must agree but for train.seed."""
    if len(runs) < 2:
        raise ConfigError(f"--workdirs names {len(runs)} workdir; seed noise needs >= 2 runs of one study.")
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--workdirs hold runs with train.seed {seeds}: two share a seed; give runs that differ "
                          "in --config.train.seed.")
    first = runs[0]
    for run in runs[1:]:
        differ: dict[str, tuple[Any, Any]] = {}  # field -> (this run's value, the first's), first size's kept
        # The sizes' fields first (a digest has no value worth showing); of the study's, those both
        # reports record (an older report lacks the config, or a field added since: the digests judge).
        study = [k for k in first["study"] if k in run["study"]]
        for ours, ref, keys in [*((f, first["fingerprints"][size], None) for size, f in run["fingerprints"].items()),
                                (run["study"], first["study"], study)]:
            for k in keys or dict.fromkeys([*ref, *ours]):
                # A fingerprint field added later (workdir.ADDED_LATER) is not recorded by a run before it.
                added_later = k in ADDED_LATER and (k not in ours or k not in ref)
                if k not in _MAY_DIFFER and not added_later and ours.get(k) != ref.get(k):
                    differ.setdefault(k, (ours.get(k), ref.get(k)))
            contents = [_tokenizer_contents(f) for f in (ours, ref)] if keys is None else [None]
            if None not in contents and contents[0] != contents[1]:  # another tokenizer (unreadable: settings judge)
                differ.setdefault(_TOKENIZER_DIGEST, tuple(contents))
        if differ:
            # Where both record their config, its fields name what the digests only show differ.
            named = [k for k in differ if k not in STUDY_DIGESTS]
            names = named if named and len(study) > len(STUDY_DIGESTS) else list(differ)
            name, (ours, ref) = names[0], differ[names[0]]
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise ConfigError(f"{run['workdir']!r} and {first['workdir']!r} are not one study at two seeds: they "
                              f"differ in {shown} ({name}: {ours!r} vs {ref!r}); only train.seed may differ.")
        steps = {(r["size"], r["step"]) for r in run["rows"]} ^ {(r["size"], r["step"]) for r in first["rows"]}
        tasks = {r["task"] for r in run["rows"]} ^ {r["task"] for r in first["rows"]}
        if steps or tasks:
            raise ConfigError(f"{run['workdir']!r} and {first['workdir']!r} end at different steps or evaluate "
                              f"different tasks ({sorted(map(str, steps | tasks))[0]}); finish both studies.")


def _tokenizer_contents(fingerprint: dict[str, Any]) -> str | None:
    """sha256 of the contents of the tokenizer file a run's fingerprint names; None when it names
    none that can be read (a study moved or cleaned: its recorded settings still judge)."""
    path = str(fingerprint.get("data.tokenizer.model_path") or "")
    if not os.path.isfile(path):
        return None
    stat = os.stat(path)
    return _file_sha256(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Every size of a study names the same tokenizer file: read once per command, not once per size
    # (keyed by its stat too, so a file rewritten meanwhile is read again).
    del size, mtime_ns
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def seed_table(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """study_report.mirage_table of every run, with its seed."""
    from research.evaluation.study_report import mirage_table
    return [{"seed": run["seed"], **row} for run in runs for row in mirage_table(run["rows"])]


def seed_spread(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task, size and metric (exact_match, p, p_to_the_L): mean, sd (n-1) and range over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in table:
        groups.setdefault((row["task"], row["answer_tokens"], row["params_non_embedding"], row["size"]), []).append(row)
    out = []
    for (task, length, params, size), members in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        for metric in ("exact_match", "p", "p_to_the_L"):
            values = np.array([m[metric] for m in sorted(members, key=lambda m: m["seed"])], np.float64)
            out.append({"task": task, "answer_tokens": length, "size": size, "params_non_embedding": params,
                        "metric": metric, "seeds": len(values), "values": [float(v) for v in values],
                        "mean": float(values.mean()), "sd": float(values.std(ddof=1)),
                        "min": float(values.min()), "max": float(values.max())})
    return out


def size_steps(spread: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and metric, each pair of consecutive sizes: the seed mean's rise, its standard
    error and Welch's t test of it (resolved: two-sided p < RESOLVED_LEVEL)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in spread:
        if row["metric"] in ("exact_match", "p"):
            groups.setdefault((row["task"], row["metric"]), []).append(row)
    out = []
    for (task, metric), members in groups.items():
        members = sorted(members, key=lambda m: m["params_non_embedding"])
        for a, b in zip(members, members[1:]):
            rise = b["mean"] - a["mean"]
            va, vb = a["sd"] ** 2 / a["seeds"], b["sd"] ** 2 / b["seeds"]
            se = math.sqrt(va + vb)
            # Seeds that agree exactly (se 0) resolve any rise.
            ratio = rise / se if se > 0 else math.copysign(math.inf, rise) if rise else 0.0
            # Welch-Satterthwaite degrees of freedom of the two means' difference.
            dof = (va + vb) ** 2 / (va ** 2 / (a["seeds"] - 1) + vb ** 2 / (b["seeds"] - 1)) if se > 0 else math.inf
            critical = float(stats.t.ppf(1 - RESOLVED_LEVEL / 2, dof)) if se > 0 else 0.0
            out.append({"task": task, "metric": metric, "from": a["size"], "to": b["size"], "rise": rise, "se": se,
                        "rise_over_se": ratio, "dof": dof, "critical": critical,
                        "resolved": bool(abs(ratio) > critical)})
    return out


def mirage_verdict(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Whether one run's curve across its sizes shows the mirage: study_report.sharpening_verdict
    (p rises at every size step and length; exact match's breakthroughness at the longest
    answer above the shortest's, 80% item-bootstrap intervals apart; p's not) on the shapes of
    `rows` (one final row per size and answer-length task, with per-item values)."""
    from research.evaluation.study_report import noisy_curve_summary, sharpening_verdict

    lengths = {r["task"]: float(np.mean(r["items"]["answer_tokens"])) for r in rows}
    shapes = noisy_curve_summary(rows, scale="params_non_embedding", group_by=("task",), metrics=SHAPE_METRICS)
    return sharpening_verdict(shapes, lengths)


def along_training_verdicts(workdir: str, sizes: Sequence[str], num_shots: int) -> list[dict[str, Any]]:
    """The study report's own verdicts along training (report/mirage_verdicts.json) for `sizes`."""
    return [r for r in _read_json(os.path.join(workdir, "report", "mirage_verdicts.json"))["rows"]
            if r["axis"] == "along training" and r["size"] in sizes and r["num_shots"] == num_shots]


def onset_step(steps: Sequence[int], values: Sequence[float]) -> int | None:
    """The first step whose value is above the median of every earlier one by ONSET_RISE
    (None: the curve never left its plateau). The first checkpoint has no earlier one."""
    order = np.argsort(steps)
    steps, values = np.asarray(steps)[order], np.asarray(values, np.float64)[order]
    for i in range(1, len(values)):
        if values[i] > float(np.median(values[:i])) + ONSET_RISE:
            return int(steps[i])
    return None


def onsets(runs: Sequence[dict[str, Any]], sizes: Sequence[str], num_shots: int) -> list[dict[str, Any]] | None:
    """Per run and size: when p left its early plateau along training (onset_step of the
    shortest answer length's curve, report/mirage_along_training.json) and p at the end at the
    longest answer length (the final evaluation). None when a run did not track the shortest
    length at every checkpoint of a size (report.transition_task): no onset can be read."""
    out, curves = [], []  # curves[i]: {step: p} on out[i]'s matched_task, for _read_after_onset
    for run in runs:
        final = {(r["size"], r["task"]): r for r in run["rows"]}
        lengths = {r["task"]: float(np.mean(r["items"]["answer_tokens"])) for r in run["rows"]}
        shortest, longest = min(lengths, key=lengths.get), max(lengths, key=lengths.get)
        along_all = _read_json(os.path.join(run["workdir"], "report", "mirage_along_training.json"))["rows"]
        along = [r for r in along_all if r["task"] == shortest and r["num_shots"] == num_shots]
        # The longest length's checkpoint curve, read at a matched time after each onset (below);
        # the onset task's own when the run did not track the longest along training.
        matched_task = longest if any(r["task"] == longest for r in along_all) else shortest
        for size in sizes:
            curve = sorted((r["step"], r["p"]) for r in along if r["size"] == size)
            if len(curve) < 2:
                return None
            row = final[(size, longest)]
            out.append({"seed": run["seed"], "size": size, "params_non_embedding": row["params_non_embedding"],
                        "onset_task": shortest, "onset_step": onset_step(*zip(*curve)), "final_step": curve[-1][0],
                        "final_task": longest, "final_p": float(np.mean(row["items"][P])),
                        "matched_task": matched_task})
            curves.append({r["step"]: r["p"] for r in along_all
                           if r["task"] == matched_task and r["size"] == size and r["num_shots"] == num_shots})
    _read_after_onset(out, curves)
    return out


def _read_after_onset(rows: list[dict[str, Any]], curves: Sequence[dict[int, float]]) -> None:
    """Set each row's p_after_onset: p on its matched_task at onset + after_onset_steps, the
    largest offset every pair that left the plateau reached by its last checkpoint (None for a
    pair that never left, or whose curve lacks that step). The final p of a size that left the
    plateau late is read earlier in its learning than an early one's; at a matched offset the
    sizes are compared at the same time since their onset."""
    left = [r for r in rows if r["onset_step"] is not None]
    offset = min((r["final_step"] - r["onset_step"] for r in left), default=None)
    for r, curve in zip(rows, curves):
        r["after_onset_steps"] = offset
        r["p_after_onset"] = (None if r["onset_step"] is None or offset is None
                              else curve.get(r["onset_step"] + offset))


def onset_correlations(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Spearman's rank correlation of the final p with the onset step and with the size, over
    every (seed, size) pair: one that never left the plateau ranks after every onset (None
    where fewer than 3 pairs, or one side is constant). The pairs are not independent (each
    seed gives every size, each size every seed), so the p-values are a rough guide only."""
    never = max([r["final_step"] for r in rows], default=0) + 1  # later than any onset

    def rho(key: str) -> tuple[float | None, float | None]:
        x = [never if r[key] is None else r[key] for r in rows]
        y = [r["final_p"] for r in rows]
        if len(rows) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
            return None, None
        result = stats.spearmanr(x, y)
        return float(result.statistic), float(result.pvalue)

    (onset_rho, onset_p), (size_rho, size_p) = rho("onset_step"), rho("params_non_embedding")
    # At a matched time since the onset: only the pairs that left the plateau, p read there.
    matched = [r for r in rows if r.get("p_after_onset") is not None]
    x, y = [r["params_non_embedding"] for r in matched], [r["p_after_onset"] for r in matched]
    after_rho = after_p = None
    if len(matched) >= 3 and len(set(x)) > 1 and len(set(y)) > 1:
        result = stats.spearmanr(x, y)
        after_rho, after_p = float(result.statistic), float(result.pvalue)
    return {"pairs": len(rows), "never_left": sum(r["onset_step"] is None for r in rows), "onset_rho": onset_rho,
            "onset_p": onset_p, "size_rho": size_rho, "size_p": size_p, "matched_pairs": len(matched),
            "after_onset_steps": next((r.get("after_onset_steps") for r in rows), None),
            "after_onset_size_rho": after_rho, "after_onset_size_p": after_p}


def _onsets_markdown(rows: Sequence[dict[str, Any]] | None, correlations: dict[str, Any] | None) -> list[str]:
    from research.evaluation.results_table import format_table

    if rows is None:
        return ["No onset table: the runs did not track the shortest answer length at every checkpoint "
                "(report.transition_task).", ""]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    shown = [{**r, "onset_step": "never" if r["onset_step"] is None else r["onset_step"],
              "final_p": f"{r['final_p']:.3f}", "p_after_onset": fmt(r.get("p_after_onset"), ".3f")} for r in rows]
    c = correlations
    after = c.get("after_onset_steps")
    return [
        f"## When each size left its early plateau (p above the median of all earlier checkpoints by {ONSET_RISE:g}, "
        f"on {rows[0]['onset_task']}), and p at the end on {rows[0]['final_task']}", "",
        f"p_after_onset: p on {rows[0].get('matched_task', rows[0]['final_task'])} {fmt(after, 'd')} steps after "
        "the size's onset (the most steps every size that left the plateau trained past its onset).", "",
        "```", format_table(shown, ["seed", "size", "onset_step", "final_step", "final_p", "p_after_onset"]), "```",
        "",
        f"Over the {c['pairs']} (seed, size) pairs ({c['never_left']} never left the plateau; they rank after every "
        f"onset), Spearman's rank correlation of the final p with the onset step: {fmt(c['onset_rho'], '+.2f')} "
        f"(p = {fmt(c['onset_p'], '.3f')}); with the size: {fmt(c['size_rho'], '+.2f')} (p = "
        f"{fmt(c['size_p'], '.3f')}). " + _which_resolved(c) + " The pairs share seeds and sizes, so the p-values "
        "are a rough guide.", "",
        f"At a matched time since the onset ({fmt(after, 'd')} steps, the {c.get('matched_pairs', 0)} pairs that left "
        f"the plateau), Spearman's rank correlation of p with the size: {fmt(c.get('after_onset_size_rho'), '+.2f')} "
        f"(p = {fmt(c.get('after_onset_size_p'), '.3f')}): "
        + ("resolved" if c.get("after_onset_size_p") is not None and c["after_onset_size_p"] < RESOLVED_LEVEL
           else "not resolved") + f" at level {RESOLVED_LEVEL:g}.", ""]


def _which_resolved(c: dict[str, Any]) -> str:
    resolved = [name for name, key in (("the onset step", "onset_p"), ("the size", "size_p"))
                if c[key] is not None and c[key] < RESOLVED_LEVEL]
    if not resolved:
        return f"Neither correlation is resolved at level {RESOLVED_LEVEL:g}."
    return f"Resolved at level {RESOLVED_LEVEL:g}: the correlation with {' and with '.join(resolved)}."


def seeds_markdown(sizes: Sequence[str], spread: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]],
                   verdicts: Sequence[dict[str, Any]], onset_rows: Sequence[dict[str, Any]] | None = None,
                   correlations: dict[str, Any] | None = None) -> str:
    """seeds.md: the verdict per seed, the spread over seeds, and the size steps."""
    from research.evaluation.results_table import format_table

    pair = lambda v, key: breakthroughness_pair(v[key]) if key in v else "-"
    shown = [{"seed": v["seed"], "mirage": v["mirage"], "p_rises_with_size": v.get(f"{P}_improves"),
              "exact_match_B": pair(v, "exact_match_breakthroughness"), "p_B": pair(v, f"{P}_breakthroughness"),
              "along_training": f"{len(v['along_training_mirage_sizes'])} of {v['along_training_sizes']}: "
                                + (", ".join(v["along_training_mirage_sizes"]) or "none")} for v in verdicts]
    spread_shown = [{**r, "values": " ".join(f"{x:.3f}" for x in r["values"]), "mean": f"{r['mean']:.3f}",
                     "sd": f"{r['sd']:.3f}"} for r in spread if r["metric"] in ("exact_match", "p")]
    steps_shown = [{**r, "rise": f"{r['rise']:+.3f}", "se": f"{r['se']:.3f}",
                    "rise_over_se": f"{r['rise_over_se']:+.2f}", "critical": f"{r['critical']:.2f}"} for r in steps]
    count = sum(v["mirage"] is True for v in verdicts)
    resolved = sum(r["resolved"] for r in steps)
    lengths = sorted({r["task"] for r in spread})
    judged = [v for v in verdicts if v["mirage"] is not None]
    why = (f"the runs score {len(lengths)} answer length ({', '.join(lengths)}), and the mirage compares the shortest "
           "with the longest" if len(lengths) < 2 else "a length lacks exact match or p at some size")
    headline = (f"**The mirage across sizes shows at {count} of {len(judged)} seeds**"
                + (f" ({len(verdicts) - len(judged)} without a verdict: {why})" if len(judged) < len(verdicts) else "")
                if judged else f"**No mirage verdict**: {why}")
    return "\n".join([
        "# Emergence across seeds", "",
        f"Sizes: {', '.join(sizes)}; seeds: {', '.join(str(v['seed']) for v in verdicts)}. "
        f"{headline} (study_report.sharpening_verdict: "
        "p rises with size at every length, and exact match's breakthroughness B at the longest answer is above "
        "the shortest's, 80% item-bootstrap intervals apart, while p's is not).",
        "Along training (each run's report/mirage_verdicts.csv: the same rule on one size's checkpoints, p "
        "ending above where it started), the sizes that show it, per seed.", "",
        "```", format_table(shown, ["seed", "mirage", "p_rises_with_size", "exact_match_B", "p_B", "along_training"]),
        "```", "",
        "## Spread over seeds at the end of training (p: teacher-forced per-digit accuracy; sd over seeds, n-1)", "",
        "```", format_table(spread_shown, ["task", "size", "metric", "values", "mean", "sd"]), "```", "",
        f"## Steps between consecutive sizes: {resolved} of {len(steps)} resolved by the seeds "
        f"(Welch's t test of the seed means, two-sided, level {RESOLVED_LEVEL:g})", "",
        "```", format_table(steps_shown, ["task", "metric", "from", "to", "rise", "se", "rise_over_se", "critical",
                                   "resolved"]),
        "```", "", *_onsets_markdown(onset_rows, correlations)])


def write_seed_report(workdirs: Sequence[str], sizes: Sequence[str], output_dir: str,
                      num_shots: int = 0) -> dict[str, str]:
    """Read the runs, check they are one study, and write the files of the module docstring."""
    from research.evaluation.results_table import write_rows
    from research.atomic_files import unwritable_reason, write_text_atomically

    reason = unwritable_reason(output_dir)  # before every workdir is read (it failed at the first write)
    if reason:
        raise ConfigError(f"--output_dir={output_dir}: {reason}; pass a folder the report can be written to.")
    if len(sizes) < 2:
        raise ConfigError(f"--sizes={list(sizes)}: a curve across sizes needs >= 2 sizes (e.g. the study's "
                          "report.mirage_sizes).")
    runs = [read_seed_run(w, sizes, num_shots) for w in workdirs]
    check_same_study(runs)
    table = seed_table(runs)
    spread = seed_spread(table)
    steps = size_steps(spread)
    verdicts = []
    for run in runs:
        along = along_training_verdicts(run["workdir"], sizes, num_shots)
        # None: the study scores one answer length, and the mirage compares lengths (the spread and
        # the size steps below still stand).
        verdict = mirage_verdict(run["rows"]) or {"mirage": None}
        verdicts.append({"seed": run["seed"], "workdir": run["workdir"], **verdict,
                         "along_training_mirage_sizes": [v["size"] for v in along if v["mirage"]],
                         "along_training_sizes": len(along)})
    onset_rows = onsets(runs, sizes, num_shots)
    correlations = None if onset_rows is None else onset_correlations(onset_rows)
    metadata = {"workdirs": list(workdirs), "sizes": list(sizes), "num_shots": num_shots}
    paths = {}
    for name, rows in (("seeds", table), ("seed_spread", spread), ("size_steps", steps), ("verdicts", verdicts),
                       *([("onsets", onset_rows)] if onset_rows is not None else [])):
        paths[name] = write_rows(rows, os.path.join(output_dir, name),
                                 metadata={**metadata, **({"correlations": correlations} if name == "onsets" else {})}
                                 )["csv"]
    paths["report"] = os.path.join(output_dir, "seeds.md")
    write_text_atomically(paths["report"], seeds_markdown(sizes, spread, steps, verdicts, onset_rows, correlations))
    return paths


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    try:
        paths = write_seed_report(f.workdirs, f.sizes, f.output_dir, f.num_shots)
    except ConfigError as error:
        sys.exit(f"error: {error}")
    with open(paths["report"], encoding="utf-8") as report:
        print(report.read())
    print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    flags.DEFINE_list("workdirs", None, "Finished emergence study workdirs of one config, differing in train.seed.")
    flags.DEFINE_list("sizes", None, "The sizes whose curve is read, small to large (e.g. report.mirage_sizes).")
    flags.DEFINE_string("output_dir", None, "Where the seed report is written.")
    flags.DEFINE_integer("num_shots", 0, "The final evaluation's shots to read (one of eval.final_shots).")
    flags.mark_flags_as_required(["workdirs", "sizes", "output_dir"])
    app.run(main)
