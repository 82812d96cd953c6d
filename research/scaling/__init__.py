"""Scaling laws: fit Kaplan- and Chinchilla-style laws to a table of runs, and plan from them.

Units throughout: N parameters, D training tokens, C training FLOPs (C = 6 N D), loss in
nats per token. Files, one concern each:
  laws.py             the laws as frozen values (ChinchillaLaw, PowerLaw, SaturatingPowerLaw)
  run_table.py        RunTable: (N, D, loss) runs read from CSV and validated
  lbfgs.py            batched L-BFGS over thousands of starts at once (jitted, float64)
  huber_lse.py        Approach 3's objective: Huber loss of log-sum-exp predictions
  chinchilla_fit.py   Approach 3: L(N, D) from every run, grid of starts, bootstrap intervals
  envelope.py         Approach 1: lower envelope of loss against compute
  isoflop.py          Approach 2: IsoFLOP parabolas, and sweep layout
  kaplan_fit.py       L(N), L(D), L(C) with irreducible terms
  plots.py            IsoFLOP, loss-compute and law-contour figures (PNG)
  report.py           fit everything to a run table, write fit.json and the plots
  synthetic_corpus.py text from a random Markov source with an exactly known entropy rate
                      (optionally hierarchical and Zipf-weighted: a capacity-limited corpus)
  plateau.py          the early-plateau rule that leaves runs stuck at bigram statistics out
  held_out.py         fit without the largest budget, predict its best loss
  simulation.py       coverage of bootstrap intervals on many datasets drawn from a known law
"""
from research.scaling.chinchilla_fit import COARSE_GRID, PAPER_GRID, Approach3Fit, InitGrid, fit_chinchilla_law
from research.scaling.envelope import Approach1Fit, compute_frontier, fit_envelope, lower_envelope
from research.scaling.isoflop import Approach2Fit, fit_isoflop, isoflop_runs
from research.scaling.kaplan_fit import KaplanFit, fit_kaplan_laws, fit_saturating_power_law
from research.scaling.laws import (BESIROGLU_2024, FLOPS_PER_PARAM_TOKEN, HOFFMANN_2022, ChinchillaLaw, PowerLaw,
                                   SaturatingPowerLaw)
from research.scaling.run_table import RunTable, RunTableError, read_runs_csv
from research.scaling.synthetic_corpus import entropy_rate_nats, markov_source, synthetic_documents

__all__ = ["Approach1Fit", "Approach2Fit", "Approach3Fit", "BESIROGLU_2024", "COARSE_GRID", "ChinchillaLaw",
           "FLOPS_PER_PARAM_TOKEN", "HOFFMANN_2022", "InitGrid", "KaplanFit", "PAPER_GRID", "PowerLaw", "RunTable",
           "RunTableError", "SaturatingPowerLaw", "compute_frontier", "entropy_rate_nats", "fit_chinchilla_law",
           "fit_envelope", "fit_isoflop", "fit_kaplan_laws", "fit_saturating_power_law", "isoflop_runs",
           "lower_envelope", "markov_source", "read_runs_csv", "synthetic_documents"]
