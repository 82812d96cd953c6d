"""The files source's prepared dataset: which documents are held out, when it is reused, and
processes that share a data_dir."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from research.data import DataConfig
from research.data.sources import document_source

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


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


def test_processes_sharing_a_data_dir_prepare_it_once(tmp_path):
    # Both found it unprepared and prepared it; the second crashed renaming its copy onto the
    # first's (FileExistsError). Each process waits here until both are ready to read.
    _jsonl(tmp_path / "corpus" / "c.jsonl", [f"document {i} " * 5 for i in range(3000)])
    code = textwrap.dedent(f"""
        import os, sys, time
        from research.data import DataConfig
        from research.data.sources import document_source
        import research.data.text_files  # imports TFDS before the start line
        open(os.path.join({str(tmp_path)!r}, 'ready' + sys.argv[1]), 'w').close()
        while not all(os.path.exists(os.path.join({str(tmp_path)!r}, 'ready' + i)) for i in '01'):
            time.sleep(0.005)
        config = DataConfig(source='files', file_patterns=({str(tmp_path / 'corpus' / '*.jsonl')!r},),
                            data_dir={str(tmp_path / 'tfds')!r})
        print('documents', len(document_source(config, 'train')), len(document_source(config, 'validation')))
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    processes = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in processes]
    for out, err, returncode in results:
        assert returncode == 0, err[-2000:]
    counts = [out.split("documents")[-1].split() for out, _, _ in results]
    assert counts[0] == counts[1] and sum(map(int, counts[0])) == 3000
    prepared = [d for d, _, names in os.walk(tmp_path / "tfds") if any(".array_record-" in n for n in names)]
    assert len(prepared) == 1


def test_compressed_files_are_read_decompressed_and_a_text_field_must_hold_text(tmp_path):
    """The files source stored a .jsonl.gz as one document of gzip bytes, and {"text": null} as the
    text 'None'; data preparation (research/data/document_files.py, now shared) read both right."""
    import gzip

    import pytest

    from research.data.config import DataError
    (tmp_path / "in").mkdir()
    with gzip.open(tmp_path / "in" / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "first document"}) + "\n" + json.dumps({"text": "second one"}) + "\n")
    with gzip.open(tmp_path / "in" / "b.txt.gz", "wt") as f:
        f.write("a plain\r\ndocument")
    # JSON Lines by its other spellings: each was one document of raw JSON.
    (tmp_path / "in" / "c.JSONL").write_text(json.dumps({"text": "third", "url": "u"}) + "\n")
    (tmp_path / "in" / "d.ndjson").write_text(json.dumps({"text": "fourth"}) + "\n" + json.dumps({"text": "fifth"}))
    config = DataConfig(source="files", file_patterns=(str(tmp_path / "in" / "*"),), data_dir=str(tmp_path / "tfds"),
                        validation_fraction=0.0)
    assert sorted(_texts(config, "train")) == ["a plain\ndocument", "fifth", "first document", "fourth", "second one",
                                               "third"]
    _jsonl(tmp_path / "bad" / "c.jsonl", ["fine"])
    with open(tmp_path / "bad" / "c.jsonl", "a") as f:
        f.write(json.dumps({"text": None}) + "\n")
    bad = DataConfig(source="files", file_patterns=(str(tmp_path / "bad" / "*.jsonl"),),
                     data_dir=str(tmp_path / "tfds"), validation_fraction=0.0)
    with pytest.raises(DataError, match=r"c\.jsonl:2: field 'text' is NoneType, not a string"):
        _texts(bad, "train")


def test_opening_a_split_logs_no_line_per_file(tmp_path, caplog):
    # TFDS logged the builder config at every builder made (three per opened split, so at every
    # evaluation), and its repr listed every file: 136 KB per split for 2,000 files.
    for i in range(40):
        (tmp_path / "corpus" / f"part{i:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"part{i:02d}.txt").write_text(f"document number {i}\n" * 5)
    config = DataConfig(source="files", file_patterns=(str(tmp_path / "corpus" / "*.txt"),),
                        data_dir=str(tmp_path / "tfds"), validation_fraction=0.2)
    _texts(config, "train")  # prepares the corpus (TFDS's own progress lines are fine, once)
    caplog.clear()
    with caplog.at_level("INFO"):
        for _ in range(3):  # three evaluations
            assert _texts(config, "validation")
    assert not [r for r in caplog.records if "part0" in r.getMessage() or "custom data config" in r.getMessage()]


def test_a_corpus_without_validation_documents_is_refused_before_a_tokenizer_trains(tmp_path):
    from research.data import tokenizer as tokenizer_lib
    from research.data.config import DataError
    (tmp_path / "corpus.txt").write_text("some text to train a tokenizer on\n" * 50)
    config = DataConfig(source="files", file_patterns=(str(tmp_path / "corpus.txt"),),
                        data_dir=str(tmp_path / "tfds"), validation_fraction=0.0)
    workdir = tmp_path / "run"
    with pytest.raises(DataError, match=r"^split 'validation' of .* has no documents; .*validation_fraction=0\.0"):
        tokenizer_lib.build_shared_tokenizer(config, [str(workdir)])
    assert not (workdir / "tokenizers").exists() or not list((workdir / "tokenizers").iterdir())
