"""Corpora: the stdlib split, the local-files TFDS builder, TFDS by name, and their errors."""
import json
import os

import pytest

from research.data import DataConfig, DataError, document_source
from research.data.sources import stdlib_files, stdlib_root


def test_stdlib_split_is_disjoint_deterministic_and_by_file():
    train, validation = stdlib_files("train"), stdlib_files("validation")
    assert not set(train) & set(validation)
    assert len(train) + len(validation) > 500 and 0.02 < len(validation) / (len(train) + len(validation)) < 0.1
    assert all(p.endswith(".py") and p.startswith(stdlib_root()) and "site-packages" not in p for p in train)
    assert stdlib_files("validation") == validation  # same files, same order, every call
    assert stdlib_files("train", max_documents=7) == train[:7]
    ds = document_source(DataConfig(max_documents=3), "validation")
    assert len(ds) == 3 and ds[0] == open(validation[0], encoding="utf-8", errors="replace").read()


def _write_corpus(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha document\nwith two lines\n")
    (root / "sub" / "b.md").write_text("# beta\n\nmarkdown body\n")
    (root / "sub" / "c.py").write_text("def gamma():\n    return 3\n")
    lines = [{"text": f"json document {i}", "id": i} for i in range(20)]
    (root / "d.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")


def test_files_builder_reads_txt_md_py_and_jsonl(tmp_path):
    _write_corpus(tmp_path / "corpus")
    config = DataConfig(source="files", data_dir=str(tmp_path / "tfds"), validation_fraction=0.2,
                        file_patterns=(str(tmp_path / "corpus/*.txt"), str(tmp_path / "corpus/**/*.md"),
                                       str(tmp_path / "corpus/**/*.py"), str(tmp_path / "corpus/*.jsonl")))
    train, validation = document_source(config, "train"), document_source(config, "validation")
    texts = [train[i] for i in range(len(train))] + [validation[i] for i in range(len(validation))]
    expected = {"alpha document\nwith two lines\n", "# beta\n\nmarkdown body\n", "def gamma():\n    return 3\n",
                *(f"json document {i}" for i in range(20))}
    assert sorted(texts) == sorted(expected)  # every document once, blank jsonl lines skipped
    assert 0 < len(validation) < len(train)
    prepared = [d for d, _, files in os.walk(tmp_path / "tfds") if any(".array_record-" in f for f in files)]
    assert len(prepared) == 1 and prepared[0].endswith("1.3.0")
    mtime = os.path.getmtime(prepared[0])
    assert len(document_source(config, "train")) == len(train)  # a rerun reuses the prepared data
    assert os.path.getmtime(prepared[0]) == mtime

    # The prepared dataset is an ordinary TFDS dataset: readable by name with source="tfds".
    name = "research_text_files/" + os.path.basename(os.path.dirname(prepared[0]))
    by_name = document_source(DataConfig(source="tfds", tfds_name=name, data_dir=str(tmp_path / "tfds"),
                                         max_documents=2), "validation")
    assert [by_name[0], by_name[1]] == [validation[0], validation[1]]
    tfds = lambda **kw: DataConfig(source="tfds", tfds_name=name, data_dir=str(tmp_path / "tfds"), **kw)  # noqa: E731
    # Valid TFDS syntax, once refused; "train+validation" itself would share validation's examples.
    both = document_source(tfds(train_split="train+validation[:1]", validation_split="validation[1:]"), "train")
    assert len(both) == len(train) + 1
    # Each once a traceback (and, inside the train loop, a workdir left claimed by the bad config).
    for bad, message in [(dict(train_split="train[:abc]"), r"TFDS split 'train\[:abc\]' of .* cannot be read"),
                         (dict(train_split="validation[3:1]"), r"TFDS split 'validation\[3:1\]' of .* (cannot be "
                                                                r"read|holds no examples)"),
                         (dict(tfds_name=name + ":9.9.9"), r"TFDS dataset name .*:9.9.9' is not valid"),
                         (dict(tfds_name="Bad Name!"), r"TFDS dataset name 'Bad Name!' is not valid|unknown TFDS")]:
        config = tfds(**{k: v for k, v in bad.items() if k != "tfds_name"})
        if "tfds_name" in bad:
            config = DataConfig(source="tfds", tfds_name=bad["tfds_name"], data_dir=str(tmp_path / "tfds"))
        with pytest.raises(DataError, match=message) as error:
            document_source(config, "train")
        assert "\n" not in str(error.value)


def test_source_errors_are_one_line(tmp_path):
    _write_corpus(tmp_path)
    files = lambda *patterns, **kw: DataConfig(source="files", file_patterns=patterns,  # noqa: E731
                                               data_dir=str(tmp_path / "tfds"), **kw)
    with pytest.raises(DataError, match=r"'.*\*\.nothing' matches no files"):
        document_source(files(str(tmp_path / "*.txt"), str(tmp_path / "*.nothing")), "train")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="only empty files"):
        document_source(files(str(tmp_path / "empty.txt")), "train")
    with pytest.raises(DataError, match="no field 'body'"):
        document_source(files(str(tmp_path / "d.jsonl"), text_field="body"), "train")
    with pytest.raises(DataError, match="'validation' of files:.* has no documents"):
        document_source(files(str(tmp_path / "a.txt"), validation_fraction=0.0), "validation")
    with pytest.raises(DataError, match="not one of"):
        document_source(DataConfig(), "test")
    with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_dataset'"):
        document_source(DataConfig(source="tfds", tfds_name="no_such_dataset", data_dir=str(tmp_path)), "train")
    with pytest.raises(DataError, match="'tiny_shakespeare' is not prepared under"):
        document_source(DataConfig(source="tfds", tfds_name="tiny_shakespeare", data_dir=str(tmp_path)), "train")
    with pytest.raises(DataError, match="needs file_patterns"):
        DataConfig(source="files")
    with pytest.raises(DataError, match="source='web' is not one of"):
        DataConfig(source="web")


def test_tfds_train_and_validation_splits_must_differ():
    # Once accepted: validation then scored the training data, with no warning.
    for train, validation in [("train", "train"), ("train[:90%]", "train[ :90%]")]:
        with pytest.raises(DataError, match="both .* so validation would score training data") as error:
            DataConfig(source="tfds", tfds_name="lm1b", train_split=train, validation_split=validation)
        assert "\n" not in str(error.value)
    DataConfig(source="tfds", tfds_name="lm1b", train_split="train", validation_split="test")
