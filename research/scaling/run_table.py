"""A table of training runs (N, D, loss), read from CSV and checked at the edge.

Columns: `N` (parameters), `D` (training tokens), `loss` (nats/token) are required.
Optional: `status` (rows whose status is not "ok" are failed runs), `run` (an id shared by
the rows of one training curve, for Approach 1), `C` (the run's nominal FLOP budget, to
group IsoFLOP profiles exactly; otherwise C = 6 N D). Failed rows, and rows whose loss is
NaN or infinite (a diverged run), are reported and left out of every fit, never counted as 0.

Optional `seed` (a sweep's runs.csv has it): rows with the same N, D, budget and FLOPs whose
seeds differ are replicates of one design point, and enter the fits as one
(`RunTable.merge_replicates`), so a budget measured twice for run-to-run noise does not weigh
twice in the fit, nor count as twice the evidence in its bootstrap. Without a seed column
nothing is merged: rows at one (N, D) may be different runs (learning rates, or checkpoints
of several curves).

Compute accounting (`read_runs_csv(..., accounting=...)`):
  "nominal"  N is the `N` column (a sweep writes non-embedding N there) and C = 6 N D, the
             convention of Kaplan et al. 2020;
  "exact"    N is the `N_total` column (embeddings included) and C is the `C_exact` column:
             sizing's train FLOPs per token (attention and unembedding included) x D. At
             small sizes the two differ by a size-dependent factor (1.15-1.69x in the cpu_tiny
             ladder), which biases fitted exponents (Porian et al. 2024, "Resolving
             Discrepancies in Compute-Optimal Scaling of Language Models"). So the runs of one
             nominal budget C do not spend equal exact FLOPs: in cpu_tiny's smallest budget
             1.21-1.69x C, up to 39% apart. Under exact accounting an IsoFLOP profile is
             therefore not iso-FLOP; the fits place it at its runs' geometric mean
             (isoflop.budget_compute), and they group runs by the C column, not by C_exact.
"""
from __future__ import annotations

import csv
import dataclasses
import math

import numpy as np

from research.scaling.laws import FLOPS_PER_PARAM_TOKEN
from research.scaling.plateau import PLATEAU_STATUS

REQUIRED_COLUMNS = ("N", "D", "loss")
ACCOUNTINGS = ("nominal", "exact")
EXACT_COLUMNS = ("N_total", "C_exact")  # what accounting="exact" reads in place of N and 6 N D


class RunTableError(ValueError):
    """A user-facing problem with a run table; the message names the value and the fix."""


@dataclasses.dataclass(frozen=True)
class ExcludedRow:
    line: int  # line number in the CSV (header = 1; a row spanning lines: its last); 0 for in-memory tables
    reason: str


@dataclasses.dataclass(frozen=True)
class RunTable:
    """Runs that finished, as float64 arrays of one length R, plus the rows left out."""

    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    run: np.ndarray | None = None  # R strings: training-curve id, or None when each row is a run
    budget: np.ndarray | None = None  # R nominal FLOP budgets, or None to use 6 N D
    flops: np.ndarray | None = None  # R training FLOPs per run (exact accounting), or None for 6 N D
    seed: np.ndarray | None = None  # R training seeds (strings), or None: rows are never merged
    excluded: tuple[ExcludedRow, ...] = ()

    def __post_init__(self):
        for name in ("N", "D", "loss"):
            values = np.asarray(getattr(self, name), np.float64)
            object.__setattr__(self, name, values)
            bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
            if bad.size:
                raise RunTableError(f"{name}={float(values[bad[0]])!r} in run {bad[0]} is not a positive finite "
                                    f"number; fix the value or mark the row failed (status != ok).")
        assert self.N.shape == self.D.shape == self.loss.shape and self.N.ndim == 1
        if self.flops is not None:
            object.__setattr__(self, "flops", np.asarray(self.flops, np.float64))
            assert self.flops.shape == self.N.shape and np.all(self.flops > 0), "flops: one positive value per run"

    def __len__(self) -> int:
        return self.N.size

    @property
    def compute(self) -> np.ndarray:
        """Training FLOPs of each row: the `flops` given (exact accounting), else C = 6 N D."""
        return self.flops if self.flops is not None else FLOPS_PER_PARAM_TOKEN * self.N * self.D

    @property
    def flops_per_token(self) -> np.ndarray:
        """Training FLOPs per token of each row: C / D (6 N under nominal accounting)."""
        return self.compute / self.D

    def require(self, count: int, what: str) -> None:
        """Raise unless at least `count` runs are left for `what`."""
        if len(self) < count:
            raise RunTableError(f"{what} needs at least {count} finished runs, the table has {len(self)}; "
                                "add runs (or fix failed ones).")

    def select(self, rows: np.ndarray) -> "RunTable":
        """The runs at `rows` (indices or a boolean mask), with their run ids, budgets and FLOPs."""
        take = lambda v: None if v is None else v[rows]
        return RunTable(self.N[rows], self.D[rows], self.loss[rows], run=take(self.run), budget=take(self.budget),
                        flops=take(self.flops), seed=take(self.seed))

    def merge_replicates(self) -> "RunTable":
        """One row per design point: rows with equal N, D, budget and FLOPs and distinct seeds
        become one, at the geometric mean of their losses (the mean log loss, the scale the fits
        work in) and with the first row's run id and seed; rows keep the order of their first
        appearance. A table without seeds, or a group in which a seed repeats (so its rows are
        not replicates), is left as it is.

        Why: seeds of one (N, D) measure the same point. Fitted as separate rows they weigh
        that point k times, and a bootstrap that resamples them as independent runs treats the
        design as larger than it is. In the cpu_tiny sweep the smallest budget's 6 sizes were
        run twice, 12 of 30 rows: the budget farthest from the asymptote pulled Approach 3's E
        up (issue 9's tracker notes)."""
        if self.seed is None:
            return self
        columns = [self.N, self.D] + [v for v in (self.budget, self.flops) if v is not None]
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(zip(*(c.tolist() for c in columns))):
            groups.setdefault(key, []).append(i)
        points = [rows for group in groups.values()
                  for rows in ([group] if len(set(self.seed[group].tolist())) == len(group) else [[i] for i in group])]
        if len(points) == len(self):
            return self
        first = np.array([rows[0] for rows in points])
        loss = np.array([np.exp(np.mean(np.log(self.loss[rows]))) for rows in points])
        take = lambda v: None if v is None else v[first]
        return RunTable(self.N[first], self.D[first], loss, run=take(self.run), budget=take(self.budget),
                        flops=take(self.flops), seed=take(self.seed), excluded=self.excluded)

    @classmethod
    def from_arrays(cls, N, D, loss, **kwargs) -> "RunTable":
        """An in-memory table, with NaN / infinite losses left out as failed runs."""
        N, D, loss = (np.asarray(v, np.float64).reshape(-1) for v in (N, D, loss))
        ok = np.isfinite(loss)
        excluded = tuple(ExcludedRow(0, f"run {i}: loss={float(loss[i])!r}") for i in np.flatnonzero(~ok))
        kwargs = {k: (None if v is None else np.asarray(v)[ok]) for k, v in kwargs.items()}
        return cls(N[ok], D[ok], loss[ok], excluded=excluded, **kwargs)


def read_runs_csv(path: str, accounting: str = "nominal") -> RunTable:
    """Parse and validate a run table CSV (see the module docstring for columns and accounting)."""
    if accounting not in ACCOUNTINGS:
        raise RunTableError(f"accounting={accounting!r}: choose one of {ACCOUNTINGS}.")
    try:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is dropped, not read into the first column's name.
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            # The line each row ends on (line_num after reading it), which counts the blank lines
            # DictReader skips; a quoted field spanning lines puts its row at the last of them.
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise RunTableError(f"--runs_csv={path!r} does not exist; pass the path of a CSV with columns "
                            f"{', '.join(REQUIRED_COLUMNS)}.") from None
    required = REQUIRED_COLUMNS + (EXACT_COLUMNS if accounting == "exact" else ())
    missing = [c for c in required if c not in columns]
    if missing:
        raise RunTableError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(columns) or 'none'}); "
                            f"a run table needs columns {', '.join(required)}"
                            + (" (a sweep's runs.csv has them)." if accounting == "exact" else "."))
    kept, excluded = [], []
    for line, row in rows:
        status = (row.get("status") or "ok").strip()
        if status.lower() != "ok":
            excluded.append(ExcludedRow(line, f"status={status!r}"))
            continue
        values = {c: _number(path, line, c, row[c]) for c in required}
        if "C" in columns and (row.get("C") or "").strip():
            values["C"] = _number(path, line, "C", row["C"])
        if not math.isfinite(values["loss"]):
            excluded.append(ExcludedRow(line, f"loss={values['loss']!r}"))
            continue
        for c, v in values.items():
            if not (math.isfinite(v) and v > 0):
                raise RunTableError(f"{path}:{line}: {c}={row[c]!r} must be a positive number; "
                                    "fix it or mark the row failed (status != ok).")
        if "C" in values:
            _check_budget_units(path, line, row["C"], values)
        kept.append((values, (row.get("run") or "").strip(), (row.get("seed") or "").strip()))
    if not kept:
        # Rows a sweep's early-plateau rule marked finished fine: say so, and how to fit them anyway.
        flat = sum(row.reason == f"status={PLATEAU_STATUS!r}" for row in excluded)
        parts = ([f"{len(excluded) - flat} row(s) failed or diverged"] if len(excluded) > flat else []) + (
            [f"{flat} row(s) on the early plateau (status {PLATEAU_STATUS!r}; rerun the sweep with "
             "--config.fit.plateau_rule=False to fit them)"] if flat else [])
        raise RunTableError(f"{path}: no finished runs ({', '.join(parts) or 'no rows'}); "
                            "a fit needs rows with status ok and a finite loss.")
    column = lambda c: np.array([v[c] for v, _, _ in kept], np.float64)
    has_budget = "C" in columns and all("C" in v for v, _, _ in kept)
    has_run = "run" in columns and all(r for _, r, _ in kept)
    seeds = [s for _, _, s in kept]
    exact = accounting == "exact"
    return RunTable(column("N_total" if exact else "N"), column("D"), column("loss"),
                    run=np.array([r for _, r, _ in kept]) if has_run else None,
                    budget=column("C") if has_budget else None, flops=column("C_exact") if exact else None,
                    seed=np.array(seeds) if "seed" in columns and all(seeds) else None, excluded=tuple(excluded))


# How far a row's C (its nominal budget label) may lie from its 6 N D. A sweep's runs sit within a
# few percent of their budget (N and D rounded to whole layers and steps), and a table whose N
# counts embeddings that C did not within a few-fold; C in PF-days (Kaplan et al. 2020's unit,
# 8.64e19 FLOPs) is 1e-20 of it. Such a C was accepted: Approaches 1 and 2 then placed every
# optimum at absurd sizes (D_opt = 2e-11 tokens) while the printed exponents looked normal.
BUDGET_RATIO_BOUNDS = (0.1, 10.0)


def _check_budget_units(path: str, line: int, text: str, values: dict[str, float]) -> None:
    nominal = FLOPS_PER_PARAM_TOKEN * values["N"] * values["D"]
    ratio = values["C"] / nominal
    if not BUDGET_RATIO_BOUNDS[0] <= ratio <= BUDGET_RATIO_BOUNDS[1]:
        raise RunTableError(f"{path}:{line}: C={text.strip()!r} is {ratio:.3g} x 6*N*D = {nominal:.4g}; C must be the "
                            "run's budget in FLOPs, near 6 N D (PF-days x 8.64e19), or drop the C column to group "
                            "runs by 6 N D.")


def _number(path: str, line: int, column: str, text: str | None) -> float:
    try:
        return float((text or "").strip())
    except ValueError:
        raise RunTableError(f"{path}:{line}: {column}={text!r} is not a number; fix the value "
                            "or mark the row failed (status != ok).") from None
