"""Each pretraining preset, run as shipped, learns more than token frequencies.

The bar is the unigram entropy of the validation corpus under the run's own tokenizer:
the loss of the best model that ignores context. Each run takes about a minute.
"""
import glob
import os

import numpy as np
import pytest

from experiments.configs import pretrain
from research import data
from research.data.sources import document_source
from research.training import train_and_evaluate


def unigram_entropy(tokenizer, data_config) -> float:
    """Entropy (nats) of token frequencies over the whole validation split."""
    counts = np.zeros(tokenizer.vocab_size)
    for document in document_source(data_config, "validation"):
        np.add.at(counts, tokenizer.encode(document), 1)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("preset", pretrain.PRESETS)
def test_preset_beats_unigram_entropy(preset, tmp_path):
    config = pretrain.get_config(preset)
    config.train.progress_bar = False
    final = train_and_evaluate(config, str(tmp_path))
    data_config = data.DataConfig(**config.data.to_dict())
    (model_path,) = glob.glob(os.path.join(tmp_path, "tokenizers", "*.model"))
    tokenizer = data.Tokenizer.load(model_path, num_extra_ids=config.data.tokenizer.num_extra_ids)
    entropy = unigram_entropy(tokenizer, data_config)
    print(f"{preset}: eval loss {final['eval_loss']:.3f} nats vs unigram entropy {entropy:.3f}")
    assert final["eval_loss"] < entropy - 0.3, (final["eval_loss"], entropy)
    assert len(os.listdir(tmp_path / "checkpoints")) >= 2  # at least one before the end
