"""Scaling-curve summaries of result rows: each metric across model sizes, with the
BIG-bench linearity and breakthroughness of the curve (research/evaluation/emergence_metrics.py).

    summary = curve_summary(final_rows, scale="params_non_embedding",
                            group_by=("task", "num_shots"), metrics=("exact_match", "token_accuracy"))
    summary[0]  # {"task": "addition_2digit", "num_shots": 0, "metric": "exact_match",
                #  "values": [0.0, 0.0, 0.01, 0.05, 0.4], "linearity": 2.27, "breakthroughness": 13.72, ...}

Curves are oriented so that higher is better before the shape metrics are computed:
metrics where lower is better (edit distance, Brier score, perplexities) are negated, so a
positive breakthroughness always means a sharp *improvement* with scale. `values` are the
raw metric values, ordered by scale.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from research.evaluation.emergence_metrics import breakthroughness, linearity, mean_resolution, total_improvement
from research.models.config import ConfigError

LOWER_IS_BETTER = frozenset({"token_edit_distance", "brier_score", "token_perplexity", "word_perplexity",
                             "byte_perplexity", "bits_per_byte"})


def oriented(metric: str, value: float) -> float:
    """`value` with the sign that makes larger better."""
    return -value if metric in LOWER_IS_BETTER else value


def curve_summary(rows: Sequence[dict[str, Any]], *, scale: str, group_by: Sequence[str],
                  metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One summary row per (group, metric) present in `rows`, groups in first-seen order.

    Each group must hold one row per scale (e.g. final checkpoints only); groups with fewer
    than two scales get no shape metrics (None).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
    out = []
    for key, members in groups.items():
        scales = [float(m[scale]) for m in members]
        if len(set(scales)) != len(scales):
            raise ConfigError(f"group {dict(zip(group_by, key))} has two rows at {scale}={scales}; summarise one "
                              "row per model (e.g. its final checkpoint).")
        members = [m for _, m in sorted(zip(scales, members), key=lambda pair: pair[0])]
        ordered_scales = sorted(scales)
        for metric in metrics:
            if not all(metric in m for m in members):
                continue
            values = [float(m[metric]) for m in members]
            summary = {**dict(zip(group_by, key)), "metric": metric, "num_models": len(values),
                       "values": [round(v, 6) for v in values], "smallest": values[0], "largest": values[-1]}
            y = [oriented(metric, v) for v in values]
            shape = len(values) >= 2 and all(math.isfinite(v) for v in y)
            summary["total_improvement"] = total_improvement(ordered_scales, y) if shape else None
            summary["linearity"] = linearity(ordered_scales, y) if shape else None
            summary["breakthroughness"] = breakthroughness(ordered_scales, y) if shape else None
            # No per-item scores, so no noise floor: the paper's values, under both names
            # (noisy_curve_summary's rows differ between the two).
            summary["paper_linearity"], summary["paper_breakthroughness"] = summary["linearity"], summary["breakthroughness"]
            out.append(summary)
    return out


# --- Per-item analyses: rows that carry "items" {metric: [per-example values]} ----------------

ITEM_METRICS = ("exact_match", "teacher_forced_accuracy", "teacher_forced_prob", "target_log_prob",
                "token_edit_distance", "answer_tokens", "token_accuracy", "brier_score",
                "end_is_greedy", "end_prob")


def positions_product(correct: Sequence[Sequence[float]]) -> tuple[np.ndarray, Callable]:
    """(per-item columns, transform) such that transform(mean of the columns over items) is the
    mean over items of p_1...p_(L_i), p_j the share of items right at answer token j among those
    with a j-th token: independent errors at each position's own accuracy (study_report.mirage_table).
    Columns per item: right at token j (0 past its end), has a token j, and which length it has
    (0..M), so a bootstrap resample of the items recomputes every p_j and the length mix."""
    lengths = [len(c) for c in correct]
    M = max(lengths, default=0)
    columns = np.zeros((len(correct), 2 * M + M + 1), np.float64)
    for i, c in enumerate(correct):
        columns[i, :len(c)] = c
        columns[i, M:M + len(c)] = 1.0
        columns[i, 2 * M + len(c)] = 1.0

    def product(means: np.ndarray) -> np.ndarray:
        right, present, mix = means[..., :M], means[..., M:2 * M], means[..., 2 * M:]
        p = np.where(present > 0, right / np.maximum(present, 1e-300), 1.0)
        prefix = np.concatenate([np.ones(p.shape[:-1] + (1,)), np.cumprod(p, axis=-1)], axis=-1)  # lengths 0..M
        return np.sum(mix * prefix, axis=-1)

    return columns, product


def _with_length_mix(accuracy: Sequence[float], lengths: Sequence[float]) -> tuple[np.ndarray, Any]:
    """(columns, transform) for the item bootstrap of sum_l share_l p^l: per-item accuracy beside
    a one-hot of the item's answer length, so a resample's shares move with its items."""
    lengths = np.asarray(lengths, np.float64)
    distinct = np.unique(lengths)
    columns = np.concatenate([np.asarray(accuracy, np.float64)[:, None],
                              (lengths[:, None] == distinct[None, :]).astype(np.float64)], axis=1)

    def p_to_the_L(means: np.ndarray) -> np.ndarray:
        return np.sum(means[..., 1:] * means[..., :1] ** distinct, axis=-1)

    return columns, p_to_the_L


def mirage_table(final_rows: Sequence[dict[str, Any]], *, samples: int = 1000, confidence: float = 0.8,
                 seed: int = 0) -> list[dict[str, Any]]:
    """Exact match beside p^L (Schaeffer et al. 2023), per size and task, with item-bootstrap
    intervals: p is the teacher-forced per-token accuracy and L the answer's token count, both
    over the target's tokens (metrics.py; the stop after the answer is not one of them: see
    end_accuracy below). Answers differ in length (base-26 addition of k digits gives k or k + 1
    tokens), so `p_to_the_L` is exact match's expectation for independent tokens at accuracy p,
    the mean over items of p^(L_i): sum over lengths l of share_l p^l (`answer_tokens` reports the
    mean L). (mean p)^(mean L) sat below it by Jensen's inequality (p^L is convex in L): 0.0105 at
    k = 2, p = 0.5, and exact match of independent digits 'disagreed' with it in 44% of
    evaluations of 1,000 items where an 80% interval should miss 20%. Also the
    teacher-forced probability, log-probability of the target and edit distance.

    `exact_match_minus_p_to_the_L`: the paired difference, its interval from the same item
    resamples as both sides' (emergence_metrics.bootstrap_difference_interval). Exact match
    agrees with p^L (`exact_match_agrees_with_p_to_the_L`) when that interval contains 0, to
    within one item (1 / items, the step of a mean over the items): where exact match is 0 on
    every item its resamples are all 0, and a p^L of 1e-4 would put the interval just below 0
    for want of any item that could show it. Two overlapping intervals are no such test, as
    both come from the same items. Below 0, exact
    match is below p^L: the wrong tokens are spread over more items than independent errors at one
    per-token accuracy p would spread them. Dependence between errors is one cause; positions of
    unequal accuracy are another, with independent errors: accuracies p_1..p_L give exact match
    p_1...p_L, at most (mean p)^L (the AM-GM inequality; in addition some digits carry, some do
    not). The per-item accuracies kept here cannot tell the two apart. A decision p does not count,
    such as the stop, is a third (p^L q below). Above 0, the wrong tokens gather on fewer items.

    Where the items keep each answer token's teacher-forced correctness (answer_token_greedy),
    `p_positions_product`: exact match's prediction for independent errors at each position's own
    accuracy p_j (the share of items right at their j-th answer token, over the items that have
    one), the mean over items of p_1...p_(L_i); exact match below p^L but agreeing with it leaves
    unequal positions as the cause, and a gap beside it dependence between the errors
    (`exact_match_minus_p_positions_product` with its paired interval and agrees, as above).

    Where the items score the end decision (metrics.py; research.evaluation.harness's do), exact
    match's prediction for independent decisions, all of them: `end_accuracy` q (greedy decoding
    stops right after the gold target, given it), `p_to_the_L_times_end` p^L q, and
    `exact_match_minus_p_to_the_L_times_end` with `exact_match_agrees_with_p_to_the_L_times_end`
    by the same paired test (the end is a decision of its own kind, so q multiplies p^L rather
    than being averaged into p).
    """
    from research.evaluation.emergence_metrics import bootstrap_difference_interval, bootstrap_mean_interval

    out = []
    for row in final_rows:
        items = row.get("items")
        if not items or "teacher_forced_accuracy" not in items:
            continue
        L = float(np.mean(items["answer_tokens"]))
        p_and_lengths, p_to_the_L = _with_length_mix(items["teacher_forced_accuracy"], items["answer_tokens"])
        entry = {"task": row["task"], "num_shots": row["num_shots"], "size": row["size"],
                 "params_non_embedding": row["params_non_embedding"],
                 **{k: row[k] for k in ("step", "tokens") if k in row},  # rows along training keep their place
                 "items": len(items["exact_match"]), "answer_tokens": L}
        columns = [("exact_match", None, "exact_match"), ("teacher_forced_accuracy", None, "p"),
                   (p_and_lengths, p_to_the_L, "p_to_the_L"),
                   ("teacher_forced_prob", None, "p_prob"), ("target_log_prob", None, "target_log_prob"),
                   ("token_edit_distance", None, "token_edit_distance")]
        for metric, transform, name in columns:
            values = items[metric] if isinstance(metric, str) else metric
            value, low, high = bootstrap_mean_interval(values, samples=samples, confidence=confidence,
                                                       seed=seed, transform=transform)
            entry[name], entry[f"{name}_interval"] = value, [low, high]
        step = 1.0 / len(items["exact_match"])
        comparisons = [(p_and_lengths, p_to_the_L, "p_to_the_L")]
        if "end_is_greedy" in items:
            p_and_end = np.concatenate([p_and_lengths, np.asarray(items["end_is_greedy"], np.float64)[:, None]], axis=1)
            with_end = lambda m: p_to_the_L(m[..., :-1]) * m[..., -1]  # noqa: E731
            for values, transform, name in [(items["end_is_greedy"], None, "end_accuracy"),
                                            (p_and_end, with_end, "p_to_the_L_times_end")]:
                value, low, high = bootstrap_mean_interval(values, samples=samples, confidence=confidence,
                                                           seed=seed, transform=transform)
                entry[name], entry[f"{name}_interval"] = value, [low, high]
            comparisons.append((p_and_end, with_end, "p_to_the_L_times_end"))
        if "answer_token_greedy" in items:
            by_position, product = positions_product(items["answer_token_greedy"])
            value, low, high = bootstrap_mean_interval(by_position, samples=samples, confidence=confidence,
                                                       seed=seed, transform=product)
            entry["p_positions_product"], entry["p_positions_product_interval"] = value, [low, high]
            comparisons.append((by_position, product, "p_positions_product"))
        for others, transform, name in comparisons:
            value, low, high = bootstrap_difference_interval(items["exact_match"], others, samples=samples,
                                                             confidence=confidence, seed=seed,
                                                             transform_others=transform)
            entry[f"exact_match_minus_{name}"], entry[f"exact_match_minus_{name}_interval"] = value, [low, high]
            entry[f"exact_match_agrees_with_{name}"] = bool(low - step <= 0.0 <= high + step)
        out.append(entry)
    return out


def noisy_curve_summary(final_rows: Sequence[dict[str, Any]], *, scale: str, group_by: Sequence[str],
                        metrics: Sequence[str], samples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Like `curve_summary`, from per-item values: item-bootstrap intervals on every value and on
    I, L, B, and L, B reported only above noise (emergence_metrics.curve_shape_with_noise)."""
    from research.evaluation.emergence_metrics import curve_shape_with_noise

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in final_rows:
        if row.get("items"):
            groups.setdefault(tuple(row[k] for k in group_by), []).append(row)
    out = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda m: float(m[scale]))
        for metric in metrics:
            if not all(metric in m["items"] for m in members):
                continue
            sign = -1.0 if metric in LOWER_IS_BETTER or metric == "token_edit_distance" else 1.0
            lengths = {len(m["items"][metric]) for m in members}
            if len(lengths) != 1:
                continue  # items differ between sizes: no paired bootstrap
            scores = [sign * np.asarray(m["items"][metric], np.float64) for m in members]
            if not all(np.all(np.isfinite(s)) for s in scores):
                continue  # as curve_summary: a curve with a non-finite value has no shape (one aborted the report)
            shape = curve_shape_with_noise([float(m[scale]) for m in members], scores, samples=samples, seed=seed)
            shape["values"] = [sign * v + 0.0 for v in shape["values"]]  # + 0.0: no "-0.0" for a flipped zero
            shape["value_intervals"] = [sorted(sign * v for v in pair) for pair in shape["value_intervals"]]
            out.append({**dict(zip(group_by, key)), "metric": metric, "num_models": len(members), **shape})
    return out


def transition_table(rows: Sequence[dict[str, Any]], task: str, metrics: Sequence[str], *,
                     samples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """`task`'s metrics at every checkpoint of every size (the curve along training), with
    item-bootstrap intervals; sorted by size then step."""
    from research.evaluation.emergence_metrics import bootstrap_mean_interval

    out = []
    for row in sorted((r for r in rows if r["task"] == task), key=lambda r: (r["params_non_embedding"], r["step"])):
        entry = {"task": task, "num_shots": row["num_shots"], "size": row["size"], "step": row["step"],
                 "tokens": row["tokens"]}
        for metric in metrics:
            values = row.get("items", {}).get(metric)
            if values is None:
                continue
            value, low, high = bootstrap_mean_interval(values, samples=samples, seed=seed)
            entry[metric], entry[f"{metric}_interval"] = value, [low, high]
        out.append(entry)
    return out


# A jump along training: the largest rise between consecutive checkpoints is this many times the
# root-median-square of all rises (squares floored at a mean's resolution squared, mean_resolution). The item
# bootstrap cannot see training noise (checkpoint to checkpoint wander of a model learning
# nothing), and over 24 checkpoints such wander alone gives breakthroughness 5-9 (seen on the
# cpu_tiny study's chance-level curves). Simulated for 23 steps (200,000 curves, 3 seeds): i.i.d.
# Gaussian steps exceed a ratio of 8.6-8.7 in 0.1% of curves, heavy-tailed ones (Student t, 3
# degrees of freedom) 19 in 1% and 40-42 in 0.1%.
JUMP_RATIO = 25.0


def transition_shapes(rows: Sequence[dict[str, Any]], task: str, metrics: Sequence[str], *,
                      samples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Per size and shot setting, the shape of `task`'s curve along training (steps as the scale axis): I, L, B
    with the noise rule of emergence_metrics.curve_shape_with_noise (every checkpoint scores the
    same items, so the bootstrap is paired), and the largest rise between two consecutive
    checkpoints (`largest_step`, `at_step`) beside its noise (`largest_step_se`, the bootstrap
    standard error of that step), and `jump_ratio`, that step over the root-median-square step.
    `jump` (a genuine transition): above item noise (the curve's range above its noise range,
    and the largest step > NOISE_Z standard errors) and jump_ratio > JUMP_RATIO (above training noise).

    As in noisy_curve_summary, a metric where lower is better (LOWER_IS_BETTER: edit distance,
    Brier score) is negated for the shape, so a rise is an improvement: its largest_step is its
    largest fall, shown in the metric's own sign (negative) as `first` and `last` are, while
    total_improvement, jump_ratio, L and B stay oriented (positive: better along training)."""
    from research.evaluation.emergence_metrics import NOISE_Z
    from research.evaluation.emergence_metrics import curve_shape_with_noise

    # One curve per size and shot setting: a study evaluating 0- and 1-shot at every checkpoint
    # has two curves per size, whose rows must not merge into one with repeated steps.
    by_curve: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if row["task"] == task and row.get("items"):
            by_curve.setdefault((row["size"], row.get("num_shots", 0)), []).append(row)
    out = []
    for (size, shots), members in sorted(by_curve.items(),
                                         key=lambda kv: (kv[1][0]["params_non_embedding"], kv[0][1])):
        members = sorted(members, key=lambda r: r["step"])
        if len(members) < 2:
            continue
        for metric in metrics:
            if not all(metric in m["items"] for m in members) or len({len(m["items"][metric]) for m in members}) != 1:
                continue
            # Oriented, larger better: an edit distance collapsing to 0 is the jump, one blowing up is not.
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            scores_MI = sign * np.asarray([m["items"][metric] for m in members], np.float64)
            if not np.all(np.isfinite(scores_MI)):
                continue  # no shape for a curve with a non-finite value, as above
            shape = curve_shape_with_noise([m["step"] for m in members], scores_MI, samples=samples, seed=seed)
            steps = np.diff(np.asarray(shape["values"]))
            k = int(np.argmax(steps))
            rng = np.random.default_rng(seed)
            index_BI = rng.integers(0, scores_MI.shape[1], size=(samples, scores_MI.shape[1]))
            boot_step = scores_MI[k + 1, index_BI].mean(axis=1) - scores_MI[k, index_BI].mean(axis=1)
            step_se = float(np.std(boot_step))
            typical = float(np.sqrt(np.median(np.maximum(steps**2, mean_resolution(scores_MI) ** 2))))
            jump_ratio = float(steps[k]) / typical
            jump = bool(shape["above_noise"] and steps[k] > NOISE_Z * step_se and jump_ratio > JUMP_RATIO)
            out.append({"task": task, "size": size, "num_shots": shots,
                        "params_non_embedding": members[0]["params_non_embedding"],
                        # + 0.0: no "-0.0" for a flipped zero
                        "metric": metric, "checkpoints": len(members), "first": sign * shape["values"][0] + 0.0,
                        "last": sign * shape["values"][-1] + 0.0, "largest_step": sign * float(steps[k]) + 0.0,
                        "at_step": int(members[k + 1]["step"]), "largest_step_se": step_se,
                        "step_spacing": float(np.median(np.diff([m["step"] for m in members]))),
                        "jump_ratio": jump_ratio, "jump": jump,
                        **{k2: shape[k2] for k2 in ("items", "total_improvement", "total_improvement_se",
                                                    "noise_range", "above_noise", "linearity", "breakthroughness",
                                                    "breakthroughness_interval")}})
    return out


def jump_verdicts(shapes: Sequence[dict[str, Any]], *, whole: str = "exact_match",
                  per_token: Sequence[str] = ("teacher_forced_accuracy", "teacher_forced_prob")) -> list[dict[str, Any]]:
    """For every curve along training (a transition_shapes task, size and shot setting) whose
    `whole`-answer metric jumps: "genuine" when every `per_token` metric jumps too, within one
    checkpoint of it (per-token accuracy is itself thresholded at the argmax, so the
    probability of the right token must jump as well); "mirage" otherwise (Schaeffer et al.
    2023: a steadier per-token gain that the all-or-nothing metric makes look sudden). Curves
    lacking any of the metrics are skipped."""
    by_curve: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
    for row in shapes:
        by_curve.setdefault((row["task"], row["size"], row["num_shots"]), {})[row["metric"]] = row
    out = []
    for (task, size, shots), metrics in by_curve.items():
        if any(m not in metrics for m in (whole, *per_token)) or not metrics[whole]["jump"]:
            continue
        w = metrics[whole]
        together = [metrics[m]["jump"] and abs(metrics[m]["at_step"] - w["at_step"]) <= w["step_spacing"]
                    for m in per_token]
        row = {"task": task, "size": size, "num_shots": shots, "verdict": "genuine" if all(together) else "mirage",
               "at_step": w["at_step"], f"{whole}_jump_ratio": w["jump_ratio"]}
        for m in per_token:
            row.update({f"{m}_jump_ratio": metrics[m]["jump_ratio"], f"{m}_at_step": metrics[m]["at_step"]})
        out.append(row)
    return out


def sharpening_verdict(shapes: Sequence[dict[str, Any]], lengths: dict[str, float], *,
                       premise: str = "monotone", whole: str = "exact_match",
                       part: str = "teacher_forced_accuracy") -> dict[str, Any] | None:
    """Whether one family of curves (the sizes' curve at every answer length, or one size's
    curve along training at every length) shows the mirage of Schaeffer et al. 2023, as the
    issue states it: `whole`'s breakthroughness grows with the answer length L while `part`'s
    (the per-token metric) does not.
      1. the premise: `part` improves at every length: rises at every step ("monotone", across
         sizes) or ends above where it starts ("net", along training, where a few checkpoints
         may dip);
      2. `whole`'s breakthroughness at the longest length is above the shortest length's, their
         80% item-bootstrap intervals apart;
      3. `part`'s is not: its longest-length interval reaches down to the shortest's.
    `shapes`: noisy curve shapes (noisy_curve_summary / transition_shapes rows, one family) with
    "task", "metric", "values" (or "first" and "last", in the metric's own sign; for a
    lower-is-better `part` "improves" means falls), "breakthroughness" and
    "breakthroughness_interval" (oriented, larger better, as those functions give it); `lengths`:
    {task: mean answer tokens}, the tasks read. A curve within item noise has no
    breakthroughness: then 2 fails, and 3 holds. None when a length lacks either metric."""
    by_key = {(s["task"], s["metric"]): s for s in shapes if s["task"] in lengths}
    tasks = [t for t in lengths if (t, whole) in by_key and (t, part) in by_key]
    if len(tasks) < 2 or len(tasks) != len(lengths):
        return None
    shortest, longest = min(tasks, key=lengths.get), max(tasks, key=lengths.get)
    better = lambda values: [oriented(part, v) for v in values]  # a fall of edit distance is a rise
    if premise == "monotone":  # one value is no rise (np.all of no steps is True)
        improves = all(len(values) > 1 and np.all(np.diff(values) > 0)
                       for values in (better(by_key[(t, part)]["values"]) for t in tasks))
    elif premise == "net":  # transition_shapes rows carry their curve's first and last values
        ends = lambda row: better((row["first"], row["last"]) if "first" in row else (row["values"][0],
                                                                                       row["values"][-1]))
        improves = all(ends(by_key[(t, part)])[1] > ends(by_key[(t, part)])[0] for t in tasks)
    else:
        raise ValueError(f"premise={premise!r}: 'monotone' or 'net'.")

    def apart(metric: str) -> bool:
        # .get: curve_summary rows (evaluations cached without per-item values) have no interval
        low, high = (by_key[(t, metric)].get("breakthroughness_interval") for t in (shortest, longest))
        return bool(low and high and high[0] > low[1])

    b = lambda task, metric: by_key[(task, metric)]["breakthroughness"]
    whole_sharper, part_sharper = apart(whole), apart(part)
    return {"shortest": shortest, "longest": longest, f"{part}_improves": bool(improves),
            f"{whole}_breakthroughness": [b(shortest, whole), b(longest, whole)],
            f"{part}_breakthroughness": [b(shortest, part), b(longest, part)],
            f"{whole}_sharper": whole_sharper, f"{part}_sharper": part_sharper,
            "mirage": bool(improves and whole_sharper and not part_sharper)}
