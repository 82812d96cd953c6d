"""A tagging run started from a BertForTokenClassification folder keeps the folder's trained tagger
head, as transformers' AutoModelForTokenClassification does (it was dropped for a fresh one,
silently); another number of labels gets a fresh head, said so. The oracle is transformers."""
from __future__ import annotations

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from experiments.configs.finetune import get_config
from research.finetune.run import build_job
from tests.finetune.test_hf_task_paths import _bert_tokenizer

RECORDS = [{"words": ["good", "film"], "labels": [0, 1]}, {"words": ["the", "day", "was", "bad"], "labels": [1, 0, 1, 0]}]


@pytest.fixture(scope="module")
def tagger_folder(tmp_path_factory):
    """A BertForTokenClassification folder with 3 labels and its tokenizer."""
    folder = tmp_path_factory.mktemp("hf_tagger") / "ner"
    tokenizer = _bert_tokenizer(folder)
    torch.manual_seed(0)
    transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    return folder


def _tag_job(folder, tmp_path, num_token_labels: int):
    config = get_config("tag_tiny")
    config.init, config.tokenizer, config.model = f"hf:{folder}", "", {}
    config.num_token_labels = num_token_labels
    config.train.update(dict(seq_len=32, batch_size=2))
    path = tmp_path / "tags.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config.data.update(dict(train_file=str(path), eval_file=str(path)))
    return build_job(config)


def test_a_tagger_folder_keeps_its_head_and_tags_as_transformers_does(tagger_folder, tmp_path):
    job = _tag_job(tagger_folder, tmp_path, num_token_labels=3)
    batch = next(job.train_batches(0))
    n = int(batch["segment_ids"][0].sum())
    ids = batch["tokens"][0][:n].tolist()
    ours = job.model.apply({"params": job.initial_params()}, jnp.asarray([ids]),
                           segment_ids_BT=jnp.ones((1, n), jnp.int32))[0]
    with torch.no_grad():
        theirs = transformers.AutoModelForTokenClassification.from_pretrained(tagger_folder).eval()(
            torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)


def test_a_tagger_of_another_label_count_gets_a_fresh_head_and_says_so(tagger_folder, tmp_path, caplog):
    job = _tag_job(tagger_folder, tmp_path, num_token_labels=2)
    with caplog.at_level(logging.WARNING, logger="research.finetune.heads"):
        params = job.initial_params()
    assert params["head"]["kernel"].shape == (32, 2)
    warned = [r.getMessage() for r in caplog.records if "token classifier" in r.getMessage()]
    assert len(warned) == 1 and "3 labels" in warned[0] and "num_token_labels=2" in warned[0], warned
