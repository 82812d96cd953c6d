"""Tokenizer fixes: spaces after a T5 sentinel, <unk> as a special id, training advice that
fits the failure, thread-independent unigram training, bad paths named, the cache key."""
import glob
import os
import subprocess
import sys
from unittest import mock

import pytest

from research.data import DataConfig, DataError, Tokenizer, TokenizerConfig, build_tokenizer
from research.data import tokenizer as tokenizer_lib
from research.data.tokenizer import cached_model_path, train_tokenizer


def _with_sentinel_pieces(tokenizer: Tokenizer):
    """The same SentencePiece model with <extra_id_i> appended as real user-defined pieces at
    the ids Tokenizer gives them: decoding with it is the oracle for Tokenizer.decode."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(tokenizer.model_proto)
    for index in reversed(range(tokenizer.num_extra_ids)):  # extra id i is vocab_size - 1 - i
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = f"<extra_id_{index}>", 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
    reference = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    assert reference.piece_to_id("<extra_id_0>") == tokenizer.sentinel_id(0)
    return reference


def test_decode_after_a_sentinel_keeps_every_space(tokenizer):
    # A run opening with "▁▁" decoded to " " already, so the one "▁" SentencePiece strips at a
    # run's start was not put back: indented code after a sentinel lost a space.
    reference = _with_sentinel_pieces(tokenizer)
    multi_space_openings = 0
    for body in ["a", " y", "  x", "    return x", "\n    pass", "        if a:\n            b"]:
        ids = [*tokenizer.encode("q").tolist(), tokenizer.sentinel_id(0), *tokenizer.encode(body).tolist(),
               tokenizer.sentinel_id(1), *tokenizer.encode(body).tolist()]
        multi_space_openings += tokenizer.id_to_piece(ids[ids.index(tokenizer.sentinel_id(0)) + 1]).startswith("▁▁")
        assert tokenizer.decode(ids) == reference.decode(ids), body
    assert multi_space_openings >= 2  # the case that lost a space was exercised


def test_unk_is_a_special_id(tokenizer):
    # Masked LM never picks a special id for the loss nor as a random replacement; <unk> was not one.
    special = tokenizer.special_tokens()
    assert tokenizer.unk_id == 2 and tokenizer.unk_id in special.special_ids


def test_a_user_defined_mask_piece_is_a_special_id():
    """A SentencePiece model trained elsewhere whose [MASK] is a user-defined piece, not a control
    one: masked LM drew it as a "random" replacement (about 1 draw in the vocabulary size: 426 of
    200,000 with a 500-piece model) and could pick a literal [MASK] of the text as a target.
    Oracle: sentencepiece's own piece types."""
    import io

    import numpy as np
    import sentencepiece as spm

    from research.data.objectives import mask_tokens
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_stdlib_texts(4)), model_writer=model, vocab_size=400,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=3, user_defined_symbols=["[MASK]"],
                                   minloglevel=2, byte_fallback=True, character_coverage=0.995)
    tokenizer = Tokenizer(model.getvalue())
    reference = spm.SentencePieceProcessor(model_proto=model.getvalue())
    special = tokenizer.special_tokens()
    assert reference.is_control(special.mask_id) is False and reference.id_to_piece(special.mask_id) == "[MASK]"
    assert special.mask_id in special.special_ids
    tokens = np.tile(np.asarray([special.mask_id, *range(5, 200)], np.int32), 20)
    for seed in range(20):
        inputs, weights = mask_tokens(tokens, np.random.default_rng(seed), special)
        assert not weights[tokens == special.mask_id].any()  # never a target
        replaced = (weights > 0) & (inputs != tokens) & (inputs != special.mask_id)
        assert replaced.any()  # random replacements were drawn


def _stdlib_texts(count: int) -> list[str]:
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:count]
    return [open(f, encoding="utf-8", errors="replace").read() for f in files]


def test_too_few_pieces_for_the_characters_advises_a_larger_vocab_size(tmp_path):
    texts = ["".join(chr(0x4E00 + (i * 7 + j) % 300) for j in range(300)) + "\n" for i in range(40)]
    config = TokenizerConfig(vocab_size=100, byte_fallback=False, character_coverage=1.0)
    with pytest.raises(DataError, match=r"^tokenizer: vocab_size=100 cannot hold the (\d+) pieces .* raise "
                                        r"vocab_size to at least \1, or lower character_coverage\.$") as error:
        train_tokenizer(texts, config, str(tmp_path / "small.model"))
    assert "lower vocab_size" not in str(error.value)
    needed = int(str(error.value).split("at least ")[1].split(",")[0])
    # The advice is enough: the named vocab_size trains.
    tokenizer = train_tokenizer(texts, TokenizerConfig(vocab_size=needed, byte_fallback=False, character_coverage=1.0),
                                str(tmp_path / "enough.model"))
    assert tokenizer.piece_size == needed


def test_too_many_pieces_for_the_text_advises_a_smaller_vocab_size(tmp_path):
    texts = ["hello world, this is a tiny corpus.\n" * 50, "another line of text here\n" * 20]
    with pytest.raises(DataError, match=r"^tokenizer: vocab_size=2000 is more pieces than \d+ chars of training text "
                                        r"yield; lower vocab_size to at most (\d+), or train on more text\.$"):
        train_tokenizer(texts, TokenizerConfig(vocab_size=2000), str(tmp_path / "big.model"))


def test_unigram_pieces_do_not_depend_on_the_core_count(tmp_path):
    # The thread count was min(4, cpu_count): 1 and 4 threads learned different unigram pieces
    # from this text, under one cache name.
    texts = _stdlib_texts(40)
    config = TokenizerConfig(model_type="unigram", vocab_size=400, max_training_chars=100_000)
    pieces = []
    for cores in (1, 4):
        with mock.patch("os.cpu_count", return_value=cores):
            trained = train_tokenizer(texts, config, str(tmp_path / f"u{cores}.model"))
        pieces.append([trained.id_to_piece(i) for i in range(trained.piece_size)])
    assert pieces[0] == pieces[1]


def test_unigram_cache_name_records_the_thread_count(monkeypatch):
    # Unigram models cached before the thread count was fixed mean something else: another name.
    unigram = DataConfig(tokenizer=TokenizerConfig(model_type="unigram", vocab_size=400))
    bpe = DataConfig(tokenizer=TokenizerConfig(model_type="bpe", vocab_size=400))
    before = cached_model_path(unigram, "w"), cached_model_path(bpe, "w")
    monkeypatch.setattr(tokenizer_lib, "_TRAINING_THREADS", 8)
    assert cached_model_path(unigram, "w") != before[0]
    assert cached_model_path(bpe, "w") == before[1]  # BPE's pieces do not depend on it: caches stay valid


def test_a_model_cached_under_its_name_from_before_is_reused_not_retrained(tmp_path, monkeypatch):
    """Cache names changed on 2026-12-06 (unigram: the thread count; files: the files, not their
    patterns). A run trained before resumes with the model it trained with: retrained under the new
    name, a unigram model got 4 of 400 pieces different on a 2-core machine."""
    config = DataConfig(source="stdlib", max_documents=40,
                        tokenizer=TokenizerConfig(model_type="unigram", vocab_size=400, max_training_chars=60_000))
    legacy = cached_model_path(config, str(tmp_path), legacy=True)
    assert legacy != cached_model_path(config, str(tmp_path))
    os.makedirs(os.path.dirname(legacy))
    with open(legacy, "wb") as f:
        f.write(tokenizer_lib.build_tokenizer(config, str(tmp_path / "elsewhere")).model_proto)
    monkeypatch.setattr(tokenizer_lib, "train_tokenizer", lambda *a, **k: pytest.fail("retrained"))
    assert tokenizer_lib.build_tokenizer(config, str(tmp_path)).path == legacy


def test_bad_model_paths_say_what_is_wrong(tmp_path):
    (tmp_path / "empty.model").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.model' holds no pieces \(0 bytes\), so it is not a SentencePiece"):
        Tokenizer.load(str(tmp_path / "empty.model"))
    with pytest.raises(DataError, match=r"is a directory, not a SentencePiece \.model file"):
        Tokenizer.load(str(tmp_path))


def test_a_workdir_under_a_file_fails_before_reading_the_corpus(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    import research.data.sources as sources
    monkeypatch.setattr(sources, "document_source", mock.Mock(side_effect=AssertionError("read the corpus")))
    with pytest.raises(DataError, match=r"^tokenizer: cannot write .* \(.*afile is a file, not a directory\); give a "
                                        r"writable workdir\.$"):
        build_tokenizer(DataConfig(max_documents=5, tokenizer=TokenizerConfig(vocab_size=400)),
                        str(tmp_path / "afile" / "w"))
    with pytest.raises(DataError, match="afile is a file, not a directory"):
        train_tokenizer(["some text\n"] * 10, TokenizerConfig(vocab_size=300), str(tmp_path / "afile" / "t.model"))


def test_cli_names_a_bad_model_and_workdir(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.model").write_bytes(b"")
    base = [sys.executable, "-m", "research.data.tokenizer"]
    for args, expected in [([f"--model={tmp_path / 'empty.model'}"], "holds no pieces (0 bytes)"),
                           ([f"--model={tmp_path}"], "is a directory"),
                           (["--train", "--max_documents=5", "--vocab_size=400", f"--workdir={tmp_path / 'afile' / 'w'}"],
                            "afile is a file, not a directory")]:
        result = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode != 0 and last.startswith("error: ") and expected in last, result.stderr[-500:]


def test_cache_name_depends_on_the_files_not_how_they_are_named(tmp_path, monkeypatch):
    corpus = tmp_path / "corp"
    corpus.mkdir()
    for name in ("a.txt", "b.txt", "d.txt"):
        (corpus / name).write_text(f"text of {name}\n" * 20)
    def path(**fields):
        return cached_model_path(DataConfig(source="files", tokenizer=TokenizerConfig(vocab_size=300), **fields), "w")
    first = path(file_patterns=(f"{corpus}/*.txt",), data_dir=str(tmp_path / "tfds"))
    monkeypatch.chdir(tmp_path)
    assert path(file_patterns=("corp/*.txt",), data_dir=str(tmp_path / "tfds")) == first
    assert path(file_patterns=(f"{corpus}/*.txt", f"{corpus}/d*.txt"), data_dir=str(tmp_path / "tfds")) == first
    assert path(file_patterns=(f"{corpus}/*.txt",), data_dir=str(tmp_path / "tfds2")) == first
    (corpus / "b.txt").write_text("edited\n")  # an edited corpus is still another corpus
    assert path(file_patterns=(f"{corpus}/*.txt",), data_dir=str(tmp_path / "tfds")) != first
