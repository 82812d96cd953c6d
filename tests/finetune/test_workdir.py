"""A fine-tuning workdir holds one run: run.json records it, another run is refused in one line
before any work, and the same run reruns (resumes) as before."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from research.early_interrupts import TerminatedEarly
from research.finetune import finetune_and_evaluate, run as run_module
from research.training.metrics import METRICS_FILE, TENSORBOARD_DIR, MetricWriter
from research.training.workdir import RUN_FILE, WorkdirError

from tests.finetune.conftest import REPO, tiny_config as preset_config


def tiny_config(preset, num_steps):
    config = preset_config(preset, num_steps=num_steps)
    config.opt.warmup_steps = 0
    return config


def _refused(config, workdir, differs):
    before = {name: (workdir / name).read_bytes() for name in ("metrics.jsonl", RUN_FILE)}
    with pytest.raises(WorkdirError, match=rf"^--workdir={workdir} holds another run \(.*{differs}.*\); use a new "
                                           rf"--workdir, or delete {workdir} to start over\.$") as error:
        finetune_and_evaluate(config, str(workdir))
    assert "\n" not in str(error.value)
    assert {name: (workdir / name).read_bytes() for name in before} == before  # nothing written over


def test_another_base_data_path_or_lora_setting_is_refused_and_the_same_run_resumes(tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config("sft_tiny", num_steps=2)
    finetune_and_evaluate(config, str(workdir))
    recorded = json.loads((workdir / RUN_FILE).read_text())["fingerprint"]
    assert recorded["path"] == "sft" and recorded["init"] == "random" and recorded["lora.rank"] == 0

    other_base = tiny_config("sft_tiny", num_steps=2)
    other_base.init = f"checkpoint:{tmp_path / 'sft'}"
    (tmp_path / "sft").mkdir()  # refused before it is read
    _refused(other_base, workdir, r"init: 'random' there, 'checkpoint:.*/sft' now")
    other_data = tiny_config("sft_tiny", num_steps=2)
    other_data.data.train_file = str(tmp_path / "other.jsonl")  # refused before the file is read
    (tmp_path / "other.jsonl").write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n")
    _refused(other_data, workdir, r"data.train_file: '' there, '.*/other.jsonl' now")
    lora = tiny_config("sft_lora_tiny", num_steps=2)
    _refused(lora, workdir, r"lora.rank: 0 there, 8 now")
    dpo = tiny_config("dpo_tiny", num_steps=2)
    _refused(dpo, workdir, r"path: 'sft' there, 'preference' now")

    # The same run with more steps (num_steps is free to change) resumes at step 2.
    config.train.num_steps = 3
    config.checkpoint.every_steps = 3
    finetune_and_evaluate(config, str(workdir))
    steps = sorted(json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
                   if "loss" in json.loads(line))
    assert steps == [1, 2, 3]


def test_a_base_run_that_trained_on_is_refused_not_resumed_from_another_model(tmp_path):
    """init=checkpoint:X loads X's newest step: when X trained on between a stop and the rerun, the
    run resumed without a word on another base (and reference), its losses those of no run."""
    base = tiny_config("sft_tiny", num_steps=2)
    finetune_and_evaluate(base, str(tmp_path / "X"))
    dpo = tiny_config("dpo_tiny", num_steps=4)
    dpo.init, dpo.tokenizer = f"checkpoint:{tmp_path / 'X'}", ""
    dpo.train.stop_after_steps = 2
    workdir = tmp_path / "dpo"
    finetune_and_evaluate(dpo, str(workdir))
    assert json.loads((workdir / RUN_FILE).read_text())["fingerprint"]["init_checkpoint_step"] == [2]
    base.train.num_steps = base.checkpoint.every_steps = 3
    finetune_and_evaluate(base, str(tmp_path / "X"))  # X trains on to step 3
    dpo.train.stop_after_steps = 0
    _refused(dpo, workdir, r"init_checkpoint_step: \[2\] there, \[3\] now")


def test_the_identity_follows_a_lora_base_to_the_run_it_was_trained_from(tmp_path):
    """A LoRA run L as init merges its adapters into its own base X's newest step: X training on
    moves the model a resume would load, though L's own step stays."""
    from research.finetune.run_identity import finetune_fingerprint
    base = tiny_config("sft_tiny", num_steps=2)
    finetune_and_evaluate(base, str(tmp_path / "X"))
    lora = tiny_config("sft_lora_tiny", num_steps=2)
    lora.init, lora.tokenizer = f"checkpoint:{tmp_path / 'X'}", ""
    finetune_and_evaluate(lora, str(tmp_path / "L"))
    dpo = tiny_config("dpo_tiny", num_steps=2)
    dpo.init = f"checkpoint:{tmp_path / 'L'}"
    assert finetune_fingerprint(dpo.to_dict())["init_checkpoint_step"] == [2, 2]
    base.train.num_steps = base.checkpoint.every_steps = 3
    finetune_and_evaluate(base, str(tmp_path / "X"))
    assert finetune_fingerprint(dpo.to_dict())["init_checkpoint_step"] == [2, 3]


def test_a_workdir_from_before_run_json_is_identified_by_its_checkpoint(tmp_path):
    """Workdirs written before run.json existed: the config saved with the checkpoint decides."""
    workdir = tmp_path / "run"
    finetune_and_evaluate(tiny_config("dpo_lora_tiny", num_steps=2), str(workdir))
    os.remove(workdir / RUN_FILE)
    full = tiny_config("dpo_tiny", num_steps=2)
    with pytest.raises(WorkdirError, match=r"lora.rank: 8 there, 0 now"):
        finetune_and_evaluate(full, str(workdir))



def test_clipping_turned_on_or_off_is_refused_naming_it(tmp_path):
    """Clipping on or off changes the optimizer state's tree: the claim let it through and only the
    restore failed. Another clip_norm while clipping stays on resumes; a run.json recorded before
    the field existed takes it from the newest checkpoint's config, and with none compares nothing."""
    from research.finetune.run_identity import claim_workdir
    workdir = tmp_path / "run"
    finetune_and_evaluate(tiny_config("sft_tiny", num_steps=2), str(workdir))
    assert json.loads((workdir / RUN_FILE).read_text())["fingerprint"]["opt.clip_norm>0"] is True
    unclipped = tiny_config("sft_tiny", num_steps=3)
    unclipped.opt.clip_norm = 0.0
    refusal = (rf"^--workdir={workdir} holds another run \(opt.clip_norm>0: true there, false now\); use a new "
               r"--workdir, or delete .* to start over; .* a large opt.clip_norm \(e.g. 1e9\) in place of 0 keeps it\.$")
    with pytest.raises(WorkdirError, match=refusal) as error:
        finetune_and_evaluate(unclipped, str(workdir))
    assert "\n" not in str(error.value)

    recorded = json.loads((workdir / RUN_FILE).read_text())
    del recorded["fingerprint"]["opt.clip_norm>0"]  # a run.json written before the field
    (workdir / RUN_FILE).write_text(json.dumps(recorded))
    with pytest.raises(WorkdirError, match=refusal):  # the saved step's config says it clipped
        claim_workdir(str(workdir), unclipped.to_dict())
    fresh = tmp_path / "no_checkpoint"
    fresh.mkdir()
    (fresh / RUN_FILE).write_text(json.dumps(recorded))
    claim_workdir(str(fresh), unclipped.to_dict())  # nothing saved: nothing to resume, nothing to compare

    (workdir / RUN_FILE).write_text(json.dumps(recorded))
    other_value = tiny_config("sft_tiny", num_steps=3)
    other_value.opt.clip_norm = 0.5  # the same state: resumes, and run.json records the field again
    other_value.checkpoint.every_steps = 3
    finetune_and_evaluate(other_value, str(workdir))
    assert json.loads((workdir / RUN_FILE).read_text())["fingerprint"]["opt.clip_norm>0"] is True


BAD_VALUES = {"preference.beta": (0.0, r"^preference.beta=0.0 must be positive and finite \(e.g. --config.preference.beta=0.1\)"),
              "preference.label_smoothing": (0.7, r"^preference.label_smoothing=0.7 must be in \[0, 0.5\)"),
              "lora.alpha": (-1.0, r"^lora.alpha=-1.0 must be positive: .*--config.lora.alpha=16"),
              "lora.targets": (("nomatch$",), r"^lora.targets pattern 'nomatch\$' matches no parameter"),
              "data.chat_template": ("chatm", r"^data.chat_template='chatm' is not one of \['chatml', 'plain'\]")}


def test_a_bad_value_on_a_workdir_holding_a_run_is_named_not_refused_as_another_run(tmp_path):
    """The value's own one-line error comes before the claim: "holds another run ...; delete DIR" was
    the answer before, a hint that would throw the trained run away to fix a typo."""
    from research.models.config import ConfigError
    from research.finetune.base_model import base_model_config, load_base_model
    workdir, exported = tmp_path / "run", tmp_path / "hf"
    trained = tiny_config("dpo_lora_tiny", num_steps=2)
    trained.export_dir = str(exported)
    finetune_and_evaluate(trained, str(workdir))
    # lora.targets are checked against the base's parameter paths, its config read without weights:
    # the config loading the model gives, for a LoRA run's checkpoint and a Hugging Face folder.
    for init in (f"checkpoint:{workdir}", f"hf:{exported}"):
        assert base_model_config(init, {"dropout_rate": 0.1}) == load_base_model(init, {"dropout_rate": 0.1},
                                                                                 "char").config
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    for key, (value, message) in BAD_VALUES.items():
        config = tiny_config("dpo_lora_tiny", num_steps=2)
        config.export_dir = str(exported)
        section, field = key.split(".")
        config[section][field] = value
        with pytest.raises(ConfigError, match=message) as error:
            finetune_and_evaluate(config, str(workdir))
        assert not isinstance(error.value, WorkdirError) and "\n" not in str(error.value)
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before  # nothing lost or written


@pytest.mark.parametrize("stop, where", [(KeyboardInterrupt, "build_job"), (TerminatedEarly, "build_job"),
                                         (KeyboardInterrupt, "first_record")])
def test_a_stop_before_the_first_checkpoint_leaves_the_workdir_free_for_other_settings(stop, where, tmp_path,
                                                                                         monkeypatch):
    """A Ctrl-C (KeyboardInterrupt) or a SIGTERM (TerminatedEarly: fine-tuning has no Guard) while
    the job is built, after the claim, or once the step-0 evaluation is recorded: nothing was
    saved, so run.json must not stay behind (a changed rerun was refused as another run), nor
    the records written so far (a rerun showed them beside its own); earlier files stay."""
    def stopped(*args, **kwargs):
        raise stop
    write = MetricWriter.write

    def write_then_stop(writer, step, metrics):
        write(writer, step, metrics)
        raise stop
    if where == "build_job":
        monkeypatch.setattr(run_module, "build_job", stopped)
    else:
        monkeypatch.setattr(MetricWriter, "write", write_then_stop)
    workdir = tmp_path / "run"
    earlier = workdir / TENSORBOARD_DIR / "events.out.tfevents.1700000000.earlier"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"an earlier writer's events")
    with pytest.raises(stop):
        finetune_and_evaluate(tiny_config("sft_tiny", num_steps=2), str(workdir))
    assert not (workdir / RUN_FILE).exists() and not (workdir / METRICS_FILE).exists()
    assert os.listdir(earlier.parent) == [earlier.name] and earlier.read_bytes() == b"an earlier writer's events"
    with pytest.raises(stop):  # past the claim: another setting is accepted
        finetune_and_evaluate(tiny_config("sft_lora_tiny", num_steps=2), str(workdir))


@pytest.mark.parametrize("stop", [KeyboardInterrupt, TerminatedEarly])
def test_a_failing_discard_after_a_stop_is_a_warning_and_the_stop_goes_on(stop, tmp_path, monkeypatch, caplog):
    """Removing the records of a stopped fine-tuning setup fails (a permission, W&B's finish):
    the stop still propagates (the command's one line, exit 130 / 143) and the claim is
    withdrawn; the failure is one warning line. It replaced the stop, with a traceback."""
    import logging
    write = MetricWriter.write

    def write_then_stop(writer, step, metrics):
        write(writer, step, metrics)
        raise stop

    def refused(writer):
        raise PermissionError(13, "Permission denied", writer.path)
    monkeypatch.setattr(MetricWriter, "write", write_then_stop)
    monkeypatch.setattr(MetricWriter, "discard", refused)
    workdir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="research.training.metrics"), pytest.raises(stop):
        finetune_and_evaluate(tiny_config("sft_tiny", num_steps=2), str(workdir))
    assert not (workdir / RUN_FILE).exists()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "research.training.metrics"]
    assert "could not remove" in warning and "PermissionError" in warning


def test_a_rerun_of_a_finished_run_says_it_trained_nothing_and_where_the_results_are(tmp_path, caplog):
    """It printed only the restored model's evaluation, as if it had just trained."""
    import logging
    workdir = tmp_path / "run"
    config = tiny_config("sft_tiny", num_steps=2)
    finetune_and_evaluate(config, str(workdir))
    assert "had already finished" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="research.finetune"):
        finetune_and_evaluate(config, str(workdir))
    assert (f"the run in --workdir={workdir} had already finished at step 2 (train.num_steps=2): nothing was trained; "
            f"its results are in {workdir}/metrics.jsonl, its checkpoints in {workdir}/checkpoints;") in caplog.text


def test_the_command_line_refuses_another_run_in_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / RUN_FILE).write_text(json.dumps({"fingerprint": {"path": "preference"}}))
    (workdir / "checkpoints" / "5").mkdir(parents=True)  # it saved: a run to keep (with none it may be replaced)
    command = [sys.executable, "-m", "experiments.finetune", "--config=experiments/configs/finetune.py:sft_tiny",
               f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --workdir={workdir} holds another run (path: "
                                                   "'preference' there, 'sft' now"), result.stderr


def test_local_paths_in_the_identity_are_absolute(tmp_path, monkeypatch):
    # The same relative --config.tokenizer from another directory names another file: it must
    # not match (the run would resume its adapters on another tokenizer); "char" names no file.
    from research.finetune.run_identity import finetune_fingerprint
    config = {"path": "sft", "tokenizer": "tok.model", "data": {"train_file": "train.jsonl"}}
    fingerprints = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        fingerprints.append(finetune_fingerprint(config))
    assert fingerprints[0]["tokenizer"] == str(tmp_path / "a" / "tok.model")
    assert fingerprints[0]["tokenizer"] != fingerprints[1]["tokenizer"]
    assert fingerprints[0]["data.train_file"] != fingerprints[1]["data.train_file"]
    assert finetune_fingerprint({**config, "tokenizer": "char"})["tokenizer"] == "char"


def test_the_command_line_prints_z_loss_as_it_enters_the_loss(tmp_path):
    # sft_tiny's z_loss weight is 0: its final line printed the raw log-partition term (~33)
    # beside a total_loss equal to the loss.
    command = [sys.executable, "-m", "experiments.finetune", "--config=experiments/configs/finetune.py:sft_tiny",
               f"--workdir={tmp_path / 'run'}", "--config.train.num_steps=2", "--config.opt.warmup_steps=0"]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    final = dict(item.split("=", 1) for item in result.stdout.strip().splitlines()[-1].split())
    assert float(final["z_loss"]) == 0.0 and float(final["total_loss"]) == float(final["loss"])


def test_a_sigterm_in_setup_says_the_one_run_continues_from_its_last_checkpoint(tmp_path):
    """Fine-tuning trains one run: its stop line spoke of a study's checkpoint(s)."""
    from tests.signals import run_with_signal_during
    workdir = tmp_path / "run"
    result = run_with_signal_during("research.atomic_files", "unwritable_reason", "SIGTERM", [
        "experiments.finetune", "--config=experiments/configs/finetune.py:sft_tiny", f"--workdir={workdir}"])
    assert result.returncode == 143, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: stopped by SIGTERM without saving this step; rerun the same command to continue from the last "
        "checkpoint, or from the start if none was saved yet."), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_a_rerun_after_a_kill_before_the_first_checkpoint_starts_a_fresh_record(tmp_path):
    """A kill -9 before the first save leaves metrics.jsonl records and no checkpoint: the rerun
    trains from step 0 again, and its log reads as one run (pretraining's restore_or_init drops
    them the same way). The old records stayed, so each step appeared twice."""
    workdir = tmp_path / "run"
    config = tiny_config("sft_tiny", num_steps=2)
    finetune_and_evaluate(config, str(workdir))
    for step_dir in (workdir / "checkpoints").iterdir():  # what a kill before the first save leaves
        if step_dir.name.isdigit():
            shutil.rmtree(step_dir)
    finetune_and_evaluate(config, str(workdir))
    steps = [json.loads(line)["step"] for line in (workdir / METRICS_FILE).read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2], steps


def test_a_run_on_synthetic_data_from_before_the_held_out_split_is_refused_not_resumed(tmp_path):
    """The synthetic sets' eval items were split off the training space (SYNTHETIC_SPLIT_VERSION 2):
    the same settings now generate other records, so a run recorded before would resume on data
    it never saw; its run.json lacks the version and it is refused as another run."""
    workdir = tmp_path / "run"
    config = tiny_config("sft_tiny", num_steps=2)
    finetune_and_evaluate(config, str(workdir))
    record = json.loads((workdir / RUN_FILE).read_text())
    assert record["fingerprint"]["data.synthetic_split_version"] == 2
    del record["fingerprint"]["data.synthetic_split_version"]
    (workdir / RUN_FILE).write_text(json.dumps(record))
    config.train.num_steps = 3
    _refused(config, workdir, r"data.synthetic_split_version")


def test_a_text_to_text_run_from_before_inputs_ended_with_eos_is_refused_not_resumed(tmp_path):
    """A T5 of this codebase reads its inputs with the eos its pretraining put after them (since
    2026-12-07): a text-to-text run recorded before trained on inputs without it, and its run.json
    lacks the field, so a rerun that would go on with other rows is refused as another run."""
    workdir = tmp_path / "run"
    config = tiny_config("t5_tiny", num_steps=2)
    finetune_and_evaluate(config, str(workdir))
    record = json.loads((workdir / RUN_FILE).read_text())
    assert record["fingerprint"]["data.input_ends_with_eos"] is True
    del record["fingerprint"]["data.input_ends_with_eos"]
    (workdir / RUN_FILE).write_text(json.dumps(record))
    config.train.num_steps = 3
    _refused(config, workdir, r"data.input_ends_with_eos: null there, true now")


def test_a_data_file_rewritten_at_its_path_is_refused_and_one_only_touched_resumes(tmp_path):
    """Only the paths were recorded: a train.jsonl cleaned or extended in place resumed the saved data
    position on other rows, beside a before_eval_loss scored on the old eval file."""
    workdir = tmp_path / "run"
    rows = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("cat", "dog", "sun", "sea", "red", "sky", "owl", "fox") * 4]
    for name in ("train", "eval"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config("sft_tiny", num_steps=2)
    config.data.update(dict(train_file=str(tmp_path / "train.jsonl"), eval_file=str(tmp_path / "eval.jsonl")))
    finetune_and_evaluate(config, str(workdir))
    config.train.num_steps = 3
    os.utime(tmp_path / "train.jsonl", (1_700_000_000, 1_700_000_000))  # the same rows: the same run
    (tmp_path / "eval.jsonl").write_bytes((tmp_path / "eval.jsonl").read_bytes())
    finetune_and_evaluate(config, str(workdir))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    config.train.num_steps = 4
    _refused(config, workdir, r"data.train_file_sha256: ")


def test_a_cloud_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """Runs write metrics.jsonl, checkpoints and the tokenizer with os and open: 'gs://b/x' became a
    local folder ./gs:/b/x, lost with the machine, while run.json alone reached the bucket."""
    monkeypatch.chdir(tmp_path)
    from research.atomic_files import unwritable_reason
    from research.training.workdir import claim_all
    for workdir in ("gs://bucket/run", "s3://bucket/run"):
        assert unwritable_reason(workdir).startswith(f"{workdir} is a URL, and runs, studies and their outputs are "
                                                     "written with local file APIs; mount the bucket")
        with pytest.raises(WorkdirError, match=rf"^cannot use --workdir={workdir}: {workdir} is a URL"):
            claim_all([(workdir, tiny_config("sft_tiny", num_steps=2).to_dict())])
    assert list(tmp_path.iterdir()) == []
