"""Scaling-curve summaries of result rows: each metric across model sizes, with the
BIG-bench linearity and breakthroughness of the curve (research/evaluation/emergence_metrics.py).

    summary = curve_summary(final_rows, scale="params_non_embedding",
                            group_by=("task", "num_shots"), metrics=("exact_match", "token_accuracy"))
    summary[0]  # {"task": "addition_2digit", "num_shots": 0, "metric": "exact_match",
                #  "values": [0.0, 0.0, 0.01, 0.05, 0.4], "linearity": 1.9, "breakthroughness": 11.4, ...}

Curves are oriented so that higher is better before the shape metrics are computed:
metrics where lower is better (edit distance, Brier score, perplexities) are negated, so a
positive breakthroughness always means a sharp *improvement* with scale. `values` are the
raw metric values, ordered by scale.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from research.evaluation.emergence_metrics import breakthroughness, linearity, total_improvement
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
            out.append(summary)
    return out
