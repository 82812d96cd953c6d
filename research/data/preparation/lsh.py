"""MinHash LSH banding: how many bands b of r rows make a Jaccard threshold.

Two documents with Jaccard similarity s share at least one band (and are clustered as
duplicates) with probability 1 - (1 - s**r)**b. Of the (b, r) with b * r <= num_permutations
that catch a pair AT the threshold with probability >= min_recall, we take the one with the
least false-positive area below the threshold (datasketch's MinHashLSH weighs both errors
equally instead, which catches a pair at the threshold only about half the time).
"""
from __future__ import annotations

import functools

from scipy import integrate


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard similarity becomes a duplicate candidate."""
    return 1.0 - (1.0 - similarity ** rows) ** bands


@functools.lru_cache(maxsize=None)
def lsh_bands(threshold: float, num_permutations: int, min_recall: float = 0.9) -> tuple[int, int]:
    """(bands, rows) for `threshold`, using at most `num_permutations` hashes."""
    best, best_key = (1, 1), None
    for bands in range(1, num_permutations + 1):
        for rows in range(1, num_permutations // bands + 1):
            recall = candidate_probability(threshold, bands, rows)
            false_positive = integrate.quad(lambda s: candidate_probability(s, bands, rows), 0.0, threshold)[0]
            # Prefer reaching min_recall; then fewer false positives; without any, the best recall.
            key = (0, false_positive) if recall >= min_recall else (1, -recall)
            if best_key is None or key < best_key:
                best, best_key = (bands, rows), key
    return best
