"""LSH banding meets the recall target at the threshold with the fewest false positives below it."""
from research.data.preparation.lsh import candidate_probability, lsh_bands


def test_candidate_probability_hand_values():
    assert candidate_probability(1.0, 3, 4) == 1.0
    assert abs(candidate_probability(0.5, 2, 2) - (1 - 0.75 ** 2)) < 1e-12  # 1 - (1 - 0.25)^2


def test_bands_reach_recall_at_threshold_within_the_budget():
    for threshold in (0.7, 0.8, 0.9):
        bands, rows = lsh_bands(threshold, 112)
        assert bands * rows <= 112
        assert candidate_probability(threshold, bands, rows) >= 0.9
        # And pairs well below the threshold are rarely candidates.
        assert candidate_probability(threshold - 0.3, bands, rows) < 0.15
    assert lsh_bands(0.8, 112) == (13, 8)  # P(0.8) = 0.908, P(0.5) = 0.05 (see the module docstring)
