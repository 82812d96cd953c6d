"""launch's backends (local subprocesses, the SLURM array script, tpu_vm gcloud commands), the
results table read from their status records, and the multi-host start-up of each job."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from launch import backends, multihost, results
from launch.sweep import Job, LaunchError, expand, load_sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAIN = "experiments/configs/pretrain.py:gpt_tiny"


def test_local_backend_runs_every_job_and_reports_failures(tmp_path):
    sweep = [{"config.opt.learning_rate": 0.1}, {"config.fail": True}, {"config.opt.learning_rate": 0.3}]
    jobs = expand(sweep, module="tests.launch.echo_job", config="c.py:x", workdir=str(tmp_path), python=sys.executable)
    log = tmp_path / "out.txt"
    (tmp_path / "learning_rate=0.3").mkdir()
    (tmp_path / "learning_rate=0.3" / "metrics.jsonl").write_text(
        '{"step": 0, "params_total": 5}\n{"step": 10, "loss": 2.5, "eval_loss": 2.75}\n{"step": 20, "loss": 2.25}\n'
        '{"step": 30, "lo')  # the last line cut short, as by a killed job
    with open(log, "w") as out:
        local_results = backends.run_local(jobs, cwd=REPO, log_dir=str(tmp_path / "logs"), max_parallel=2, out=out)
    assert [(r.job.name, r.returncode) for r in local_results] == [
        ("learning_rate=0.1", 0), ("fail=True", 3), ("learning_rate=0.3", 0)]
    # The results table: status and time from the status records, the final loss from metrics.jsonl.
    table = results.collect([*jobs, *expand([{"name": "never"}], module="m", config="c", workdir=str(tmp_path))],
                            str(tmp_path / "logs"))
    assert [(r.name, r.status, r.step, r.loss, r.eval_loss) for r in table] == [
        ("learning_rate=0.1", "ok", None, None, None), ("fail=True", "failed (exit 3)", None, None, None),
        ("learning_rate=0.3", "ok", 20, 2.25, 2.75), ("never", "not started", None, None, None)]
    assert all(0 < r.seconds < 60 for r in table[:3]) and table[3].seconds is None
    lines = results.format_table(table).splitlines()
    assert lines[0].split() == ["job", "status", "time", "step", "loss", "eval_loss"]
    row = lines[3].split()
    assert row[:2] == ["learning_rate=0.3", "ok"] and row[3:] == ["20", "2.2500", "2.7500"]
    assert lines[-1] == "2 ok, 1 failed, 1 not started"
    recorded = json.loads((tmp_path / "learning_rate=0.3" / "argv.json").read_text())["argv"]
    assert recorded[1:] == ["--config=c.py:x", f"--workdir={tmp_path}/learning_rate=0.3",
                            "--config.opt.learning_rate=0.3"]  # launch.multihost ran the module as __main__
    assert "done fail=True: FAILED (exit 3" in log.read_text()
    with pytest.raises(LaunchError, match="max_parallel=0"):
        backends.run_local(jobs, cwd=REPO, log_dir=str(tmp_path), max_parallel=0)


def test_slurm_script_is_an_array_of_the_jobs(tmp_path):
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/shared/lr")
    script = backends.slurm_script(jobs, backends.SlurmOptions(job_name="lr", nodes=2, gpus_per_node=8,
                                                               partition="gpu", setup="source venv/bin/activate"),
                                   cwd="/repo", log_dir=str(tmp_path))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --array=0-2" in lines and "#SBATCH --nodes=2" in lines
    assert "#SBATCH --ntasks-per-node=1" in lines and "#SBATCH --gpus-per-node=8" in lines
    assert "#SBATCH --partition=gpu" in lines and not any("--account" in line for line in lines)
    assert lines.index("source venv/bin/activate") < lines.index("JOBS=(")
    assert 'srun bash -c "${JOBS[$SLURM_ARRAY_TASK_ID]}"' in lines
    # The array is valid bash holding each job's exact command: run task 1 with echo for srun,
    # then task 2 with a failing srun; each task records how its job ended.
    fake = script.replace("set -euo pipefail", "set -euo pipefail; SLURM_ARRAY_TASK_ID=$1")
    fake = "\n".join(line for line in fake.splitlines() if not line.startswith(("cd ", "source ")))
    echo = subprocess.run(["bash", "-c", fake.replace("srun bash -c", "echo"), "script", "1"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert shlex.split(echo) == list(jobs[1].argv)
    failing = subprocess.run(["bash", "-c", fake.replace("srun bash -c", "bash -c 'exit 4'"), "script", "2"],
                             capture_output=True, text=True)
    assert failing.returncode == 4
    assert [(r.name, r.status) for r in results.collect(jobs, str(tmp_path))] == [
        ("learning_rate=0.001", "not started"), ("learning_rate=0.003", "ok"), ("learning_rate=0.01", "failed (exit 4)")]
    for bad, message in ((dict(nodes=0), "--slurm_nodes=0 must be >= 1"),
                         (dict(gpus_per_node=-1), "--slurm_gpus_per_node=-1 must be >= 0"),
                         (dict(time="1day"), "--slurm_time='1day' is not a SLURM time")):
        with pytest.raises(LaunchError, match=message):
            backends.slurm_script(jobs, backends.SlurmOptions(**bad), cwd="/repo", log_dir=str(tmp_path))
    for unlimited in ("UNLIMITED", "INFINITE"):  # sbatch's no-limit values were refused
        assert f"#SBATCH --time={unlimited}" in backends.slurm_script(
            jobs, backends.SlurmOptions(time=unlimited), cwd="/repo", log_dir=str(tmp_path))


def test_slurm_script_gives_srun_the_tasks_cpus(tmp_path):
    """Since Slurm 22.05 srun does not take --cpus-per-task from sbatch: each job ran on one core."""
    jobs = expand([{"config.seed": 1}], module="tests.launch.echo_job", config="c.py:x", workdir=str(tmp_path))
    script = backends.slurm_script(jobs, backends.SlurmOptions(job_name="cpus", cpus_per_task=6), cwd=str(tmp_path),
                                   log_dir=str(tmp_path / "logs"))
    assert "#SBATCH --cpus-per-task=6" in script.splitlines()
    fake_srun = tmp_path / "bin" / "srun"
    fake_srun.parent.mkdir()
    fake_srun.write_text('#!/bin/bash\necho "srun sees ${SRUN_CPUS_PER_TASK:-no} cpus per task"\n')
    fake_srun.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SLURM_", "SRUN_"))}
    env.update(PATH=f"{fake_srun.parent}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="0", SLURM_CPUS_PER_TASK="6")
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "srun sees 6 cpus per task"


def test_tpu_vm_script_runs_each_job_on_every_worker(tmp_path):
    jobs = expand(load_sweep(PRETRAIN), module="experiments.pretrain", config=PRETRAIN, workdir="/w")
    script = backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="v4-32", zone="us-central2-b",
                                                                 setup="source ~/venv/bin/activate"),
                                    log_dir=str(tmp_path))
    commands = _run_job_commands(script)
    assert len(commands) == 3
    argv = shlex.split(commands[0])
    assert argv[:8] == ["run_job", jobs[0].name, "gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32"]
    assert "--worker=all" in argv and "--zone=us-central2-b" in argv
    remote = next(a for a in argv if a.startswith("--command=")).split("=", 1)[1]
    assert remote == "set -e\ncd ~/research\nsource ~/venv/bin/activate\n" + jobs[0].command
    # With gcloud failing for the second job only, the rest still run and the script fails.
    fake_gcloud = tmp_path / "bin" / "gcloud"
    fake_gcloud.parent.mkdir()
    fake_gcloud.write_text('#!/bin/bash\ncase "$*" in *0.003*) exit 5;; esac\n')
    fake_gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_gcloud.parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert run.returncode == 1
    assert [r.status for r in results.collect(jobs, str(tmp_path))] == ["ok", "failed (exit 5)", "ok"]
    with pytest.raises(LaunchError, match="--tpu_name"):
        backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="", zone=""), log_dir=str(tmp_path))


def _run_job_commands(script: str) -> list[str]:
    """The script's run_job commands, each whole (a remote command spans several lines)."""
    return ["run_job " + re.split(r"\n(?=# |exit )", part, maxsplit=1)[0] for part in script.split("\nrun_job ")[1:]]


def test_tpu_vm_setup_with_comments_and_lines_runs_before_the_job_and_stops_it_when_it_fails(tmp_path):
    """`cd ... && export FOO=1  # my env && <job>`: the comment hid the job, which never ran while
    its status read ok. The worker's shell (a fake gcloud: bash -c of --command, in $HOME) runs it."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "gcloud").write_text('#!/bin/bash\nfor a in "$@"; do case "$a" in --command=*) '
                                            'cmd="${a#--command=}";; esac; done\ncd "$HOME" && exec bash -c "$cmd"\n')
    (tmp_path / "bin" / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    write = "import os; open('ran', 'w').write(os.environ['FOO'] + os.environ['BAR'])"
    jobs = [Job("j", str(tmp_path), (sys.executable, "-c", write))]
    for setup, code, status in (("export FOO=1  # my env\nexport BAR=2 # more", 0, "ok"),
                                ("export FOO=1 # my env\nfalse  # a failing setup\nexport BAR=2", 1,
                                 "failed (exit 1)")):
        (tmp_path / "ran").unlink(missing_ok=True)
        script = backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="t", zone="z", repo_dir="~",
                                                                     setup=setup), log_dir=str(tmp_path / "logs"))
        run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
        assert run.returncode == code, run.stderr
        assert [r.status for r in results.collect(jobs, str(tmp_path / "logs"))] == [status]
        ran = (tmp_path / "ran").read_text() if (tmp_path / "ran").exists() else None
        assert ran == ("12" if code == 0 else None)


def test_slurm_output_directive_keeps_a_launch_dir_with_spaces_whole(tmp_path):
    """sbatch reads an #SBATCH line's value like a shell word (quotes group, an unquoted # starts a
    comment: shlex(comments=True) on what launch writes): "my sweeps" gave --output=/x/my."""
    jobs = [Job("a", "/w/a", ("true",))]
    log_dir = str(tmp_path / 'my "sweeps" #1')
    script = backends.slurm_script(jobs, backends.SlurmOptions(), cwd="/repo", log_dir=log_dir)
    (line,) = [line for line in script.splitlines() if line.startswith("#SBATCH --output")]
    assert shlex.split(line.removeprefix("#SBATCH"), comments=True) == [f"--output={log_dir}/%x_%A_%a.log"]
    with pytest.raises(LaunchError, match="holds a backslash or newline"):
        backends.slurm_script(jobs, backends.SlurmOptions(), cwd="/repo", log_dir=str(tmp_path / "a\\b"))


@pytest.mark.parametrize("repo_dir", ["~/my repo/it's here", "~", "ABS/a b;c", "$HOME/my repo", "${HOME}/x"])
def test_tpu_vm_repo_dir_reaches_the_workers_shell_intact(tmp_path, repo_dir):
    """The worker's shell (bash -c of the remote command) changes into --tpu_repo_dir, spaces
    and quotes kept, a leading ~ or $HOME expanded to the worker's home."""
    repo_dir = repo_dir.replace("ABS", str(tmp_path))
    home = next((h for h in ("~/", "$HOME/", "${HOME}/") if repo_dir.startswith(h)), None)
    expected = tmp_path / repo_dir.removeprefix(home) if home else (
        tmp_path if repo_dir == "~" else tmp_path / "a b;c")
    expected.mkdir(parents=True, exist_ok=True)
    script = backends.tpu_vm_script([Job("j", "/w", ("pwd",))],
                                    backends.TpuVmOptions(tpu_name="t", zone="z", repo_dir=repo_dir), log_dir="/l")
    (remote,) = _run_job_commands(script)
    command = shlex.split(remote)[-1].removeprefix("--command=")
    worker = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env={**os.environ,
                                                                                            "HOME": str(tmp_path)})
    assert (worker.returncode, worker.stdout.strip()) == (0, str(expected)), worker.stderr
    with pytest.raises(LaunchError, match="--tpu_repo_dir is empty"):
        backends.tpu_vm_script([], backends.TpuVmOptions(tpu_name="t", zone="z", repo_dir=""), log_dir="/l")


def test_a_local_job_killed_without_a_record_is_not_shown_running(tmp_path):
    """Its launcher SIGKILLed, the job then stopped: no end was recorded and the table said
    "running" for ever. The local backend's lock tells a running job from a dead one."""
    import fcntl
    import os
    (job,) = expand([{"name": "a"}], module="m", config="c", workdir=str(tmp_path))
    log_dir = str(tmp_path / "logs")
    results.record_start(log_dir, "a")
    assert [r.status for r in results.collect([job], log_dir)] == ["running"]  # no lock file: slurm, tpu_vm
    fd = os.open(results.lock_path(log_dir, "a"), os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held, as the launcher and the job hold it
        assert [r.status for r in results.collect([job], log_dir)] == ["running"]
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    (result,) = results.collect([job], log_dir)
    assert result.status == "killed (no exit recorded)"
    assert results.format_table([result]).splitlines()[-1] == "1 killed"


def test_a_job_killed_by_a_signal_before_handling_one_is_recorded_as_the_shell_would(tmp_path):
    """A SIGTERM in a job's first moments (before any handler) gave returncode -15: "FAILED
    (exit -15)" beside the launcher's "the running jobs saved their checkpoints"."""
    jobs = [Job(name, str(tmp_path / name), (sys.executable, "-c", f"import os, signal; os.kill(os.getpid(), {sig})"))
            for name, sig in (("term", "signal.SIGTERM"), ("kill", "signal.SIGKILL"))]
    with open(tmp_path / "out.txt", "w") as out:
        done = backends.run_local(jobs, cwd=REPO, log_dir=str(tmp_path / "logs"), out=out)
    assert [r.returncode for r in done] == [143, 137]
    assert [r.status for r in results.collect(jobs, str(tmp_path / "logs"))] == ["stopped (exit 143)",
                                                                                  "failed (exit 137)"]


def test_multihost_joins_jax_distributed_only_on_several_hosts(monkeypatch):
    import jax
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    step = {"SLURM_STEP_NODELIST": "n[1-4]", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    assert multihost.initialize({}) is None and multihost.initialize({"SLURM_NTASKS": "1", **step}) is None
    assert multihost.initialize({"TPU_WORKER_HOSTNAMES": "10.0.0.1"}, tpu_processes=4) is None
    assert multihost.cluster_kind({}) is None and multihost.tpu_vm_process_count() == 0  # no TPU here
    # A Cloud TPU VM slice (made by gcloud, which launch's tpu_vm backend drives) has no
    # TPU_WORKER_HOSTNAMES: jax's plugin reads its workers from the metadata server. It never joined.
    # One host stays one process (jax's SIGTERM handler took a start-up's signals).
    assert multihost.initialize({}, tpu_processes=4) == "tpu"
    assert multihost.initialize({}, tpu_processes=1) is None
    # An allocation's own shell (salloc -n4, an sbatch script outside srun) is one process, not a step.
    assert multihost.initialize({"SLURM_NTASKS": "4", "SLURM_NNODES": "4"}) is None
    # One task per GPU (4 on one node): jax gives each its GPU (SLURM_LOCALID) itself.
    assert multihost.initialize({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_NODES": "1", **step}) == "slurm"
    # launch's sbatch script: one task per node, which must use every GPU of its node, not GPU 0.
    assert multihost.initialize({"SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "8",
                                 **step}) == "slurm"
    assert multihost.initialize({"SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2",
                                 "CUDA_VISIBLE_DEVICES": "4,5", **step}) == "slurm"
    assert multihost.initialize({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == "tpu"
    assert multihost.initialize({"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "2",
                                 "JAX_PROCESS_ID": "1"}) == "explicit"
    assert calls == [{}, {}, {"local_device_ids": list(range(8))}, {"local_device_ids": [0, 1]}, {},
                     {"coordinator_address": "h:1234", "num_processes": 2, "process_id": 1}]
    with pytest.raises(SystemExit, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID not"):
        multihost.initialize({"JAX_COORDINATOR_ADDRESS": "h:1234"})
    # Without a coordinator, two processes would each train alone, the same workdir.
    with pytest.raises(SystemExit, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID set but JAX_COORDINATOR_ADDRESS not"):
        multihost.initialize({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
    with pytest.raises(SystemExit, match="JAX_NUM_PROCESSES='two' is not an integer"):
        multihost.initialize({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})
    assert len(calls) == 6


def test_a_tpu_vm_counts_its_slice_by_jax_plugin_and_nothing_where_it_cannot_tell(monkeypatch, capsys):
    """The metadata server unreachable (a container without host networking): requests raised
    ConnectionError through jax's probe, and the start-up crashed."""
    from jax._src.clusters import cloud_tpu_cluster
    from jax._src.clusters.cloud_tpu_cluster import GceTpuCluster
    monkeypatch.setattr(GceTpuCluster, "is_env_present", classmethod(lambda cls: True))
    monkeypatch.setattr(GceTpuCluster, "get_process_count", classmethod(lambda cls: 4))
    assert multihost.tpu_vm_process_count() == 0  # no TPU chips here: the metadata server is not asked
    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    assert multihost.tpu_vm_process_count() == 4 and multihost.cluster_kind({}) == "tpu"
    # GKE's variables decide where set (jax reads TPU_PROCESS_ADDRESSES before TPU_WORKER_HOSTNAMES).
    assert multihost.cluster_kind({"TPU_PROCESS_ADDRESSES": "a:8476"}) is None
    assert multihost.cluster_kind({"TPU_PROCESS_ADDRESSES": "a:8476,b:8476", "TPU_WORKER_HOSTNAMES": "a"}) == "tpu"

    def unreachable(cls):
        raise ConnectionError("metadata.google.internal: connection refused")

    monkeypatch.setattr(GceTpuCluster, "is_env_present", classmethod(unreachable))
    assert multihost.tpu_vm_process_count() == 0 and multihost.cluster_kind({}) is None
    assert capsys.readouterr().err.count("warning: TPU chips attached, but jax could not read their slice") == 2


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "localhost"}, "JAX_COORDINATOR_ADDRESS='localhost' is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:abc"}, "JAX_COORDINATOR_ADDRESS='localhost:abc' is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "::1"}, "JAX_COORDINATOR_ADDRESS='::1' is not host:port"),
    ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES=0 must be >= 1"),
    ({"JAX_PROCESS_ID": "2"}, r"JAX_PROCESS_ID=2 must be in 0\.\.1 \(JAX_NUM_PROCESSES=2\)"),
    ({"JAX_PROCESS_ID": "-1"}, r"JAX_PROCESS_ID=-1 must be in 0\.\.1"),
])
def test_multihost_refuses_a_bad_explicit_cluster_in_one_line(monkeypatch, env, message):
    """jax hung on a coordinator without a port and raised a traceback or a multi-line ValueError
    on the others."""
    import jax
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    good = {"JAX_COORDINATOR_ADDRESS": "[::1]:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert multihost.initialize(good) == "explicit" and calls[0]["coordinator_address"] == "[::1]:1234"
    with pytest.raises(SystemExit, match=f"^error: {message}") as error:
        multihost.initialize({**good, **env})
    assert len(str(error.value).splitlines()) == 1 and len(calls) == 1


def test_multihost_on_slurm_keeps_the_users_jax_local_device_ids(monkeypatch):
    """launch's one-task-per-node default (every GPU of the node) replaced JAX_LOCAL_DEVICE_IDS;
    left unset, jax.distributed.initialize reads the variable itself."""
    import jax
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    step = {"SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_GPUS_ON_NODE": "8"}
    assert multihost.initialize({**step, "JAX_LOCAL_DEVICE_IDS": "0,1"}) == "slurm"
    assert multihost.initialize(step) == "slurm"
    assert calls == [{}, {"local_device_ids": list(range(8))}]


def test_a_local_backend_job_never_joins_a_cluster(monkeypatch):
    """Inside a multi-task SLURM step every local job waited in jax.distributed.initialize for
    peers that never came (it hung, its log empty)."""
    import os
    import runpy
    ran, joined = [], []
    monkeypatch.setattr(multihost, "initialize", lambda *a, **k: joined.append(1))
    monkeypatch.setattr(runpy, "run_module", lambda module, **kwargs: ran.append(module))
    # As the real one does, minus the parent-death signal (this is the test process).
    monkeypatch.setattr(multihost, "die_with_launcher", lambda: os.environ.pop(backends.PARENT_ENV, None))
    for name, value in {"SLURM_NTASKS": "8", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "3",
                        "SLURM_LOCALID": "3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(backends.PARENT_ENV, "1234")
    multihost.main(["launch.multihost", "tests.launch.echo_job", "--workdir=x"])
    assert ran == ["tests.launch.echo_job"] and joined == []
    multihost.main(["launch.multihost", "tests.launch.echo_job", "--workdir=x"])  # a job of srun itself joins
    assert joined == [1]


# A job that writes what --results says of it while it runs (argv: its name, workdir, log dir, out file).
_REPORT_JOB = ("import json, sys; from launch import results; from launch.sweep import Job; "
               "name, workdir, log_dir, out = sys.argv[1:5]; job = Job(name, workdir, ()); "
               "json.dump([r.status for r in results.collect([job], log_dir)], open(out, 'w'))")


@pytest.mark.parametrize("backend", ["slurm", "tpu_vm"])
def test_a_cluster_job_running_after_a_local_run_of_the_sweep_reads_running(tmp_path, backend):
    """The free .lock an earlier local run of the sweep left made a slurm / tpu_vm job that
    was running read "killed (no exit recorded)"; a local job killed so still reads killed."""
    jobs = expand([{"config.opt.learning_rate": 0.1}], module="tests.launch.echo_job", config="c.py:x",
                  workdir=str(tmp_path), python=sys.executable)
    log_dir, out = str(tmp_path / "logs"), tmp_path / "seen.json"
    with open(tmp_path / "out.txt", "w") as local_out:
        backends.run_local(jobs, cwd=REPO, log_dir=log_dir, out=local_out)
    assert os.path.exists(results.lock_path(log_dir, jobs[0].name))  # free now, and kept
    report = shlex.join([sys.executable, "-c", _REPORT_JOB, jobs[0].name, jobs[0].workdir, log_dir, str(out)])
    env = dict(os.environ)
    if backend == "slurm":
        script = backends.slurm_script(jobs, backends.SlurmOptions(job_name="lr"), cwd=REPO, log_dir=log_dir)
        script = script.replace("set -euo pipefail", "set -euo pipefail; SLURM_ARRAY_TASK_ID=0")
        script = script.replace("srun ", f"{report} # ")  # the job step: reports, the rest a comment
    else:
        script = backends.tpu_vm_script(jobs, backends.TpuVmOptions(tpu_name="v4-8", zone="z"), log_dir=log_dir)
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin" / "gcloud").write_text(f"#!/bin/bash\nexec {report}\n")
        (tmp_path / "bin" / "gcloud").chmod(0o755)
        env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    task = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    assert task.returncode == 0, task.stderr
    assert json.loads(out.read_text()) == ["running"]
    assert [r.status for r in results.collect(jobs, log_dir)] == ["ok"]
    # A local job's start record without an end and with its lock free: killed, not running.
    results.record_start(log_dir, jobs[0].name)
    assert [r.status for r in results.collect(jobs, log_dir)] == ["killed (no exit recorded)"]
    assert results.running(jobs, log_dir) == []


def test_a_run_whose_last_loss_is_not_finite_reads_diverged_and_shows_it(tmp_path):
    """A last loss of NaN showed "-" (as if none was logged) beside the status "ok"."""
    sweep = [{"name": "nan", "workdir": "nan"}, {"name": "inf_eval", "workdir": "inf_eval"},
             {"name": "none", "workdir": "none"}, {"name": "running", "workdir": "running"}]
    jobs = expand(sweep, module="m", config="c.py:x", workdir=str(tmp_path))
    logged = {"nan": '{"step": 10, "loss": 5.0}\n{"step": 20, "loss": NaN}\n',
              "inf_eval": '{"step": 20, "loss": 2.5, "eval_loss": Infinity}\n', "none": '{"step": 20}\n',
              "running": '{"step": 20, "loss": -Infinity}\n'}
    for job in jobs:
        os.makedirs(job.workdir)
        with open(os.path.join(job.workdir, "metrics.jsonl"), "w") as f:
            f.write(logged[job.name])
        results.record_start(str(tmp_path), job.name, 0.0)
        if job.name != "running":
            results.record_end(str(tmp_path), job.name, 0.0, 1 if job.name == "inf_eval" else 0, 60.0)
    lock = os.open(results.lock_path(str(tmp_path), "running"), os.O_CREAT | os.O_RDWR)
    try:
        import fcntl
        fcntl.flock(lock, fcntl.LOCK_EX)  # held: the local job still runs
        lines = results.format_table(results.collect(jobs, str(tmp_path), now=60.0)).splitlines()
    finally:
        os.close(lock)
    assert [line.split() for line in lines[1:-1]] == [
        ["nan", "diverged", "(exit", "0)", "0:01:00", "20", "nan", "-"],
        ["inf_eval", "diverged", "(exit", "1)", "0:01:00", "20", "2.5000", "inf"],
        ["none", "ok", "0:01:00", "20", "-", "-"],
        ["running", "running", "0:01:00", "20", "-inf", "-"]]
    assert lines[-1] == "2 diverged, 1 ok, 1 running"
