"""One process of tests/training/test_multiprocess.py: a tiny train_and_evaluate run.

    python multiprocess_worker.py <workdir> <tokenizer.model> <out.json> [--concat-shards=N] [--mesh=D,F,T --dcn-shape=D,F,T]
        [--batched=LR,LR,...] [--lr=LR] [--steps=N --steps-per-call=K]

Multi-host comes from the environment exactly as in a real launch: with
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set, launch.multihost joins
jax.distributed before anything touches a device. --concat-shards=N (single process only)
makes every data iterator yield the concatenation of shards 0..N-1 of N, each batch/N rows:
the global batch N processes would assemble, so one process can reproduce their run.
--mesh / --dcn-shape set config.mesh.shape / mesh.dcn_shape (a hybrid mesh across the processes);
--batched trains one model per learning rate together (config.batched). --steps / --steps-per-call:
a run of N steps in blocks of K, evaluated and saved at its end only; a signal's stop writes
{"stopped_at": step, "message": ...} to <out.json> and exits with its code (143 / 130), as
experiments.pretrain does.
"""
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from launch import multihost  # noqa: E402  (before jax touches a device)


class ConcatShards:
    """Batches of several shard iterators stacked along rows; checkpointable like grain's."""

    def __init__(self, iterators):
        self._iterators = iterators

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it) for it in self._iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> bytes:  # grain's checkpoint handler stores bytes verbatim
        return json.dumps([it.get_state() for it in self._iterators]).encode()

    def set_state(self, state) -> None:
        for it, s in zip(self._iterators, json.loads(state)):
            it.set_state(s)


def concat_shards(make_batch_iterator, count: int):
    def make(*args, batch_size: int, **kwargs):
        return ConcatShards([make_batch_iterator(*args, batch_size=batch_size // count, shard_index=i,
                                                 shard_count=count, **kwargs) for i in range(count)])
    return make


def main(workdir: str, tokenizer_path: str, out_path: str, *flags: str) -> None:
    kind = multihost.initialize()
    import jax
    from research import data
    from research.training import preemption, train_and_evaluate
    from tests.training.conftest import run_config

    options = dict(f[2:].split("=", 1) for f in flags)
    concat = [int(options["concat-shards"])] if "concat-shards" in options else []
    if concat:
        # The loop looks data.make_batch_iterator up at call time, so this reaches every iterator.
        data.make_batch_iterator = concat_shards(data.make_batch_iterator, concat[0])
    # 3 steps of 8 rows (2 per device), checkpoint + eval at the end, every step logged.
    config = run_config("gpt_tiny", tokenizer_path, num_steps=3, eval_every_steps=3)
    for name, field in (("mesh", "shape"), ("dcn-shape", "dcn_shape")):
        if name in options:
            config.mesh[field] = tuple(int(n) for n in options[name].split(","))
    if "steps" in options:  # long enough to be signalled mid-run; no evaluation or save before the end
        steps = int(options["steps"])
        config.train.update(num_steps=steps, eval_every_steps=steps, steps_per_call=int(options["steps-per-call"]))
        config.checkpoint.every_steps = steps
    if "lr" in options:
        config.opt.learning_rate = float(options["lr"])
    if "batched" in options:  # models trained together, one per learning rate, each checkpointed
        config.batched.update(dict(field="opt.learning_rate", values=tuple(float(v) for v in
                                                                        options["batched"].split(","))))
    # The mesh the loop builds from this config: which process owns the devices at each data index.
    from research.training import partitioning
    mesh = partitioning.make_training_mesh(tuple(config.mesh.shape), config.mesh.get("dcn_shape"))
    data_slices = [sorted({d.process_index for d in mesh.devices[i].flat}) for i in range(mesh.shape["data"])]
    try:
        final = train_and_evaluate(config, workdir)
    except preemption.Interrupted as stop:
        with open(out_path, "w") as f:
            json.dump({"stopped_at": stop.step, "message": str(stop)}, f)
        sys.exit(stop.exit_code)
    with open(out_path, "w") as f:
        json.dump({"cluster": kind, "process_index": jax.process_index(), "process_count": jax.process_count(),
                   "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                   "mesh": dict(mesh.shape), "data_slices": data_slices, "final": final}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
