"""Handmade vocabulary and documents for objective and packing tests (no tokenizer needed)."""
import numpy as np

from research.data import SpecialTokens

# pad 0, eos 1, unk 2, bos 3, mask 4, ordinary ids 5..899, T5 sentinels 900..999 (sentinel i = 999 - i).
HANDMADE = SpecialTokens(vocab_size=1000, pad_id=0, eos_id=1, bos_id=3, mask_id=4, num_extra_ids=100,
                         special_ids=(0, 1, 3, 4, *range(900, 1000)))


def random_documents(num_docs: int, *, seed: int = 0, min_len: int = 1, max_len: int = 40) -> list[np.ndarray]:
    """Documents of ordinary token ids in [5, 900)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 900, size=rng.integers(min_len, max_len + 1)).astype(np.int32) for _ in range(num_docs)]
