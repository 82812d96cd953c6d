"""One process of tests/finetune/test_multiprocess.py: a tiny fine-tuning run (3 steps of 8 rows).

    python multiprocess_worker.py <preset> <workdir> <out.json> [--generation_prompts=N] [--stop_after_steps=N]
        [--export_dir=DIR] [--folder=DIR --data_dir=DIR] [--grpo_reward=reward_model:DIR] [--reverse_data_on=I]
        [--export_fails_on=I]
    python multiprocess_worker.py --runs=<runs.json>   (each entry: [preset, workdir, out.json, *flags])

--runs trains several independent runs one after another in this one process (one start): the
one-process references of test_multiprocess.py, each in its own workdir with its own config.
--reverse_data_on / --export_fails_on patch this process for good, so they are refused there.

Multi-host comes from the environment as in a real launch (JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID: launch.multihost joins jax.distributed before anything
touches a device); without them it is one process with the devices XLA_FLAGS gives. The
mesh's data axis spans every device of every process.
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from launch import multihost  # noqa: E402  (before jax touches a device)


def main(*args: str) -> None:
    multihost.initialize()
    if len(args) == 1 and args[0].startswith("--runs="):
        with open(args[0].split("=", 1)[1]) as f:
            runs = json.load(f)
        for run in runs:
            assert not any(f.startswith(("--reverse_data_on", "--export_fails_on")) for f in run), run
            train(*run)
    else:
        train(*args)


def base_config(preset: str, *flags: str):
    """The run's config from --generation_prompts / --stop_after_steps (the other flags are applied
    by train); the mesh's data axis over every device of every process. Also test_multiprocess.py's
    in-process resume."""
    import jax
    from tests.finetune.conftest import tiny_config
    options = dict(f[2:].split("=", 1) for f in flags)
    config = tiny_config(preset, num_steps=3, stop_after_steps=int(options.get("stop_after_steps", 0)))
    config.opt.warmup_steps = 1
    if config.generation_prompts is not None:  # None: a path that generates nothing
        config.generation_prompts = int(options.get("generation_prompts", 0))
    config.mesh.shape = (jax.device_count(), 1, 1)
    return config


def train(preset: str, workdir: str, out_path: str, *flags: str) -> None:
    import jax
    from research.finetune import finetune_and_evaluate

    options = dict(f[2:].split("=", 1) for f in flags)
    config = base_config(preset, *flags)
    if "export_dir" in options:
        config.export_dir = options["export_dir"]
    if "reverse_data_on" in options and jax.process_index() == int(options["reverse_data_on"]):
        from research.finetune import paths  # this process reads the same records in another order
        load_records = paths.load_records
        paths.load_records = lambda *args: list(reversed(load_records(*args)))
    if "export_fails_on" in options and jax.process_index() == int(options["export_fails_on"]):
        import research.models  # this process's write of the export fails (a full disk, a lost mount)

        def to_hf(*args, **kwargs):
            raise OSError("No space left on device (the test's)")
        research.models.to_hf = to_hf
    if "grpo_reward" in options:
        config.grpo.reward = options["grpo_reward"]
    if "folder" in options:  # domain adaptation on a folder of text files
        config.data.update(dict(folder=options["folder"], data_dir=options["data_dir"], validation_fraction=0.25))
    final = finetune_and_evaluate(config, workdir)
    with open(out_path, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(), "final": final}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
