"""The files source's prepared dataset: which documents are held out, when it is reused, and
processes that share a data_dir."""
import os

from research.data import DataConfig
from research.data.sources import document_source


def _texts(config, split):
    docs = document_source(config, split)
    return [docs[i] for i in range(len(docs))]


def test_a_corpus_in_another_directory_is_not_read_from_the_first_ones_copy(tmp_path):
    # Two unpacked versions (archive mtimes, equal sizes) in two directories once shared one
    # prepared dataset in a shared data_dir: the second read the first's text.
    stamp = 1_700_000_000
    configs = []
    for name, text in (("v1", "the cat sat on the mat"), ("v2", "the cat sat on the hat")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "corpus.txt").write_text(text)
        os.utime(tmp_path / name / "corpus.txt", (stamp, stamp))
        configs.append(DataConfig(source="files", file_patterns=(str(tmp_path / name / "*.txt"),),
                                  data_dir=str(tmp_path / "tfds"), validation_fraction=0.0))
    assert [_texts(c, "train") for c in configs] == [["the cat sat on the mat"], ["the cat sat on the hat"]]