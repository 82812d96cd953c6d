"""Two local processes joined by jax.distributed train like one process with their devices.

Each worker (tests/training/multiprocess_worker.py) is a separate Python process with 2 fake
CPU devices; launch.multihost joins them through a coordinator on localhost (CPU collectives
over gloo, jax's default), so the mesh spans 4 global devices and every process feeds only
its own rows through jax.make_array_from_process_local_data, as on a real multi-host slice.
"""
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from research.training.metrics import read_metrics

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")
TIMEOUT_S = 80


def free_port() -> int:
    """A port for a coordinator, free now, below Linux's ephemeral range (32768-60999): a port
    bind(0) returns is drawn from that range, where the many outgoing connections of other
    multi-process tests (gloo collectives, gRPC) take their source ports too, and one may take it
    between this check and the coordinator's bind."""
    rng = random.Random()
    while True:
        with contextlib.closing(socket.socket()) as s:
            try:
                s.bind(("localhost", rng.randrange(20000, 32000)))
            except OSError:
                continue
            return s.getsockname()[1]


def worker_env(devices: int, **extra: str) -> dict[str, str]:
    """A worker's environment: this process's, less its JAX_* settings (a coordinator, a process id
    or platform set outside would reach the worker) and XLA_FLAGS (the worker's device count is
    its own), but with the suite's persistent XLA cache (tests/conftest.py), so the workers reuse
    the programs that workers of other tests, and earlier runs, compiled."""
    cache = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_")
    env = {k: v for k, v in os.environ.items()
           if k.startswith(cache) or (not k.startswith("JAX_") and k != "XLA_FLAGS")}
    flags = f"--xla_backend_optimization_level=1 --xla_force_host_platform_device_count={devices}"  # as conftest.py
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "TOKENIZERS_PARALLELISM": "false", **extra}


def _kill_running(processes: list) -> None:
    """Kill (and reap) the workers still running: a test's failure must not leave them behind."""
    for p in processes:
        if p.poll() is None:
            p.kill()
            p.wait()


def run_all(commands: list[tuple[list[str], dict[str, str]]], logs, timeout: float = TIMEOUT_S) -> None:
    """Run the commands concurrently, under one deadline; on any failure or timeout kill
    them all (a worker whose peer died would wait on the coordinator), so none stray."""
    deadline = time.monotonic() + timeout
    paths = [logs / f"worker_{i}.log" for i in range(len(commands))]
    processes = []
    try:
        for (argv, env), path in zip(commands, paths):
            with open(path, "w") as log:  # files, not pipes: a full pipe would block a worker
                processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        # Poll all: the first failure ends the run at once, whichever worker it is.
        while time.monotonic() < deadline and any(p.poll() is None for p in processes) \
                and not any(p.poll() for p in processes):
            time.sleep(0.2)
    finally:
        _kill_running(processes)
    for p, path in zip(processes, paths):
        assert p.returncode == 0, f"{p.args} exited {p.returncode} (-9: killed after {timeout} s or a peer " \
                                  f"failed):\n{path.read_text()[-4000:]}"


def two_process_commands(workdir, tokenizer: str, reports, *flags: str) -> list[tuple[list[str], dict[str, str]]]:
    port = free_port()
    return [([sys.executable, WORKER, str(workdir), tokenizer, str(reports / f"{workdir.name}_{i}.json"), *flags],
             worker_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
            for i in range(2)]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, tokenizers):
    """The reference: one process with 4 devices. The data pipeline shards documents by process
    (process i reads documents i::2), so two processes see different global batches than one
    process reading all documents; this run therefore stacks shards 0 and 1 of 2, each half the
    batch, in process order: exactly the global batch the two processes assemble. Given that,
    every loss must match; only the order of floating-point reductions across devices may differ."""
    tmp_path = tmp_path_factory.mktemp("one_process")
    run_all([([sys.executable, WORKER, str(tmp_path / "single"), tokenizers["plain"], str(tmp_path / "single.json"),
               "--concat-shards=2"], worker_env(4))], tmp_path)
    return tmp_path / "single", json.loads((tmp_path / "single.json").read_text())


def logged_losses(workdir):
    """Process 0 alone logs: per-step train losses (steps 1..3) and the final eval."""
    records = [r for r in read_metrics(str(workdir)) if "loss" in r]
    return [r["step"] for r in records], [r["loss"] for r in records], records[-1]["eval_loss"]


def assert_same_training(multi_workdir, multi_reports, one_process_run) -> None:
    single, single_report = one_process_run
    # Every process returns the same (globally reduced) metrics, and they match one process.
    for key in ("loss", "eval_loss", "grad_norm"):
        np.testing.assert_allclose(multi_reports[1]["final"][key], multi_reports[0]["final"][key], rtol=1e-5)
        np.testing.assert_allclose(multi_reports[0]["final"][key], single_report["final"][key], rtol=1e-5)
    steps, multi_losses, multi_eval = logged_losses(multi_workdir)
    single_steps, single_losses, single_eval = logged_losses(single)
    assert steps == single_steps == [1, 2, 3]
    np.testing.assert_allclose(multi_losses, single_losses, rtol=1e-5)
    np.testing.assert_allclose(multi_eval, single_eval, rtol=1e-5)
    assert multi_losses[-1] < multi_losses[0]  # it trained: the comparison is not of constants


def test_two_processes_match_one(tmp_path, tokenizers, one_process_run):
    multi = tmp_path / "multi"
    run_all(two_process_commands(multi, tokenizers["plain"], tmp_path), tmp_path)
    reports = [json.loads((tmp_path / f"multi_{i}.json").read_text()) for i in range(2)]
    assert [(r["cluster"], r["process_index"], r["process_count"], r["devices"], r["local_devices"])
            for r in [*reports, one_process_run[1]]] == [("explicit", 0, 2, 4, 2), ("explicit", 1, 2, 4, 2),
                                                          (None, 0, 1, 4, 4)]
    assert_same_training(multi, reports, one_process_run)
    # Both processes joined one checkpoint (orbax writes the state collectively), each
    # process saving its own data-iterator position beside it.
    data_states = sorted(os.listdir(multi / "checkpoints" / "3" / "data"))
    assert [n for n in data_states if n.startswith("process_")] == ["process_0-of-2.json", "process_1-of-2.json"]


def test_hybrid_mesh_puts_each_process_on_its_own_data_slice(tmp_path, tokenizers, one_process_run):
    # mesh (data 2, fsdp 2) with dcn_shape (2, 1, 1): data parallel across the two processes (the
    # "slow network"), parameters sharded over fsdp within each; training equals the one-process run.
    hybrid = tmp_path / "hybrid"
    run_all(two_process_commands(hybrid, tokenizers["plain"], tmp_path, "--mesh=2,2,1", "--dcn-shape=2,1,1"),
            tmp_path)
    reports = [json.loads((tmp_path / f"hybrid_{i}.json").read_text()) for i in range(2)]
    for report in reports:
        assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
        assert report["data_slices"] == [[0], [1]]  # data index i holds only process i's devices
    assert_same_training(hybrid, reports, one_process_run)


def test_models_trained_together_checkpoint_on_two_processes(tmp_path, tokenizers):
    """Each model's checkpoint manager saves the same step at once: orbax named its cross-process
    barriers by step alone, they collided ("Barrier _async_write_complete.3 is already ongoing")
    and the run hung at its first checkpoint."""
    together = tmp_path / "together"
    run_all(two_process_commands(together, tokenizers["plain"], tmp_path, "--batched=0.001,0.003"), tmp_path)
    reports = [json.loads((tmp_path / f"together_{i}.json").read_text()) for i in range(2)]
    assert reports[0]["final"] == reports[1]["final"]
    for member in ("opt.learning_rate=0.001", "opt.learning_rate=0.003"):
        assert sorted(os.listdir(together / member / "checkpoints" / "3" / "data"))[-2:] == \
            ["process_0-of-2.json", "process_1-of-2.json"]
        assert np.isfinite(reports[0]["final"][f"{member}/eval_loss"])


def test_processes_given_different_runs_stop_in_one_line(tmp_path, tokenizers):
    """Another learning rate on process 1 trained silently (run.json recorded process 0's); another
    workdir hung in orbax's barriers for minutes. Now each process says so, before anything is written."""
    for case, flags in (("lr", [["--lr=0.001"], ["--lr=0.01"]]), ("workdir", [[], []])):
        commands = two_process_commands(tmp_path / case, tokenizers["plain"], tmp_path)
        if case == "workdir":
            commands[1][0][2] = str(tmp_path / "elsewhere")
        processes = [subprocess.Popen([*argv, *extra], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      text=True) for (argv, env), extra in zip(commands, flags)]
        errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in processes]
        assert [p.returncode for p in processes] == [1, 1], errors
        for index, error in enumerate(errors):
            assert f"process(es) [1] were given another --workdir or config than process 0 (this is process {index} " \
                   "of 2)" in error
        assert not (tmp_path / case).exists() and not (tmp_path / "elsewhere").exists()


def _logged_step(workdir, step: int) -> bool:
    """Whether process 0 has logged `step` (training is under way, past compilation)."""
    try:
        return f'"step": {step},' in (workdir / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_every_process_stops_them_all_at_one_block_end(tmp_path, tokenizers, signal_name):
    """Blocks of 3 steps: JAX's preemption sync point (the highest step reported + 1) was asked at
    block ends only, so a block stepped over it and a SIGTERM trained on to the end, exit 0; a Ctrl-C
    was announced ("saving a checkpoint ... then stopping") and ignored the same way. Now both stop
    every process at one block end, with a checkpoint there and the signal's exit code."""
    steps, per_call = 600, 3  # ~10 ms a step: the stop lands a second or two after the signal, far from the end
    workdir = tmp_path / "run"
    commands = two_process_commands(workdir, tokenizers["plain"], tmp_path, f"--steps={steps}",
                                    f"--steps-per-call={per_call}")
    deadline = time.monotonic() + TIMEOUT_S
    processes = []
    try:
        for i, (argv, env) in enumerate(commands):
            with open(tmp_path / f"worker_{i}.log", "w") as log:
                processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        # Signalled once a step is logged, not after a sleep: compiling takes long under load.
        while not _logged_step(workdir, 3) and time.monotonic() < deadline and \
                all(p.poll() is None for p in processes):
            time.sleep(0.01)
        for p in processes:
            p.send_signal(getattr(signal, signal_name))
        while time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.1)
    finally:
        _kill_running(processes)
    logs = [(tmp_path / f"worker_{i}.log").read_text()[-3000:] for i in range(2)]
    code = 128 + getattr(signal, signal_name)
    assert [p.returncode for p in processes] == [code, code], logs
    reports = [json.loads((tmp_path / f"run_{i}.json").read_text()) for i in range(2)]
    stopped_at = reports[0]["stopped_at"]
    assert reports[1]["stopped_at"] == stopped_at and 3 < stopped_at < steps, reports
    assert (stopped_at - 1) % per_call == 0  # a block end: blocks of 1, then 3, 3, ...
    assert reports[0]["message"] == (f"stopped by {signal_name} at step {stopped_at}; checkpoint saved in "
                                     f"{workdir}/checkpoints; rerun the same command to continue.")
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [stopped_at]
