"""BERT classification / tagging and T5 text-to-text fine-tuned from Hugging Face folders (random
weights built here): rows get the tokenizer's own special tokens, a stock BERT tokenizer (no eos)
loads, a BertModel checkpoint (no classifier) gets a fresh one, and tag labels stay on their words.
The oracle is transformers on the same folders."""
from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from experiments.configs.finetune import get_config
from research.finetune.run import build_job
from research.finetune.run_identity import finetune_fingerprint

WORDS = "the a day film food it was very good great nice happy love fine bad awful sad hate poor ugly".split()


def _bert_tokenizer(folder) -> transformers.PreTrainedTokenizerFast:
    """A WordPiece tokenizer with BERT's template ([CLS] $A [SEP]) and no eos, as bert-base ships."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    core = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.train_from_iterator([" ".join(WORDS)] * 50, trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    cls, sep = core.token_to_id("[CLS]"), core.token_to_id("[SEP]")
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = transformers.BertTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    assert tokenizer.eos_token_id is None
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory):
    """(a BertForSequenceClassification folder, a BertModel folder: no classifier), one tokenizer."""
    root = tmp_path_factory.mktemp("hf_bert")
    config = None
    for name, cls in (("classifier", transformers.BertForSequenceClassification), ("body", transformers.BertModel)):
        tokenizer = _bert_tokenizer(root / name)
        config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                         num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        torch.manual_seed(0)
        cls(config).save_pretrained(root / name)
    return root / "classifier", root / "body"


def _job(preset: str, folder, tmp_path, records=None, **model):
    config = get_config(preset)
    config.init, config.tokenizer, config.model = f"hf:{folder}", "", model
    config.train.update(dict(seq_len=32, batch_size=2))
    config.data.update(dict(num_train=4, num_eval=4))
    if records is not None:
        path = tmp_path / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        config.data.update(dict(train_file=str(path), eval_file=str(path)))
    return build_job(config)


def test_bert_classification_rows_are_what_transformers_encodes_and_score_alike(bert_dirs, tmp_path):
    """Rows lacked [CLS] ... [SEP] (the pooler read the first word), and the stock tokenizer, which
    has no eos, was refused outright."""
    folder, _ = bert_dirs
    job = _job("classify_tiny", folder, tmp_path, num_labels=2)
    batch = next(job.train_batches(0))
    ids = batch["tokens"][0][batch["segment_ids"][0] > 0].tolist()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert ids == tokenizer(tokenizer.decode(ids, skip_special_tokens=True))["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids)[::len(ids) - 1] == ["[CLS]", "[SEP]"]
    params = job.initial_params()
    ours = job.model.apply({"params": params}, jnp.asarray([ids]), segment_ids_BT=jnp.ones((1, len(ids)), jnp.int32),
                           method="classify")[0]
    with torch.no_grad():
        theirs = transformers.BertForSequenceClassification.from_pretrained(folder).eval()(
            torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-5)


def test_a_bert_checkpoint_without_a_classifier_gets_a_fresh_one(bert_dirs, tmp_path):
    """A BertModel folder (as bert-base ships) died in device_put on mismatched trees, after the
    workdir was claimed; transformers gives it a new classifier, and so does this."""
    classifier_folder, body_folder = bert_dirs
    params = _job("classify_tiny", body_folder, tmp_path, num_labels=2).initial_params()
    with_classifier = _job("classify_tiny", classifier_folder, tmp_path, num_labels=2).initial_params()
    assert params["classifier"]["kernel"].shape == with_classifier["classifier"]["kernel"].shape
    np.testing.assert_array_equal(params["layers_0"]["attention"]["query"]["kernel"],
                                  with_classifier["layers_0"]["attention"]["query"]["kernel"])  # same seed: same body


def test_tag_labels_stay_on_their_words_when_a_word_has_no_token(bert_dirs, tmp_path):
    """A word of no token (a zero-width space) still took a label, so every later label slid one
    token left ('film' was trained as class 2); labels now follow transformers' word_ids()."""
    folder, _ = bert_dirs
    words, labels = ["good", "\u200b", "film"], [0, 2, 1]
    job = _job("tag_tiny", folder, tmp_path, records=[{"words": words, "labels": labels}])
    batch = next(job.train_batches(0))
    n = int(batch["segment_ids"][0].sum())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(words, is_split_into_words=True)
    expected = [-1 if w is None else labels[w] for w in encoded.word_ids()]
    assert batch["tokens"][0][:n].tolist() == encoded["input_ids"]
    assert batch["labels"][0][:n].tolist() == expected == [-1, 0, 1, -1]


def test_t5_inputs_end_with_the_eos_its_tokenizer_adds(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    core = Tokenizer(models.BPE())
    core.pre_tokenizer, core.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    core.train_from_iterator(["review: the film was good", "the review is positive"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="<pad>",
                                                     unk_token="<unk>")
    tokenizer.save_pretrained(tmp_path / "t5")
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, feed_forward_proj="relu")).save_pretrained(tmp_path / "t5")
    job = _job("t5_tiny", tmp_path / "t5", tmp_path, records=[{"input": "review: the film was good",
                                                                "target": "the review is positive"}])
    batch = next(job.train_batches(0))
    n = int(batch["encoder_segment_ids"][0].sum())
    assert batch["encoder_inputs"][0][:n].tolist() == tokenizer("review: the film was good")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(batch["encoder_inputs"][0][:n].tolist())[-1] == "</s>"
    # Its template put the eos there before 2026-12-07 too: its runs' identity is unchanged.
    config = get_config("t5_tiny")
    config.init, config.tokenizer = f"hf:{tmp_path / 't5'}", ""
    assert "data.input_ends_with_eos" not in finetune_fingerprint(config.to_dict())


@pytest.mark.parametrize("scan_layers", [True, False])
def test_a_layer_layout_override_relays_the_loaded_weights(tmp_path, scan_layers):
    """scan_layers=True over an unrolled Hugging Face folder (the GPU presets set it with init hf:)
    kept the folder's layers_0, layers_1 beside the scanned model's one stacked tree: the first
    step died in device_put on mismatched trees."""
    import jax

    from research.finetune.base_model import load_base_model
    from research.models.layout import unbox
    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2,
                                                         n_head=4)).save_pretrained(folder)
    base = load_base_model(f"hf:{folder}", {"scan_layers": scan_layers}, "char")
    plain = load_base_model(f"hf:{folder}", {}, "char")
    assert ("layers" in base.params) == scan_layers and ("layers_1" in base.params) != scan_layers
    if scan_layers:  # the same weights, stacked
        np.testing.assert_array_equal(base.params["layers"]["mlp"]["wi"]["kernel"][1],
                                      plain.params["layers_1"]["mlp"]["wi"]["kernel"])
    config = get_config("sft_tiny")
    config.init, config.tokenizer = f"hf:{folder}", "char"
    config.model = {"scan_layers": scan_layers}
    config.train.update(dict(seq_len=32, batch_size=2))
    config.data.update(dict(num_train=4, num_eval=4))
    job = build_job(config)
    assert jax.tree.structure(job.initial_params()) == jax.tree.structure(unbox(job.abstract_params))
