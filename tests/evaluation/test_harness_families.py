"""Encoder-decoder and encoder-only scoring against direct forward passes."""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.evaluation.harness import Harness
from research.evaluation.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
from research.models import ConfigError
from tests.evaluation.conftest import IdTokenizer, text, tiny_model


@functools.partial(jax.jit, static_argnums=0)
def _seq2seq_log_probs(model, params, source_1S, target_1T):
    """One compile: targets are right-padded to 8, which a causal decoder never looks ahead to."""
    return jax.nn.log_softmax(model.apply({"params": params}, source_1S, target_1T)[0], axis=-1)


def _teacher_forced(model, params, source, decoder_inputs):
    buffer = np.zeros((1, 8), np.int32)
    buffer[0, :len(decoder_inputs)] = decoder_inputs
    return np.asarray(_seq2seq_log_probs(model, params, jnp.asarray([source]), buffer))[:len(decoder_inputs)]


def test_encoder_decoder_scores_continuation_conditionally_and_generates():
    model, params = tiny_model("t5-tiny")
    harness = Harness(model, params, IdTokenizer(), batch_size=2)
    source, target = [5, 9, 12, 40, 41], [17, 3, 22]
    result = harness.loglikelihood([LoglikelihoodRequest(text(source), text(target)),
                                    LoglikelihoodRequest(text([6, 7]), text([8]))])[0]
    # The encoder reads the context and the eos (1) that closed every encoder input in pretraining
    # (a tokenizer without encode_context is this codebase's own); it was read without it.
    source = source + [IdTokenizer.eos_id]
    # Teacher forcing from decoder_start_token_id (0): inputs [0, 17, 3] predict [17, 3, 22].
    log_probs = _teacher_forced(model, params, source, [0] + target[:-1])
    np.testing.assert_allclose(result.token_log_probs, log_probs[np.arange(3), target], atol=1e-5)
    assert result.is_greedy == bool((log_probs.argmax(-1) == target).all())

    generated = harness.generate_until([GenerateRequest(text(source[:-1]), (), 3)])[0]
    # Greedy decoding from the start token, by full teacher-forced passes.
    ids = [0]
    for _ in range(3):
        ids.append(int(_teacher_forced(model, params, source, ids)[-1].argmax()))
    expected_ids = ids[1:]
    expected_ids = expected_ids[:expected_ids.index(1)] if 1 in expected_ids else expected_ids
    assert generated.text == text(expected_ids)
    with pytest.raises(ConfigError, match="rolling .* needs a decoder-only model"):
        harness.loglikelihood_rolling([RollingRequest(text(source))])


def test_encoder_pseudo_log_likelihood_masks_each_continuation_token():
    model, params = tiny_model("bert-test")
    harness = Harness(model, params, IdTokenizer(), batch_size=4)
    context, continuation = [5, 9, 12], [17, 3]
    result = harness.loglikelihood([LoglikelihoodRequest(text(context), text(continuation))])[0]
    sequence = context + continuation
    expected = []
    for position in (3, 4):  # mask each continuation token (mask id 2) in turn
        masked = list(sequence)
        masked[position] = IdTokenizer.mask_id
        logits = model.apply({"params": params}, jnp.asarray([masked]))[0, position]
        expected.append(float(jax.nn.log_softmax(logits)[sequence[position]]))
    np.testing.assert_allclose(result.token_log_probs, expected, atol=1e-5)
    scores = harness.multiple_choice([(text(context), [text(continuation), text([60])])])[0]
    assert scores[0] == pytest.approx(sum(expected), abs=1e-4)
    with pytest.raises(ConfigError, match="encoder-only model; generation needs"):
        harness.generate_until([GenerateRequest(text(context))])


def test_encoder_classifier_maps_class_i_to_choice_i():
    model, params = tiny_model("bert-test", num_labels=3)
    harness = Harness(model, params, IdTokenizer(), batch_size=2, encoder_scoring="classifier")
    context = [5, 9, 12, 40]
    scores = harness.multiple_choice([(text(context), ["a", "b", "c"])])[0]
    logits = model.apply({"params": params}, jnp.asarray([context]), method="classify")[0]
    np.testing.assert_allclose(scores, np.asarray(jax.nn.log_softmax(logits)), atol=1e-5)
    with pytest.raises(ConfigError, match="2 choices for a classifier with num_labels=3"):
        harness.multiple_choice([(text(context), ["a", "b"])])
    # A context of exactly max_length is not cut (it was warned about as truncated); one more token is.
    short = Harness(model, params, IdTokenizer(), batch_size=2, max_length=4, encoder_scoring="classifier")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short.multiple_choice([(text(context), ["a", "b", "c"])])
    with pytest.warns(UserWarning, match="1 of 1 contexts exceed max_length=4"):
        short.multiple_choice([(text(context + [7]), ["a", "b", "c"])])
