"""How far run-to-run noise alone moves a fitted number, and whether several estimates agree within it.

A sweep that repeats some runs with another seed measures the noise of a final loss as a
relative standard deviation sigma (the spread of log losses between seeds). `noise_interval`
refits on copies of the run table whose losses are each multiplied by exp(normal(0, sigma)),
independently per run, and returns the central interval of the refitted values: the spread
that this design's noise alone gives the estimate. Approaches 1 and 2 read N_opt off a few
noisy runs per budget (a vertex of a parabola through six points, or the best of a few
rungs), so their exponents move much more under this noise than Approach 3's, whose
bootstrap interval comes from its own fit.

`common_point` asks whether intervals of several estimates share a value: if they do, the
estimates' disagreement is within what the noise can produce; if not, it is a real
difference (a biased approach, a misspecified law) and a reviewer should be told so.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from research.scaling.run_table import RunTable, RunTableError

NOISE_RESAMPLES = 400


def noise_interval(table: RunTable, estimate: Callable[[RunTable], float], noise: float, *,
                   resamples: int = NOISE_RESAMPLES, confidence: float = 0.8, seed: int = 0) -> dict | None:
    """{"interval": [lo, hi], "resamples": used, "failed": count} of estimate(table with noisy
    losses) over `resamples` draws; None when noise is 0 or no draw could be fitted. A draw
    whose fit fails (RunTableError: say, an IsoFLOP profile that is no longer convex) is
    counted, not hidden, and left out of the percentiles."""
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise={noise!r} must be a relative standard deviation >= 0 (e.g. 0.005 for 0.5%).")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1) and resamples={resamples} >= 1.")
    if noise == 0:
        return None
    rng = np.random.default_rng(seed)
    values, failed = [], 0
    for _ in range(resamples):
        noisy = dataclasses.replace(table, loss=table.loss * np.exp(rng.normal(0.0, noise, table.loss.shape)))
        try:
            value = float(estimate(noisy))
        except RunTableError:
            failed += 1
            continue
        if np.isfinite(value):
            values.append(value)
        else:
            failed += 1
    if not values:
        return None
    tail = 100 * (1 - confidence) / 2
    return {"interval": [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))],
            "resamples": len(values), "failed": failed}


def common_point(intervals: Mapping[str, Sequence[float] | None]) -> dict:
    """{"overlap": [lo, hi] or None, "agree": bool, "missing": [names without an interval]}:
    whether every given interval contains one common value (agree is False when fewer than
    two intervals are known: agreement cannot be judged)."""
    known = {k: v for k, v in intervals.items() if v is not None}
    missing = sorted(k for k, v in intervals.items() if v is None)
    if len(known) < 2:
        return {"overlap": None, "agree": False, "missing": missing}
    lo, hi = max(v[0] for v in known.values()), min(v[1] for v in known.values())
    return {"overlap": [float(lo), float(hi)] if lo <= hi else None, "agree": bool(lo <= hi), "missing": missing}
