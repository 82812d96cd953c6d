"""Decoder prefix LM through the real pipeline: the batch carries `prefix`, the loss reads it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data import DataConfig, make_batch_iterator
from research.models import build_model, get_config
from research.models.config import ConfigError
from research.training import losses


def test_pipeline_batch_carries_prefix_and_the_loss_uses_it(tokenizer):
    batch = next(make_batch_iterator(DataConfig(max_documents=6), tokenizer=tokenizer, objective="prefix_lm",
                                     batch_size=2, seq_len=32, shard_index=0, shard_count=1))
    assert "prefix" in batch
    # Each packed document starts with its prefix (>= 1 token) and the loss skips the
    # predictions made inside it, except the one of the first suffix token.
    for prefix, segments, weights in zip(batch["prefix"], batch["segment_ids"], batch["loss_weights"]):
        for s in np.unique(segments[segments > 0]):
            p_doc, w_doc = prefix[segments == s], weights[segments == s]
            p = int(p_doc.sum())
            assert p >= 1 and (p_doc[:p] == 1).all() and (p_doc[p:] == 0).all()
            assert (w_doc[:p - 1] == 0).all() and (w_doc[p - 1:] > 0).all()
        assert (prefix[segments == 0] == 0).all()

    objective = losses.get_objective("prefix_lm", "decoder")
    config = get_config("gpt2-tiny").replace(vocab_size=tokenizer.vocab_size, max_len=32)
    objective.check_batch(batch, config.max_len)
    model = build_model(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32), jnp.int32))["params"]
    bidirectional, _ = losses.objective_loss(model, params, batch, None, objective=objective)
    causal_batch = {k: v for k, v in batch.items() if k != "prefix"}
    causal, _ = losses.objective_loss(model, params, causal_batch, None, objective=objective)
    assert abs(float(bidirectional) - float(causal)) > 1e-4
    # A batch without the prefix would train a causal LM under the prefix-LM name: refused.
    with pytest.raises(ConfigError, match="prefix"):
        objective.check_batch(causal_batch, config.max_len)
