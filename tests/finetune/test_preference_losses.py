"""DPO / IPO against trl's DPOTrainer loss on the same log-probabilities; SimPO by hand."""
import collections
import logging
import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from research.finetune.preference_losses import PreferenceConfig, preference_margin_loss


def trl_dpo_loss(per_token_logps, completion_mask, ref_chosen, ref_rejected, *, loss_type, beta):
    """trl's DPOTrainer._compute_loss on a stub model that returns `per_token_logps` (rows
    [chosen..., rejected...]), with precomputed reference log-probs."""
    from trl import DPOTrainer

    rows, length = completion_mask.shape
    outputs = types.SimpleNamespace(
        log_probs=torch.tensor(per_token_logps), entropy=torch.zeros(rows, length - 1),
        mean_logits=torch.zeros(rows, length - 1), is_top1=torch.zeros(rows, length - 1, dtype=torch.bool))
    identity = lambda x: x
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=identity, gather=identity),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0, use_weighting=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(rows, length, dtype=torch.long), "attention_mask": torch.ones(rows, length),
              "completion_mask": torch.tensor(completion_mask),
              "ref_chosen_logps": torch.tensor(ref_chosen), "ref_rejected_logps": torch.tensor(ref_rejected)}
    return float(DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, False))


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_matches_trl(loss_type):
    rng = np.random.default_rng(0)
    pairs, length = 4, 9
    completion_mask = np.zeros((2 * pairs, length), np.float32)
    for row in range(2 * pairs):  # prompt then a response of a different length in every row
        start = rng.integers(1, 4)
        completion_mask[row, start:start + rng.integers(2, length - start)] = 1
    # Log-probs of target tokens 1..T-1, zero outside the response (trl masks them with labels = -100).
    per_token = (-rng.random((2 * pairs, length - 1)) * 3 * completion_mask[:, 1:]).astype(np.float32)
    ref_chosen, ref_rejected = (-rng.random(pairs) * 10).astype(np.float32), (-rng.random(pairs) * 10).astype(np.float32)
    beta = 0.3
    expected = trl_dpo_loss(per_token, completion_mask, ref_chosen, ref_rejected,
                            loss_type={"dpo": "sigmoid"}.get(loss_type, loss_type), beta=beta)

    logps = per_token.sum(-1)
    lengths = completion_mask[:, 1:].sum(-1)  # response tokens scored (the first token of a row never is)
    if loss_type == "ipo":
        lengths = completion_mask.sum(-1)  # trl normalises IPO by the completion mask's length
    ours, _, _ = preference_margin_loss(jnp.asarray(logps[:pairs]), jnp.asarray(logps[pairs:]), jnp.asarray(ref_chosen),
                                       jnp.asarray(ref_rejected), jnp.asarray(lengths[:pairs]),
                                       jnp.asarray(lengths[pairs:]), PreferenceConfig(loss=loss_type, beta=beta))
    np.testing.assert_allclose(float(jnp.mean(ours)), expected, rtol=1e-5)


def test_dpo_and_simpo_by_hand():
    chosen, rejected, ref_chosen, ref_rejected = -4.0, -6.0, -5.0, -5.5
    config = PreferenceConfig(loss="dpo", beta=0.5)
    loss, chosen_reward, rejected_reward = preference_margin_loss(
        jnp.array([chosen]), jnp.array([rejected]), jnp.array([ref_chosen]), jnp.array([ref_rejected]),
        jnp.array([2.0]), jnp.array([4.0]), config)
    margin = 0.5 * ((chosen - ref_chosen) - (rejected - ref_rejected))  # 0.5 * (1 - (-0.5)) = 0.75
    np.testing.assert_allclose(float(loss[0]), np.log1p(np.exp(-margin)), rtol=1e-6)
    np.testing.assert_allclose([float(chosen_reward[0]), float(rejected_reward[0])], [0.5, -0.25], rtol=1e-6)

    config = PreferenceConfig(loss="simpo", beta=2.0, simpo_gamma=0.5)
    loss, _, _ = preference_margin_loss(jnp.array([chosen]), jnp.array([rejected]), None, None, jnp.array([2.0]),
                                        jnp.array([4.0]), config)
    z = 2.0 * (chosen / 2 - rejected / 4) - 0.5  # 2 * (-2 + 1.5) - 0.5 = -1.5
    np.testing.assert_allclose(float(loss[0]), np.log1p(np.exp(-z)), rtol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_matches_trls_cpo_simpo_with_label_smoothing(label_smoothing):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    chosen, rejected = np.array([-4.0, -3.0, -9.0], np.float32), np.array([-6.0, -5.0, -2.0], np.float32)
    chosen_len, rejected_len = np.array([2.0, 3.0, 5.0], np.float32), np.array([4.0, 2.0, 1.0], np.float32)
    beta, gamma = 2.0, 0.5
    trainer = types.SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta,
                                    label_smoothing=label_smoothing, accelerator=types.SimpleNamespace(device="cpu"))
    # trl's CPOTrainer averages log-probs over the completion for SimPO (average_log_prob) before cpo_loss.
    expected = CPOTrainer.cpo_loss(trainer, torch.tensor(chosen / chosen_len),
                                   torch.tensor(rejected / rejected_len))[0].numpy()
    ours, _, _ = preference_margin_loss(jnp.asarray(chosen), jnp.asarray(rejected), None, None,
                                        jnp.asarray(chosen_len), jnp.asarray(rejected_len),
                                        PreferenceConfig(loss="simpo", beta=beta, simpo_gamma=gamma,
                                                         label_smoothing=label_smoothing))
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5)


def test_label_smoothing_under_ipo_is_accepted_with_one_warning_and_changes_nothing(caplog):
    # trl's DPO / CPO trainers ignore label_smoothing for IPO. Refusing it stranded an IPO run trained
    # with it: the value is in run.json, so neither the same command nor the unset value resumed it.
    from research.finetune.preference_losses import make_preference_loss

    smoothed, plain = PreferenceConfig(loss="ipo", label_smoothing=0.2), PreferenceConfig(loss="ipo")
    with caplog.at_level(logging.WARNING, logger="research.finetune.preference_losses"):
        make_preference_loss(smoothed)
        make_preference_loss(plain)
    assert [r.getMessage() for r in caplog.records] == [
        "preference.label_smoothing=0.2 has no effect under IPO (as in trl, which ignores it for IPO); the loss is "
        "IPO's, unsmoothed."]
    args = (jnp.array([-4.0, -9.0]), jnp.array([-6.0, -2.0]), jnp.array([-5.0, -8.0]), jnp.array([-5.5, -3.0]),
            jnp.array([2.0, 5.0]), jnp.array([4.0, 1.0]))
    for ours, reference in zip(preference_margin_loss(*args, smoothed), preference_margin_loss(*args, plain)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_simpo_gamma_outside_simpo_is_one_warning_and_changes_nothing(caplog, loss):
    """Only SimPO's margin reads simpo_gamma: a sweep switching preference.loss left it set and
    trained identical DPO / IPO runs without a word."""
    from research.finetune.preference_losses import make_preference_loss

    set_, default = PreferenceConfig(loss=loss, simpo_gamma=3.0), PreferenceConfig(loss=loss)
    with caplog.at_level(logging.WARNING, logger="research.finetune.preference_losses"):
        make_preference_loss(set_)
        make_preference_loss(default)
        make_preference_loss(PreferenceConfig(loss="simpo", simpo_gamma=3.0))
    assert [r.getMessage() for r in caplog.records] == [
        f"preference.simpo_gamma=3.0 has no effect under {loss.upper()} (SimPO's target margin only)."]
    args = (jnp.array([-4.0, -9.0]), jnp.array([-6.0, -2.0]), jnp.array([-5.0, -8.0]), jnp.array([-5.5, -3.0]),
            jnp.array([2.0, 5.0]), jnp.array([4.0, 1.0]))
    for ours, reference in zip(preference_margin_loss(*args, set_), preference_margin_loss(*args, default)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


def test_dpo_at_step_one_is_log_2_with_the_models_dropout_on(tmp_path):
    """trl's DPOConfig.disable_dropout (True by default) scores policy and reference without dropout.
    Hugging Face GPT-2 / BERT checkpoints load dropout_rate=0.1: the policy was scored with dropout
    and the reference without, so at step 1 (policy == reference) the loss was 0.68819, not log 2,
    and the accuracy 0.75, not 0, from dropout noise alone."""
    from research.finetune import finetune_and_evaluate
    from research.training.metrics import read_metrics
    from tests.finetune.conftest import tiny_config

    config = tiny_config("dpo_tiny", num_steps=1)
    config.opt.warmup_steps = 0
    config.model.dropout_rate = 0.1
    finetune_and_evaluate(config, str(tmp_path))
    step1 = [r for r in read_metrics(str(tmp_path)) if r.get("step") == 1 and "loss" in r][0]
    assert step1["loss"] == pytest.approx(np.log(2), abs=1e-6) and step1["accuracy"] == 0.0, step1


def test_dropout_is_off_by_default_where_trl_turns_it_off():
    # trl: DPOConfig / CPOConfig (SimPO) / RewardConfig disable_dropout=True; GRPOConfig False; SFT keeps it.
    from experiments.configs.finetune import get_config
    from research.finetune.trainer import dropout_disabled

    defaults = {p: dropout_disabled(get_config(p)) for p in ("dpo_tiny", "ipo_tiny", "simpo_tiny", "reward_tiny",
                                                              "grpo_tiny", "sft_tiny", "classify_tiny")}
    assert defaults == {"dpo_tiny": True, "ipo_tiny": True, "simpo_tiny": True, "reward_tiny": True,
                        "grpo_tiny": False, "sft_tiny": False, "classify_tiny": False}
    config = get_config("dpo_tiny")
    config.disable_dropout = False  # a researcher who wants dropout sets it
    assert not dropout_disabled(config)
    config = get_config("grpo_tiny")
    config.disable_dropout = True
    assert dropout_disabled(config)


def _tiny_decoder():
    import jax
    from research.models import build_model, get_config
    model = build_model(get_config("gpt2-tiny", num_layers=1, d_model=32))
    return model, model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]


def mean_log_z_squared(model, params, tokens, mask):
    """By hand: mean over the scored tokens of log Z ** 2 of the raw logits (float64)."""
    logits = np.asarray(model.apply({"params": params}, jnp.asarray(tokens[:, :-1])), np.float64)
    log_z = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    weights = mask[:, 1:]
    return float((log_z ** 2 * weights).sum() / weights.sum())


def test_train_z_loss_regularises_the_policys_log_partition_on_the_scored_tokens():
    # train.z_loss was silently 0 on the preference path (aux z_loss=0): PaLM's regulariser of the
    # LM head's softmax normaliser, applied here as SFT applies it, on the response tokens scored.
    from research.finetune.preference_losses import make_preference_loss

    model, params = _tiny_decoder()
    rng = np.random.default_rng(0)
    batch = {f"{side}_tokens": rng.integers(1, 60, (2, 10)).astype(np.int32) for side in ("chosen", "rejected")}
    for side, start in (("chosen", 4), ("rejected", 6)):
        batch[f"{side}_mask"] = np.zeros((2, 10), np.float32)
        batch[f"{side}_mask"][:, start:9] = 1
        batch[f"{side}_length"] = np.full(2, 9, np.int32)
    batch.update(ref_chosen_logps=np.full(2, -30.0, np.float32), ref_rejected_logps=np.full(2, -20.0, np.float32))
    config = PreferenceConfig(loss="dpo")
    plain, plain_aux = make_preference_loss(config)(model, params, batch, None)
    regularised, aux = make_preference_loss(config, z_loss=0.5)(model, params, batch, None)
    tokens = np.concatenate([batch["chosen_tokens"], batch["rejected_tokens"]])
    mask = np.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    expected = mean_log_z_squared(model, params, tokens, mask)
    np.testing.assert_allclose(float(aux["z_loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(regularised), float(plain) + 0.5 * expected, rtol=1e-5)
    assert float(aux["cross_entropy"]) == pytest.approx(float(plain_aux["cross_entropy"]), rel=1e-6)


def test_the_preference_job_passes_train_z_loss_to_its_loss():
    from research.finetune.run import build_job
    from tests.finetune.conftest import tiny_config

    config = tiny_config("dpo_tiny")
    config.train.z_loss = 1e-4
    assert build_job(config).loss_fn.keywords["z_loss"] == 1e-4
