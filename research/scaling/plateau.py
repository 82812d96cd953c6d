"""The early-plateau rule: which runs never left the loss plateau a model sits on before it
learns to use its context, and so say nothing about N and D.

A causal LM predicts token t+1 with token t as its input, so with no working attention it
can still reach the order-1 conditional entropy H_1 = H(X_{t+1} | X_t) (bigram statistics);
going below H_1 needs attention to earlier tokens. Small transformers sit at H_1 for a
while and then drop, a transition rather than a power law in N or D (the cpu_tiny sweep of
1-layer models was made of such runs). The rule:

    a run is on the early plateau when its final loss > H_1 - PLATEAU_MARGIN_NATS

i.e. it has gained less than 0.05 nats per token over bigram statistics. Such runs are
marked status "plateau" in runs.csv (kept, with their loss, but left out of every fit, as
failed runs are) and listed in fit.json. H_1 is exact on the synthetic corpus
(synthetic_bound.context_entropies_nats) and the plug-in estimate from token counts on real
text (`order1_entropy_nats`; with many tokens it is close, and a low estimate only makes the
rule flag fewer runs).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

PLATEAU_MARGIN_NATS = 0.05
PLATEAU_STATUS = "plateau"


def order1_entropy_nats(sequences: Iterable[Sequence[int]]) -> float:
    """Plug-in H(X_{t+1} | X_t) in nats over the consecutive token pairs of `sequences`."""
    pairs = [np.stack([np.asarray(s[:-1]), np.asarray(s[1:])], axis=1) for s in sequences if len(s) >= 2]
    if not pairs:
        raise ValueError("order1_entropy_nats needs at least one sequence of >= 2 tokens.")
    joint = np.concatenate(pairs)
    _, pair_counts = np.unique(joint, axis=0, return_counts=True)
    _, first_counts = np.unique(joint[:, 0], return_counts=True)
    total = joint.shape[0]
    h_pair = -np.sum(pair_counts / total * np.log(pair_counts / total))
    h_first = -np.sum(first_counts / total * np.log(first_counts / total))
    return float(h_pair - h_first)


def on_plateau(loss: float, order1_entropy: float, margin: float = PLATEAU_MARGIN_NATS) -> bool:
    """The rule of the module docstring for one run's final loss (nats per token)."""
    return loss > order1_entropy - margin


def mark_plateau_runs(records: Sequence[dict], order1_entropy: float | None,
                      margin: float = PLATEAU_MARGIN_NATS) -> list[dict]:
    """Copies of `records` with finished runs on the plateau given status "plateau" and a reason."""
    out = []
    for record in records:
        if order1_entropy is not None and record["status"] == "ok" and on_plateau(record["loss"], order1_entropy, margin):
            record = {**record, "status": PLATEAU_STATUS,
                      "error": f"early plateau: loss {record['loss']:.4f} > H_1 {order1_entropy:.4f} - {margin} nats"}
        out.append(record)
    return out
