"""Tiny models with random weights and a tokenizer in which every id is its own character."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from research.models import build_model, get_config
from research.models.layout import unbox

VOCAB = 96


class IdTokenizer:
    """Token id i <-> the character chr(0x100 + i): every id round-trips through text, so any
    argmax token of a random model can be written as a string continuation."""

    eos_id = 1
    pad_id = 0
    mask_id = 2

    def encode(self, text):
        return [ord(c) - 0x100 for c in text]

    def decode(self, ids):
        return "".join(chr(0x100 + int(i)) for i in ids)


def text(ids) -> str:
    return IdTokenizer().decode(ids)


@functools.lru_cache(maxsize=None)
def tiny_model(name: str, vocab_size: int = VOCAB, **overrides):
    """(model, params) of a preset shrunk to `vocab_size` tokens; weights scaled so argmax
    decisions are not within float noise of a tie."""
    config = get_config(name, vocab_size=vocab_size, **overrides)
    model = build_model(config)
    tokens = jnp.ones((1, 4), jnp.int32)
    args = (tokens, tokens) if config.family == "encoder_decoder" else (tokens,)
    params = unbox(model.init(jax.random.key(0), *args)["params"])
    params = jax.tree.map(lambda x: x * 4.0 if x.ndim >= 2 else x, params)
    return model, params


@pytest.fixture
def tokenizer():
    return IdTokenizer()


def capitals_task_yaml(task: str, data_file: str, metrics: tuple[str, ...] = ("acc",)) -> str:
    """An lm-eval multiple-choice task over local JSONL rows {country, options, label}: "Q: What is
    the capital of <country>?" (offline: dataset_path json reads data_file)."""
    metric_lines = "".join(f"  - metric: {m}\n" for m in metrics)
    return (f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_file}\n"
            "test_split: test\noutput_type: multiple_choice\n"
            'doc_to_text: "Q: What is the capital of {{country}}?\\nA:"\n'
            "doc_to_choice: options\ndoc_to_target: label\nmetric_list:\n" + metric_lines)
