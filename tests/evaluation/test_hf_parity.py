"""Scoring a Hugging Face GPT-2 (random weights, loaded through research.models.from_hf)
matches log-probabilities computed directly with transformers in torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from research.evaluation.harness import Harness
from research.evaluation.requests import LoglikelihoodRequest, RollingRequest
from research.models import from_hf
from tests.evaluation.conftest import IdTokenizer, text

PAIRS = [([5, 9, 12, 40, 41, 42], [17, 3, 22]), ([7], [60, 61]), ([30, 31, 32], [33])]


def test_gpt2_loglikelihood_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf_model = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # larger weights than the 0.02-std init, so log-probs are far from uniform
        for p in hf_model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
    hf_model.save_pretrained(tmp_path)
    model, params = from_hf(str(tmp_path))
    harness = Harness(model, params, IdTokenizer(), batch_size=2)
    results = harness.loglikelihood([LoglikelihoodRequest(text(c), text(t)) for c, t in PAIRS])
    for (context, continuation), result in zip(PAIRS, results):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            log_probs = torch.log_softmax(hf_model(ids).logits[0].double(), dim=-1).numpy()
        positions = np.arange(len(context) - 1, len(context) + len(continuation) - 1)
        expected = log_probs[positions, continuation]
        np.testing.assert_allclose(result.token_log_probs, expected, atol=2e-4)
        assert result.is_greedy == bool((log_probs[positions].argmax(-1) == continuation).all())

    # Rolling perplexity of a 100-token text in windows of 32, against transformers on the same windows.
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 96, size=100)]
    rolling = Harness(model, params, IdTokenizer(), batch_size=2, max_length=32)
    result = rolling.loglikelihood_rolling([RollingRequest(text(ids))])[0]
    total, predicted, first = 0.0, 0, True
    while predicted < len(ids):
        if first:
            window, scored = [rolling.prefix_token] + ids[:32], 32
            first = False
        else:
            scored = min(32, len(ids) - predicted)
            window = ids[predicted + scored - 33:predicted + scored]
        with torch.no_grad():
            log_probs = torch.log_softmax(hf_model(torch.tensor([window[:-1]])).logits[0].double(), -1).numpy()
        total += log_probs[np.arange(len(window) - 1), window[1:]][-scored:].sum()
        predicted += scored
    assert result.log_prob == pytest.approx(total, abs=1e-3)
