"""The figures of a scaling-law report, written as PNG files.

matplotlib's object API (Figure + savefig, which renders with Agg) rather than pyplot:
no global figure state and no display backend, so it runs headless and in tests.
"""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from research.scaling.envelope import Envelope
from research.scaling.isoflop import Approach2Fit
from research.scaling.kaplan_fit import KaplanFit
from research.scaling.laws import FLOPS_PER_PARAM_TOKEN, ChinchillaLaw, PowerLaw
from research.scaling.run_table import RunTable


def _save(fig: Figure, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_isoflop_profiles(fit: Approach2Fit, path: str) -> str:
    """Loss against N at each budget, with its parabola and vertex (Hoffmann et al. Fig. 3 left)."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    colors = _budget_colors(len(fit.profiles))
    for profile, color in zip(fit.profiles, colors):
        x = np.linspace(np.log(profile.N.min()) - 0.3, np.log(profile.N.max()) + 0.3, 100)
        ax.scatter(profile.N, profile.loss, s=12, color=color, label=f"C={profile.compute:.1e}")
        ax.plot(np.exp(x), np.polyval(profile.parabola, x), color=color, lw=1)
        ax.plot(profile.N_opt, profile.loss_opt, marker="v", color=color, ms=7)
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss (nats/token)", title="IsoFLOP profiles")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loss_vs_compute(table: RunTable, envelope: Envelope | None, law_C: KaplanFit | None, path: str) -> str:
    """Every run's loss against its compute, the lower envelope, and the fitted L(C)."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    points = ax.scatter(table.compute, table.loss, c=np.log10(table.N), s=8, cmap="viridis", alpha=0.7)
    fig.colorbar(points, ax=ax, label="log10 N")
    if envelope is not None:
        # Steps: between frontier runs the best loss is that of the last run reached.
        ax.plot(envelope.compute, envelope.loss, color="black", lw=1.5, drawstyle="steps-post",
                label="lower envelope")
    if law_C is not None:
        c = np.geomspace(table.compute.min(), table.compute.max(), 200)
        law = law_C.law
        ax.plot(c, law.loss(c), "--", color="red",
                label=f"L(C) = {law.E:.3g} + ({law.X_c:.2g}/C)^{law.alpha:.3g}")
    ax.set(xscale="log", xlabel="training FLOPs C = 6ND", ylabel="loss (nats/token)", title="loss against compute")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_law_contours(law: ChinchillaLaw, table: RunTable, path: str, *, compute_budget: float | None = None,
                      flops_per_token: PowerLaw | None = None) -> str:
    """Contours of L(N, D=C/6N) over (C, N) (D = C/f(N) under exact accounting's
    `flops_per_token` f), the runs, and the compute-optimal line.

    The axes reach `compute_budget` when it lies beyond the runs, so the extrapolated
    N_opt(C) (Hoffmann et al. Fig. 4 left) ends at the prediction.
    """
    c_max = max(table.compute.max(), compute_budget or 0.0) * 3
    c = np.geomspace(table.compute.min() / 3, c_max, 200)
    optimum = law.optimum_problem() is None  # else no compute-optimal line to draw
    n_opt = law.compute_optimal(c, flops_per_token)[0] if optimum else table.N
    n = np.geomspace(min(table.N.min(), n_opt.min()) / 3, max(table.N.max(), n_opt.max()) * 3, 200)
    C_NC, N_NC = np.meshgrid(c, n)
    per_token = FLOPS_PER_PARAM_TOKEN * N_NC if flops_per_token is None else flops_per_token(N_NC)
    loss = law.loss(N_NC, C_NC / per_token)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    levels = np.quantile(loss, np.linspace(0.02, 0.9, 14))
    contours = ax.contourf(C_NC, N_NC, loss, levels=np.unique(levels), cmap="viridis", extend="both")
    fig.colorbar(contours, ax=ax, label="predicted loss (nats/token)")
    ax.scatter(table.compute, table.N, s=6, color="white", edgecolor="black", lw=0.3, label="runs")
    if optimum:
        ax.plot(c, n_opt, color="red", lw=1.5, label=f"N_opt ∝ C^{law.optimal_exponents(flops_per_token)[0]:.3f}")
    if optimum and compute_budget is not None:
        ax.plot(compute_budget, law.compute_optimal(compute_budget, flops_per_token)[0], marker="*", color="red",
                ms=12, label=f"C={compute_budget:.2e}")
    xlabel = "training FLOPs C = 6ND" if flops_per_token is None else "training FLOPs C (exact)"
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="parameters N",
           title=f"L = {law.E:.3g} + {law.A:.3g}/N^{law.alpha:.3g} + {law.B:.3g}/D^{law.beta:.3g}")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def _budget_colors(count: int):
    from matplotlib import colormaps
    return colormaps["plasma"](np.linspace(0.0, 0.85, max(count, 1)))
