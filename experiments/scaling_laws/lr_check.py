"""Check a sweep's learning-rate rule with a small sweep: for a few ladder sizes, train the
rule's learning rate times each multiplier, all multipliers of a size as one program
(research.training.train_together), and report which multiplier is best per size.

    python -m experiments.scaling_laws.lr_check --config=experiments/configs/scaling_laws.py:cpu_tiny \\
        --workdir=/tmp/lr_check --sizes=3.5e3,5.8e4 --steps=2000 --multipliers=0.5,1,2

If the best multiplier is the same at both ends of the ladder, the rule transfers across
sizes (muP's claim for 1/width); if it is not 1, scale config.opt.learning_rate by it.
Writes WORKDIR/lr_check.json: per size, d_model, each multiplier's learning rate and final
eval loss (null: diverged), and the best (null: every multiplier diverged). Not run by the sweep itself (its cost would be the sweep's again).
"""
from __future__ import annotations

import copy
import json
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import parse_flags


def _define_flags() -> None:
    # Defined only when run as a program (as experiments.evaluate does): importing this module
    # (tests do, for check) adds no global flags, whose names (config, workdir) collide with the
    # other entry points'.
    config_flags.DEFINE_config_file("config", None, "Sweep config, e.g. scaling_laws.py:cpu_tiny.")
    flags.DEFINE_string("workdir", None, "Directory for the runs and lr_check.json.")
    flags.DEFINE_list("sizes", ["3.5e3", "5.8e4"], "Ladder targets (non-embedding params) to check.")
    flags.DEFINE_integer("steps", 2000, "Train steps of every run (one cosine schedule each).")
    flags.DEFINE_list("multipliers", ["0.5", "1", "2"], "Multiples of the rule's learning rate.")
    flags.mark_flags_as_required(["config", "workdir"])


def check(config: ml_collections.ConfigDict, workdir: str, sizes: list[float], steps: int, multipliers: list[float]) -> list[dict]:
    from experiments.scaling_laws import sweep
    from research.atomic_files import write_text_atomically
    from research.scaling.sweep_plan import PlannedRun, SweepError, learning_rate_scale
    from research.scaling.sweep_records import json_safe
    from research.training.loop import train_together
    from research.training.members import DIVERGED_FILE

    if steps < 1 or not multipliers or any(m <= 0 for m in multipliers) or not sizes:
        raise SweepError(f"--steps={steps} must be >= 1, --multipliers={multipliers} positive and --sizes={sizes} "
                         "non-empty, e.g. --sizes=3.5e3,5.8e4 --steps=2000 --multipliers=0.5,1,2.")
    config = copy.deepcopy(config)
    # Only the ladder matters here: a token plan of one step per model always plans. Nothing is
    # fitted, and the sweep refuses to fit a plan of one ratio (sweep._check_fittable).
    config.sweep.update(dict(non_embedding_params=tuple(sizes), plan="tokens", budgets=(), tokens=(),
                             tokens_per_param=(1.0,), min_steps=1, repeat_seeds=()))
    config.fit.enabled = False
    plan = sweep.plan_sweep(config)
    tokenizer = sweep._shared_tokenizer(plan.data_config, workdir)
    rows = []
    for model in plan.models:
        scale = learning_rate_scale(plan.spec, model.config.d_model, steps)
        run = PlannedRun(f"{model.name}-{steps}steps", model, steps, config.train.batch_size, config.train.seq_len,
                         model.params(plan.spec.param_count), None, None, config.train.seed, scale)
        one = sweep.run_config(config, run, plan.spec, tokenizer_path=tokenizer.path, peak_flops=1e11)
        one.train.log_every_steps = steps
        configs, workdirs = [], []
        for multiplier in multipliers:
            member = copy.deepcopy(one)
            member.opt.learning_rate = one.opt.learning_rate * multiplier
            configs.append(member)
            workdirs.append(os.path.join(workdir, model.name, f"x{multiplier:g}"))
        # A multiplier that diverged in an earlier session stays diverged (its marker stays until it
        # saves past it): trained with the others again, the rerun was refused as a model left behind.
        alive = [i for i, w in enumerate(workdirs) if not os.path.exists(os.path.join(w, DIVERGED_FILE))]
        trained = train_together([configs[i] for i in alive], [workdirs[i] for i in alive]) if alive else []
        results = [None] * len(workdirs)
        for i, result in zip(alive, trained):
            results[i] = result
        losses = [r["eval_loss"] if isinstance(r, dict) else float("nan") for r in results]
        finite = [(loss, m) for loss, m in zip(losses, multipliers) if loss == loss]
        rows.append({"model": model.name, "d_model": model.config.d_model, "steps": steps,
                     "learning_rates": [c.opt.learning_rate for c in configs], "multipliers": multipliers,
                     "eval_loss": losses, "best_multiplier": min(finite)[1] if finite else None})
        best = rows[-1]["best_multiplier"]  # None when every multiplier diverged (a NaN loss)
        print(f"{model.name}: " + ", ".join(f"x{m:g} (lr {c.opt.learning_rate:.3g}) {loss:.4f}"
                                            for m, c, loss in zip(multipliers, configs, losses))
              + (f" -> best x{best:g}" if best is not None else " -> best: none (all diverged)"), flush=True)
    # NaN (a diverged run) as null: json.dump wrote NaN, which is not JSON. Atomically: a kill
    # mid-write never leaves half a file that reads as a result.
    write_text_atomically(os.path.join(workdir, "lr_check.json"), json.dumps(json_safe(rows), indent=1))
    return rows


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    from research.models.config import ConfigError
    from research.training.checkpointing import CheckpointError
    try:
        f = flags.FLAGS
        check(f.config, f.workdir, [float(s) for s in f.sizes], f.steps, [float(m) for m in f.multipliers])
    except (ConfigError, ValueError, CheckpointError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=parse_flags)
