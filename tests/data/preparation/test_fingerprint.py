"""The fingerprint changes whenever what decides the output changes, including files edited in place."""
import json
import os
import shutil

import pytest

from research.data.config import DataError
from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs
from research.data.preparation.prepare import fingerprint
from tests.data.preparation.conftest import good_document, write_task_file
from tests.data.preparation.corpora import write_files


def _config(**sections) -> PreparationConfig:
    return PreparationConfig.from_dict({"decontamination": {"all_catalog_tasks": False}, **sections})


def test_a_copy_of_the_inputs_in_another_folder_has_its_own_fingerprint(tmp_path):
    """Same relative names, sizes and mtimes (an archive unpacked twice), other text: the second
    preparation returned the first's dataset."""
    a = write_files(str(tmp_path / "a"), {"doc.txt": "some text"})
    b = write_files(str(tmp_path / "b"), {"doc.txt": "sane text"})
    stat = os.stat(os.path.join(a, "doc.txt"))
    os.utime(os.path.join(b, "doc.txt"), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(resolve_inputs(a), _config()) != fingerprint(resolve_inputs(b), _config())


def test_a_catalog_task_whose_items_changed_changes_the_fingerprint(tmp_path, monkeypatch):
    """Only task files were digested: a catalog task whose generator changed (other prompts, other
    items) kept the fingerprint, and a rerun returned a dataset decontaminated against old items."""
    from research.data.preparation import decontamination
    spec = resolve_inputs(write_files(str(tmp_path / "in"), {"a.txt": "some text"}))
    config = PreparationConfig.from_dict({"decontamination": {"tasks": ["addition_1digit"], "all_catalog_tasks": False}})
    before = fingerprint(spec, config)
    assert fingerprint(spec, config) == before
    original = decontamination.evaluation_items
    monkeypatch.setattr(decontamination, "evaluation_items", lambda names, num_test=None: {
        name: [item + " (reworded)" for item in items] for name, items in original(names, num_test=num_test).items()})
    assert fingerprint(spec, config) != before


def test_blocklist_file_edited_in_place_changes_the_fingerprint(tmp_path):
    spec = resolve_inputs(write_files(str(tmp_path / "in"), {"a.txt": "some text"}))
    words_file = tmp_path / "words.txt"
    words_file.write_text("zzzz\n")
    config = _config(blocklist={"words_file": str(words_file)})
    before = fingerprint(spec, config)
    words_file.write_text("zzzz\n# a comment changes nothing\n")
    assert fingerprint(spec, config) == before
    words_file.write_text("zzzz\nriver\n")
    assert fingerprint(spec, config) != before


def test_task_file_and_its_data_files_edited_in_place_change_the_fingerprint(tmp_path):
    spec = resolve_inputs(write_files(str(tmp_path / "in"), {"a.txt": "some text"}))
    task_file = write_task_file(str(tmp_path / "tasks"))
    config = _config(decontamination={"tasks": [task_file], "all_catalog_tasks": False})
    before = fingerprint(spec, config)
    data_file = tmp_path / "tasks" / "rivers_test.jsonl"
    data_file.write_text(data_file.read_text() + json.dumps({"question": "Another question?", "answer": "no"}) + "\n")
    after_data = fingerprint(spec, config)
    assert after_data != before
    spec_json = json.loads(open(task_file).read())
    spec_json["prompt"] = "Question: {question}"
    open(task_file, "w").write(json.dumps(spec_json))
    assert fingerprint(spec, config) not in (before, after_data)


def test_tfds_input_prepared_again_changes_the_fingerprint(handmade, tmp_path):
    shutil.copytree(os.path.join(handmade["output_dir"], "handmade"), tmp_path / "handmade")
    config = _config()
    fingerprint_now = lambda: fingerprint(resolve_inputs("tfds:handmade", tfds_data_dir=str(tmp_path)), config)
    before = fingerprint_now()
    assert fingerprint_now() == before
    shard = next(p for p in (tmp_path / "handmade" / "1.0.0").iterdir() if "train.array_record" in p.name)
    os.utime(shard, (1_000_000, 1_000_000))  # a re-prepared shard: same name, another mtime
    after_shard = fingerprint_now()
    assert after_shard != before
    info = tmp_path / "handmade" / "1.0.0" / "dataset_info.json"
    stat = info.stat()
    info.write_text(info.read_text().replace("Prepared by", "Prepared By"))  # same size and mtime
    os.utime(info, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint_now() not in (before, after_shard)


def test_rerun_after_the_blocklist_file_changed_is_refused(tmp_path):
    corpus = write_files(str(tmp_path / "in"), {f"{i}.txt": good_document(i) for i in range(6)})
    words_file = tmp_path / "words.txt"
    words_file.write_text("zzzz\n")
    config = _config(blocklist={"words_file": str(words_file)}, dedup={"near": False},
                     output={"num_shards": 1, "validation_fraction": 0.5}, execution={"read_tasks": 1})
    out = str(tmp_path / "out")
    report = prepare_dataset(resolve_inputs(corpus), output_dir=out, name="blocked", config=config)
    assert report["totals"]["docs_out"] == 6
    words_file.write_text("zzzz\nriver\n")  # documents holding 'river' would now be dropped
    with pytest.raises(DataError, match="already holds a dataset prepared from other inputs or settings"):
        prepare_dataset(resolve_inputs(corpus), output_dir=out, name="blocked", config=config)


def test_document_stages_version_changes_every_fingerprint(tmp_path, monkeypatch):
    # Standardise, blocklist and decontamination run (or may run) in every preparation: a rerun
    # after their matching changed must prepare again, not return what the older rules made.
    from research.data.preparation import document_stages
    spec = resolve_inputs(write_files(str(tmp_path / "in"), {"a.txt": "some text"}))
    plain = _config(gopher_quality={"enabled": False}, gopher_repetition={"enabled": False}, dedup={"near": False})
    before = fingerprint(spec, plain)
    monkeypatch.setattr(document_stages, "DOCUMENT_STAGES_VERSION", document_stages.DOCUMENT_STAGES_VERSION + 1)
    assert fingerprint(spec, plain) != before


def test_word_splitting_version_changes_the_fingerprint_of_configs_that_split_words(tmp_path, monkeypatch):
    # A work dir or dataset made with another splitting of words (Gopher, C4, minhash shingles)
    # must not be resumed or returned as this one.
    from research.data.preparation import document_stages
    spec = resolve_inputs(write_files(str(tmp_path / "in"), {"a.txt": "some text"}))
    splitting, plain = _config(), _config(gopher_quality={"enabled": False}, gopher_repetition={"enabled": False},
                                          dedup={"near": False})
    before = fingerprint(spec, splitting), fingerprint(spec, plain)
    monkeypatch.setattr(document_stages, "WORDS_VERSION", document_stages.WORDS_VERSION + 1)
    assert fingerprint(spec, splitting) != before[0] and fingerprint(spec, plain) == before[1]
