"""Multi-host start-up: join jax.distributed, then run an entry point as `python -m` would.

    python -m launch.multihost experiments.pretrain --config=... --workdir=...

On one host this is just `python -m experiments.pretrain ...`. On several (a SLURM job with
one task per host, a Cloud TPU VM slice or GKE TPU pods, or explicit JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID), every process first calls jax.distributed.initialize,
which must happen before anything touches a device; the entry point then sees all hosts'
devices in jax.devices() and its own in jax.local_devices().
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import signal
import sys
from typing import Mapping

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# The variables jax's SLURM plugin reads inside a job step (srun); an allocation without a step
# (salloc -n4, an sbatch script's own shell) has SLURM_NTASKS but none of these.
_SLURM_STEP = ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")


def _count(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise SystemExit(f"error: {name}={env[name]!r} is not an integer; set it to a whole number.") from None


def tpu_vm_process_count() -> int:
    """Processes of this Cloud TPU VM's slice (times its slices), as jax's GCE TPU plugin reads them
    from the VM's metadata server; 0 without TPU chips, or where it cannot tell (no metadata server,
    e.g. a container without host networking; a jax without the plugin)."""
    try:
        from jax._src.clusters import cloud_tpu_cluster
    except ImportError:
        return 0
    if not cloud_tpu_cluster.running_in_cloud_tpu_vm:  # no TPU chips on this machine
        return 0
    try:
        plugin = cloud_tpu_cluster.GceTpuCluster
        return int(plugin.get_process_count()) if plugin.is_env_present() else 0
    except Exception as error:  # e.g. requests' ConnectionError, or requests not installed
        print(f"warning: TPU chips attached, but jax could not read their slice from the metadata server "
              f"({type(error).__name__}: {str(error).strip()[:100]}); running as one process (on several hosts, "
              "set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID).", file=sys.stderr)
        return 0


def cluster_kind(env: Mapping[str, str] = os.environ, tpu_processes: int | None = None) -> str | None:
    """"explicit", "slurm" or "tpu" when this process is one of several hosts; None on one host.
    A Cloud TPU VM slice sets no variable that lists its workers (GKE's TPU_WORKER_HOSTNAMES is not
    set on a VM made by gcloud): `tpu_processes` (default tpu_vm_process_count()) counts them."""
    explicit = [name for name in _EXPLICIT if env.get(name)]
    if explicit:
        if len(explicit) < len(_EXPLICIT):
            missing = [name for name in _EXPLICIT if name not in explicit]
            raise SystemExit(f"error: {', '.join(explicit)} set but {', '.join(missing)} not; set all of "
                             f"{', '.join(_EXPLICIT)} (or none, on one host).")
        return "explicit"
    if env.get("SLURM_NTASKS") and _count(env, "SLURM_NTASKS") > 1 and all(env.get(v) for v in _SLURM_STEP):
        return "slurm"
    # A GKE TPU slice lists every worker (jax reads TPU_PROCESS_ADDRESSES first); a single-host one lists one.
    for listed in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):
        if listed in env:
            return "tpu" if len([h for h in env[listed].split(",") if h]) > 1 else None
    # Without jax.distributed, orbax's multi-process async save raised at a slice's first checkpoint.
    # One host stays one process: a one-process cluster would install jax's SIGTERM handler, which
    # took the signals of a run's start-up (before its own handler) and let it train on.
    return "tpu" if (tpu_vm_process_count() if tpu_processes is None else tpu_processes) > 1 else None


def slurm_local_device_ids(env: Mapping[str, str] = os.environ) -> list[int] | None:
    """The GPUs this process uses in a SLURM step: all of its node's when it is the node's only
    task (launch's sbatch script: one task per node), else None (jax's default: the GPU numbered
    by SLURM_LOCALID, for one task per GPU; or JAX_LOCAL_DEVICE_IDS where set). jax would give a
    node's only task GPU 0 alone."""
    nodes = "SLURM_STEP_NUM_NODES" if env.get("SLURM_STEP_NUM_NODES") else "SLURM_NNODES"
    # The user's own choice: jax.distributed.initialize reads it when given no local_device_ids.
    if env.get("JAX_LOCAL_DEVICE_IDS") or not env.get(nodes) or _count(env, "SLURM_NTASKS") != _count(env, nodes):
        return None
    gpus = env.get("SLURM_GPUS_ON_NODE") or ""
    if gpus.isdigit():
        return list(range(int(gpus)))
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return list(range(len(visible))) if visible else None


def _explicit_args(env: Mapping[str, str]) -> dict[str, str | int]:
    """The explicit form's arguments, checked: jax hung on a coordinator without a port, and gave
    a traceback (or a multi-line ValueError) on a port or a process count / id out of range."""
    address = env["JAX_COORDINATOR_ADDRESS"]
    host, _, port = address.rpartition(":")
    # An IPv6 host is bracketed ([::1]:1234): a bare one's last part would read as the port.
    if not host or (":" in host and not host.startswith("[")) or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"error: JAX_COORDINATOR_ADDRESS={address!r} is not host:port; set it to process 0's "
                         "address and a free port, e.g. 10.0.0.1:1234.")
    count, index = _count(env, "JAX_NUM_PROCESSES"), _count(env, "JAX_PROCESS_ID")
    if count < 1:
        raise SystemExit(f"error: JAX_NUM_PROCESSES={count} must be >= 1 (the number of processes, one per host).")
    if not 0 <= index < count:
        raise SystemExit(f"error: JAX_PROCESS_ID={index} must be in 0..{count - 1} (JAX_NUM_PROCESSES={count}); "
                         "give each process its own id.")
    return {"coordinator_address": address, "num_processes": count, "process_id": index}


def initialize(env: Mapping[str, str] = os.environ, tpu_processes: int | None = None) -> str | None:
    """Call jax.distributed.initialize when running on several hosts; returns the cluster kind.

    SLURM and TPU slices are detected by jax itself (its cluster plugins read the same
    variables; for SLURM we add the GPUs, see slurm_local_device_ids); the explicit form passes
    coordinator, process count and id through.
    """
    kind = cluster_kind(env, tpu_processes)
    if kind is None:
        return None
    explicit = _explicit_args(env) if kind == "explicit" else {}
    import jax

    if kind == "explicit":
        jax.distributed.initialize(**explicit)
    elif kind == "slurm" and (devices := slurm_local_device_ids(env)) is not None:
        jax.distributed.initialize(local_device_ids=devices)
    else:
        jax.distributed.initialize()
    return kind


_PARENT_ENV = "LAUNCH_PARENT_PID"  # launch.backends.PARENT_ENV (not imported: keep this start-up lean)
_PR_SET_PDEATHSIG = 1


def die_with_launcher() -> None:
    """A job started by launch's local backend gets SIGTERM when the launcher dies (even by
    SIGKILL): its training loop saves and stops, rather than train on unrecorded while a relaunch
    starts it again. Not inherited by the job's own subprocesses."""
    parent = os.environ.pop(_PARENT_ENV, "")
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        raise SystemExit("error: the launcher that started this job has exited; not starting it.")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        raise SystemExit("usage: python -m launch.multihost <module> [flags...], e.g. "
                         "python -m launch.multihost experiments.pretrain --config=...")
    # A job of launch's local backend runs on this host alone. Inside a multi-task SLURM step
    # (srun --ntasks-per-node=8 --pty bash) the step's variables made every such job wait in
    # jax.distributed.initialize for peers that never came.
    local_job = bool(os.environ.get(_PARENT_ENV))
    die_with_launcher()
    if not local_job:
        initialize()
    sys.argv = argv[1:]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv)
