"""Prompts longer than a model's trained context: refused where a learned position table would
overflow, warned about (once) where positions have no hard limit (RoPE), as transformers allows."""
from __future__ import annotations

import logging

import pytest

from research.decoding import prompts
from research.models import ConfigError, get_config


def test_a_rope_prompt_past_the_trained_context_is_warned_about_once(caplog, monkeypatch):
    """A LLaMA with max_position_embeddings=64 decoded a 200-token prompt with no message at all,
    while a learned-position model refuses it in one line."""
    monkeypatch.setattr(prompts, "_WARNED_PAST_CONTEXT", set(), raising=False)  # absent before the fix
    caplog.set_level(logging.WARNING, logger=prompts.__name__)
    rope = get_config("llama-tiny", max_len=8)
    prompts.check_request(rope, [list(range(3, 8))], 4, ())  # positions 0 .. 7: within the context
    assert caplog.records == []
    prompts.check_request(rope, [[3, 4], list(range(3, 13))], 2, ())
    prompts.check_request(rope, [list(range(3, 30))], 1, ())  # the evaluation harness asks once per batch
    assert [r.getMessage() for r in caplog.records] == [
        "longest prompt + max_new_tokens - 1 = 11 positions exceed max_len=8, the context llama-tiny was trained "
        "on (position='rope'): its output there may degrade; shorten the prompt or lower max_new_tokens to stay "
        "within it (warned once per model)."]
    with pytest.raises(ConfigError, match="longest prompt is 10 tokens, more than max_len=8 of gpt2-tiny's learned"):
        prompts.check_request(get_config("gpt2-tiny", max_len=8), [list(range(3, 13))], 2, ())
