"""The train loop's overhead on small models, and K models in one program against K runs.

    python -m experiments.benchmarks.loop_overhead [--sizes=1e3,1e4,1e5,1e6 --steps=300 --ks=1,4,16 --rounds=1]
    python -m experiments.benchmarks.loop_overhead --dense_weight_grad=autodiff   # the kernel gradients before 2026-12-04

For ladder models (research.models.presets.scaling_ladder_config: aspect 32, learned positions,
one layer where that fits, at batch 16 x 64 tokens on the cpu_tiny synthetic corpus; the cpu_tiny
sweep's own models are narrower and deeper, aspect 16, rotary, >= 2 layers, head_dim 4, kept
fixed here so figures compare across sessions) it prints
  loop      s/step of research.training.train_and_evaluate (its own tokens/s record: the
            first, compiling call and the final evaluation are not in it)
  step      s/step of the compiled train step alone, called once per step on a batch
            already on the device (jit_train_step; one sync at the end)
  torch     s/step of plain PyTorch of the same shapes (/work/shared/reference/torch_gpt_ref.py)
and the ratios loop/step (the loop's overhead) and loop/torch; with --rounds=N each of the three
is measured N times, alternating, and its median is used. Then, for K = 1, 4, 16
models of the --k_size ladder model (learning rates differing, one shared data stream):
the wall and process CPU time of train_together against K times one run alone (measured
once: the K runs would be identical in cost), the start-up part of each (wall - steps x
steady s/step: state creation, compilation, checkpointing, evaluation) and the steady
s/step; and against K times one run launched as its own process (interpreter start and
imports included: what K separate program launches cost). `--cpu_devices=2
--k_across_devices` splits the CPU into 2 devices and trains the K models split over them
(train.models_across_devices); the runs alone in this process then split their batch over the
same 2 devices, while the launched runs get the CPU as one device (XLA_FLAGS as given), their
faster layout.

Not a test: the figures depend on the machine and on its load (printed beside them).
"""
from __future__ import annotations

import collections
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
from absl import app, flags

# XLA:CPU (jaxlib 0.10.2) deadlocks when ~50 programs with a cross-device all-reduce are queued
# at once over 2 CPU devices (an all-reduce rendezvous times out after 40 s and aborts the
# process); the train loop never has more than 2 in flight. The timed loop keeps at most this
# many queued, which still hides the dispatch of each.
_MAX_IN_FLIGHT = 8
_SIZES = flags.DEFINE_list("sizes", ["1e3", "1e4", "1e5", "1e6"], "Ladder targets (non-embedding params).")
_STEPS = flags.DEFINE_integer("steps", 300, "Train steps per loop run (and timed compiled-step calls).")
_KS = flags.DEFINE_list("ks", ["1", "4", "16"], "Models per program.")
_K_SIZE = flags.DEFINE_float("k_size", 1e4, "Ladder target of the K-models comparison.")
_K_STEPS = flags.DEFINE_integer("k_steps", 200, "Train steps of each K-models run.")
_TORCH = flags.DEFINE_string("torch_ref", "/work/shared/reference/torch_gpt_ref.py", "Plain PyTorch script.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Measure loop, step and PyTorch this many times per size, alternating, "
                               "and report each one's median (a loaded machine varies by 10-20% run to run).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "OMP threads of the PyTorch run; 0: its default.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the figures as JSON here.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many devices (XLA_FLAGS "
                                    "--xla_force_host_platform_device_count); 0: as XLA_FLAGS says.")
_DENSE_GRAD = flags.DEFINE_enum("dense_weight_grad", None, ["auto", "autodiff", "activations_lhs"],
                                "model.dense_weight_grad of every run (default: the config's, auto); "
                                "autodiff times the kernel gradients as they were before 2026-12-04.")
_ACROSS = flags.DEFINE_bool("k_across_devices", False, "K models: train.models_across_devices (each model "
                            "whole on one device; K not a multiple of the device count is skipped).")


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def base_config(target: float, workdir: str, steps: int, peak_flops: float):
    """A run config of the cpu_tiny sweep's kind for the ladder model nearest `target`."""
    from experiments.configs import scaling_laws
    from research import data as data_lib
    from research.models.presets import scaling_ladder_config

    config = scaling_laws.get_config("cpu_tiny")
    for section in ("sweep", "fit", "shard", "estimate"):
        del config[section]
    data_config = data_lib.DataConfig(**config.data.to_dict())
    tokenizer = data_lib.build_tokenizer(data_config, os.path.join(workdir, "tokenizer"))
    ladder = scaling_ladder_config(target, aspect=32, vocab_size=tokenizer.vocab_size, max_len=config.train.seq_len)
    config.model.update(dict(preset="gpt2-tiny", d_model=ladder.d_model, num_layers=ladder.num_layers,
                             num_heads=ladder.num_heads, d_ff=ladder.d_ff, max_len=ladder.max_len))
    config.model.vocab_size = ladder.vocab_size
    if _DENSE_GRAD.value:
        config.model.dense_weight_grad = _DENSE_GRAD.value
    config.data.tokenizer.model_path = tokenizer.path
    # The sweep preset leaves the fields it sets per run None (sweep.PLAN_SET_FIELDS): set them all.
    config.train.update(dict(num_steps=steps, log_every_steps=steps, eval_every_steps=10 * steps, eval_batches=1,
                             peak_flops=peak_flops, progress_bar=False, stop_after_steps=0))
    config.opt.warmup_steps = max(1, steps // 20)
    config.checkpoint.every_steps = 10 * steps
    return config, ladder


def loop_seconds_per_step(config, workdir: str) -> tuple[float, float]:
    """(steady s/step from the loop's own throughput record, wall seconds of the whole call)."""
    from research.training import train_and_evaluate
    step, wall, _ = _timed_run(lambda: train_and_evaluate(config, workdir), config, workdir)
    return step, wall


def _timed_run(run, config, workdir: str) -> tuple[float, float, float]:
    """(steady s/step from the loop's own throughput record in `workdir`, wall seconds and
    process CPU seconds (all threads) of run())."""
    from research.training.metrics import read_metrics
    start, cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    last = [r for r in read_metrics(workdir) if "tokens_per_second" in r][-1]
    tokens = config.train.batch_size * config.train.seq_len
    return tokens / last["tokens_per_second"], wall, cpu


def compiled_step_seconds(config, steps: int) -> float:
    """s/step of the jitted train step alone on one resident batch (async dispatch, one sync)."""
    from research import data as data_lib
    from research.models import build_model, get_config
    from research.sharding import DEFAULT_RULES
    from research.training import losses, partitioning
    from research.training.optimizers import OptimizerConfig, make_optimizer
    from research.training.state import abstract_batch, create_train_state
    from research.training.train_step import jit_train_step, make_train_step

    fields = {k: v for k, v in config.model.to_dict().items() if v is not None}
    model_config = get_config(fields.pop("preset"), **fields)
    model = build_model(model_config)
    objective = losses.get_objective("causal_lm", "decoder")
    optimizer, schedule = make_optimizer(OptimizerConfig(total_steps=steps, **config.opt.to_dict()))
    data_config = data_lib.DataConfig(**config.data.to_dict())
    tokenizer = data_lib.Tokenizer.load(config.data.tokenizer.model_path)
    batch = next(data_lib.make_batch_iterator(data_config, tokenizer=tokenizer, objective="causal_lm",
                                              batch_size=config.train.batch_size, seq_len=config.train.seq_len))
    mesh = partitioning.make_training_mesh(tuple(config.mesh.shape))
    state, shardings = create_train_state(model, objective, optimizer, abstract_batch(batch), mesh, DEFAULT_RULES, 0)
    sharding = partitioning.batch_sharding(mesh, DEFAULT_RULES)
    step = jit_train_step(make_train_step(model, losses.make_loss_fn(objective, config.train.z_loss), optimizer,
                                         schedule), shardings, sharding)
    with partitioning.sharding_context(mesh, DEFAULT_RULES):
        resident = partitioning.shard_batch(batch, sharding)
        for _ in range(3):
            state, metrics = step(state, resident)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        in_flight = collections.deque()
        for _ in range(steps):
            state, metrics = step(state, resident)
            in_flight.append(metrics)
            if len(in_flight) > _MAX_IN_FLIGHT:  # see _MAX_IN_FLIGHT
                jax.block_until_ready(in_flight.popleft())
        jax.block_until_ready((state, metrics))
    return (time.perf_counter() - start) / steps


def torch_seconds_per_step(ladder, batch: int, seq: int, steps: int) -> float | None:
    if not os.path.exists(_TORCH.value):
        return None
    command = [sys.executable, _TORCH.value, f"--d={ladder.d_model}", f"--layers={ladder.num_layers}",
               f"--heads={ladder.num_heads}", f"--seq={seq}", f"--batch={batch}", f"--vocab={ladder.vocab_size}",
               f"--steps={steps}"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(_TORCH_THREADS.value)} if _TORCH_THREADS.value else {})}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    return batch * seq / float(re.search(r"tokens/s=([0-9.]+)", out).group(1))


def k_models(target: float, ks: list[int], steps: int, peak_flops: float, root: str) -> list[dict[str, Any]]:
    """K models together against K runs one after another (one run measured, times K: the K
    runs would cost the same). Start-up = wall - steps x steady s/step: state creation,
    compilation, checkpoint managers, the final evaluation and saves."""
    from research.training import train_and_evaluate
    from research.training.loop import train_together
    config, ladder = base_config(target, root, steps, peak_flops)
    config.train.eval_every_steps = config.checkpoint.every_steps = 10 * steps
    alone_workdir = os.path.join(root, "alone")
    alone_step, alone_wall, alone_cpu = _timed_run(lambda: train_and_evaluate(config, alone_workdir), config,
                                                   alone_workdir)
    launch_wall = launched_run_seconds(config, os.path.join(root, "launched"))
    rows = []
    for k in ks:
        if _ACROSS.value and k % jax.device_count():
            print(f"K={k}: skipped (not a multiple of the {jax.device_count()} devices)")
            continue
        configs = []
        for i in range(k):
            one = copy.deepcopy(config)
            one.opt.learning_rate = config.opt.learning_rate * (0.5 + i / max(k, 1))
            one.train.models_across_devices = _ACROSS.value
            configs.append(one)
        workdirs = [os.path.join(root, f"k{k}", str(i)) for i in range(k)]
        together_step, wall, cpu = _timed_run(lambda: train_together(configs, workdirs), config, workdirs[0])
        rows.append(dict(k=k, params_non_embedding=ladder_params(ladder), together_wall_s=wall, together_cpu_s=cpu,
                         together_startup_s=wall - steps * together_step,
                         separate_wall_s=k * alone_wall, separate_cpu_s=k * alone_cpu,
                         separate_startup_s=k * (alone_wall - steps * alone_step),
                         speedup_wall=k * alone_wall / wall, speedup_cpu=k * alone_cpu / cpu,
                         together_s_per_step=together_step, separate_s_per_step=k * alone_step,
                         speedup_steady=k * alone_step / together_step, launched_run_wall_s=launch_wall,
                         separate_launches_wall_s=k * launch_wall, speedup_vs_launches=k * launch_wall / wall,
                         launched_xla_flags=_XLA_FLAGS_GIVEN,  # the launched runs' CPU layout
                         devices=jax.device_count(),
                         across_devices=_ACROSS.value, loadavg=_loadavg()))
        r = rows[-1]
        print(f"K={k:3d} ({r['params_non_embedding']:,} params each): together {wall:7.1f} s wall "
              f"({r['together_startup_s']:.1f} s start-up, {together_step * 1e3:.2f} ms/step), {cpu:.1f} s CPU | "
              f"{k} alone {k * alone_wall:7.1f} s wall ({r['separate_startup_s']:.1f} s start-up, "
              f"{k * alone_step * 1e3:.2f} ms/step), {k * alone_cpu:.1f} s CPU | speedup {r['speedup_wall']:.1f}x "
              f"wall, {r['speedup_cpu']:.1f}x CPU, {r['speedup_steady']:.1f}x steady | {k} launched one after another "
              f"{k * launch_wall:7.1f} s wall: {r['speedup_vs_launches']:.1f}x (load {_loadavg()})", flush=True)
    return rows


# One run as its own program: a fresh interpreter that imports the library and trains (what a
# sweep without K-model batching launches per model; a lower bound on a CLI launch, which also
# parses flags and builds its config).
_LAUNCH = ("import json, sys, ml_collections; from research.training import train_and_evaluate; "
           "train_and_evaluate(ml_collections.ConfigDict(json.load(open(sys.argv[1]))), sys.argv[2])")


# XLA_FLAGS as given, before --cpu_devices split the CPU: a run launched alone uses the CPU
# whole, its best layout (its batch split over 2 CPU devices ran 4.0 ms a step against 3.5 on one).
_XLA_FLAGS_GIVEN = os.environ.get("XLA_FLAGS")


def launched_run_seconds(config, workdir: str) -> float:
    """Wall seconds of one run of `config` launched as its own process, start to exit, with
    the XLA_FLAGS this benchmark was started with (not --cpu_devices' split)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if _XLA_FLAGS_GIVEN is not None:
        env["XLA_FLAGS"] = _XLA_FLAGS_GIVEN
    os.makedirs(workdir)
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        f.write(config.to_json())
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _LAUNCH, path, os.path.join(workdir, "run")], check=True,
                   capture_output=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return time.perf_counter() - start


def ladder_params(ladder) -> int:
    from research.models import sizing
    return sizing.param_counts(ladder).non_embedding


def _check_flags() -> None:
    """One line per bad value, before the peak is measured or any model trains."""
    for name, values in (("sizes", _SIZES.value), ("ks", _KS.value)):
        for value in (v for v in values if v):
            try:
                number = float(value)
            except ValueError:
                sys.exit(f"error: --{name}={','.join(values)}: {value!r} is not a number; e.g. --sizes=1e4,1e5 --ks=1,16.")
            if number < (1e3 if name == "sizes" else 1) or (name == "ks" and not number.is_integer()):
                sys.exit(f"error: --{name}={','.join(values)}: {value!r} must be "
                         + ("a ladder target >= 1e3." if name == "sizes" else "a whole number of models >= 1."))
    for name, value in (("steps", _STEPS.value), ("k_steps", _K_STEPS.value), ("rounds", _ROUNDS.value)):
        if value < 1:
            sys.exit(f"error: --{name}={value} must be >= 1.")
    if _K_SIZE.value < 1e3:
        sys.exit(f"error: --k_size={_K_SIZE.value:g} must be a ladder target >= 1e3.")


def main(argv) -> None:
    del argv
    _check_flags()
    if _CPU_DEVICES.value:  # before the backend starts (the first device query below)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={_CPU_DEVICES.value}").strip()
    from research.training.metrics import measure_peak_flops
    peak = measure_peak_flops()
    print(f"devices {jax.device_count()} ({jax.devices()[0].platform}); peak {peak:.3g} FLOP/s; load {_loadavg()}")
    results: dict[str, Any] = {"peak_flops": peak, "sizes": [], "k_models": []}
    with tempfile.TemporaryDirectory() as root:
        for target in (float(s) for s in _SIZES.value if s):
            config, ladder = base_config(target, root, _STEPS.value, peak)
            rounds = []
            for r in range(_ROUNDS.value):
                loop_step, _ = loop_seconds_per_step(config, os.path.join(root, f"loop{target:g}-{r}"))
                step = compiled_step_seconds(config, _STEPS.value)
                torch_step = torch_seconds_per_step(ladder, config.train.batch_size, config.train.seq_len,
                                                    _STEPS.value)
                rounds.append((loop_step, step, torch_step))
            loop_step, step = (statistics.median(r[i] for r in rounds) for i in (0, 1))
            torch_step = None if None in [r[2] for r in rounds] else statistics.median(r[2] for r in rounds)
            row = dict(params_non_embedding=ladder_params(ladder), d_model=ladder.d_model, layers=ladder.num_layers,
                       loop_s=loop_step, step_s=step, overhead_s=loop_step - step, loop_over_step=loop_step / step,
                       torch_s=torch_step, loop_over_torch=None if torch_step is None else loop_step / torch_step,
                       rounds=rounds, loadavg=_loadavg())
            results["sizes"].append(row)
            torch_text = "n/a" if torch_step is None else f"{torch_step * 1e3:6.2f} ms"
            spread = "" if len(rounds) == 1 else " | rounds (loop, step, torch ms): " + ", ".join(
                "/".join("n/a" if v is None else f"{v * 1e3:.1f}" for v in r) for r in rounds)
            print(f"N={row['params_non_embedding']:>9,} (D{ladder.d_model} L{ladder.num_layers}): loop "
                  f"{loop_step * 1e3:6.2f} ms/step, step alone {step * 1e3:6.2f} ms, overhead "
                  f"{(loop_step - step) * 1e3:6.2f} ms ({loop_step / step:.2f}x); torch {torch_text} "
                  f"(loop/torch {row['loop_over_torch'] or float('nan'):.2f}x) (load {_loadavg()}){spread}",
                  flush=True)
        if [k for k in _KS.value if k]:
            results["k_models"] = k_models(_K_SIZE.value, [int(float(k)) for k in _KS.value if k], _K_STEPS.value, peak,
                                           os.path.join(root, "k"))
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
