"""launch/: sweep expansion, the local backend, slurm and tpu_vm scripts, multi-host start-up."""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from launch.sweep import (LaunchError, check_config_keys, check_module, expand, job_paths, load_sweep,
                          parse_overrides)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = "experiments/configs/pretrain.py:gpt_tiny"
# Runs `python -m launch` from an empty directory, so whatever it writes can be seen.
ELSEWHERE = {**os.environ, "PYTHONPATH": REPO}


def test_get_sweep_expands_to_one_command_per_override_dict(tmp_path):
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir=str(tmp_path))
    assert [job.name for job in jobs] == ["learning_rate=0.001", "learning_rate=0.003", "learning_rate=0.01"]
    assert jobs[0].argv == ("python", "-m", "launch.multihost", "experiments.pretrain", f"--config={PRETRAIN}",
                            f"--workdir={tmp_path}/learning_rate=0.001", "--config.opt.learning_rate=0.001")
    assert len({job.workdir for job in jobs}) == 3
    # Shards of a scaling sweep share the base workdir and say so.
    scaling = "experiments/configs/scaling_laws.py:cpu_tiny"
    shards = expand(load_sweep(scaling), module="experiments.scaling_laws", config=scaling, workdir=str(tmp_path))
    assert [(job.name, job.workdir) for job in shards] == [(f"shard{i}", str(tmp_path)) for i in range(3)]
    assert shards[2].argv[-2:] == ("--config.shard.index=2", "--config.shard.count=3")
    # Tuples become config_flags tuples: Python literals, strings quoted.
    (job,) = expand([{"config.sweep.budgets": (1e10, 3e10), "config.sweep.presets": ("gpt2-tiny",)}],
                    module="m", config="c.py", workdir="/w")
    assert job.argv[-2:] == ("--config.sweep.budgets=(10000000000.0,30000000000.0)",
                             "--config.sweep.presets=('gpt2-tiny',)")


TUPLE_CONFIG = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.names, c.mixed, c.nested, c.text, c.lr = ("a", "b"), (1, 2.0), ((1, 2), (3,)), "x", 0.1
    return c
"""


@pytest.mark.parametrize("entry", [
    {"config.names": ("query", "value")},  # finetune's lora.targets
    {"config.names": ("attention/query/kernel$",)},  # one element, regex characters
    {"config.names": ("it's", 'say "hi"', "a, b", " spaced out ", "back\\slash", "tab\there", "[a-z]+.*?(x|y)")},
    {"config.names": ()},
    {"config.mixed": (True, None, 0.1 + 0.2, 1e-20, -3, float(np.float64(1) / 3))},
    {"config.mixed": (np.float64(0.1), np.int64(7), np.bool_(True))},
    {"config.nested": (("a", 1), ("b,c",), ())},
    {"config.text": "it's a \"quoted\" value, with spaces $HOME", "config.lr": 1e-20},
])
def test_sweep_values_arrive_exactly_through_config_flags(tmp_path, entry):
    """What the job's config holds after config_flags parses the job's command line (as the shell
    splits it) is exactly the sweep's value."""
    from absl import flags
    from ml_collections import config_flags
    (tmp_path / "cfg.py").write_text(TUPLE_CONFIG)
    (job,) = expand([entry], module="m", config=str(tmp_path / "cfg.py"), workdir="/w")
    argv = shlex.split(job.command)
    flag_values, job_argv = flags.FlagValues(), ["prog", *argv[4:]]  # as launch.multihost hands them on
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=job_argv)
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    flag_values(job_argv)
    plain = lambda v: tuple(map(plain, v)) if isinstance(v, tuple) else v.item() if isinstance(v, np.generic) else v
    for key, value in entry.items():
        # repr also tells 1 from 1.0 and True, and shows every digit of a float.
        assert repr(flag_values.config[key.removeprefix("config.")]) == repr(plain(value))


def test_tuple_values_that_cannot_be_flags_are_one_line_errors():
    with pytest.raises(LaunchError, match=r"config.mixed=inf: inf / nan inside a tuple"):
        expand([{"config.mixed": (1.0, float("inf"))}], module="m", config="c.py", workdir="/w")
    with pytest.raises(LaunchError, match=r"config.mixed: tuple element \{'a': 1\} is a dict"):
        expand([{"config.mixed": ({"a": 1},)}], module="m", config="c.py", workdir="/w")


def test_bad_sweeps_are_one_line_errors(tmp_path):
    (tmp_path / "no_sweep.py").write_text("def get_config(arg=None):\n    return None\n")
    (tmp_path / "empty.py").write_text("def get_sweep():\n    return []\n")
    with pytest.raises(LaunchError, match="defines no get_sweep"):
        load_sweep(str(tmp_path / "no_sweep.py") + ":x")
    with pytest.raises(LaunchError, match="non-empty list"):
        load_sweep(str(tmp_path / "empty.py"))
    with pytest.raises(LaunchError, match="'missing.py' is not a file"):
        load_sweep("missing.py:x")
    with pytest.raises(LaunchError, match=r"has key\(s\) \['opt.lr'\]"):
        expand([{"opt.lr": 1}], module="m", config="c", workdir="/w")
    with pytest.raises(LaunchError, match="duplicate job names"):
        expand([{"workdir": ".", "name": "a"}, {"workdir": ".", "name": "a"}], module="m", config="c", workdir="/w")
    with pytest.raises(LaunchError, match=r"job name\(s\) \['a b'\]"):
        expand([{"name": "a b"}], module="m", config="c", workdir="/w")


def test_jobs_share_a_workdir_only_when_each_asks_to():
    def workdirs(sweep):
        return [job.workdir for job in expand(sweep, module="m", config="c.py", workdir="/base")]
    # Default names are what every launch gave, so relaunched sweeps resume where they ran,
    # cleaned values and tuples included; only names two jobs would share get a hash apart:
    # the same leaf in two groups, values that clean to the same characters, a cut at 120.
    assert workdirs([{"config.init": "hf:/data/llama"}, {"config.model.d_ff_mult": (2, 4)}]) == [
        "/base/init=hf__data_llama", "/base/d_ff_mult=_2,4_"]
    opt, sched = workdirs([{"config.opt.learning_rate": 0.1, "name": "opt"},
                           {"config.sched.learning_rate": 0.1, "name": "sched"}])
    assert opt != sched and opt.startswith("/base/learning_rate=0.1-") and sched.startswith("/base/learning_rate=0.1-")
    spaced, slashed = workdirs([{"config.data.path": "a b"}, {"config.data.path": "a/b"}])
    assert spaced != slashed and spaced.startswith("/base/path=a_b-") and slashed.startswith("/base/path=a_b-")
    long = workdirs([{"config.data.path": "x" * 130 + "1"}, {"config.data.path": "x" * 130 + "2"}])
    assert long[0] != long[1] and all(len(os.path.basename(w)) == 120 for w in long)
    # A collision left (a workdir set to another job's default name) is a one-line error naming both.
    with pytest.raises(LaunchError, match=r"jobs 'learning_rate=0.1' and 'mine' would share the workdir "
                                          r"/base/learning_rate=0.1 .*give one a distinct 'workdir'"):
        expand([{"config.opt.learning_rate": 0.1}, {"config.opt.learning_rate": 0.2, "workdir": "learning_rate=0.1",
                                                    "name": "mine"}], module="m", config="c.py", workdir="/base")
    with pytest.raises(LaunchError, match=r"jobs 'a' and 'b' would share the workdir /base/learning_rate=0.1 "):
        expand([{"config.opt.learning_rate": 0.1, "name": "a"}, {"config.opt.learning_rate": 0.1, "name": "b"}],
               module="m", config="c.py", workdir="/base")
    # Jobs that each set the same workdir share it.
    assert workdirs([{"workdir": "shared/", "name": "a"}, {"workdir": "shared", "name": "b"}]) == ["/base/shared"] * 2


def test_a_grown_sweep_keeps_the_names_and_workdirs_of_the_jobs_launched_before(tmp_path):
    """An added entry whose default name collides with a launched job's hashed both names, and the
    launched job (maybe finished) started again in a new workdir."""
    from launch.launch_dir import read_launched, record_launched
    first = [{"config.opt.learning_rate": 1e-3}, {"config.opt.learning_rate": 3e-3}]
    jobs = expand(first, module="m", config="c.py", workdir="/w", launched=read_launched(str(tmp_path)))
    record_launched(str(tmp_path), first, jobs)
    grown = [*first, {"config.sched.learning_rate": 1e-3}]  # the same default name: learning_rate=0.001
    assert expand(grown, module="m", config="c.py", workdir="/w")[0].name != jobs[0].name  # what it did
    kept = expand(grown, module="m", config="c.py", workdir="/w", launched=read_launched(str(tmp_path)))
    assert [job.workdir for job in kept[:2]] == [job.workdir for job in jobs] == \
        ["/w/learning_rate=0.001", "/w/learning_rate=0.003"]
    assert kept[2].workdir.startswith("/w/learning_rate=0.001-") and len({job.name for job in kept}) == 3
    # An edited sweep (not grown): a new job whose default name an earlier launch gave to other
    # overrides (here the cut at 120 characters) reused that job's workdir, refused as another run.
    long = "x" * 120
    edited = [{"config.data.name": long, "config.train.seed": 2}]
    record_launched(str(tmp_path), [{"config.data.name": long, "config.train.seed": 1}],
                    expand([{"config.data.name": long, "config.train.seed": 1}], module="m", config="c.py",
                           workdir="/w"))
    (new,) = expand(edited, module="m", config="c.py", workdir="/w", launched=read_launched(str(tmp_path)))
    (alone,) = expand(edited, module="m", config="c.py", workdir="/w")
    assert alone.name == "name=" + "x" * 115 and new.name != alone.name and new.name.startswith("name=xxx")


def test_a_relaunch_with_numpy_values_or_lists_keeps_each_jobs_workdir(tmp_path):
    """np.float64(1e-3) gives the flag 1e-3 gives, and a list the tuple's; the exact overrides were
    repr()'d, so a relaunched sweep with the other form moved its job to a new hashed workdir."""
    from launch.launch_dir import read_launched, record_launched
    first = [{"config.opt.learning_rate": 1e-3, "config.shape": [3, 4]}, {"config.opt.learning_rate": 1e-3,
                                                                          "config.shape": [5]}]
    jobs = expand(first, module="m", config="c.py", workdir="/w")
    record_launched(str(tmp_path), first, jobs)
    again = [{"config.opt.learning_rate": np.float64(1e-3), "config.shape": (3, np.int64(4))},
             {"config.opt.learning_rate": np.float64(1e-3), "config.shape": (5,)}]
    relaunched = expand(again, module="m", config="c.py", workdir="/w", launched=read_launched(str(tmp_path)))
    assert [(j.workdir, j.argv) for j in relaunched] == [(j.workdir, j.argv) for j in jobs]
    # A sweep of NumPy values launched before (its records hold their repr) keeps its workdirs too.
    numpy_sweep = [{"config.opt.learning_rate": np.float64(v)} for v in (1e-3, 3e-3)]
    earlier = {f"config.opt.learning_rate={v!r}": f"kept{i}" for i, v in enumerate(e["config.opt.learning_rate"]
                                                                                   for e in numpy_sweep)}
    assert [j.name for j in expand(numpy_sweep, module="m", config="c.py", workdir="/w", launched=earlier)] == [
        "kept0", "kept1"]


def test_overrides_reach_every_job_and_are_checked_against_the_config():
    overrides = parse_overrides(["train.num_steps=7", "config.data.seed=3"])
    assert overrides == {"config.train.num_steps": "7", "config.data.seed": "3"}
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/w",
                  overrides=overrides)
    for job, lr in zip(jobs, ("0.001", "0.003", "0.01")):
        assert job.argv[-3:] == (f"--config.opt.learning_rate={lr}", "--config.train.num_steps=7",
                                 "--config.data.seed=3")
    with pytest.raises(LaunchError, match=r"sets \['config.opt.learning_rate'\], which the sweep varies"):
        expand(load_sweep(PRETRAIN), module="m", config=PRETRAIN, workdir="/w",
               overrides={"config.opt.learning_rate": "1"})
    for bad, message in (("train.num_steps", "is not KEY=VALUE"), ("=3", "is not KEY=VALUE")):
        with pytest.raises(LaunchError, match=message):
            parse_overrides([bad])
    # An empty value is a value: finetune's --config.tokenizer= (the checkpoint's own tokenizer).
    assert parse_overrides(["config.tokenizer="]) == {"config.tokenizer": ""}
    with pytest.raises(LaunchError, match=r"config.train.num_steps is int"):
        check_config_keys(PRETRAIN, ["config.train.num_steps"], {"config.train.num_steps": ""})
    with pytest.raises(LaunchError, match="sets config.a twice"):
        parse_overrides(["a=1", "config.a=2"])
    check_config_keys(PRETRAIN, ["config.train.num_steps", "config.opt.learning_rate"])
    with pytest.raises(LaunchError, match="config.train has no field 'num_stepz'; its fields are .*'num_steps'"):
        check_config_keys(PRETRAIN, ["config.train.num_stepz"])
    with pytest.raises(LaunchError, match=r"config.train.num_steps is a value \(\d+\), not a group"):
        check_config_keys(PRETRAIN, ["config.train.num_steps.x"])
    with pytest.raises(LaunchError, match=r"config.train.num_steps=1e3x: config.train.num_steps is int \(now \d+\)"):
        check_config_keys(PRETRAIN, ["config.train.num_steps"], {"config.train.num_steps": "1e3x"})
    check_config_keys(PRETRAIN, ["config.opt.learning_rate"], {"config.opt.learning_rate": "3e-4"})
    # A placeholder field (None until set, e.g. model.num_layers) is checked against its declared type.
    with pytest.raises(LaunchError, match=r"config.model.num_layers=four: config.model.num_layers is int \(now None\)"):
        check_config_keys(PRETRAIN, ["config.model.num_layers"], {"config.model.num_layers": "four"})
    check_config_keys(PRETRAIN, ["config.model.num_layers"], {"config.model.num_layers": "4"})
    # A tuple field: '(1e11, 1e12' failed in every shard's flag parsing; 'abc' became the budgets ('abc',).
    scaling, budgets = "experiments/configs/scaling_laws.py:cpu_tiny", "config.sweep.budgets"
    for bad in ("(1e11, 1e12", "abc", "(1e11, 'x')"):
        with pytest.raises(LaunchError, match=rf"config.sweep.budgets is tuple .*e.g. --override={budgets}='\("):
            check_config_keys(scaling, [budgets], {budgets: bad})
    for good in ("(1e11, 1e12)", "1e12", "[3e10, 1e11]"):
        check_config_keys(scaling, [budgets], {budgets: good})
    with pytest.raises(LaunchError, match="unknown pretrain preset 'nope'"):
        check_config_keys("experiments/configs/pretrain.py:nope", [])


def test_sweeps_that_do_not_suit_the_preset_are_one_line_errors():
    assert len(load_sweep("experiments/configs/finetune.py:dpo_tiny")) == 3
    # sft_tiny reads no preference.beta: its three jobs trained one run three times.
    with pytest.raises(LaunchError, match=r"finetune.py:sft_tiny'.*preference.beta, which preset 'sft_tiny' "
                                          r"\(path 'sft'\) does not read"):
        load_sweep("experiments/configs/finetune.py:sft_tiny")
    # No preset: the jobs build get_config()'s default, sft_tiny; the sweep checked dpo_tiny and
    # launched three identical SFT runs.
    with pytest.raises(LaunchError, match=r"which preset 'sft_tiny' \(path 'sft'\) does not read"):
        load_sweep("experiments/configs/finetune.py")
    # gpt_tiny_lr_sweep trains get_sweep()'s learning rates in each job (config.batched).
    lr_sweep = "experiments/configs/pretrain.py:gpt_tiny_lr_sweep"
    with pytest.raises(LaunchError, match=r"config.opt.learning_rate: the jobs train several values of it each "
                                          r"\(config.batched.field='opt.learning_rate'\)"):
        check_config_keys(lr_sweep, ["config.opt.learning_rate"])
    check_config_keys(lr_sweep, ["config.train.seed"])
    # The batched field set by an --override or a sweep entry: PRETRAIN's three learning-rate jobs each
    # trained the same two values (their own replaced), under names saying otherwise.
    keys = ["config.opt.learning_rate", "config.batched.field", "config.batched.values"]
    batched = {"config.batched.field": "opt.learning_rate", "config.batched.values": "(1e-3,3e-3)"}
    with pytest.raises(LaunchError, match=r"config.opt.learning_rate: the jobs train several values of it each"):
        check_config_keys(PRETRAIN, keys, batched, load_sweep(PRETRAIN))
    with pytest.raises(LaunchError, match=r"config.opt.learning_rate: the jobs train several values of it each"):
        check_config_keys(PRETRAIN, keys, sweep=[{"config.opt.learning_rate": 1e-3, **batched}])
    check_config_keys(PRETRAIN, keys[1:], batched)
    # ... and an --override that moves the preset's batched field, or clears it, is the field.
    check_config_keys(lr_sweep, ["config.opt.learning_rate", "config.batched.field"],
                      {"config.batched.field": "train.seed"})
    check_config_keys(lr_sweep, ["config.opt.learning_rate", "config.batched.field"], {"config.batched.field": ""})


def test_sweep_values_are_checked_against_the_config_and_none_reaches_no_flag():
    keys = ["config.model.num_layers", "config.data.tokenizer.model_path", "config.train.num_steps"]
    check_config_keys(PRETRAIN, keys, sweep=[{"config.model.num_layers": None, "config.train.num_steps": 7}])
    (job,) = expand([{"config.model.num_layers": None, "config.train.num_steps": 7}], module="m", config=PRETRAIN,
                    workdir="/w")
    assert not any(arg.startswith("--config.model.num_layers") for arg in job.argv)  # the field's default, None: no flag
    # A flag carried None as the text 'None' (the job failed: "tokenizer model 'None' does not exist").
    assert not any(arg.startswith("--config.data.tokenizer") for arg in expand(
        [{"config.data.tokenizer.model_path": None}], module="m", config=PRETRAIN, workdir="/w")[0].argv)
    with pytest.raises(LaunchError, match=r"get_sweep\(\)\[1\] sets config.train.num_steps to None, "
                                          r"which no flag can carry"):
        check_config_keys(PRETRAIN, keys, sweep=[{}, {"config.train.num_steps": None}])
    with pytest.raises(LaunchError, match=r"get_sweep\(\)\[0\]: config.train.num_steps=0.5: config.train.num_steps "
                                          r"is int"):
        check_config_keys(PRETRAIN, keys, sweep=[{"config.train.num_steps": 0.5}])


def test_module_is_checked_without_importing_it():
    check_module("experiments.pretrain")
    check_module("experiments.scaling_laws")  # a package with __main__.py
    for bad, message in (("experiments.pretrian", "is not found"), ("experiments", "package without __main__"),
                         ("experiments/pretrain.py", "not a dotted module name")):
        with pytest.raises(LaunchError, match=message):
            check_module(bad)


def test_module_is_looked_for_where_the_jobs_run(tmp_path, monkeypatch):
    """--module=myexp run from a project folder passed the check (python -m puts the caller's
    folder on sys.path) and every job, run in the repository, failed: No module named myexp."""
    (tmp_path / "myexp_for_launch_test.py").write_text("print('hello')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    check_module("myexp_for_launch_test")  # as seen from here
    with pytest.raises(LaunchError, match=rf"is not found from {REPO}, where the jobs run"):
        check_module("myexp_for_launch_test", REPO)
    check_module("experiments.pretrain", REPO)


def test_cloud_workdirs_stay_urls():
    (job,) = expand([{"config.opt.learning_rate": 1}], module="m", config="c.py", workdir="gs://bucket/sweep/")
    assert job.workdir == "gs://bucket/sweep/learning_rate=1" and f"--workdir={job.workdir}" in job.argv
    (shared,) = expand([{"workdir": ".", "name": "s"}], module="m", config="c.py", workdir="gs://bucket/sweep")
    assert shared.workdir == "gs://bucket/sweep"


def test_cli_dry_run_and_script(tmp_path):
    base = [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=experiments.pretrain",
            f"--workdir={tmp_path}"]
    result = subprocess.run(base + ["--dry_run"], cwd=REPO, capture_output=True, text=True, check=True)
    assert len(result.stdout.splitlines()) == 4 and "--config.opt.learning_rate=0.01" in result.stdout
    result = subprocess.run(base + ["--backend=slurm"], cwd=REPO, capture_output=True, text=True, check=True)
    assert (tmp_path / "launch_slurm.sh").read_text().count("launch.multihost experiments.pretrain") == 3
    result = subprocess.run(base + ["--backend=tpu_vm"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip() == (
        "error: tpu_vm needs --tpu_name and --tpu_zone, e.g. --tpu_name=my-v4-32 --tpu_zone=us-central2-b.")


def test_cli_submit_failures_are_one_line_and_keep_the_script(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    base = [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=experiments.pretrain",
            f"--workdir={tmp_path / 'w'}", "--backend=slurm", "--submit"]
    python_only = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}"}  # no sbatch
    missing = subprocess.run(base, cwd=REPO, capture_output=True, text=True, env=python_only)
    assert missing.returncode == 1 and missing.stderr.splitlines() == [
        f"error: --submit: sbatch is not installed here; submit {tmp_path}/w/launch_slurm.sh where it is "
        f"(sbatch {tmp_path}/w/launch_slurm.sh)."]
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Invalid partition' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    refused = subprocess.run(base, cwd=REPO, capture_output=True, text=True, env=python_only)
    assert refused.returncode == 1 and refused.stderr.splitlines() == [
        "sbatch: error: Invalid partition",
        f"error: --submit: sbatch {tmp_path}/w/launch_slurm.sh exited 1: sbatch refused the script; the script "
        "stays written."]
    assert (tmp_path / "w" / "launch_slurm.sh").is_file()


def test_cli_refuses_a_gs_workdir_before_writing_anything(tmp_path):
    # The jobs write their runs with os and open: a gs:// workdir became a local ./gs: folder on each
    # host, lost with it; every job now refuses it, so launch does before any script is written.
    launch_dir = tmp_path / "launch"
    result = subprocess.run([sys.executable, "-m", "launch", f"--config={REPO}/{PRETRAIN}",
                             "--module=experiments.pretrain", "--workdir=gs://bucket/sweep", f"--launch_dir={launch_dir}",
                             "--backend=slurm", "--override=train.num_steps=7", "--dry_run"], cwd=tmp_path,
                            capture_output=True, text=True, env=ELSEWHERE)
    assert result.returncode == 1 and result.stderr.splitlines() == [
        "error: --workdir=gs://bucket/sweep is a cloud path, and the jobs write their runs with local file APIs; "
        "mount the bucket on every host (e.g. gcsfuse at /gcs/BUCKET) and give that path."]
    assert list(tmp_path.iterdir()) == []  # no launch dir, no local "gs:" folder


def test_cli_relative_paths_are_the_callers_though_jobs_run_in_the_repo(tmp_path):
    (tmp_path / "cfg.py").write_text("import ml_collections\ndef get_config(arg=None):\n"
                                     "    return ml_collections.ConfigDict({'lr': 0.1})\n"
                                     "def get_sweep():\n    return [{'config.lr': 0.2}]\n")
    base = [sys.executable, "-m", "launch", "--config=cfg.py:x", "--module=tests.launch.echo_job", "--workdir=rel"]
    subprocess.run(base, cwd=tmp_path, capture_output=True, text=True, check=True, env=ELSEWHERE)
    # The job (run in the repository root) got absolute paths and wrote next to the launcher's logs.
    argv = json.loads((tmp_path / "rel" / "lr=0.2" / "argv.json").read_text())["argv"]
    assert argv[1:3] == [f"--config={tmp_path}/cfg.py:x", f"--workdir={tmp_path}/rel/lr=0.2"]
    assert (tmp_path / "rel" / "launch_status" / "lr=0.2.json").is_file()
    # slurm (shared disk): the script's jobs get the same absolute paths.
    slurm = subprocess.run(base + ["--backend=slurm", "--launch_dir=logs", "--dry_run"], cwd=tmp_path,
                           capture_output=True, text=True, check=True, env=ELSEWHERE).stdout
    assert slurm.startswith(f"# {tmp_path}/logs/launch_slurm.sh ")
    assert f"--config={tmp_path}/cfg.py:x --workdir={tmp_path}/rel/lr=0.2 " in slurm


def test_tpu_vm_workers_get_paths_of_their_own_checkout(tmp_path):
    pretrain = os.path.join(REPO, PRETRAIN)
    # A config in this repository is found under --tpu_repo_dir on the workers; one elsewhere stays absolute.
    assert job_paths(os.path.relpath(pretrain), "gs://b/s", repo=REPO, remote=True) == (
        pretrain, PRETRAIN, "gs://b/s")
    assert job_paths(str(tmp_path / "c.py"), "/abs", repo=REPO, remote=True) == (
        f"{tmp_path}/c.py", f"{tmp_path}/c.py", "/abs")
    with pytest.raises(LaunchError, match="--workdir=runs/x is relative; tpu_vm jobs write on the workers"):
        job_paths(PRETRAIN, "runs/x", repo=REPO, remote=True)
    assert job_paths(PRETRAIN, "runs/x", repo=REPO) == (pretrain, pretrain, os.path.abspath("runs/x"))
    for empty in ("", " "):
        with pytest.raises(LaunchError, match="is empty"):
            job_paths(PRETRAIN, empty, repo=REPO)


@pytest.mark.parametrize("flags, message", [
    (["--backend=slurm", "--slurm_nodes=0"], "error: --slurm_nodes=0 must be >= 1"),
    (["--backend=slurm", "--slurm_gpus_per_node=-2"], "error: --slurm_gpus_per_node=-2 must be >= 0"),
    (["--module=experiments.pretrian"], "error: --module='experiments.pretrian' is not found"),
    (["--workdir=gs://bucket/sweep"], "error: --workdir=gs://bucket/sweep is a cloud path"),
    (["--backend=tpu_vm", "--tpu_name=t", "--tpu_zone=z", "--workdir=rel"], "error: --workdir=rel is relative; tpu_vm"),
    # An unset shell variable: the sweep landed in the caller's directory, or its logs in the workdir.
    (["--workdir=", "--dry_run"], "error: --workdir='' is empty (an unset shell variable?)"),
    (["--launch_dir=", "--backend=slurm"], "error: --launch_dir='' is empty (an unset shell variable?)"),
])
def test_cli_bad_launches_are_one_line_and_write_nothing(tmp_path, flags, message):
    workdir = tmp_path / "sweep"
    argv = [sys.executable, "-m", "launch", f"--config={REPO}/{PRETRAIN}", "--module=experiments.pretrain",
            f"--workdir={workdir}", *flags]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=ELSEWHERE)
    assert result.returncode == 1 and result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_local_sweep_ends_with_the_results_table(tmp_path):
    base = [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=tests.launch.echo_job",
            f"--workdir={tmp_path}", "--override=train.num_steps=7"]
    result = subprocess.run(base, cwd=REPO, capture_output=True, text=True, check=True)
    lines = result.stdout.splitlines()
    assert lines[-5].split() == ["job", "status", "time", "step", "loss", "eval_loss"]
    assert [line.split()[:2] for line in lines[-4:-1]] == [
        ["learning_rate=0.001", "ok"], ["learning_rate=0.003", "ok"], ["learning_rate=0.01", "ok"]]
    assert lines[-1] == "3 ok"
    for lr in ("0.001", "0.003", "0.01"):
        argv = json.loads((tmp_path / f"learning_rate={lr}" / "argv.json").read_text())["argv"]
        assert argv[-2:] == [f"--config.opt.learning_rate={lr}", "--config.train.num_steps=7"]
    on_demand = subprocess.run(base + ["--results"], cwd=REPO, capture_output=True, text=True, check=True)
    assert on_demand.stdout.splitlines()[-1] == "3 ok"
    launched = json.loads((tmp_path / "launch_jobs.json").read_text())  # the names a grown sweep keeps
    assert sorted(launched.values()) == ["learning_rate=0.001", "learning_rate=0.003", "learning_rate=0.01"]
    # Another sweep (same job names, another workdir) in this launch dir overwrote its records: its
    # finished jobs then read "failed". Refused in one line; this sweep's table is intact.
    other = [*base[:5], f"--workdir={tmp_path / 'other'}", f"--launch_dir={tmp_path}", "--override=train.num_steps=7"]
    refused = subprocess.run(other, cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.strip().startswith(
        f"error: --launch_dir={tmp_path} keeps the jobs of the sweep in {tmp_path}; give the sweep in "
        f"{tmp_path / 'other'} a --launch_dir of its own"), refused.stderr
    assert not (tmp_path / "other").exists()
    again = subprocess.run(base + ["--results"], cwd=REPO, capture_output=True, text=True, check=True)
    assert again.stdout.splitlines()[-1] == "3 ok"


def test_cli_refuses_to_submit_a_cluster_sweep_again_while_its_jobs_run(tmp_path):
    """A second --submit of a slurm sweep whose array still ran was accepted: a second set of job
    steps trained the same workdirs (only the local backend locked its jobs). A sweep whose jobs
    all ended is submitted again (they resume); --force is the way past a job killed unrecorded."""
    bin_dir, workdir = tmp_path / "bin", tmp_path / "w"
    bin_dir.mkdir()
    # sbatch runs each array task here; srun SIGKILLs the task's shell (a job still running, or one
    # the scheduler killed: a start and no exit record), or with FAKE_SRUN_OK=1 the job ends at once.
    (bin_dir / "sbatch").write_text(
        '#!/bin/bash\necho "$1" >> "$(dirname "$0")/submitted"\n'
        "n=$(sed -n 's/^#SBATCH --array=0-\\([0-9]*\\).*/\\1/p' \"$1\")\n"
        'for i in $(seq 0 "$n"); do (SLURM_ARRAY_TASK_ID=$i bash "$1" > /dev/null 2>&1); done\nexit 0\n')
    (bin_dir / "srun").write_text('#!/bin/bash\n[ -n "${FAKE_SRUN_OK:-}" ] && exit 0\nkill -KILL $PPID\n')
    for name in ("sbatch", "srun"):
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    argv = [sys.executable, "-m", "launch", f"--config={PRETRAIN}", "--module=tests.launch.echo_job",
            f"--workdir={workdir}", "--backend=slurm", "--submit"]

    def submit(*flags, **extra_env):
        return subprocess.run(argv + list(flags), cwd=REPO, capture_output=True, text=True, env={**env, **extra_env})

    def submitted():
        return len((bin_dir / "submitted").read_text().splitlines())

    first = submit()
    assert first.returncode == 0, first.stderr
    again = submit()
    assert again.returncode == 1 and len(again.stderr.splitlines()) == 1, again.stderr
    assert again.stderr.startswith("error: 3 job(s) of this sweep (learning_rate=0.001, learning_rate=0.003, "
                                   "learning_rate=0.01): each is still running from an earlier launch (a start and "
                                   f"no exit record in {workdir}/launch_status)")
    assert "--force" in again.stderr and submitted() == 1
    forced = submit("--force", FAKE_SRUN_OK="1")
    assert forced.returncode == 0 and submitted() == 2, forced.stderr
    resumed = submit()  # every job ended: a resubmission continues them
    assert resumed.returncode == 0 and submitted() == 3, resumed.stderr
