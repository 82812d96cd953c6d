"""MetricWriter's TensorBoard events: every scalar of every step, readable as TensorBoard reads them;
what `discard` removes (what the writer added) and keeps (what was there)."""
import glob
import json
import logging
import os
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event

from research.training import metrics as metrics_lib, setup_files
from research.training.metrics import METRICS_FILE, TENSORBOARD_DIR, MetricWriter, WandbConfig, read_metrics


def _events(directory: str) -> list[Event]:
    """Parse TFRecord-framed event files: [length u64][crc u32][data][crc u32] per record."""
    events = []
    for path in sorted(glob.glob(f"{directory}/tensorboard/events.out.tfevents.*")):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
            offset += 12 + length + 4
    return events


def test_each_logged_step_is_one_event_holding_all_its_scalars(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write(1, {"loss": 2.5, "accuracy": 0.25, "learning_rate": 2.0**-10, "note": "text is skipped"})
    writer.write(2, {"loss": 2.0, "accuracy": 0.5, "learning_rate": 2.0**-9, "eval_loss": 2.25})
    writer.close()
    scalars = {(e.step, v.tag): v.simple_value for e in _events(str(tmp_path)) for v in e.summary.value}
    assert scalars == {(1, "loss"): 2.5, (1, "accuracy"): 0.25, (1, "learning_rate"): 2.0**-10,
                       (2, "loss"): 2.0, (2, "accuracy"): 0.5, (2, "learning_rate"): 2.0**-9, (2, "eval_loss"): 2.25}
    assert [e.step for e in _events(str(tmp_path)) if e.summary.value] == [1, 2]
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    assert read_metrics(str(tmp_path))[0]["note"] == "text is skipped"


def test_forget_after_drops_later_steps_and_a_line_a_kill_cut_short(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    for step in range(1, 6):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    with open(writer.path, "a") as f:
        f.write('{"step": 6, "lo')  # kill -9 in the middle of appending step 6
    writer.forget_after(3)  # what a rerun resuming from step 3's checkpoint does
    with open(writer.path) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def test_events_up_to_a_checkpoint_survive_a_kill_and_a_resume_purges_the_redone_steps(tmp_path):
    """TensorBoard buffered up to 120 s of events: a kill -9 after checkpoint 20 lost steps 0-20 for
    good (the rerun resumed after them), and a kill between checkpoints showed the redone steps
    twice. flush() (called at each save) writes them out; forget_after() marks the steps past the
    checkpoint purged (a SessionLog START at step + 1, TensorBoard's purge_step)."""
    from tensorboardX.proto.event_pb2 import SessionLog
    writer = MetricWriter(str(tmp_path), enabled=True)
    for step in range(1, 6):
        writer.write(step, {"loss": 1.0 / step})
    writer.flush()  # the save at step 5; the process is then killed without closing anything
    assert [e.step for e in _events(str(tmp_path)) if e.summary.value] == [1, 2, 3, 4, 5]
    writer.write(6, {"loss": 0.1})
    writer.flush()
    resumed = MetricWriter(str(tmp_path), enabled=True)  # the rerun restores step 5's checkpoint
    resumed.forget_after(5)
    resumed.write(6, {"loss": 0.2})
    resumed.close()
    events = _events(str(tmp_path))
    assert any(e.session_log.status == SessionLog.START and e.step == 6 for e in events)
    assert sorted(e.step for e in events if e.summary.value) == [1, 2, 3, 4, 5, 6, 6]  # the first 6 purged by TensorBoard


def test_a_failing_cleanup_while_the_writer_starts_is_a_warning_and_the_stop_goes_on(tmp_path, monkeypatch,
                                                                                   caplog):
    """A Ctrl-C while W&B starts, and discarding what was made so far fails (a file it may not
    remove): the Ctrl-C is what propagates (the command's one stop line and exit 130), the
    failure one warning line; it replaced the KeyboardInterrupt with its own traceback."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def refused(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(metrics_lib, "_start_wandb", interrupted)
    monkeypatch.setattr(setup_files, "_remove", refused)
    with caplog.at_level(logging.WARNING, logger=metrics_lib.__name__), pytest.raises(KeyboardInterrupt):
        MetricWriter(str(tmp_path), enabled=True, wandb=WandbConfig(project="research-test", mode="offline"))
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "could not remove" in warning and "PermissionError" in warning and "\n" not in warning


def test_wandb_that_cannot_start_is_one_line_and_leaves_no_claim(tmp_path, monkeypatch, tokenizers):
    """Not logged in (wandb's UsageError 'No API key configured'): a traceback, and the new workdir
    stayed claimed, so the corrected command was refused as 'another run'."""
    from research.models.config import ConfigError
    from research.training import train_and_evaluate
    from tests.training.conftest import run_config

    def no_key(*args, **kwargs):
        raise RuntimeError("No API key configured. Use `wandb login` to log in.")
    monkeypatch.setattr(metrics_lib, "_start_wandb", no_key)
    config = run_config("gpt_tiny", tokenizers["plain"], num_steps=2)
    config.wandb.update({"project": "research-test", "mode": "online"})
    with pytest.raises(ConfigError, match=r"^wandb.project='research-test': Weights & Biases did not start "
                                          r"\(RuntimeError: No API key configured.*run `wandb login`") as error:
        train_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_discard_marks_the_wandb_run_failed_and_a_finish_error_still_removes_the_files(tmp_path, monkeypatch,
                                                                                      caplog):
    """The W&B run of a discarded setup ends as failed (exit code 1: online, it stays on the
    server); when finish raises, the files still go and discard_or_warn logs one line."""
    finished = []

    class Run:
        def log(self, scalars, step):
            pass

        def finish(self, exit_code=None):
            finished.append(exit_code)
            raise RuntimeError("wandb service went away")

    writer = MetricWriter(str(tmp_path), enabled=True)
    writer._wandb_run = Run()
    writer.write(0, {"loss": 2.5})
    with caplog.at_level(logging.WARNING, logger=metrics_lib.__name__):
        writer.discard_or_warn()
    writer.close()  # the caller's `finally`: not tried again
    assert finished == [1] and os.listdir(tmp_path) == []
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "RuntimeError: wandb service went away" in warning


def test_discard_through_a_symlinked_tensorboard_directory_removes_only_its_own_event_file(tmp_path):
    """tensorboard/ a link to shared log storage holding earlier runs' events: discard removed
    every file in the link's target (it recorded nothing of a link, then followed it)."""
    shared = tmp_path / "shared" / "tensorboard"
    shared.mkdir(parents=True)
    earlier = shared / "events.out.tfevents.1700000000.earlier"
    earlier.write_bytes(b"an earlier run's events")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / TENSORBOARD_DIR).symlink_to(shared, target_is_directory=True)
    writer = MetricWriter(str(workdir), enabled=True)
    writer.write(1, {"loss": 2.5})
    assert len(os.listdir(shared)) == 2  # the writer's event file went through the link
    writer.discard()
    assert os.path.islink(workdir / TENSORBOARD_DIR) and os.listdir(shared) == [earlier.name]
    assert earlier.read_bytes() == b"an earlier run's events"


def test_discard_cuts_an_earlier_metrics_file_back_to_what_the_setup_kept_of_it(tmp_path):
    """A metrics.jsonl from before: a setup with no checkpoint drops its records by design
    (forget_after(-1), the run starts over) and appends step 0; discard left that step-0 record,
    the file neither as it was nor as a rerun makes it. Now it is left as forget_after left it:
    empty. Without forget_after (a writer whose setup failed at once), as it was."""
    earlier = '{"step": 0, "loss": 3.0}\n{"step": 10, "loss": 2.0}\n'
    (tmp_path / METRICS_FILE).write_text(earlier)
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.forget_after(-1)  # members.restore_or_init with no checkpoint
    writer.write(0, {"eval_loss": 4.0})
    writer.discard()
    assert (tmp_path / METRICS_FILE).read_text() == ""

    (tmp_path / METRICS_FILE).write_text(earlier)
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write(0, {"eval_loss": 4.0})
    writer.discard()
    assert (tmp_path / METRICS_FILE).read_text() == earlier


def test_discard_removes_a_link_it_left_dangling_and_leaves_the_others(tmp_path):
    """Links that were there and that the run re-pointed at what discard removes: pointed back
    when their earlier target is there (test_wandb: W&B's latest-run), else removed rather than
    left dangling; a link re-pointed elsewhere, or dangling already, is not this writer's to touch."""
    directory = tmp_path / TENSORBOARD_DIR
    directory.mkdir()
    for name in ("latest", "elsewhere", "dangling"):
        (directory / name).symlink_to("gone-before")
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write(1, {"loss": 2.5})
    (new,) = [p.name for p in directory.glob("events.out.tfevents.*")]
    (directory / "latest").unlink()
    (directory / "latest").symlink_to(new)  # as W&B re-points latest-run at its new run
    (directory / "elsewhere").unlink()
    (directory / "elsewhere").symlink_to(tmp_path / "not-the-writers")
    writer.discard()
    assert sorted(os.listdir(directory)) == ["dangling", "elsewhere"]
    assert os.readlink(directory / "elsewhere") == str(tmp_path / "not-the-writers")
    assert os.readlink(directory / "dangling") == "gone-before"
