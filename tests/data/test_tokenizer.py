"""SentencePiece wrapper: train + load round trips, byte fallback, caching, the CLI, vocab checks."""
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from research.data import DataConfig, DataError, Tokenizer, TokenizerConfig, build_tokenizer, check_vocab_fits

CODE = "def area(r):\n    return 3.14159 * r ** 2  # circle\n\n\tprint('tab')\n"
UNSEEN = "naïve 中文 🙂 Ωμέγα"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_then_load_round_trips(model_type, tmp_path):
    config = DataConfig(max_documents=20, tokenizer=TokenizerConfig(
        model_type=model_type, vocab_size=400, max_training_chars=60_000))
    start = time.perf_counter()
    tokenizer = build_tokenizer(config, str(tmp_path))
    assert time.perf_counter() - start < 20  # "a few seconds" on a shared 2-core machine
    assert tokenizer.vocab_size == 400 and os.path.isfile(tokenizer.path)
    specials = (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.mask_id)
    assert specials == (0, 1, 2, 3, 4)
    for text in (CODE, UNSEEN):  # whitespace is kept; unseen characters become byte pieces
        ids = tokenizer.encode(text)
        assert ids.dtype == np.int32 and tokenizer.unk_id not in ids
        assert tokenizer.decode(ids) == text
    assert "<0xF0>" in [tokenizer.id_to_piece(i) for i in tokenizer.encode("🙂")]  # byte fallback
    loaded = Tokenizer.load(tokenizer.path)
    np.testing.assert_array_equal(loaded.encode(CODE), tokenizer.encode(CODE))
    unpickled = pickle.loads(pickle.dumps(loaded))  # grain workers receive it pickled
    np.testing.assert_array_equal(unpickled.encode(UNSEEN), tokenizer.encode(UNSEEN))


def test_trained_model_is_cached_in_workdir(tokenizer, small_stdlib):
    again = build_tokenizer(small_stdlib, os.path.dirname(os.path.dirname(tokenizer.path)))
    assert again.path == tokenizer.path
    assert os.path.getmtime(again.path) == os.path.getmtime(tokenizer.path)  # not retrained
    bigger = small_stdlib.replace(tokenizer=TokenizerConfig(vocab_size=401, max_training_chars=100_000))
    from research.data.tokenizer import cached_model_path
    assert cached_model_path(bigger, "w") != cached_model_path(small_stdlib, "w")


def test_models_trained_together_train_their_tokenizer_once(tokenizer, small_stdlib, tmp_path, monkeypatch):
    from research.data import tokenizer as tokenizer_lib
    trained = []
    real = tokenizer_lib.train_tokenizer
    monkeypatch.setattr(tokenizer_lib, "train_tokenizer", lambda *a, **k: trained.append(1) or real(*a, **k))
    workdirs = [str(tmp_path / name) for name in "abc"]
    shared = tokenizer_lib.build_shared_tokenizer(small_stdlib, workdirs)
    assert len(trained) == 1 and shared.path == tokenizer_lib.cached_model_path(small_stdlib, workdirs[0])
    for workdir in workdirs:  # every workdir holds it, as if trained alone (same bytes as a lone training)
        with open(tokenizer_lib.cached_model_path(small_stdlib, workdir), "rb") as f, open(tokenizer.path, "rb") as g:
            assert f.read() == g.read()
    tokenizer_lib.build_shared_tokenizer(small_stdlib, workdirs)  # a rerun reuses them all
    assert len(trained) == 1


def test_extra_ids_are_sentinels_at_the_top(tokenizer):
    assert tokenizer.vocab_size == tokenizer.piece_size + 100
    assert tokenizer.sentinel_id(0) == tokenizer.vocab_size - 1
    special = tokenizer.special_tokens()
    assert {0, 1, 3, 4, tokenizer.sentinel_id(0), tokenizer.sentinel_id(99)} <= set(special.special_ids)
    # encode("x") opens with the dummy prefix's "▁": after a sentinel it reads as a space.
    assert tokenizer.decode([tokenizer.sentinel_id(0), *tokenizer.encode("x"), tokenizer.sentinel_id(1)]) == \
        "<extra_id_0> x<extra_id_1>"


def test_text_after_a_sentinel_keeps_its_space(tokenizer):
    # Span corruption of "return the value"; each run between sentinels was decoded alone, and
    # SentencePiece dropped its leading "▁" as a dummy prefix. Oracle: SentencePiece decoding
    # all the pieces at once, a sentinel spelled as a piece (it passes through as its text).
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    ids = [int(i) for i in tokenizer.encode("return the value")]
    pieces = [tokenizer.id_to_piece(i) for i in ids]
    a, b = [k for k, piece in enumerate(pieces) if piece.startswith("▁")][1:3]  # the span " the"
    inputs = ids[:a] + [tokenizer.sentinel_id(0)] + ids[b:]
    targets = [tokenizer.sentinel_id(0)] + ids[a:b] + [tokenizer.sentinel_id(1)]
    assert tokenizer.decode(inputs) == sp.decode_pieces(pieces[:a] + ["<extra_id_0>"] + pieces[b:]) == \
        "return<extra_id_0> value"
    assert tokenizer.decode(targets) == sp.decode_pieces(["<extra_id_0>", *pieces[a:b], "<extra_id_1>"]) == \
        "<extra_id_0> the<extra_id_1>"


def test_an_id_outside_the_vocabulary_is_a_one_line_error_not_text(tokenizer):
    # Extra id i is vocab_size - 1 - i: the top id decodes as <extra_id_0>, the lowest as <extra_id_99>.
    assert tokenizer.decode([tokenizer.piece_size, tokenizer.vocab_size - 1]) == "<extra_id_99><extra_id_0>"
    size = tokenizer.vocab_size  # a padded model vocabulary's ids above it once decoded as <extra_id_-N>
    for bad in (size, size + 55, -1):
        message = rf"token id {bad} is outside this tokenizer's vocabulary \[0, {size}\) \({tokenizer.piece_size} "
        with pytest.raises(DataError, match=message) as error:
            tokenizer.decode([5, bad])
        assert "\n" not in str(error.value)
        with pytest.raises(DataError, match=message):
            tokenizer.id_to_piece(bad)


def test_check_vocab_fits(tokenizer):
    check_vocab_fits(tokenizer, tokenizer.vocab_size)
    with pytest.raises(DataError, match=f"vocab_size={tokenizer.vocab_size} is larger than .* vocab_size=256"):
        check_vocab_fits(tokenizer, 256)


def test_bad_tokenizer_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.load(str(tmp_path / "missing.model"))
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        Tokenizer.load(str(tmp_path / "junk.model"))
    with pytest.raises(DataError, match="vocab_size=100 is too small"):
        TokenizerConfig(vocab_size=100)


def test_cli_trains_then_reuses(tmp_path):
    args = [sys.executable, "-m", "research.data.tokenizer", "--train", "--max_documents=5", "--vocab_size=400",
            "--max_training_chars=20000", f"--workdir={tmp_path}", "--encode=x = 1"]
    first = subprocess.run(args, capture_output=True, text=True, check=True)
    path = first.stdout.split("\t")[0]
    assert os.path.isfile(path) and "vocab_size=400" in first.stdout and "'x = 1'" in first.stdout
    second = subprocess.run(args[:3] + [f"--model={path}"], capture_output=True, text=True, check=True)
    assert second.stdout.startswith(path)
    bad = subprocess.run(args[:3], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: give --train")


def test_a_model_without_an_eos_piece_is_refused_at_load(tmp_path):
    # eos_id=-1 is a legal SentencePiece option; the pipeline appended that -1 to every document
    # as its eos, and it reached batches as an input and a target.
    import io

    import sentencepiece as spm

    from research.evaluation.tokenizer_loading import load_tokenizer
    from research.models.config import ConfigError

    model = io.BytesIO()
    text = [f"line {i} of a small corpus, with words and more words {i * 7}" for i in range(300)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=120, eos_id=-1,
                                   pad_id=-1, bos_id=1, unk_id=0, minloglevel=2)
    path = tmp_path / "no_eos.model"
    path.write_bytes(model.getvalue())
    message = rf"^'{path}' has no eos piece \(eos_id=-1\), and objectives end every document with eos; train it"
    with pytest.raises(DataError, match=message) as error:
        build_tokenizer(DataConfig(source="stdlib", tokenizer=TokenizerConfig(model_path=str(path))), str(tmp_path))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=rf"^tokenizer '{path}': '{path}' has no eos piece"):
        load_tokenizer(str(path))
