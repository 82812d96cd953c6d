"""The lowest loss a language model can reach on the synthetic corpus, given the context it sees.

The entropy rate H of a k-th order Markov source (synthetic_corpus.py) is the bound for a
model that always sees the last k characters. A causal LM trained on packed windows does
not: a window starts without the characters before it, so its first k predictions pay
H_j = H(X_t | the j previous characters) with j < k, and H_0 > H_1 > ... > H_k = H.
`window_bound_nats` averages those over the targets of a document cut into windows exactly
as research/data/objectives.py cuts it (its characters and its eos, as the loss does), so a
sweep can set its fitted irreducible loss E beside the loss that is actually reachable.
"""
from __future__ import annotations

import numpy as np

from research.scaling.synthetic_corpus import MarkovSource


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def context_entropies_nats(source: MarkovSource) -> np.ndarray:
    """[order + 1] nats per character: H_j = H(X_t | X_{t-j}, ..., X_{t-1}) under the stationary
    process, for j = 0 (the unigram entropy) .. order (the entropy rate)."""
    V, k = len(source.alphabet), source.order
    # The stationary (k+1)-gram distribution; the context index has the oldest symbol most
    # significant, so a C-order reshape puts symbols oldest-first along the axes.
    joint = (source.stationary_S()[:, None] * source.transitions_SV).reshape((V,) * (k + 1))
    # H_j = H(last j+1 symbols) - H(last j symbols): marginalise the oldest axes away.
    gram_entropy = [0.0] + [_entropy(joint.sum(axis=tuple(range(k - j))).ravel()) for j in range(k + 1)]
    return np.diff(np.asarray(gram_entropy))


def window_bound_nats(source: MarkovSource, doc_chars: int, seq_len: int) -> float:
    """Mean best-possible loss over a document's targets (nats per target), the targets the
    training loss averages: its `doc_chars` characters and its eos.

    The tokens of a document are "▁" (SentencePiece's word-start mark), its characters and
    eos, cut into windows of `seq_len` inputs; the target at token i is predicted from the
    tokens of its window before it. A character costs H_j with j the characters it sees.
    The eos costs what a model that knows its place in the window (and whether the window
    opens the document, by its "▁") but nothing else can do: the eos follows the input at
    window position p, and of the m inputs at position p in windows like its own, one is
    followed by eos and m - 1 by characters (the source is stationary, so nothing in them
    tells them apart). Predicting eos there with probability 1/m costs m h(1/m) nats per
    document in all (h the binary entropy), eos and the m - 1 characters' share together.
    """
    if doc_chars < 1 or seq_len < 2:
        raise ValueError(f"doc_chars={doc_chars} must be >= 1 and seq_len={seq_len} >= 2.")
    entropies = context_entropies_nats(source)
    token = np.arange(1, doc_chars + 1)  # token index of each character ("▁" is token 0)
    window_start = (token - 1) // seq_len * seq_len  # the input at token - 1 predicts it
    context = token - window_start - (window_start == 0)  # characters seen; "▁" is not one
    characters = float(entropies[np.minimum(context, source.order)].sum())
    # The eos (token doc_chars + 1) is predicted from the input at token doc_chars.
    position = doc_chars % seq_len
    if doc_chars < seq_len:  # the first window, the only one that holds "▁": its place is known
        like_it = 1
    else:
        like_it = int(np.sum((np.arange(seq_len, doc_chars + 1) % seq_len) == position))
    q = 1.0 / like_it
    eos = like_it * (-q * np.log(q) - (1 - q) * np.log1p(-q)) if like_it > 1 else 0.0
    return (characters + eos) / (doc_chars + 1)
