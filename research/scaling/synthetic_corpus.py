"""A synthetic corpus with a known entropy rate: text from a seeded random k-th order Markov source.

Every character depends on the previous `order` characters through a transition table
drawn from a symmetric Dirichlet(concentration); a smaller concentration gives peakier,
lower-entropy rows. The entropy rate

    H = sum_s pi(s) H(P(. | s))        (nats per character)

uses the stationary distribution pi over the V^order contexts (power iteration), and is
the loss no language model can beat on this text: a scaling sweep on it can set its fitted
irreducible loss E beside the truth. Tokenised, the bound per token is H times the mean
characters per token (`nats_per_token`).

Documents start in a context drawn from pi, so every character, the first ones included,
is a draw from the stationary process; a model without that context pays a little more
than H on a document's first `order` characters. Document i depends only on (seed, i),
so documents can be generated in any order or in parallel.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz "


@dataclasses.dataclass(frozen=True, eq=False)
class MarkovSource:
    """A k-th order Markov chain over `alphabet`: transitions_SV[s, v] = P(next = v | context s).

    Context s encodes the last `order` symbols as base-V digits, oldest most significant.
    """

    alphabet: str
    order: int
    transitions_SV: np.ndarray

    @property
    def num_contexts(self) -> int:
        return self.transitions_SV.shape[0]

    def next_context(self, context, symbol):
        """Context after emitting `symbol` from `context` (drop the oldest digit, append)."""
        return (context * len(self.alphabet)) % self.num_contexts + symbol

    def stationary_S(self, tol: float = 1e-13, max_iter: int = 100_000) -> np.ndarray:
        """Stationary distribution over contexts, by power iteration (float64)."""
        S, V = self.transitions_SV.shape
        successor_SV = self.next_context(np.arange(S)[:, None], np.arange(V)[None, :])
        pi_S = np.full(S, 1.0 / S)
        for _ in range(max_iter):
            new_S = np.bincount(successor_SV.ravel(), weights=(pi_S[:, None] * self.transitions_SV).ravel(),
                                minlength=S)
            if np.abs(new_S - pi_S).sum() < tol:
                return new_S
            pi_S = new_S
        raise RuntimeError(f"power iteration did not converge in {max_iter} steps; the chain mixes too slowly "
                           "(raise concentration).")

    def entropy_rate_nats(self) -> float:
        """Entropy per character in nats: stationary average of the rows' entropies."""
        p_SV = self.transitions_SV
        row_entropy_S = -np.sum(p_SV * np.log(np.where(p_SV > 0, p_SV, 1.0)), axis=1)
        return float(self.stationary_S() @ row_entropy_S)

    def sample(self, rngs: list[np.random.Generator], length: int) -> tuple[np.ndarray, np.ndarray]:
        """(first_context_B, ids_BT): B = len(rngs) sequences of `length` symbol ids.

        Row i is drawn with rngs[i] alone, from a first context drawn from the stationary
        distribution (so the process is stationary from its first symbol).
        """
        cdf_SV = np.cumsum(self.transitions_SV, axis=1)
        cdf_SV[:, -1] = 1.0  # guard the last bin against rounding below 1
        pi_cdf_S = np.cumsum(self.stationary_S())
        uniforms_BT = np.stack([rng.random(length + 1) for rng in rngs])
        first_context_B = np.minimum(np.searchsorted(pi_cdf_S, uniforms_BT[:, 0] * pi_cdf_S[-1]), self.num_contexts - 1)
        context_B = first_context_B
        ids_BT = np.empty((len(rngs), length), np.int64)
        for t in range(length):  # sequential in t, vectorised over documents
            ids_BT[:, t] = (cdf_SV[context_B] < uniforms_BT[:, t + 1, None]).sum(axis=1)
            context_B = self.next_context(context_B, ids_BT[:, t])
        return first_context_B, ids_BT

    def sample_ids(self, rngs: list[np.random.Generator], length: int) -> np.ndarray:
        """(len(rngs), length) symbol ids: `sample` without the first contexts."""
        return self.sample(rngs, length)[1]

    def log_probs(self, ids_T: np.ndarray, first_context: int) -> np.ndarray:
        """log P(ids[t] | preceding context) for a sequence that starts in `first_context`."""
        logp_T = np.empty(len(ids_T))
        context = first_context
        for t, symbol in enumerate(ids_T):
            logp_T[t] = np.log(self.transitions_SV[context, symbol])
            context = self.next_context(context, int(symbol))
        return logp_T


def markov_source(seed: int = 0, *, alphabet: str = DEFAULT_ALPHABET, order: int = 2,
                  concentration: float = 0.2, zipf_exponent: float = 0.0, hierarchical: bool = False) -> MarkovSource:
    """The random source identified by (seed, alphabet, order, concentration, zipf_exponent, hierarchical).

    Each transition row is Dirichlet(concentration * V * w) with Zipf base weights
    w_v ∝ (v + 1)^-zipf_exponent (uniform, the symmetric Dirichlet, at 0). A positive exponent
    makes some symbols frequent and most rare, as in text, so the stationary probabilities
    of the V^order contexts are heavy-tailed: a model learns the frequent contexts first and
    each further nat needs ever rarer contexts, i.e. more capacity and more data. That gives
    loss a graded, capacity-limited descent rather than one transition.

    hierarchical=True draws the rows level by level, as a hierarchical Dirichlet (the
    generative model behind Teh 2006's hierarchical Pitman-Yor LM, with discount 0): the
    order-0 distribution is w, and the row of each order-j context is
    Dirichlet(concentration * V * row of its order-(j-1) suffix). Each order then adds some
    information (H_0 > H_1 > ... > H_order, by steps), so the loss falls in stages a model
    reaches one by one, not in one jump when it first attends to the oldest symbol.
    """
    if len(set(alphabet)) != len(alphabet) or len(alphabet) < 2:
        raise ValueError(f"alphabet={alphabet!r} needs >= 2 distinct characters, each once.")
    if order < 1 or len(alphabet) ** order > 1_000_000:
        raise ValueError(f"order={order} with {len(alphabet)} symbols gives {len(alphabet)}**{order} contexts; "
                         "use order >= 1 with at most 1e6 contexts.")
    if concentration <= 0:
        raise ValueError(f"concentration={concentration} must be > 0 (e.g. 0.2; smaller = lower entropy).")
    if not zipf_exponent >= 0:
        raise ValueError(f"zipf_exponent={zipf_exponent} must be >= 0 (0 = symmetric rows, ~1 = text-like).")
    rng = np.random.default_rng([seed, order, len(alphabet)])
    V = len(alphabet)
    weight_V = (np.arange(1, V + 1, dtype=np.float64) ** -zipf_exponent)
    # At zipf_exponent 0 this is exactly np.full(V, concentration): the same draws as before.
    alpha_V = concentration * V * weight_V / weight_V.sum() if zipf_exponent else np.full(V, concentration)
    if hierarchical:
        rows_SV = (weight_V / weight_V.sum())[None]
        for j in range(1, order + 1):
            # The suffix of context s (its newest j - 1 symbols) is s mod V^(j-1); the floor
            # keeps every Dirichlet parameter positive where a parent probability underflowed.
            parent_SV = rows_SV[np.arange(V**j) % V ** (j - 1)]
            rows_SV = np.stack([rng.dirichlet(np.maximum(concentration * V * p_V, 1e-3)) for p_V in parent_SV])
        transitions_SV = rows_SV
    else:
        transitions_SV = rng.dirichlet(alpha_V, size=V ** order)
    # Dirichlet draws can underflow to exactly 0; a floor keeps the chain irreducible (so pi
    # is unique) and every log-probability finite, at a negligible cost in entropy.
    transitions_SV = np.maximum(transitions_SV, 1e-12)
    transitions_SV /= transitions_SV.sum(axis=1, keepdims=True)
    return MarkovSource(alphabet, order, transitions_SV)


def synthetic_documents(seed: int, num_docs: int, doc_len: int, *, source_seed: int = 0,
                        alphabet: str = DEFAULT_ALPHABET, order: int = 2, concentration: float = 0.2,
                        zipf_exponent: float = 0.0, hierarchical: bool = False, batch: int = 256,
                        start: int = 0) -> Iterator[str]:
    """Documents start..start+num_docs-1 of `doc_len` characters each, deterministic in (seed, index)."""
    if num_docs < 0 or doc_len < 1:
        raise ValueError(f"num_docs={num_docs}, doc_len={doc_len}: need num_docs >= 0 and doc_len >= 1.")
    source = markov_source(source_seed, alphabet=alphabet, order=order, concentration=concentration,
                           zipf_exponent=zipf_exponent, hierarchical=hierarchical)
    symbols = np.array(list(alphabet))
    for first in range(start, start + num_docs, batch):
        indices = range(first, min(first + batch, start + num_docs))
        _, ids_BT = source.sample([np.random.default_rng([seed, i]) for i in indices], doc_len)
        for row in ids_BT:
            yield "".join(symbols[row])


def entropy_rate_nats(*, source_seed: int = 0, alphabet: str = DEFAULT_ALPHABET, order: int = 2,
                      concentration: float = 0.2, zipf_exponent: float = 0.0, hierarchical: bool = False) -> float:
    """Exact entropy rate (nats per character) of the source `synthetic_documents` samples."""
    return markov_source(source_seed, alphabet=alphabet, order=order, concentration=concentration,
                         zipf_exponent=zipf_exponent, hierarchical=hierarchical).entropy_rate_nats()


def nats_per_token(nats_per_character: float, num_characters: int, num_tokens: int) -> float:
    """The entropy bound in a tokenizer's units: H_char * characters / tokens over a sample."""
    if num_characters <= 0 or num_tokens <= 0:
        raise ValueError(f"num_characters={num_characters}, num_tokens={num_tokens} must be positive.")
    return nats_per_character * num_characters / num_tokens


def source_of(synthetic: Any) -> MarkovSource:
    """The source a synthetic data config (research.data.SyntheticConfig, or its ConfigDict in an
    experiment config, where fields added later may be absent) describes."""
    return markov_source(synthetic.source_seed, alphabet=synthetic.alphabet, order=synthetic.order,
                         concentration=synthetic.concentration,
                         zipf_exponent=getattr(synthetic, "zipf_exponent", 0.0),
                         hierarchical=getattr(synthetic, "hierarchical", False))
