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
(synthetic_bound.context_entropies_nats). On real text it is the held-out cross-entropy of a
bigram model counted on training tokens (`bigram_cross_entropy_nats`), not the plug-in
entropy of the same tokens (`order1_entropy_nats`): with a 512-piece vocabulary and a few
hundred thousand tokens most bigrams are seen once, the plug-in estimate falls far below what
any bigram model reaches on new text (3.09 nats on the stdlib corpus), and a low H_1 flags
MORE runs, not fewer: it flagged all 30 runs of the stdlib_tiny sweep, models that beat
bigram statistics among them. The held-out estimate errs high, towards flagging fewer.

The rule only means something where the lowest reachable loss lies well below H_1: on a
source whose H_1 is (nearly) its entropy rate (an order-1 chain; a hierarchical order-3 source
at low concentration, H_1 0.188 against a bound of 0.175 nats) the source's own predictor
would be flagged, every run left out, and the advice to train longer could not help.
`rule_problem` says so, and the sweep then does not apply the rule (known bound: synthetic
corpus only).
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


def bigram_cross_entropy_nats(train: Iterable[Sequence[int]], held_out: Iterable[Sequence[int]],
                              vocab_size: int) -> float:
    """Held-out cross-entropy (nats per token) of the bigram model counted on `train`:
    P(b | a) = lam c(a, b) / c(a) + (1 - lam) P(b), with P(b) the add-one unigram, and lam the
    value in LAMBDAS best on `held_out` (one number fitted to the held-out tokens)."""
    def pairs(sequences: Iterable[Sequence[int]]) -> np.ndarray:
        chunks = [np.stack([np.asarray(s[:-1]), np.asarray(s[1:])], axis=1) for s in sequences if len(s) >= 2]
        if not chunks:
            raise ValueError("bigram_cross_entropy_nats needs sequences of >= 2 tokens in both sets.")
        return np.concatenate(chunks).astype(np.int64)

    train_ab, test_ab = pairs(train), pairs(held_out)
    if max(train_ab.max(), test_ab.max()) >= vocab_size:
        raise ValueError(f"a token id is >= vocab_size={vocab_size}.")
    pair_counts = np.bincount(train_ab[:, 0] * vocab_size + train_ab[:, 1], minlength=vocab_size * vocab_size)
    first_counts = np.bincount(train_ab[:, 0], minlength=vocab_size)
    unigram = (np.bincount(train_ab[:, 1], minlength=vocab_size) + 1.0) / (len(train_ab) + vocab_size)
    seen = pair_counts[test_ab[:, 0] * vocab_size + test_ab[:, 1]]
    context = first_counts[test_ab[:, 0]]
    bigram = np.where(context > 0, seen / np.maximum(context, 1), 0.0)
    return float(min(-np.mean(np.log(lam * bigram + (1 - lam) * unigram[test_ab[:, 1]])) for lam in LAMBDAS))


LAMBDAS = tuple(np.linspace(0.0, 0.99, 100))


def on_plateau(loss: float, order1_entropy: float, margin: float = PLATEAU_MARGIN_NATS) -> bool:
    """The rule of the module docstring for one run's final loss (nats per token)."""
    return loss > order1_entropy - margin


def rule_problem(order1_entropy: float, reachable_loss: float | None,
                 margin: float = PLATEAU_MARGIN_NATS) -> str | None:
    """Why the rule cannot tell plateau runs from the best possible ones, or None: the lowest
    reachable loss (e.g. synthetic_bound.window_bound_nats, in the eval loss's units; None when
    unknown) is not more than `margin` below H_1, so even it is "on the plateau"."""
    if reachable_loss is None or order1_entropy - reachable_loss > margin:
        return None
    return (f"H_1 {order1_entropy:.4f} is within {margin} nats of the lowest reachable loss {reachable_loss:.4f} "
            "(this corpus has little to learn beyond bigram statistics): the rule would leave out even a perfect model")


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
