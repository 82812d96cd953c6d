"""A decoder pretrained with objective=prefix_lm attends its prefix both ways (losses' prefix_mask_BT).
The harness scored and generated from it causally, as it was never trained: loglikelihood must read
the context as that prefix, generate_until the prompt, and rolling loglikelihood (no context) stays causal."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from research.decoding import generate
from research.evaluation.harness import Harness
from research.evaluation.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest
from research.models import ConfigError
from research.training.checkpoint_loading import LoadedModel
from tests.evaluation.conftest import IdTokenizer, text, tiny_model

# Contexts of different lengths share a batch: each row's prefix is its own.
CONTEXTS = [[5, 9, 12, 40, 41, 42], [7, 8], [33, 34, 35, 36, 37, 38, 39, 43, 44, 45, 46]]
CONTINUATIONS = [[17, 3], [60, 61, 62], [8, 9]]


@pytest.fixture(scope="module")
def prefix_lm():
    return tiny_model("gpt2-tiny", num_layers=2)


def _continuation_log_probs(model, params, context, continuation, bidirectional):
    """log p of each continuation token by one forward pass, the context marked as the training
    batch marks a prefix (data.objectives.prefix_lm_example: 1 on the first len(context) inputs)."""
    ids = np.asarray(context + continuation, np.int32)
    inputs = ids[None, :-1]
    options = {}
    if bidirectional:
        prefix = np.zeros_like(inputs)
        prefix[0, :len(context)] = 1
        options = dict(prefix_mask_BT=prefix)
    logits = model.apply({"params": params}, inputs, segment_ids_BT=np.ones_like(inputs), **options)[0]
    log_probs = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32), axis=-1))
    positions = np.arange(len(context) - 1, len(ids) - 1)
    return log_probs[positions, ids[positions + 1]]


def test_loglikelihood_reads_the_context_as_the_training_prefix(prefix_lm):
    model, params = prefix_lm
    harness = Harness(model, params, IdTokenizer(), batch_size=2, bidirectional_prompt=True)
    causal_harness = Harness(model, params, IdTokenizer(), batch_size=2)
    requests = [LoglikelihoodRequest(text(c), text(t)) for c, t in zip(CONTEXTS, CONTINUATIONS)]
    # end_until scores one more (placeholder) target in the same row: the prefix stays the context.
    with_end = [LoglikelihoodRequest(r.context, r.continuation, end_until=("\n",)) for r in requests]
    for results in (harness.loglikelihood(requests), harness.loglikelihood(with_end)):
        for context, continuation, result in zip(CONTEXTS, CONTINUATIONS, results):
            expected = _continuation_log_probs(model, params, context, continuation, bidirectional=True)
            causal = _continuation_log_probs(model, params, context, continuation, bidirectional=False)
            np.testing.assert_allclose(result.token_log_probs, expected, rtol=1e-5, atol=1e-5)
            assert result.log_prob == pytest.approx(float(expected.sum()), abs=1e-4)
            assert abs(result.log_prob - float(causal.sum())) > 1e-2
    # Without bidirectional_prompt (a causal LM) the same requests are scored causally.
    for context, continuation, result in zip(CONTEXTS, CONTINUATIONS, causal_harness.loglikelihood(requests)):
        expected = _continuation_log_probs(model, params, context, continuation, bidirectional=False)
        np.testing.assert_allclose(result.token_log_probs, expected, rtol=1e-5, atol=1e-5)


def test_rolling_loglikelihood_stays_causal(prefix_lm):
    model, params = prefix_lm
    requests = [RollingRequest(text(c + t)) for c, t in zip(CONTEXTS, CONTINUATIONS)]
    bidirectional = Harness(model, params, IdTokenizer(), bidirectional_prompt=True).loglikelihood_rolling(requests)
    causal = Harness(model, params, IdTokenizer()).loglikelihood_rolling(requests)
    for a, b in zip(bidirectional, causal):
        np.testing.assert_allclose(a.token_log_probs, b.token_log_probs, rtol=1e-6, atol=1e-6)


def test_generate_until_reads_the_prompt_bidirectionally(prefix_lm):
    model, params = prefix_lm
    harness = Harness(model, params, IdTokenizer(), batch_size=2, bidirectional_prompt=True)
    results = harness.generate_until([GenerateRequest(text(p), (), 6) for p in CONTEXTS])
    outputs = {}
    for bidirectional in (True, False):
        out = generate(model, params, CONTEXTS, max_new_tokens=6, stop_tokens=harness.end_ids,
                       bidirectional_prompt=bidirectional, vocab_limit=harness.vocab_limit)
        outputs[bidirectional] = [[int(i) for i in out.tokens_BN[b, :out.lengths_B[b]] if i != 1]
                                  for b in range(len(CONTEXTS))]  # eos (id 1) ends the text
    assert outputs[True] != outputs[False]  # the test can tell the two apart
    assert [list(r.tokens) for r in results] == outputs[True]
    assert [r.text for r in results] == [text(ids) for ids in outputs[True]]


def test_the_loaded_models_prefix_reaches_the_harness(prefix_lm, monkeypatch):
    """experiments.evaluate and the lm-eval adapter build their Harness from LoadedModel.bidirectional_prompt."""
    from experiments import evaluate as cli
    from research.evaluation.lm_eval_adapter import HarnessLM

    loaded = LoadedModel(*prefix_lm, IdTokenizer(), "test", None, bidirectional_prompt=True)
    assert HarnessLM.from_loaded(loaded).harness.bidirectional_prompt
    seen = []

    def check(entries, harness):
        seen.append(harness.bidirectional_prompt)
        raise ConfigError("checked")
    monkeypatch.setattr(cli, "check_tasks_fit", check)
    with pytest.raises(ConfigError, match="checked"):
        cli._run(loaded, [], 2, None, False, print)
    assert seen == [True]


def test_bidirectional_prompt_is_refused_for_a_model_that_is_not_a_decoder():
    with pytest.raises(ConfigError, match="bidirectional_prompt is for prefix-LM decoders"):
        Harness(*tiny_model("t5-tiny"), IdTokenizer(), bidirectional_prompt=True)
