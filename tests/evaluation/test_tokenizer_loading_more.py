"""load_tokenizer on the folders transformers loads (vocab.txt + config.json, XLM-R's and
DeBERTa's SentencePiece files), a tokenizer.json the tokenizers library cannot parse, and a
run's own .model passed explicitly keeping the run's T5 sentinels."""
import io
import json
import os

import pytest

from research.evaluation.tokenizer_loading import has_hf_tokenizer, load_tokenizer
from research.models.config import ConfigError

pytest.importorskip("transformers")


def _sentencepiece_model(**ids: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    text = [f"line {i} of a small corpus, with words and more words {i * 7}" for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=120, minloglevel=2,
                                   **ids)
    return model.getvalue()


def _bert_vocab_folder(folder) -> str:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz") + \
        ["hello", "world", "##s", "."]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": len(vocab)}))
    return str(folder)


def _sentencepiece_folder(folder, file_name: str, model_type: str) -> str:
    (folder / file_name).write_bytes(_sentencepiece_model(pad_id=1, bos_id=0, eos_id=2, unk_id=3))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(folder)


@pytest.mark.parametrize("kind", ["bert_vocab_txt", "xlm_roberta_sentencepiece_bpe", "deberta_v2_spm"])
def test_folders_transformers_loads_are_hugging_face_tokenizers(kind, tmp_path):
    from transformers import AutoTokenizer

    folder = {"bert_vocab_txt": lambda: _bert_vocab_folder(tmp_path),
              "xlm_roberta_sentencepiece_bpe": lambda: _sentencepiece_folder(tmp_path, "sentencepiece.bpe.model",
                                                                            "xlm-roberta"),
              "deberta_v2_spm": lambda: _sentencepiece_folder(tmp_path, "spm.model", "deberta-v2")}[kind]()
    assert has_hf_tokenizer(folder)
    tokenizer = load_tokenizer(folder)
    reference = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for text in ("hello worlds.", "line 3 of words"):
        assert tokenizer.encode(text) == reference.encode(text, add_special_tokens=False)
        assert tokenizer.encode_context(text) == reference.encode(text)


def test_a_vocab_txt_without_a_config_is_not_taken_for_a_tokenizer(tmp_path):
    (tmp_path / "vocab.txt").write_text("a\nb\n")  # any word list: nothing says which tokenizer reads it
    assert not has_hf_tokenizer(str(tmp_path))


def test_an_unparsable_tokenizer_json_is_a_one_line_error(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<eos>": 2}, unk_token="<eos>"))
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>").save_pretrained(tmp_path)
    content = json.loads((tmp_path / "tokenizer.json").read_text())
    content["model"]["type"] = "ModelOfANewerVersion"  # the Rust library raised a bare Exception traceback
    (tmp_path / "tokenizer.json").write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=rf"^tokenizer folder '{tmp_path}': the installed tokenizers library cannot "
                                          r"read its tokenizer\.json \(.*\); it is damaged or from a newer version"):
        load_tokenizer(str(tmp_path))


def test_the_runs_own_model_passed_explicitly_keeps_its_sentinels(tmp_path):
    from research.training.checkpoint_loading import run_tokenizer

    os.makedirs(tmp_path / "tokenizers")
    proto = _sentencepiece_model(pad_id=0, eos_id=1, unk_id=2, bos_id=3)
    for name in ("a", "b"):  # two models: the run's cannot be told, so the error asks for --tokenizer=PATH.model
        (tmp_path / "tokenizers" / f"{name}.model").write_bytes(proto)
    config = {"data": {"source": "stdlib", "tokenizer": {"vocab_size": 120, "num_extra_ids": 10}}}
    explicit = run_tokenizer(config, str(tmp_path), str(tmp_path / "tokenizers" / "a.model"))
    assert explicit.vocab_size == 130
    assert explicit.decode([explicit.sentinel_id(0)]) == "<extra_id_0>"
    assert run_tokenizer(config, str(tmp_path), "char").vocab_size < 120  # no sentinels for a char tokenizer
