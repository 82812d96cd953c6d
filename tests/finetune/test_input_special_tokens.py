"""What classification and tagging rows hold with this codebase's own tokenizers and a byte-level
BPE, and which tokenizer a fine-tuning run may start from. Oracles: the masked-LM objective's own
windows (research/data/objectives.py), the tokenizer's encoding of the whole text, and transformers'
is_split_into_words."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.configs.finetune import get_config
from research.data.config import TokenizerConfig
from research.data.objectives import get_objective
from research.data.tokenizer import train_tokenizer
from research.finetune.run import build_job
from research.models.config import ConfigError

TEXTS = ["the film was very good, the food was bad and the day was fine " * 3,
         "def hello world: a text about words, 47 sg 242 ; 89 hello there world"] * 20


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    """A SentencePiece model trained as pretraining trains one (bos 3, eos 1, <mask> 4)."""
    config = TokenizerConfig(vocab_size=96, byte_fallback=False, character_coverage=1.0, max_training_chars=100_000)
    return train_tokenizer(TEXTS, config, str(tmp_path_factory.mktemp("spm") / "tiny.model"))


def _first_row(preset: str, tokenizer: str, records: list[dict], tmp_path) -> dict:
    """The first training row of `preset` (random bert-test) with `tokenizer`, on `records`."""
    config = get_config(preset)
    config.tokenizer = tokenizer
    config.model.update(dict(num_layers=1, d_model=32))
    config.train.update(dict(seq_len=32, batch_size=2))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    config.data.update(dict(train_file=str(path), eval_file=str(path)))
    batch = next(build_job(config).train_batches(0))
    n = int(batch["segment_ids"][0].sum())
    return {key: value[0][:n].tolist() for key, value in batch.items() if key != "label"}


def _window(tokenizer, text: str) -> list[int]:
    """The masked-LM objective's window of the document `text`, uncorrupted: what a BERT pretrained
    here read."""
    rng = np.random.default_rng(0)
    return get_objective("masked_lm").examples(tokenizer.encode(text), rng, 64, tokenizer.special_tokens())[0][
        "targets"].tolist()


def test_classification_rows_of_a_sentencepiece_tokenizer_are_its_masked_lm_window(sentencepiece, tmp_path):
    """<s> text </s>, as every masked-LM window: the pooler read the first word where pretraining
    had <s>."""
    row = _first_row("classify_tiny", sentencepiece.path, [{"text": "the film was good", "label": 1}] * 2, tmp_path)
    assert row["tokens"] == _window(sentencepiece, "the film was good")
    assert row["tokens"][0] == sentencepiece.bos_id and row["tokens"][-1] == sentencepiece.eos_id


def test_tagging_rows_of_a_sentencepiece_tokenizer_are_what_it_gives_for_the_text(sentencepiece, tmp_path):
    """Each word already opens with its word-start piece: an encoded " " put between words made
    'def   hexagon   world' of 'def hexagon world'. Each word's first token carries its label."""
    words = ["def", "hexagon", "world"]
    row = _first_row("tag_tiny", sentencepiece.path, [{"words": words, "labels": [0, 1, 2]}] * 2, tmp_path)
    assert row["tokens"] == _window(sentencepiece, " ".join(words))
    starts = 1 + np.cumsum([0] + [len(sentencepiece.encode(w)) for w in words[:-1]])
    expected = np.full(len(row["tokens"]), -1)
    expected[starts] = [0, 1, 2]
    assert row["labels"] == expected.tolist()


@pytest.fixture(scope="module")
def byte_level_bpe(tmp_path_factory) -> str:
    """A GPT-2-style byte-level BPE folder that adds a prefix space (RoBERTa's NER setting)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = str(tmp_path_factory.mktemp("bpe"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(folder)
    return folder


def test_tagging_rows_of_a_byte_level_bpe_are_what_transformers_gives_pre_split_words(byte_level_bpe, tmp_path):
    """transformers' is_split_into_words: each word with its prefix space, no space token between
    words (an encoded " " was put there, 'Ġ', a token no pre-split encoding has)."""
    import transformers
    words, labels = ["def", "hexagon", "world"], [0, 1, 2]
    row = _first_row("tag_tiny", byte_level_bpe, [{"words": words, "labels": labels}] * 2, tmp_path)
    encoded = transformers.AutoTokenizer.from_pretrained(byte_level_bpe)(words, is_split_into_words=True,
                                                                         add_special_tokens=False)
    word_ids = encoded.word_ids()
    firsts = [i for i, w in enumerate(word_ids) if i == 0 or word_ids[i - 1] != w]  # each word's first token
    assert row["tokens"] == encoded["input_ids"]
    assert row["labels"] == [labels[w] if i in firsts else -1 for i, w in enumerate(word_ids)]


def test_an_init_trained_with_another_tokenizer_is_refused_under_the_default_char(byte_level_bpe, tmp_path):
    """A checkpoint pretrained with its SentencePiece model, fine-tuned with the presets' default
    tokenizer 'char', trained on character ids that meant other pieces to it, silently: refused in
    one line before any weights load (the folders here hold none), naming --config.tokenizer=."""
    run = tmp_path / "pretrained"
    (run / "checkpoints" / "4" / "state").mkdir(parents=True)
    (run / "checkpoints" / "4" / "config").mkdir()
    (run / "checkpoints" / "4" / "config" / "metadata").write_text(json.dumps({"model": {"preset": "gpt2-tiny"}}))
    for init, trained_with in ((f"checkpoint:{run}", "its own SentencePiece model"),
                               (f"hf:{byte_level_bpe}", "the tokenizer in")):
        config = get_config("sft_tiny")
        config.init = init
        with pytest.raises(ConfigError, match=rf"^config.tokenizer='char' is the presets' default, but "
                                              rf"init=.* was trained with {trained_with}.*--config.tokenizer= "):
            build_job(config)
    from research.finetune.base_model import check_default_tokenizer
    check_default_tokenizer("random", "char")  # the tiny presets: a seeded init has no tokenizer of its own
    check_default_tokenizer(f"checkpoint:{run}", "")  # its own


def test_runs_whose_rows_gained_the_masked_lm_window_carry_it_in_their_identity(sentencepiece, byte_level_bpe):
    """Classification / tagging runs with this codebase's SentencePiece tokenizer read other rows since
    2026-12-07: their identity names it, so a run recorded before (lacking the field) is refused rather
    than resumed on the new rows; runs whose rows did not change (char) keep their identity."""
    from research.finetune.run_identity import finetune_fingerprint
    for preset in ("classify_tiny", "tag_tiny"):
        config = get_config(preset)
        assert "data.input_in_masked_lm_window" not in finetune_fingerprint(config.to_dict())  # char
        config.tokenizer = sentencepiece.path
        assert finetune_fingerprint(config.to_dict())["data.input_in_masked_lm_window"] is True
        config.tokenizer = byte_level_bpe
        assert "data.input_in_masked_lm_window" not in finetune_fingerprint(config.to_dict())
    config = get_config("sft_tiny")
    config.tokenizer = sentencepiece.path
    assert "data.input_in_masked_lm_window" not in finetune_fingerprint(config.to_dict())


def test_tagging_runs_of_a_byte_level_bpe_carry_their_new_rows_in_their_identity(byte_level_bpe, tmp_path):
    """A byte-level BPE's tagging rows changed with the rows above (a 'Ġ' token between words before):
    such runs name it in their identity, so one recorded before is refused rather than resumed on
    other rows. A WordPiece tokenizer's rows did not change (no token for " "): its runs keep theirs."""
    import transformers
    from research.finetune.run_identity import finetune_fingerprint
    config = get_config("tag_tiny")
    config.tokenizer = byte_level_bpe
    assert finetune_fingerprint(config.to_dict())["data.words_split_as_transformers"] is True
    for preset in ("classify_tiny", "sft_tiny"):  # no words to split
        other = get_config(preset)
        other.tokenizer = byte_level_bpe
        assert "data.words_split_as_transformers" not in finetune_fingerprint(other.to_dict())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "wordpiece")
    config.tokenizer = str(tmp_path / "wordpiece")
    assert "data.words_split_as_transformers" not in finetune_fingerprint(config.to_dict())


def test_a_tagging_run_whose_tokenizer_folder_is_gone_is_not_called_another_run(byte_level_bpe, tmp_path):
    """Its identity holds fields read off the tokenizer's files: with the folder gone (an unmounted
    disk) the claim said the workdir "holds another run" and to delete it; the loader now says what
    is missing, in its own words, and the run resumes once the folder is back."""
    import shutil

    from research.evaluation.tokenizer_loading import load_tokenizer
    from research.finetune.run_identity import claim_workdir
    from research.training import workdir_lock
    folder = tmp_path / "tokenizer"
    shutil.copytree(byte_level_bpe, folder)
    config = get_config("tag_tiny")
    config.tokenizer = str(folder)
    workdir = str(tmp_path / "run")
    claim_workdir(workdir, config.to_dict())
    workdir_lock.release([workdir])
    (tmp_path / "run" / "checkpoints" / "4").mkdir(parents=True)  # a saved step
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())
    assert recorded["fingerprint"]["data.words_split_as_transformers"] is True
    folder.rename(tmp_path / "unmounted")
    claim_workdir(workdir, config.to_dict())
    workdir_lock.release([workdir])
    with pytest.raises(ConfigError, match=r"^tokenizer '.*tokenizer' does not exist"):
        load_tokenizer(str(folder))
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == recorded
    (tmp_path / "unmounted").rename(folder)
    claim_workdir(workdir, config.to_dict())
