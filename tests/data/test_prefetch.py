"""BlockPrefetcher: blocks in plan order, and every way the data can fail reaches the consumer."""
import numpy as np
import pytest

from research.data.prefetch import BlockPrefetcher


class _Source:
    """`n` batches {"x": [2, 3] filled with the batch number}, then StopIteration."""

    def __init__(self, n: int):
        self._n, self._given = n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._given == self._n:
            raise StopIteration
        self._given += 1
        return {"x": np.full((2, 3), self._given - 1, np.int32)}

    def get_state(self):
        return {"given": self._given}


def test_blocks_follow_the_plan_and_pad_the_short_block():
    prefetcher = BlockPrefetcher([_Source(100)], [4, 3], 4, put=lambda block: block)
    try:
        blocks = list(prefetcher)
    finally:
        prefetcher.close()
    assert [b.num_steps for b in blocks] == [4, 3]
    np.testing.assert_array_equal(blocks[1].batches["x"][:, 0, 0], [4, 5, 6, 0])  # zeros past the data
    assert blocks[1].positions[0].get_state() == b'{\n    "given": 7\n}'


def test_a_source_that_runs_out_is_an_error_not_the_end_of_training():
    # The data has 6 batches for 12 planned steps. A StopIteration handed through __next__ once
    # ended the loop's `for` after the first block (4 of 12 steps), silently.
    prefetcher = BlockPrefetcher([_Source(6)], [4, 4, 4], 4, put=lambda block: block)
    steps = 0
    try:
        with pytest.raises(RuntimeError, match="ran out after 6 batches, but the training plan needs 12"):
            for block in prefetcher:
                steps += block.num_steps
    finally:
        prefetcher.close()
    assert steps == 4


def test_an_error_reading_the_data_reaches_the_consumer():
    class Bad(_Source):
        def __next__(self):
            raise ValueError("bad document")

    prefetcher = BlockPrefetcher([Bad(1)], [4, 4], 4, put=lambda block: block)
    try:
        with pytest.raises(ValueError, match="bad document"):
            next(prefetcher)
    finally:
        prefetcher.close()
