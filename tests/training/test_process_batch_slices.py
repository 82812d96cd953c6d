"""Each jax process must hold a slice of the batch of its own: it feeds batch_size / processes
rows of its own data shard, so processes sharing a slice would feed different "copies" of it."""
import itertools
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from research.models.config import ConfigError
from research.sharding import DEFAULT_RULES, MESH_AXES
from research.training import partitioning
from tests.training.test_multiprocess import free_port, worker_env

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fake_mesh(process_of_device: np.ndarray) -> types.SimpleNamespace:
    """What the check reads of a mesh: its axes, their sizes, each device's process."""
    devices = np.vectorize(lambda p: types.SimpleNamespace(process_index=int(p)), otypes=[object])(process_of_device)
    return types.SimpleNamespace(devices=devices, axis_names=MESH_AXES,
                                 shape=dict(zip(MESH_AXES, process_of_device.shape)))


@pytest.mark.parametrize("processes, ok", [
    ([[[0, 0, 1, 1]]], False),  # tensor parallelism across the hosts: both hold the one batch slice
    ([[[0, 1]], [[0, 1]]], False),  # data 2 within each host, tensor across: both hold both slices
    ([[[0, 0]], [[1, 1]]], True),  # data across the hosts (dcn_shape (2, 1, 1))
    ([[[0], [0]], [[1], [1]]], True),  # data across, fsdp within
    ([[[0], [1]], [[0], [1]]], True),  # fsdp across: still disjoint slices of data x fsdp
    ([[[0]], [[1]], [[0]], [[1]]], True),  # interleaved, disjoint and equal
    ([[[0]], [[0]], [[0]], [[1]]], False),  # unequal shares: 3 slices and 1
    ([[[0, 0, 0, 0]]], True),  # one process holds everything
])
def test_processes_must_hold_disjoint_equal_batch_slices(processes, ok):
    mesh = fake_mesh(np.array(processes))
    held = partitioning.process_batch_slices(mesh, DEFAULT_RULES)
    assert set().union(*held.values()) == set(range(partitioning.data_parallel_size(mesh, DEFAULT_RULES)))
    if ok:
        partitioning.check_processes_own_batch_slices(mesh, DEFAULT_RULES)
        assert not any(a & b for a, b in itertools.combinations(held.values(), 2))
    else:
        with pytest.raises(ConfigError, match="share slices of the batch .* split data .*across the processes") as e:
            partitioning.check_processes_own_batch_slices(mesh, DEFAULT_RULES, (1, 1, 2))
        assert "mesh.dcn_shape=(1, 1, 2)" in str(e.value) and "\n" not in str(e.value)


def test_two_processes_refuse_tensor_parallelism_across_them_before_compiling(tmp_path):
    # The audit's case: 2 processes x 2 CPU devices, mesh (1, 1, 4), dcn (1, 1, 2). Each fed 4 of
    # the 8 rows; jax built a "global" batch of 4 rows whose copies differed between processes.
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from launch import multihost
        multihost.initialize()
        from research.models.config import ConfigError
        from research.sharding import DEFAULT_RULES
        from research.training import partitioning
        for shape, dcn in (((2, 1, 2), (2, 1, 1)), ((1, 1, 4), (1, 1, 2))):
            mesh = partitioning.make_training_mesh(shape, dcn)
            try:
                partitioning.check_batch_size(8, 1, mesh, DEFAULT_RULES)
                print("accepted", shape, flush=True)
            except ConfigError as error:
                print("refused", shape, error, flush=True)
    """)
    for out in _two_processes(code, REPO_ROOT):
        assert "accepted (2, 1, 2)" in out, out[-3000:]
        assert "refused (1, 1, 4) mesh {'data': 1, 'fsdp': 1, 'tensor': 4} has the 2 processes share" in out, out


def test_fine_tuning_with_tensor_parallelism_across_two_processes_matches_one_process(tmp_path):
    """Fine-tuning builds every whole batch on every process and places the rows its devices hold
    (shard_global_batch), so processes sharing the batch's one slice feed the same rows: the check
    above, which holds for pretraining's per-process rows, refused its mesh (1, 1, 4) on 2 x 2 devices."""
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, sys.argv[1])
        from launch import multihost
        multihost.initialize()
        from research.finetune import finetune_and_evaluate
        from tests.finetune.multiprocess_worker import base_config
        config = base_config("sft_tiny")
        config.mesh.shape = (1, 1, 4)
        final = finetune_and_evaluate(config, sys.argv[2])
        print("FINAL", json.dumps({k: final[k] for k in ("loss", "eval_loss")}), flush=True)
    """)
    def one_process():  # while the two run
        from research.finetune import finetune_and_evaluate
        from tests.finetune.multiprocess_worker import base_config
        config = base_config("sft_tiny")
        config.mesh.shape = (2, 1, 4)  # this process's 8 devices: tensor 4 as above
        return finetune_and_evaluate(config, str(tmp_path / "single"))
    single = {}
    for out in _two_processes(code, REPO_ROOT, str(tmp_path / "multi"), meanwhile=lambda: single.update(one_process()),
                              timeout=180):
        multi = json.loads(out.split("FINAL ", 1)[1].splitlines()[0])
        for key, value in multi.items():
            np.testing.assert_allclose(value, single[key], rtol=1e-5, err_msg=key)


def _two_processes(code: str, *args: str, meanwhile=lambda: None, timeout: int = 120) -> list[str]:
    """The outputs of `code` run by 2 jax.distributed processes of 2 CPU devices each (each exited 0),
    with `meanwhile()` called in this process while they run."""
    port = free_port()
    processes = [subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env=worker_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                                                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
                 for i in range(2)]
    try:
        meanwhile()
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs
