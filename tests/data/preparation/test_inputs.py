"""Bad input is one clear line naming the file (and line) and the fix; bad bytes are counted, not fatal."""
import builtins
import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import tarfile

import pytest

from research.data.config import DataError
from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs
from research.data.preparation.config import StandardiseConfig
from research.data.preparation.document_stages import dedup_key, standardise
from research.data.preparation.inputs import decode_utf8, read_file
from research.data.preparation.report import summary_text
from tests.data.preparation.conftest import good_document
from tests.data.preparation.corpora import write_files, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_patterns_that_match_nothing_or_only_empty_files(tmp_path):
    with pytest.raises(DataError, match="matches no files"):
        resolve_inputs(str(tmp_path / "missing" / "*.txt"))
    write_files(str(tmp_path), {"a.txt": "", "b.md": ""})
    with pytest.raises(DataError, match="matches only empty files"):
        resolve_inputs(str(tmp_path))
    with pytest.raises(DataError, match="--input is empty"):
        resolve_inputs(" ")


def test_jsonl_field_checked_up_front_with_file_and_line(tmp_path):
    path = write_jsonl(str(tmp_path / "a.jsonl"), [{"content": "x"}])
    with pytest.raises(DataError, match=r"a.jsonl:1: no field 'text' \(it has \['content'\]\); set --text_field"):
        resolve_inputs(path)
    assert resolve_inputs(path, text_field="content").files == (path,)
    (tmp_path / "b.jsonl").write_text('{"text": "fine"}\n{"text": 3}\nnot json\n')
    docs = read_file(str(tmp_path / "b.jsonl"), str(tmp_path), "text")
    assert next(docs).text == "fine"
    with pytest.raises(DataError, match=r"b.jsonl:2: field 'text' is int, not a string"):
        next(docs)


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    path = write_files(str(tmp_path), {"a.txt": "hello"}) + "/a.txt"
    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if file == path:
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    with pytest.raises(DataError, match=r"a.txt cannot be read \(Permission denied\)"):
        list(read_file(path, str(tmp_path), "text"))


def test_invalid_utf8_is_counted_per_document_with_its_origin(tmp_path):
    assert decode_utf8(b"caf\xc3\xa9") == ("café", 0)
    assert decode_utf8(b"caf\xe9 \xff!") == ("caf\ufffd \ufffd!", 2)
    (tmp_path / "c.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "bad \xff byte"}\n')
    docs = list(read_file(str(tmp_path / "c.jsonl"), str(tmp_path), "text"))
    assert [(d.metadata["origin"], d.metadata["invalid_utf8_bytes"]) for d in docs] == [("c.jsonl:1", 0), ("c.jsonl:2", 1)]


def test_invalid_utf8_share_is_the_text_fields_not_the_lines(tmp_path):
    """Bad bytes were counted over the whole JSONL line: 8 in a url field dropped a clean text as
    invalid_utf8, and a 20 KB clean html field kept a text with 1 bad byte in 16 as 'repaired'."""
    text = " ".join(good_document(0).split("\n")).encode()  # ~1 KB of clean prose
    bad_text = b"".join(text[k:k + 15] + b"\xff" for k in range(0, len(text), 15))  # 1 bad byte in 16
    html = json.dumps("<p>" + "x" * 20000 + "</p>").encode()
    (tmp_path / "u.jsonl").write_bytes(
        b'{"text": "' + text + b'", "url": "\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"}\n'
        + b'{"text": "' + bad_text + b'", "html": ' + html + b'}\n'
        # A truncated sequence (one U+FFFD, as decoding the line gave), a lone surrogate escape, \n escaped.
        + b'{"url": "\xff", "text": "caf\xc3 \\ud83d \xe2\x82 \xe2\x82\xac\\n"}\n')
    clean, mostly_bad, mixed = read_file(str(tmp_path / "u.jsonl"), str(tmp_path), "text")
    assert (clean.text.encode(), clean.metadata["invalid_utf8_bytes"], clean.metadata["num_bytes"]) == (text, 0, len(text))
    assert standardise(clean, StandardiseConfig()).note == ""
    assert mostly_bad.text == bad_text.decode("utf-8", errors="replace")
    bad_bytes = bad_text.count(b"\xff")
    assert (mostly_bad.metadata["invalid_utf8_bytes"], mostly_bad.metadata["num_bytes"]) == (bad_bytes, len(bad_text))
    assert standardise(mostly_bad, StandardiseConfig()).reason == "invalid_utf8"  # 6% > 1%
    assert mixed.text == "caf\ufffd \ufffd \ufffd \u20ac\n"
    assert (mixed.metadata["invalid_utf8_bytes"], mixed.metadata["num_bytes"]) == (3, 3 + 1 + 1 + 3 + 1 + 2 + 1 + 3 + 1)


def test_lone_surrogate_escape_in_jsonl_is_repaired_and_counted(tmp_path):
    # Half an emoji's surrogate pair, as web scrapes cut them: no UTF-8 encoder accepts it.
    (tmp_path / "s.jsonl").write_text('{"text": "broken emoji \\ud83d here."}\n{"text": "whole \\ud83d\\ude00"}\n')
    broken, whole = read_file(str(tmp_path / "s.jsonl"), str(tmp_path), "text")
    assert (broken.text, broken.metadata["invalid_utf8_bytes"]) == ("broken emoji \ufffd here.", 1)
    assert (whole.text, whole.metadata["invalid_utf8_bytes"]) == ("whole \U0001f600", 0)
    verdict = standardise(broken, StandardiseConfig(max_invalid_fraction=0.1))
    assert verdict.note == "repaired_invalid_utf8"
    assert dedup_key(verdict.text)  # encodes: the crash was here


def test_bad_record_deep_in_a_file_stops_the_run_with_file_and_line_and_publishes_nothing(tmp_path):
    records = [{"text": good_document(i)} for i in range(3)] + [{"body": "no text field"}]
    os.makedirs(tmp_path / "in")
    write_jsonl(str(tmp_path / "in" / "data.jsonl"), records)
    config = PreparationConfig.from_dict({"decontamination": {"all_catalog_tasks": False},
                                          "output": {"num_shards": 1}, "execution": {"read_tasks": 1}})
    spec = resolve_inputs(str(tmp_path / "in"))  # line 1 is fine: the up-front check passes
    with pytest.raises(DataError, match=r"data.jsonl:4: no field 'text'"):
        prepare_dataset(spec, output_dir=str(tmp_path / "out"), name="bad", config=config)
    assert os.listdir(tmp_path / "out") == []  # no dataset, and no work dir that could never resume


def test_cli_reports_bad_input_as_one_line(tmp_path):
    """datatrove logged the failed task's exception first: ~130 lines of traceback with the value
    of each frame's variables, the documents' text among them, above the one line that matters."""
    records = [{"text": good_document(i) + " secret customer text"} for i in range(2)] + [{"body": "no text field"}]
    write_jsonl(str(tmp_path / "data.jsonl"), records)
    result = subprocess.run(
        [sys.executable, "-m", "experiments.prepare_data", f"--input={tmp_path}/data.jsonl",
         f"--output_dir={tmp_path}/out", "--name=bad", "--config.decontamination.all_catalog_tasks=false",
         "--config.execution.read_tasks=1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith("error: ") and "data.jsonl:3: no field 'text'" in last and "--text_field" in last
    # The rest is datatrove's progress (a dozen INFO lines): no traceback, no text of any document.
    assert "Traceback" not in result.stderr and "secret customer" not in result.stderr + result.stdout
    assert [line for line in lines if "no field 'text'" in line] == [last] and len(lines) <= 20
    assert not [line for line in lines[:-1] if " | " not in line and not line.startswith(("---", "READER:", "FILTER:",
                                                                                        "WRITER:"))]


def test_everything_filtered_out_names_the_rules_and_publishes_nothing(tmp_path):
    write_files(str(tmp_path / "in"), {"a.txt": "Too short.", "b.txt": "Also far too short."})
    config = PreparationConfig.from_dict({"decontamination": {"all_catalog_tasks": False},
                                          "output": {"num_shards": 1}, "execution": {"read_tasks": 1}})
    with pytest.raises(DataError, match=r"hold no documents .* Drops: gopher_quality: gopher_short_doc=2\.$"):
        prepare_dataset(resolve_inputs(str(tmp_path / "in")), output_dir=str(tmp_path / "out"), name="none",
                        config=config)
    assert os.listdir(tmp_path / "out") == []


def test_binary_files_are_skipped_and_counted(tmp_path):
    folder = write_files(str(tmp_path / "src"), {"a.py": "print('a')\n", "b.py": "print('b')\n",
                                                 "b.cpython-311.pyc": b"\xa7\r\r\n\x00\x00\x00\x00code"})
    with tarfile.open(os.path.join(folder, "backup.tar"), "w") as tar:  # headers + every file again
        tar.add(os.path.join(folder, "a.py"), arcname="a.py")
    spec = resolve_inputs(folder)
    assert [os.path.basename(p) for p in spec.files] == ["a.py", "b.py"]
    assert sorted((reason, os.path.basename(p)) for reason, p in spec.skipped) == [
        ("binary", "b.cpython-311.pyc"), ("binary", "backup.tar")]
    with pytest.raises(DataError, match=r"matches only binary files .*; give text, markdown, code or \.jsonl"):
        resolve_inputs(os.path.join(folder, "*.tar"))


def test_output_dir_inside_the_input_folder_is_never_read(tmp_path):
    folder = write_files(str(tmp_path / "in"), {f"{i}.txt": good_document(i) for i in range(6)})
    with tarfile.open(os.path.join(folder, "backup.tar"), "w") as tar:
        tar.add(os.path.join(folder, "0.txt"), arcname="0.txt")
    config = PreparationConfig.from_dict({"decontamination": {"all_catalog_tasks": False}, "dedup": {"near": False},
                                          "output": {"num_shards": 1, "validation_fraction": 0.5},
                                          "execution": {"read_tasks": 1}})
    out = os.path.join(folder, "out")
    first = prepare_dataset(resolve_inputs(folder), output_dir=out, name="first", config=config)
    second = prepare_dataset(resolve_inputs(folder), output_dir=out, name="second", config=config)
    assert first["totals"]["docs_in"] == second["totals"]["docs_in"] == 6  # not the first dataset's files
    assert first["stages"] == second["stages"]
    assert first["skipped_inputs"] == {"binary": {"files": 1, "examples": [os.path.join(folder, "backup.tar")]}}
    assert second["skipped_inputs"]["under_output_dir"]["files"] >= 3  # shards, dataset_info.json, report
    assert "skipped 1 input file(s) as binary" in summary_text(second)
    assert prepare_dataset(resolve_inputs(folder), output_dir=out, name="first", config=config) == first  # same fingerprint


def test_files_under_the_excluded_output_dir_are_never_opened(tmp_path):
    # resolve_inputs reads every matched file's start (binary probe, JSONL field check): a file
    # under --output_dir that cannot be read that way (here a corrupt .jsonl.gz, or JSONL without
    # the input's text field) must not stop the run that would leave it out anyway.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"content": "a document"}\n')
    (folder / "out").mkdir()
    (folder / "out" / "old.jsonl.gz").write_bytes(b"\x1f\x8b not gzip after all")
    (folder / "out" / "records.jsonl").write_text('{"text": "no content field"}\n')
    with pytest.raises(DataError, match="cannot be read|content"):
        resolve_inputs(str(folder), text_field="content")
    spec = resolve_inputs(str(folder), text_field="content", exclude=str(folder / "out"))
    assert spec.files == (str(folder / "a.jsonl"),)
    assert sorted(spec.skipped) == [("under_output_dir", str(folder / "out" / name))
                                    for name in ("old.jsonl.gz", "records.jsonl")]
    assert spec.excluding(str(folder / "out")) == spec  # what prepare_dataset does again: no change


def test_compressed_inputs_are_read_as_the_file_without_the_suffix(tmp_path):
    lines = b'{"text": "first"}\n{"text": "second"}\n'
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "b.jsonl.bz2").write_bytes(bz2.compress(lines))
    (tmp_path / "c.txt.xz").write_bytes(lzma.compress(b"one document\nof two lines"))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(b'{"a json file": "is one document"}'))
    spec = resolve_inputs(str(tmp_path))
    assert spec.skipped == ()  # the compressed bytes hold NULs; the text does not
    docs = [d for path in spec.files for d in read_file(path, spec.root, "text")]
    assert [(d.metadata["origin"], d.text) for d in docs] == [
        ("a.jsonl.gz:1", "first"), ("a.jsonl.gz:2", "second"), ("b.jsonl.bz2:1", "first"), ("b.jsonl.bz2:2", "second"),
        ("c.txt.xz", "one document\nof two lines"), ("d.json.gz", '{"a json file": "is one document"}')]


def test_corrupt_or_truncated_compressed_input_is_one_line(tmp_path):
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad.jsonl.gz cannot be read \(Not a gzipped file .*\); fix it or leave it out"):
        resolve_inputs(str(tmp_path / "bad.jsonl.gz"))
    records = b"".join(b'{"text": "record %d with some words"}\n' % i for i in range(2000))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(records)[:-200])  # the head is fine, the end is gone
    spec = resolve_inputs(str(tmp_path / "cut.jsonl.gz"))
    with pytest.raises(DataError, match=r"cut.jsonl.gz cannot be read \(Compressed file ended"):
        list(read_file(spec.files[0], spec.root, "text"))
