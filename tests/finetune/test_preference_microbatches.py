"""train.microbatches=k gives one batch's preference objective with train.z_loss > 0: every term a mean over pairs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research.finetune.preference_losses import PreferenceConfig, make_preference_loss
from research.training.state import TrainState
from research.training.train_step import make_train_step

from tests.finetune.test_preference_losses import _tiny_decoder, mean_log_z_squared


def _pairs(vocab_size):
    """4 pairs of very different response lengths: train_step's strided split (rows i, i+2) puts the
    short ones in one microbatch and the long ones in the other."""
    rng = np.random.default_rng(0)
    pairs, length = 4, 16
    batch = {}
    for side, shift in (("chosen", 0), ("rejected", 1)):
        batch[f"{side}_tokens"] = rng.integers(4, vocab_size, (pairs, length)).astype(np.int32)
        mask = np.zeros((pairs, length), np.float32)
        for row, n in enumerate([2, 12, 3, 14]):
            mask[row, 4:4 + n - shift * (row % 2)] = 1
        batch[f"{side}_mask"] = mask
    batch.update(ref_chosen_logps=rng.normal(-30, 3, pairs).astype(np.float32),
                 ref_rejected_logps=rng.normal(-30, 3, pairs).astype(np.float32))
    return batch


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo"])
def test_two_microbatches_give_one_batchs_loss_and_gradient_with_z_loss(loss):
    # z_loss was a mean over the batch's tokens while the step weights microbatches by pairs:
    # dpo_tiny with z_loss 0.1 had grad norm 0.62226 at 1 microbatch and 0.62262 at 2.
    model, params = _tiny_decoder()
    params = jax.tree.map(lambda x: x * 20, params)  # a log Z far from 0, so the z-loss term weighs
    batch = _pairs(model.config.vocab_size)
    loss_fn = make_preference_loss(PreferenceConfig(loss=loss), z_loss=0.1)
    deterministic = lambda model, params, batch, rng: loss_fn(model, params, batch, None)  # no dropout keys
    optimizer = optax.sgd(1.0)  # the update is minus the gradient

    def step(microbatches):
        train_step = make_train_step(model, deterministic, optimizer, lambda step: 1.0, microbatches=microbatches)
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                           rng=jax.random.PRNGKey(0))
        new, metrics = jax.jit(train_step)(state, batch)
        return jax.tree.map(lambda a, b: np.asarray(b - a), params, new.params), jax.device_get(metrics)

    (update_1, metrics_1), (update_2, metrics_2) = step(1), step(2)
    for key in ("loss", "total_loss", "z_loss", "grad_norm"):
        np.testing.assert_allclose(metrics_2[key], metrics_1[key], rtol=2e-5, err_msg=key)
    scale = max(float(np.abs(u).max()) for u in jax.tree.leaves(update_1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale), update_1, update_2)
    # The logged z_loss: each pair's mean log Z ** 2 over its chosen and rejected response tokens,
    # averaged over the pairs.
    per_pair = [mean_log_z_squared(model, params, np.stack([batch["chosen_tokens"][i], batch["rejected_tokens"][i]]),
                                   np.stack([batch["chosen_mask"][i], batch["rejected_mask"][i]])) for i in range(4)]
    np.testing.assert_allclose(metrics_1["z_loss"], np.mean(per_pair), rtol=1e-4)
