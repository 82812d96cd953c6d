"""Optional Weights & Biases logging: off by default, offline mode logs the same scalars."""
import glob
import os
import time

import pytest

from experiments.configs import pretrain
from research.models.config import ConfigError
from research.training.metrics import WANDB_DIR, WANDB_ID_FILE, MetricWriter, WandbConfig


def test_off_by_default_and_bad_mode_is_one_line(tmp_path):
    assert pretrain.get_config("gpt_tiny").wandb.project == ""
    writer = MetricWriter(str(tmp_path), enabled=True, wandb=WandbConfig(**pretrain.get_config().wandb.to_dict()))
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "wandb").exists() and not (tmp_path / WANDB_ID_FILE).exists()
    with pytest.raises(ConfigError, match=r"wandb.mode='onlin' is not one of \('online', 'offline'\)"):
        WandbConfig(project="p", mode="onlin")


def test_offline_run_logs_the_scalars_under_the_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = MetricWriter(str(tmp_path), enabled=True, wandb=WandbConfig(project="research-test", mode="offline"),
                          run_config={"train": {"num_steps": 2}})
    writer.write(1, {"loss": 2.75, "tokens_per_second": 1234.5, "note": "text is not a scalar"})
    writer.write(2, {"loss": 2.5})
    writer.close()
    import wandb
    wandb.teardown()  # W&B's own service process writes the offline log; stop it so the file is complete
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    (run_file,) = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    deadline = time.time() + 60
    while b"1234.5" not in open(run_file, "rb").read() and time.time() < deadline:
        time.sleep(0.5)  # on a loaded machine the service may still be flushing
    logged = open(run_file, "rb").read()  # history items are stored as JSON-encoded values
    for text in (b"loss", b"2.75", b"2.5", b"tokens_per_second", b"1234.5"):
        assert text in logged, text
    assert os.path.getsize(tmp_path / "metrics.jsonl") > 0  # the JSONL log is written as before


def test_discard_removes_the_offline_run_it_started_and_keeps_what_was_there(tmp_path, monkeypatch):
    """A withdrawn claim discards the writer's files: the offline run it started goes, an earlier
    run's W&B directory and id file (which the writer resumed) stay."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    earlier_run = tmp_path / WANDB_DIR / "offline-run-20260101_000000-0123456789abcdef"
    earlier_run.mkdir(parents=True)
    (tmp_path / WANDB_ID_FILE).write_text("0123456789abcdef\n")
    writer = MetricWriter(str(tmp_path), enabled=True, wandb=WandbConfig(project="research-test", mode="offline"))
    writer.write(0, {"loss": 2.75})
    assert len(glob.glob(str(tmp_path / WANDB_DIR / "offline-run-*-0123456789abcdef"))) == 2
    writer.discard()
    assert glob.glob(str(tmp_path / WANDB_DIR / "offline-run-*")) == [str(earlier_run)]
    assert (tmp_path / WANDB_ID_FILE).read_text() == "0123456789abcdef\n"
    assert sorted(os.listdir(tmp_path)) == [WANDB_DIR, WANDB_ID_FILE]


def test_discard_points_the_links_wandb_moved_back_at_the_earlier_run(tmp_path, monkeypatch):
    """W&B re-points wandb/latest-run (and debug.log, debug-internal.log) at each new run: once
    the discarded run's directory was removed they dangled. They point at the earlier run again."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = WandbConfig(project="research-test", mode="offline")
    earlier = MetricWriter(str(tmp_path), enabled=True, wandb=config)
    earlier.write(0, {"loss": 2.75})
    earlier.close()
    wandb_dir = tmp_path / WANDB_DIR
    links = {name: os.readlink(wandb_dir / name) for name in os.listdir(wandb_dir)
             if os.path.islink(wandb_dir / name)}
    assert "latest-run" in links and all(os.path.exists(wandb_dir / name) for name in links)
    writer = MetricWriter(str(tmp_path), enabled=True, wandb=config)
    writer.write(0, {"loss": 2.5})
    assert os.readlink(wandb_dir / "latest-run") != links["latest-run"]  # W&B moved it to the new run
    writer.discard()
    assert {name: os.readlink(wandb_dir / name) for name in links} == links
    assert all(os.path.exists(wandb_dir / name) for name in links)
    assert sorted(os.listdir(wandb_dir)) == sorted([*links, links["latest-run"]])
