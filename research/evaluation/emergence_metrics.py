"""Scaling-curve shape metrics across a ladder of models, and the in-context-learning score.

Linearity and breakthroughness are the definitions of Srivastava et al. 2022, "Beyond the
Imitation Game" (BIG-bench), Appendix B. With models sorted by scale (x_1 < ... < x_n) and
their task scores y_1 .. y_n:

    I(y) = sign(argmax_i y_i - argmin_i y_i) * (max_i y_i - min_i y_i)
    L(y) = I(y) / RootMeanSquare({y_{i+1} - y_i}_{i=1}^{n-1})          linearity
    B(y) = I(y) / RootMedianSquare({y_{i+1} - y_i}_{i=1}^{n-1})        breakthroughness

    RootMeanSquare(z) = sqrt(mean_i z_i^2),  RootMedianSquare(z) = sqrt(median_i z_i^2)

I is the total improvement, signed by whether the best model is larger than the worst. A
curve that rises in equal steps has L = B = n - 1; a curve that rises in one jump keeps L
at sqrt(n - 1) while its median step, and so B's denominator, goes to zero. Scales only
order the models; the metrics do not depend on their values.

The in-context-learning score is that of Olsson et al. 2022, "In-context Learning and
Induction Heads": the loss at the 500th token of a context minus the loss at the 50th,
averaged over examples (negative: later tokens are predicted better, from context).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from research.models.config import ConfigError


def _sorted_scores(scales: Sequence[float], scores: Sequence[float]) -> np.ndarray:
    scales, scores = np.asarray(scales, np.float64), np.asarray(scores, np.float64)
    if scales.shape != scores.shape or scales.ndim != 1:
        raise ConfigError(f"scales {scales.shape} and scores {scores.shape} must be 1-D and of equal length.")
    if len(scores) < 2:
        raise ConfigError(f"a scaling curve needs at least 2 models, got {len(scores)}.")
    if len(np.unique(scales)) != len(scales):
        raise ConfigError(f"scales {scales.tolist()} repeat a value; each model needs a distinct scale.")
    if not np.all(np.isfinite(scores)):
        raise ConfigError(f"scores {scores.tolist()} must be finite.")
    return scores[np.argsort(scales)]


def total_improvement(scales: Sequence[float], scores: Sequence[float]) -> float:
    """I(y) = sign(argmax y - argmin y) * (max y - min y), models ordered by scale."""
    y = _sorted_scores(scales, scores)
    return float(np.sign(np.argmax(y) - np.argmin(y)) * (y.max() - y.min()))


def _ratio(improvement: float, denominator: float) -> float:
    # A flat curve (I = 0) scores 0; a jump whose other steps are all zero scores +-inf.
    if improvement == 0:
        return 0.0
    return improvement / denominator if denominator > 0 else float(np.sign(improvement) * np.inf)


def linearity(scales: Sequence[float], scores: Sequence[float]) -> float:
    """BIG-bench linearity L = I(y) / RootMeanSquare(consecutive differences)."""
    y = _sorted_scores(scales, scores)
    return _ratio(total_improvement(scales, scores), float(np.sqrt(np.mean(np.diff(y) ** 2))))


def breakthroughness(scales: Sequence[float], scores: Sequence[float]) -> float:
    """BIG-bench breakthroughness B = I(y) / RootMedianSquare(consecutive differences)."""
    y = _sorted_scores(scales, scores)
    return _ratio(total_improvement(scales, scores), float(np.sqrt(np.median(np.diff(y) ** 2))))


def in_context_learning_score(token_losses: Sequence[np.ndarray], *, early_token: int = 50,
                              late_token: int = 500) -> float:
    """mean_n loss_n[late_token] - mean_n loss_n[early_token] (Olsson et al. 2022), in nats.

    token_losses: per example, the loss (-log p) of each token of one long context, in
    order. Tokens are counted from 1 as in the paper: the 50th token is index 49.
    """
    if not 1 <= early_token < late_token:
        raise ConfigError(f"early_token={early_token}, late_token={late_token}: need 1 <= early_token < late_token.")
    if not len(token_losses):
        raise ConfigError("in_context_learning_score needs at least one example.")
    short = [i for i, losses in enumerate(token_losses) if len(losses) < late_token]
    if short:
        raise ConfigError(f"example {short[0]} has {len(token_losses[short[0]])} tokens, fewer than "
                          f"late_token={late_token}; use longer contexts or a smaller late_token.")
    late = np.mean([losses[late_token - 1] for losses in token_losses])
    early = np.mean([losses[early_token - 1] for losses in token_losses])
    return float(late - early)
