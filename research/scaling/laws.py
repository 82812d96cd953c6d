"""Scaling laws as frozen values: evaluate, invert for the compute-optimal allocation, sample.

Units: N parameters, D training tokens, C training FLOPs with the C = 6 N D approximation
(Kaplan et al. 2020, Hoffmann et al. 2022), loss in nats per token.

Published Approach-3 fits, kept for reference only (they are not fitted from data shipped here):
Hoffmann et al. 2022 ('Training Compute-Optimal Large Language Models', eq. 10):
E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28.
Besiroglu et al. 2024 ('Chinchilla Scaling: A replication attempt', refit of Figure 4's points):
E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658.
"""
from __future__ import annotations

import dataclasses

import numpy as np

FLOPS_PER_PARAM_TOKEN = 6.0  # forward + backward of a dense transformer, C = 6 N D


class NoOptimumError(ValueError):
    """A fitted law without a compute-optimal allocation (ChinchillaLaw.optimum_problem)."""


@dataclasses.dataclass(frozen=True)
class ChinchillaLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022, eq. 2)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        """Predicted loss (nats/token) of N parameters trained on D tokens; broadcasts."""
        N, D = np.asarray(N, np.float64), np.asarray(D, np.float64)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    @property
    def a(self) -> float:
        """N_opt ∝ C**a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C**b; a + b = 1."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        """N_opt = G (C/6)**a and D_opt = (C/6)**b / G (Hoffmann et al. eq. 4); NaN when the law
        has no optimum (optimum_problem)."""
        if self.optimum_problem():
            return float("nan")
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def optimum_problem(self) -> str | None:
        """Why the law has no compute-optimal allocation, or None. With alpha or beta <= 0 (a
        fit of too few or too noisy runs) loss does not fall with both N and D, and the
        allocation's formulas raise a negative number to fractional powers (complex numbers)."""
        if self.alpha > 0 and self.beta > 0 and self.A > 0 and self.B > 0:
            return None
        return (f"the fitted law (alpha={self.alpha:.3g}, beta={self.beta:.3g}, A={self.A:.3g}, B={self.B:.3g}) "
                "does not fall with both N and D, so it has no compute-optimal allocation; fit more runs "
                "(more sizes per budget, or budgets further apart)")

    def compute_optimal(self, C, flops_per_token: PowerLaw | None = None):
        """(N_opt, D_opt) minimising L under C = 6 N D, or under C = f(N) D when training costs
        f(N) = k N^s FLOPs per token (`flops_per_token`; exact accounting, where attention and
        the unembedding make small models dearer per parameter than 6 N). C in FLOPs, broadcasts.
        Setting dL/dN = 0 along f(N) D = C: N^(alpha + s beta) = alpha A C^beta / (s beta B k^beta).
        Raises NoOptimumError when optimum_problem() says there is none."""
        problem = self.optimum_problem()
        if problem:
            raise NoOptimumError(problem)
        C = np.asarray(C, np.float64)
        if flops_per_token is None:
            per = C / FLOPS_PER_PARAM_TOKEN
            return self.G * per**self.a, per**self.b / self.G
        k, s = flops_per_token.coefficient, flops_per_token.exponent
        power = self.alpha + s * self.beta
        N = (self.alpha * self.A / (s * self.beta * self.B * k**self.beta)) ** (1.0 / power) * C ** (self.beta / power)
        return N, C / (k * N**s)

    def optimal_exponents(self, flops_per_token: PowerLaw | None = None) -> tuple[float, float]:
        """(a, b) of N_opt ∝ C^a and D_opt ∝ C^b under compute_optimal's accounting: with
        f(N) = k N^s, a = beta / (alpha + s beta) and b = 1 - s a ((a, b) of the 6 N D form at s = 1)."""
        s = 1.0 if flops_per_token is None else flops_per_token.exponent
        a = self.beta / (self.alpha + s * self.beta)
        return a, 1.0 - s * a

    def sample(self, N, D, *, rel_noise: float, seed: int) -> np.ndarray:
        """Losses at (N, D) with multiplicative log-normal noise of std `rel_noise` (synthetic runs)."""
        rng = np.random.default_rng(seed)
        loss = self.loss(N, D)
        return loss * np.exp(rng.normal(0.0, rel_noise, np.shape(loss)))

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
                "a": self.a, "b": self.b, "G": self.G}


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x**exponent, e.g. N_opt(C) from Approaches 1 and 2."""

    coefficient: float
    exponent: float

    def __call__(self, x):
        return self.coefficient * np.asarray(x, np.float64) ** self.exponent

    @classmethod
    def fit(cls, x, y) -> "PowerLaw":
        """Least squares of log y on log x (how Hoffmann et al. fit N_opt(C) and D_opt(C))."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape and x.size >= 2, (x.shape, y.shape)
        exponent, log_coefficient = np.polyfit(np.log(x), np.log(y), 1)
        return cls(float(np.exp(log_coefficient)), float(exponent))

    def as_dict(self) -> dict[str, float]:
        return {"coefficient": self.coefficient, "exponent": self.exponent}


@dataclasses.dataclass(frozen=True)
class SaturatingPowerLaw:
    """Kaplan-style single-variable law with an irreducible term: L(X) = E + (X_c / X)**alpha."""

    E: float
    X_c: float
    alpha: float

    def loss(self, X):
        return self.E + (self.X_c / np.asarray(X, np.float64)) ** self.alpha

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "X_c": self.X_c, "alpha": self.alpha}


HOFFMANN_2022 = ChinchillaLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BESIROGLU_2024 = ChinchillaLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
