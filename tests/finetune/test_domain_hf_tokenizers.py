"""Domain adaptation's pipeline tokenizer on Hugging Face folders (built here; the oracle is
transformers on the same folders): a T5 folder's <extra_id_i> sentinels are the ones span
corruption writes, a folder whose sentinels sit elsewhere is one line, and a BERT folder's masked-LM
windows open and close as its own encoding does ([CLS] ... [SEP]) and never mask or draw a special
token ([UNK], [CLS])."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import transformers

from research.data.objectives import MaskedLM, SpanCorruption
from research.evaluation.tokenizer_loading import load_tokenizer
from research.finetune.domain import PipelineTokenizer
from research.finetune.run import build_job
from research.models.config import ConfigError

from tests.finetune.conftest import tiny_config
from tests.finetune.test_domain import SUBJECTS, STATES, domain_folder
from tests.finetune.test_hf_task_paths import _bert_tokenizer

CORPUS = [f"{s} {t}." for s in SUBJECTS for t in STATES] * 8


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    """A T5 tokenizer folder as transformers builds one from a SentencePiece model: 100 <extra_id_i>
    above the pieces, <extra_id_0> at the top."""
    import sentencepiece as spm
    root = tmp_path_factory.mktemp("hf_t5")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2)
    (root / "spm").mkdir()
    (root / "spm" / "spiece.model").write_bytes(model.getvalue())
    transformers.T5Tokenizer.from_pretrained(str(root / "spm"), extra_ids=100).save_pretrained(str(root / "t5"))
    return str(root / "t5")


def test_a_t5_folder_has_its_sentinels_where_span_corruption_writes_them(t5_folder):
    oracle = transformers.AutoTokenizer.from_pretrained(t5_folder)
    special = PipelineTokenizer(load_tokenizer(t5_folder)).special_tokens()
    assert special.num_extra_ids == 100
    assert [special.sentinel_id(i) for i in range(100)] == oracle.convert_tokens_to_ids(
        [f"<extra_id_{i}>" for i in range(100)])
    SpanCorruption().validate(special, 64)  # refused before: "set tokenizer num_extra_ids >= 4"
    ids = oracle("the coolant loop was vented. reactor two needs service.", add_special_tokens=False)["input_ids"]
    example = SpanCorruption().examples(np.asarray(ids, np.int32), np.random.default_rng(0), 64, special)[0]
    inputs = oracle.convert_ids_to_tokens(example["encoder_inputs"].tolist())
    targets = oracle.convert_ids_to_tokens(example["decoder_targets"].tolist())
    sentinels = [t for t in inputs if t.startswith("<extra_id_")]
    assert sentinels and sentinels == [f"<extra_id_{i}>" for i in range(len(sentinels))]
    assert [t for t in targets if t.startswith("<extra_id_")] == sentinels and inputs[-1] == targets[-1] == "</s>"
    # Each sentinel of the inputs, replaced by the span after it in the targets, gives the text back.
    spans, current = {}, None
    for token in targets[:-1]:
        current = token if token in sentinels else current
        spans.setdefault(current, []).extend([] if token == current else [token])
    restored = [piece for t in inputs[:-1] for piece in (spans[t] if t in sentinels else [t])]
    assert oracle.convert_tokens_to_ids(restored) == ids


def test_t5_domain_adaptation_from_a_hugging_face_folder_makes_span_corruption_batches(t5_folder, tmp_path):
    """T5's default domain objective, span corruption, was refused for every Hugging Face T5 folder."""
    folder = tmp_path / "t5"
    tokenizer = transformers.AutoTokenizer.from_pretrained(t5_folder)
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1, feed_forward_proj="relu")).save_pretrained(str(folder))
    config = tiny_config("domain_tiny", num_steps=2)
    config.init, config.tokenizer = f"hf:{folder}", ""
    config.data.update(dict(folder=str(domain_folder(tmp_path / "notes")), data_dir=str(tmp_path / "data"),
                            validation_fraction=0.25))
    batch = next(build_job(config).train_batches(0))
    tokens = tokenizer.convert_ids_to_tokens(batch["encoder_inputs"][0].tolist())
    assert "<extra_id_0>" in tokens and "<extra_id_0>" == tokenizer.convert_ids_to_tokens(
        int(batch["decoder_targets"][0][0]))


def test_sentinels_elsewhere_than_the_top_of_the_vocabulary_are_one_line(tmp_path):
    """<extra_id_i> appended as added tokens count up from the vocabulary (0 lowest), not down."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    core = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "pump": 3, "valve": 4}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(3)]).save_pretrained(str(tmp_path / "tok"))
    tokenizer = PipelineTokenizer(load_tokenizer(str(tmp_path / "tok")))
    with pytest.raises(ConfigError, match=r"<extra_id_0> is id 5, but the pipeline's sentinel 0 is id 7 ") as error:
        tokenizer.special_tokens()
    assert "\n" not in str(error.value)


def test_bert_masked_lm_windows_are_what_its_tokenizer_encodes_and_skip_every_special_token(tmp_path):
    oracle = _bert_tokenizer(tmp_path / "bert")
    tokenizer = PipelineTokenizer(load_tokenizer(str(tmp_path / "bert")))
    special = tokenizer.special_tokens()
    assert set(special.special_ids) == set(oracle.all_special_ids)  # [PAD] [UNK] [CLS] [SEP] [MASK]
    text = "the film was zebra good"  # "zebra" (a z) is [UNK]
    expected = oracle(text)["input_ids"]
    assert oracle.unk_token_id in expected and expected[0] == oracle.cls_token_id
    (window,) = MaskedLM().examples(tokenizer.encode(text), np.random.default_rng(0), 32, special)
    assert window["targets"].tolist() == expected  # [CLS] the film was [UNK] good [SEP]
    # Every chosen token replaced by a random one, at a high rate: none is special, and no special
    # token ([CLS], [SEP], [UNK]) is chosen for the loss.
    objective = MaskedLM(mask_rate=0.9, mask_token_fraction=0.0, random_token_fraction=1.0)
    specials = np.isin(expected, oracle.all_special_ids)
    for seed in range(200):
        (window,) = objective.examples(tokenizer.encode(text), np.random.default_rng(seed), 32, special)
        assert not window["loss_weights"][specials].any()
        assert not np.isin(window["inputs"][window["loss_weights"] > 0], oracle.all_special_ids).any()


def test_the_char_tokenizers_unk_is_never_chosen_by_masked_lm():
    from research.evaluation.tokenizer import CharTokenizer
    tokenizer = CharTokenizer()
    special = PipelineTokenizer(tokenizer).special_tokens()
    assert tokenizer.unk_id in special.special_ids
    ids = np.asarray([tokenizer.unk_id] * 40 + tokenizer.encode("abc" * 10), np.int32)
    objective = MaskedLM(mask_rate=0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        for example in objective.examples(ids, rng, 64, special):
            chosen = np.asarray(example["loss_weights"]) > 0
            assert not np.any(np.asarray(example["targets"])[chosen] == tokenizer.unk_id)
