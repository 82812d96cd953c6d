"""What the files source reads of what its patterns match: never its own prepared copy or a run's
workdir, not binary files, .json as JSON Lines; a split no file can fall in is refused before
anything is prepared; and the DataConfig lines about fields of another source."""
import json
import logging
import re

import pytest

from research.data import DataConfig, DataError
from research.data.sources import document_source, in_validation
from research.data.text_files import expand_patterns


def _texts(config, split):
    docs = document_source(config, split)
    return sorted(docs[i] for i in range(len(docs)))


def _files(tmp_path, **fields):
    return DataConfig(source="files", data_dir=str(tmp_path / "tfds"), **fields)


def test_the_prepared_copy_and_a_runs_workdir_are_never_documents(tmp_path, caplog):
    # `corpus/**/*` matched the prepared copy under a data_dir inside the corpus: its shards and
    # dataset_info.json became documents, so the corpus (3 -> 10 -> 13 train documents) and the
    # tokenizer's cache name changed at every open; `**/*.jsonl` matched a run's metrics.jsonl.
    from research.data.tokenizer import cached_model_path
    corpus = tmp_path / "corpus"
    (corpus / "runs" / "g" / "checkpoints").mkdir(parents=True)
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(f"document number {i}\n")
    (corpus / "runs" / "g" / "run.json").write_text(json.dumps({"fingerprint": {"data.source": "files"}}))
    (corpus / "runs" / "g" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    (corpus / "runs" / "g" / "checkpoints" / "state.txt").write_text("a checkpoint's file")
    (corpus / "notes").mkdir()
    (corpus / "notes" / "run.json").write_text('{"text": "a note"}')  # not a workdir's record: a document
    config = DataConfig(source="files", file_patterns=(str(corpus / "**" / "*"),), data_dir=str(corpus / "tfds"),
                        validation_fraction=0.3)
    names = [cached_model_path(config, str(tmp_path / "run"))]
    opened = []
    with caplog.at_level(logging.WARNING, logger="research.data.text_files"):
        for _ in range(3):  # training, then two evaluations
            opened.append((_texts(config, "train"), _texts(config, "validation")))
            names.append(cached_model_path(config, str(tmp_path / "run")))
    assert opened[0] == opened[1] == opened[2] and len(set(names)) == 1
    assert sorted(opened[0][0] + opened[0][1]) == sorted([f"document number {i}\n" for i in range(6)] + ["a note"])
    assert len([r for r in caplog.records if "left out" in r.getMessage()]) == 1  # once, not at every evaluation
    # The tokenizer's cache name expands the patterns without the data_dir: the copy is still left out.
    assert not [p for p in expand_patterns(config.file_patterns) if "research_text_files" in p or "runs" in p]
    with pytest.raises(DataError, match=r"'.*runs/\*\*/\*\.jsonl' matches no files but .* a run's workdir"):
        expand_patterns([str(corpus / "runs" / "**" / "*.jsonl")])
    # Only this source's own copy is left out of a data_dir: a corpus kept in one (TFDS's manual downloads) is read.
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "book.txt").write_text("a book kept beside the prepared datasets")
    assert expand_patterns([str(manual / "*.txt")]) == [str(manual / "book.txt")]
    # A corpus inside a workdir (--workdir=. in a project folder), named by its own folder, is read too:
    # only workdirs at or below the folder a pattern names before its first wildcard are left out.
    assert expand_patterns([str(corpus / "runs" / "g" / "checkpoints" / "*.txt")]) == [
        str(corpus / "runs" / "g" / "checkpoints" / "state.txt")]


def test_binary_files_are_skipped_and_undecodable_text_is_counted(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train-00000.parquet").write_bytes(b"PAR1\x15\x00\x15\x1c\x15\x1e,\x15\x04" + bytes(range(256)))
    (tmp_path / "in" / "notes.txt").write_bytes(b"caf\xe9 au lait")  # Latin-1: one byte that is not UTF-8
    with caplog.at_level(logging.WARNING, logger="research.data.text_files"):
        texts = _texts(_files(tmp_path, file_patterns=(str(tmp_path / "in" / "*"),), validation_fraction=0.0), "train")
    assert texts == ["caf\ufffd au lait"]  # once also the parquet bytes, as U+FFFD text
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 1 binary files" in messages and "train-00000.parquet" in messages
    assert "1 documents held 1 byte sequences that are not UTF-8" in messages
    with pytest.raises(DataError, match=r"^file patterns .* match only binary files .*train-00000\.parquet") as error:
        document_source(_files(tmp_path, file_patterns=(str(tmp_path / "in" / "*.parquet"),)), "train")
    assert "\n" not in str(error.value)


def test_a_json_file_of_json_lines_is_read_as_json_lines(tmp_path):
    # What datasets.Dataset.to_json and pandas' to_json(lines=True) write: each was one document of raw JSON,
    # with text_field ignored.
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "part.json").write_text("".join(json.dumps({"id": i, "body": f"body {i}"}) + "\n"
                                                         for i in range(3)))
    config = _files(tmp_path, file_patterns=(str(tmp_path / "lines" / "*.json"),), text_field="body",
                    validation_fraction=0.0)
    assert _texts(config, "train") == ["body 0", "body 1", "body 2"]
    # Any other .json (a package.json of a code corpus, an array, a one-line object without the text
    # field) stays one plain document, as before and as data preparation reads it.
    (tmp_path / "repo").mkdir()
    documents = {"package.json": json.dumps({"name": "x", "body": "y"}, indent=1), "array.json": '[{"body": "x"}]',
                 "tsconfig.json": '{"compilerOptions": {"strict": true}}'}
    for name, text in documents.items():
        (tmp_path / "repo" / name).write_text(text)
    config = _files(tmp_path, file_patterns=(str(tmp_path / "repo" / "*.json"),), text_field="body",
                    validation_fraction=0.0)
    assert sorted(_texts(config, "train")) == sorted(documents.values())


def test_a_split_no_file_falls_in_is_refused_before_anything_is_prepared(tmp_path):
    # One input.txt is one document, wholly in one split: validation was refused only after the corpus
    # was prepared (a copy left in the data_dir at each try), advising to raise validation_fraction,
    # which moved the file to validation and emptied train.
    (tmp_path / "input.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20)
    single = str(tmp_path / "input.txt")
    assert not in_validation("input.txt", 0.05) and in_validation("input.txt", 0.99)
    for split, fraction in [("validation", 0.05), ("train", 0.99)]:
        with pytest.raises(DataError, match=rf"^split '{split}' of files:.* has no documents; its one file is one "
                                            r"document.*split the text into several files.*\.jsonl") as error:
            document_source(_files(tmp_path, file_patterns=(single,), validation_fraction=fraction), split)
        assert "\n" not in str(error.value)
    assert not (tmp_path / "tfds").exists()
    # Several whole files: the line names a fraction that holds out one and keeps the others.
    for i in range(3):
        (tmp_path / "parts" / f"p{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "parts" / f"p{i}.txt").write_text(f"part {i}")
    with pytest.raises(DataError, match=r"its 3 files are one document each.*set validation_fraction=") as error:
        document_source(_files(tmp_path, file_patterns=(str(tmp_path / "parts" / "*.txt"),),
                               validation_fraction=0.0), "validation")
    fraction = float(re.search(r"set validation_fraction=([0-9.]+)", str(error.value)).group(1))
    held_out = [in_validation(f"p{i}.txt", fraction) for i in range(3)]
    assert any(held_out) and not all(held_out) and not (tmp_path / "tfds").exists()


def test_a_field_of_another_source_names_the_tokenizer_clis_flag_too():
    # Also raised from the tokenizer CLI (--files without --source), whose flag is --source.
    with pytest.raises(DataError, match=r"add --config\.data\.source=files \(tokenizer CLI: --source=files\)"):
        DataConfig(file_patterns=("corpus/*.txt",))
    with pytest.raises(DataError, match=r"add --config\.data\.source=tfds \(tokenizer CLI: --source=tfds\)"):
        DataConfig(tfds_name="lm1b")
