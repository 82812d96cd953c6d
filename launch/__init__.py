"""Launching sweeps: expand a config's get_sweep() into jobs and run them somewhere.

    sweep.py      get_sweep() override dicts -> Jobs (command lines)
    backends.py   local (subprocesses), slurm (sbatch array script), tpu_vm (gcloud commands)
    results.py    each job's status, final loss and time, as a table (`--results`)
    multihost.py  `python -m launch.multihost <module> ...`: jax.distributed.initialize on
                  several hosts, then the entry point
    __main__.py   `python -m launch --config=... --module=... --workdir=... --backend=...`
"""
