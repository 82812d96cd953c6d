"""The whole pipeline on the handmade corpus: the report, the TFDS output, determinism, resuming."""
import dataclasses
import filecmp
import os

import numpy as np
import pytest

from research import data
from research.data.config import DataError
from research.data.preparation import engine_steps, prepare_dataset, read_report, resolve_inputs, tfds_output
from tests.data.preparation.conftest import corpus_config, standardise_text


def output_texts(output_dir: str, name: str) -> dict[str, dict[str, str]]:
    import tensorflow_datasets as tfds
    builder = tfds.builder(name, data_dir=output_dir)
    return {split: {r["origin"].decode(): r["text"].decode() for r in builder.as_data_source(split=split)}
            for split in ("train", "validation")}


def test_report_counts_every_rule_exactly(handmade):
    report = handmade["report"]
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["standardise", "gopher_quality", "gopher_repetition", "blocklist", "decontamination",
                            "exact_dedup", "near_dedup"]
    assert {name: s["dropped"] for name, s in stages.items() if s["dropped"]} == handmade["drops"]
    # 12 good + copy + near copy + short + blocked + contaminated + latin1 + crlf + 7 jsonl lines (empty.txt skipped).
    assert report["totals"]["docs_in"] == 26 and report["totals"]["docs_out"] == 20
    for stage_a, stage_b in zip(report["stages"], report["stages"][1:]):
        assert stage_a["docs_out"] == stage_b["docs_in"]  # every document is accounted for
        assert stage_a["docs_in"] - stage_a["docs_out"] == sum(stage_a["dropped"].values())
    assert stages["standardise"]["rewritten"] >= 3  # exact copy (spaces), crlf, trailing newline of files
    assert stages["standardise"]["noted"] == {"repaired_invalid_utf8": 1}
    assert [e["origin"] for e in stages["standardise"]["examples"]["repaired_invalid_utf8"]] == ["latin1.txt"]
    examples = stages["decontamination"]["examples"]["contains_rivers"]
    assert [e["origin"] for e in examples] == ["contaminated.md"]
    assert stages["exact_dedup"]["examples"]["exact_duplicate"][0]["origin"] in ("exact_copy.txt", "good_03.txt")
    assert stages["near_dedup"]["examples"]["near_duplicate"][0]["origin"] in ("near_copy.txt", "good_05.txt")
    assert report["splits"]["train"] + report["splits"]["validation"] == 20
    folder = os.path.join(handmade["output_dir"], "handmade", "1.0.0")
    assert os.path.getsize(os.path.join(folder, "preparation_report.png")) > 0
    assert "gopher_short_doc" in open(os.path.join(folder, "preparation_report.txt")).read()


def test_output_holds_exactly_the_kept_documents_split_by_hash(handmade):
    texts = output_texts(handmade["output_dir"], "handmade")
    kept = {**texts["train"], **texts["validation"]}
    expected = dict(handmade["expected"])
    # Of each duplicate pair exactly one survives (the report's example says which went).
    exact_gone = handmade["report"]["stages"][5]["examples"]["exact_duplicate"][0]["origin"]
    near_gone = handmade["report"]["stages"][6]["examples"]["near_duplicate"][0]["origin"]
    assert exact_gone in ("exact_copy.txt", "good_03.txt") and near_gone in ("near_copy.txt", "good_05.txt")
    for name in ("exact_copy.txt", "near_copy.txt"):
        expected[name] = standardise_text(open(os.path.join(handmade["corpus"], name)).read())
    expected.pop(exact_gone)
    expected.pop(near_gone)
    assert kept == expected
    for split, docs in texts.items():
        for text in docs.values():
            from research.data.preparation.document_stages import dedup_key
            assert tfds_output.split_of(dedup_key(text), 0.25) == split


def test_output_trains_a_tokenizer_and_feeds_the_training_pipeline(handmade, tmp_path):
    config = data.DataConfig(source="tfds", tfds_name="handmade", data_dir=handmade["output_dir"],
                             tokenizer=data.TokenizerConfig(vocab_size=340, max_training_chars=50_000))
    tokenizer = data.build_tokenizer(config, str(tmp_path))
    assert tokenizer.decode(tokenizer.encode("The river and the mill.")) == "The river and the mill."
    batches = data.make_batch_iterator(config, tokenizer=tokenizer, objective="causal_lm", batch_size=2,
                                       seq_len=32, split="validation", seed=0, shard_index=0, shard_count=1)
    batch = next(batches)
    assert batch["inputs"].shape == (2, 32) and batch["segment_ids"].max() >= 1
    assert np.all(batch["inputs"] < tokenizer.vocab_size)


def test_workers_and_read_tasks_do_not_change_the_output(handmade, tmp_path):
    # The distributed path: 3 reading tasks on 2 worker processes vs 2 tasks on 1 process.
    prepare_dataset(resolve_inputs(handmade["corpus"]), output_dir=str(tmp_path), name="handmade",
                    config=corpus_config(handmade["task_file"], read_tasks=3, workers=2))
    a, b = os.path.join(handmade["output_dir"], "handmade", "1.0.0"), os.path.join(tmp_path, "handmade", "1.0.0")
    data_files = sorted(f for f in os.listdir(a) if not f.startswith("preparation_report"))
    assert sorted(f for f in os.listdir(b) if not f.startswith("preparation_report")) == data_files
    # Up to 3 shards per split (an empty partition writes no shard).
    assert 2 <= len([f for f in data_files if "train.array_record" in f]) <= 3
    assert 1 <= len([f for f in data_files if "validation.array_record" in f]) <= 3
    match, mismatch, errors = filecmp.cmpfiles(a, b, data_files, shallow=False)
    assert mismatch == [] and errors == []
    report_a, report_b = read_report(a), read_report(b)
    assert report_a["stages"] == report_b["stages"]  # counters and examples too


def test_interrupted_run_publishes_nothing_and_a_rerun_finishes_identically(handmade, tmp_path, monkeypatch):
    original = tfds_output.ShardWriter.run
    calls = []

    def crash_on_second_partition(self, data, rank=0, world_size=1):
        calls.append(rank)
        if rank == 1:
            raise RuntimeError("simulated crash")
        return original(self, data, rank, world_size)

    monkeypatch.setattr(tfds_output.ShardWriter, "run", crash_on_second_partition)
    spec = resolve_inputs(handmade["corpus"])
    config = corpus_config(handmade["task_file"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config)
    assert not os.path.exists(tmp_path / "handmade" / "1.0.0")  # nothing that looks like a dataset
    monkeypatch.setattr(tfds_output.ShardWriter, "run", original)
    calls.clear()
    report = prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config)
    a, b = os.path.join(handmade["output_dir"], "handmade", "1.0.0"), str(tmp_path / "handmade" / "1.0.0")
    files = sorted(os.listdir(a))
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []  # the report too: the counters of finished tasks were kept
    assert report == handmade["report"]
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # the work dir is gone
    # Running again finds the finished dataset and does nothing.
    assert prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config) == report


def test_a_second_run_of_the_same_preparation_is_refused_while_the_first_holds_its_work_dir(handmade, tmp_path):
    """Two overlapping runs of one command wrote over each other's files in one work dir and broke it
    for every later rerun; the second is refused in one line, and once the first is gone (killed,
    here) the same command runs."""
    import subprocess
    import sys

    from research.data.preparation import prepare
    spec = resolve_inputs(handmade["corpus"])
    config = corpus_config(handmade["task_file"])
    layout = prepare.Layout(str(tmp_path), "handmade", "1.0.0", prepare.fingerprint(spec, config))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from research.data.preparation import prepare; "
        f"layout = prepare.Layout({str(tmp_path)!r}, 'handmade', '1.0.0', {layout.fingerprint!r}); "
        "lock = prepare._work_dir_lock(layout); lock.__enter__(); print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DataError, match=r"another prepare_data run is preparing 'handmade' from these inputs"):
            prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config)
    finally:
        holder.kill()
        holder.wait()
    assert prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config) == handmade["report"]


def test_a_work_dir_left_by_a_run_killed_after_publishing_is_removed_by_the_rerun(handmade, tmp_path, monkeypatch):
    """Killed between the rename into place and the cleanup: the rerun returned "done" and left the
    hidden work dir (up to a few copies of the corpus) for ever."""
    spec = resolve_inputs(handmade["corpus"])
    config = corpus_config(handmade["task_file"])
    from research.data.preparation import prepare
    original = prepare.shutil.rmtree
    monkeypatch.setattr(prepare.shutil, "rmtree", lambda *a, **k: None)  # as if killed before any cleanup
    report = prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config)
    monkeypatch.setattr(prepare.shutil, "rmtree", original)
    left = [p for p in os.listdir(tmp_path) if p.startswith(".handmade-preparing-")]
    assert len(left) == 1
    assert prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config) == report
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_work_dir_of_an_interrupted_run_with_other_settings_is_named_when_another_publishes(
        handmade, tmp_path, monkeypatch, caplog):
    """A kill, then a rerun with a changed setting: the first work dir can never be resumed; the
    finished rerun names it (not deleted: it could belong to a preparation still running)."""
    original = tfds_output.ShardWriter.run

    def crash(self, data, rank=0, world_size=1):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tfds_output.ShardWriter, "run", crash)
    spec = resolve_inputs(handmade["corpus"])
    config = corpus_config(handmade["task_file"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=config)
    (left,) = [p for p in os.listdir(tmp_path) if p.startswith(".handmade-preparing-")]
    monkeypatch.setattr(tfds_output.ShardWriter, "run", original)
    changed = dataclasses.replace(config, dedup=dataclasses.replace(config.dedup, near=False))
    with caplog.at_level("WARNING"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade", config=changed)
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == [left]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and left in r.getMessage()]
    assert "other inputs or settings" in warning and "delete it unless" in warning


def _same_dataset(handmade, output_dir: str) -> None:
    """The data files equal the handmade run's, byte for byte (the report names the read_tasks)."""
    a, b = os.path.join(handmade["output_dir"], "handmade", "1.0.0"), os.path.join(output_dir, "handmade", "1.0.0")
    files = sorted(f for f in os.listdir(a) if not f.startswith("preparation_report"))
    assert sorted(f for f in os.listdir(b) if not f.startswith("preparation_report")) == files
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == []


def test_unfinished_reading_resumed_with_other_read_tasks_is_refused_and_continues_with_its_own(
        handmade, tmp_path, monkeypatch):
    # Task 2 of 3 dies after tasks 0 and 1 finished. Two tasks would split the files otherwise
    # (task 1 of 2 reads what tasks 1 and 3 of 3 read) and datatrove would skip both as done.
    original = engine_steps.PartitionWriter.run

    def killed_task_2(self, data, rank=0, world_size=1):
        if rank == 2:
            raise RuntimeError("simulated kill")
        return original(self, data, rank, world_size)

    monkeypatch.setattr(engine_steps.PartitionWriter, "run", killed_task_2)
    spec = resolve_inputs(handmade["corpus"])
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                        config=corpus_config(handmade["task_file"], read_tasks=3))
    monkeypatch.setattr(engine_steps.PartitionWriter, "run", original)
    [work] = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    completions = tmp_path / work / "logs" / "1_read_and_filter" / "completions"
    assert sorted(os.listdir(completions)) == ["00000", "00001"]
    with pytest.raises(DataError, match=r"partly read with execution.read_tasks=3, not 2 .*rerun with "
                                        r"--config.execution.read_tasks=3 to continue, or delete .* with 2\.$"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                        config=corpus_config(handmade["task_file"], read_tasks=2))
    assert sorted(os.listdir(completions)) == ["00000", "00001"]  # the refusal deleted nothing
    prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                    config=corpus_config(handmade["task_file"], read_tasks=3))
    _same_dataset(handmade, str(tmp_path))  # the handmade run read with 2 tasks, uninterrupted
    report = read_report(str(tmp_path / "handmade" / "1.0.0"))
    assert report["stages"] == handmade["report"]["stages"]


def test_a_run_that_failed_before_reading_binds_no_read_tasks(handmade, tmp_path, monkeypatch):
    # A first run that fails before any reading task starts (Ray missing, a failed submit)
    # read nothing: a rerun with another read_tasks is not "partly read".
    from research.data.preparation import prepare

    def no_executors(*args, **kwargs):
        raise RuntimeError("submit failed")

    monkeypatch.setattr(prepare, "_executors", no_executors)
    spec = resolve_inputs(handmade["corpus"])
    with pytest.raises(RuntimeError, match="submit failed"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                        config=corpus_config(handmade["task_file"], read_tasks=4))
    monkeypatch.undo()
    prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                    config=corpus_config(handmade["task_file"], read_tasks=2))
    _same_dataset(handmade, str(tmp_path))


def test_finished_reading_resumed_with_other_read_tasks_gives_the_uninterrupted_output(
        handmade, tmp_path, monkeypatch):
    # Read with 2 tasks (as the handmade run), die in the partition stage, resume with 3: the
    # third task must not read files 2, 5, ... again (duplicates of what task 0 of 2 read).
    original = engine_steps.PartitionStore.run

    def killed(self, data, rank=0, world_size=1):
        raise RuntimeError("simulated kill")

    monkeypatch.setattr(engine_steps.PartitionStore, "run", killed)
    spec = resolve_inputs(handmade["corpus"])
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                        config=corpus_config(handmade["task_file"], read_tasks=2))
    monkeypatch.setattr(engine_steps.PartitionStore, "run", original)
    report = prepare_dataset(spec, output_dir=str(tmp_path), name="handmade",
                             config=corpus_config(handmade["task_file"], read_tasks=3))
    _same_dataset(handmade, str(tmp_path))  # (exact dedup would hide repeated documents here)
    assert report["stages"] == handmade["report"]["stages"]  # each document read once
    assert report == handmade["report"]  # the config too: it names the read_tasks the reading used


def test_a_different_dataset_under_the_same_name_is_refused(handmade):
    config = corpus_config(handmade["task_file"]).__class__.from_dict({"output": {"num_shards": 2}})
    with pytest.raises(DataError, match="already holds a dataset prepared from other inputs"):
        prepare_dataset(resolve_inputs(handmade["corpus"]), output_dir=handmade["output_dir"], name="handmade",
                        config=config)


def test_a_tfds_dataset_is_an_input_too(handmade, tmp_path):
    spec = resolve_inputs("tfds:handmade", tfds_data_dir=handmade["output_dir"], tfds_split="train")
    config = corpus_config(handmade["task_file"]).__class__.from_dict(
        {"output": {"num_shards": 1, "validation_fraction": 0.5}, "decontamination": {"all_catalog_tasks": False}})
    report = prepare_dataset(spec, output_dir=str(tmp_path), name="again", config=config)
    train = output_texts(handmade["output_dir"], "handmade")["train"]
    assert report["totals"]["docs_in"] == len(train) and report["totals"]["docs_out"] == len(train)
    again = output_texts(str(tmp_path), "again")
    assert sorted({**again["train"], **again["validation"]}.values()) == sorted(train.values())


def test_dedup_stages_can_be_turned_off(tmp_path):
    from tests.data.preparation.conftest import good_document
    from tests.data.preparation.corpora import write_files
    corpus = write_files(str(tmp_path / "in"), {f"{i}.txt": good_document(i % 3) for i in range(6)})  # 3 texts x 2
    config = corpus_config("").__class__.from_dict({
        "dedup": {"exact": False, "near": False}, "decontamination": {"all_catalog_tasks": False},
        "output": {"num_shards": 2, "validation_fraction": 0.5}, "execution": {"read_tasks": 1}})
    report = prepare_dataset(resolve_inputs(corpus), output_dir=str(tmp_path / "out"), name="dups", config=config)
    assert [s["stage"] for s in report["stages"]] == ["standardise", "gopher_quality", "gopher_repetition"]
    assert report["totals"]["docs_out"] == 6  # duplicates kept; copies share a split (same hash)
    texts = output_texts(str(tmp_path / "out"), "dups")
    assert len(texts["train"]) + len(texts["validation"]) == 6
    assert not set(texts["train"].values()) & set(texts["validation"].values())  # a text's copies share a split


@pytest.mark.parametrize("name, message", [
    ("корпус", "must be a TFDS dataset name: lower-case ASCII letters"), ("Corpus", "must be a TFDS dataset name"),
    ("1st", "must be a TFDS dataset name"), ("my-corpus", "must be a TFDS dataset name"), ("", "must be a TFDS"),
    ("x" * 300, "--name is 300 characters long; give at most 96"),
    # Prepared fine, then pretraining by name read TFDS's own lm1b builder ("not prepared ... tfds build").
    ("lm1b", "--name='lm1b' is a dataset TFDS itself defines"),
    ("tiny_shakespeare", "is a dataset TFDS itself defines.*e.g. 'my_tiny_shakespeare'")])
def test_bad_name_is_one_line_before_any_work(tmp_path, name, message):
    (tmp_path / "a.txt").write_text("some text")
    with pytest.raises(DataError, match=message):
        prepare_dataset(resolve_inputs(str(tmp_path / "a.txt")), output_dir=str(tmp_path / "out"), name=name,
                        config=corpus_config(""))
    assert not os.path.exists(tmp_path / "out")


def test_output_dir_that_is_a_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    spec, config = resolve_inputs(str(tmp_path / "a.txt")), corpus_config("")
    for output_dir in (tmp_path / "a.txt", tmp_path / "a.txt" / "below"):
        with pytest.raises(DataError, match=r"a.txt is a file, not a directory; give a writable directory"):
            prepare_dataset(spec, output_dir=str(output_dir), name="x", config=config)
    assert os.listdir(tmp_path) == ["a.txt"]


def test_output_dir_that_is_a_broken_link_is_one_line_before_any_work(tmp_path):
    """The check followed the link to its missing target and tested the parent instead; the work
    ran and then died on a FileNotFoundError (evaluate: FileExistsError, its table lost)."""
    (tmp_path / "a.txt").write_text("some text")
    os.symlink(tmp_path / "gone", tmp_path / "out")
    with pytest.raises(DataError, match=r"out is a link to '.*gone', which does not exist"):
        prepare_dataset(resolve_inputs(str(tmp_path / "a.txt")), output_dir=str(tmp_path / "out"), name="x",
                        config=corpus_config(""))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "out"] and not os.path.exists(tmp_path / "gone")


def test_missing_blocklist_file_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    config = corpus_config("").__class__.from_dict({"blocklist": {"words_file": "/nope.txt"},
                                                    "decontamination": {"all_catalog_tasks": False}})
    with pytest.raises(DataError, match=r"blocklist: words_file='/nope.txt' cannot be read"):
        prepare_dataset(resolve_inputs(str(tmp_path / "a.txt")), output_dir=str(tmp_path / "out"), name="x",
                        config=config)
    assert not os.path.exists(tmp_path / "out")  # no work dir left behind


_FAILING_TASK = """
import sys
from datatrove.executor import LocalPipelineExecutor
from research.data.config import DataError
import research.data.preparation.engine_steps  # noqa: F401  (every process running a stage imports it)

def fail(data, rank, world_size):
    secret = "secret corpus text"
    raise (DataError if sys.argv[1] == "DataError" else RuntimeError)("bad record of %d characters" % len(secret))

try:
    LocalPipelineExecutor([fail], tasks=1, logging_dir=sys.argv[2]).run()
except Exception as error:
    print(type(error).__name__, error)
"""


@pytest.mark.parametrize("error", ["DataError", "RuntimeError"])
def test_a_failed_task_logs_a_bad_input_in_one_line_and_anything_else_with_its_traceback(tmp_path, error):
    """datatrove's executor logs a failed task's exception with loguru's traceback and each frame's
    variables (documents' text); for a DataError, which the driver prints in one line, that was
    ~130 lines of noise and leaked the corpus into the logs. A bug keeps its whole traceback."""
    import subprocess
    import sys
    script = tmp_path / "task.py"  # a file, not -c: loguru shows variables only of lines it can read
    script.write_text(_FAILING_TASK)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    result = subprocess.run([sys.executable, str(script), error, str(tmp_path / "logs")], capture_output=True,
                            text=True, timeout=120, cwd=repo, env={**os.environ, "PYTHONPATH": repo})
    assert result.stdout == f"{error} bad record of 18 characters\n"  # raised to the caller either way
    with open(tmp_path / "logs" / "logs" / "task_00000.log", encoding="utf-8") as f:
        task_log = f.read()
    if error == "DataError":
        assert "Traceback" not in result.stderr and "bad record" not in result.stderr
        assert "secret" not in result.stderr and "secret" not in task_log and "Traceback" not in task_log
        # The task's log file keeps the message, as one DEBUG line: "time | DEBUG | where - message".
        logged = [line.split(" | ") for line in task_log.splitlines() if "bad record" in line]
        assert len(logged) == 1 and logged[0][1].strip() == "DEBUG"
        assert logged[0][2].startswith("datatrove.executor.base:") and logged[0][2].endswith(
            " - bad record of 18 characters")
    else:
        assert "Traceback" in result.stderr and "RuntimeError: bad record of 18 characters" in result.stderr
        assert "secret corpus text" in result.stderr  # loguru's variables, as datatrove configures it


def test_importing_the_engine_steps_keeps_a_loguru_patcher_already_installed():
    """The one-line patcher was installed with logger.configure, which replaced a user's own
    patcher (and so anything it added to every record) on import."""
    import subprocess
    import sys
    code = ("from loguru import logger; seen = []; logger.remove(); "
            "logger.configure(patcher=lambda record: seen.append(record['message'])); "
            "import research.data.preparation.engine_steps as steps; steps._install_patcher(); "
            "logger.info('kept'); print(seen)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "['kept']", result.stderr[-2000:]
