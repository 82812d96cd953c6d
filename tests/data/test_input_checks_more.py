"""User inputs the data package once took silently or as a traceback (or a hang): objective_options of
the wrong type, a split whose documents are all blank, a data_dir no source reads, and a synthetic
alphabet holding a special piece ("\\n")."""
from __future__ import annotations

import contextlib
import signal

import grain
import numpy as np
import pytest

from research.data import DataConfig, DataError, MaskedLM, PrefixLM, TokenizerConfig, build_tokenizer
from research.data import document_source, get_objective, objective_for_family, pipeline
from research.data.config import SPECIAL_PIECES, SyntheticConfig

from tests.data.handmade import HANDMADE


@contextlib.contextmanager
def fails_after(seconds: int):
    """A TimeoutError instead of a hang (the empty-split bug looped for ever in next())."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s: the pipeline hangs")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- objective_options types

@pytest.mark.parametrize("name, family, options, message", [
    # Each a TypeError traceback inside the pipeline, after the workdir was claimed.
    ("masked_lm", "encoder", {"mask_rate": "0.3"}, r"mask_rate='0.3' \(str\) of objective='masked_lm' must be a "
                                                   r"number"),
    ("span_corruption", "encoder_decoder", {"noise_density": "0.15"}, r"noise_density='0.15' \(str\) .* number"),
    ("masked_lm", "encoder", {"mask_rate": True}, r"mask_rate=True \(bool\) .* must be a number"),
    # Silently true: any non-empty string, "no" included.
    ("prefix_lm", "encoder_decoder", {"encoder_decoder": "no"}, r"encoder_decoder='no' \(str\) .* must be a bool"),
    ("prefix_lm", "decoder", {"encoder_decoder": 1}, r"encoder_decoder=1 \(int\) .* must be a bool"),
])
def test_an_objective_option_of_the_wrong_type_is_one_line(name, family, options, message):
    with pytest.raises(DataError, match=message) as error:
        objective_for_family(name, family, options)
    assert "\n" not in str(error.value)


def test_objective_options_of_the_right_type_still_apply():
    assert objective_for_family("masked_lm", "encoder", {"mask_rate": 0.3}) == MaskedLM(mask_rate=0.3)
    assert objective_for_family("masked_lm", "encoder", {"mask_rate": np.float32(0.5)}).mask_rate == 0.5
    assert objective_for_family("span_corruption", "encoder_decoder", {"mean_span_length": 2}).mean_span_length == 2
    assert objective_for_family("prefix_lm", "encoder_decoder", {"encoder_decoder": False}) == PrefixLM()


# ---------------------------------------------------------------------------- splits with no example

def test_a_split_of_blank_documents_is_one_line_not_a_hang(tokenizer, monkeypatch):
    monkeypatch.setattr(pipeline, "document_source", lambda config, split: grain.MapDataset.source(["", "", ""]))
    kwargs = dict(tokenizer=tokenizer, objective="causal_lm", batch_size=2, seq_len=16, shard_index=0, shard_count=1)
    with fails_after(60), pytest.raises(DataError, match=r"^split 'train' of stdlib has no document that yields an "
                                                         r"example: all 3 tokenize to no tokens") as error:
        next(pipeline.make_batch_iterator(DataConfig(source="stdlib"), **kwargs))
    assert "\n" not in str(error.value)
    # One shard of several: named.
    monkeypatch.setattr(pipeline, "document_source", lambda config, split: grain.MapDataset.source(["", "x", ""]))
    with fails_after(60), pytest.raises(DataError, match=r"^split 'validation' of stdlib \(shard 0 of 2\) has no "):
        next(pipeline.make_batch_iterator(DataConfig(source="stdlib"), split="validation",
                                          **{**kwargs, "shard_count": 2}))
    # One document that yields an example is enough (it repeats), wherever it is.
    monkeypatch.setattr(pipeline, "document_source", lambda config, split: grain.MapDataset.source(["", "", "x = 1"]))
    with fails_after(60):
        batch = next(pipeline.make_batch_iterator(DataConfig(source="stdlib"), **kwargs))
    assert batch["loss_weights"].sum() > 0


@pytest.mark.parametrize("objective", ["causal_lm", "prefix_lm", "masked_lm", "span_corruption"])
def test_token_documents_that_yield_no_example_are_one_line(objective):
    documents = grain.MapDataset.source([np.zeros(0, np.int32)] * 4)
    with fails_after(60), pytest.raises(DataError, match="the documents has no document that yields an example"):
        next(iter(pipeline.batches_from_token_documents(documents, objective=get_objective(objective),
                                                        special=HANDMADE, batch_size=2, seq_len=16, read_threads=0)))


# ---------------------------------------------------------------------------- fields of another source

@pytest.mark.parametrize("source", ["stdlib", "synthetic"])
def test_a_data_dir_no_source_reads_is_one_line(source):
    # Before: accepted, and the run trained on the stdlib / synthetic corpus, not the TFDS data there.
    with pytest.raises(DataError, match=rf"^data: data_dir='/data/tfds' applies to source='tfds' or 'files' only; "
                                        rf"source='{source}' reads no TFDS data") as error:
        DataConfig(source=source, data_dir="/data/tfds")
    assert "\n" not in str(error.value)
    DataConfig(source="tfds", tfds_name="lm1b", data_dir="/data/tfds")  # the sources that read it
    DataConfig(source="files", file_patterns=("a/*.txt",), data_dir="/data/tfds")


# ---------------------------------------------------------------------------- char_vocab_size

def test_char_vocab_size_counts_a_newline_in_the_alphabet_once(tmp_path):
    """"\\n" is special piece 5 already: counted twice, the tokenizer had a spare piece and learned a
    merge ("bb"), so it was no longer character level and losses were not per character."""
    synthetic = SyntheticConfig(alphabet="abcdefgh \n", order=2, doc_chars=512, num_documents=200)
    assert synthetic.char_vocab_size == len(SPECIAL_PIECES) + 9 == SyntheticConfig(alphabet="abcdefgh ").char_vocab_size
    config = DataConfig(source="synthetic", synthetic=synthetic, validation_fraction=0.01, tokenizer=TokenizerConfig(
        vocab_size=synthetic.char_vocab_size, byte_fallback=False, character_coverage=1.0, max_training_chars=100_000))
    tokenizer = build_tokenizer(config, str(tmp_path))
    text = document_source(config, "validation")[0]
    assert "\n" in text
    assert len(tokenizer.encode(text)) == len(text) + 1  # "▁" + one token per character
