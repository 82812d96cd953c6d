"""K models of one shape in one compiled program: stacked train states and a vmapped step.

Models that differ only in numbers a step takes as data (seed, learning rate and the rest
of the optimizer's numbers, see BATCHABLE) train together: their train states are stacked
on a leading model axis and `jax.vmap` maps the one pure train step
(research/training/train_step.py) over it, with each model's optimizer numbers passed as
traced values (research.training.optimizers.hyperparameters). Everything that decides a
shape or a program (model, objective, batch and sequence sizes, optimizer and schedule
kinds, step counts, evaluation and checkpoint steps, data) must be equal; `check_trainable_together`
says which field differs, in one line, before anything compiles.

A config asks for this with `config.batched = {field: "opt.learning_rate", values: (...)}`:
`expand_batched_axis` turns it into K configs, one per value, each trained into
<workdir>/<field>=<value> as if alone (research.training.loop.train_together).

Where the K models live: by default every device holds all K, each model's batch split over
the devices as when it trains alone; with train.models_across_devices the model axis is split
instead (each device trains K / devices whole models, `over_devices`, with no communication),
which suits models too small to split.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.models.config import ConfigError
from research.training.optimizers import HYPERPARAMETERS, OptimizerConfig, hyperparameters

log = logging.getLogger(__name__)

# Config fields that may differ between models trained together.
BATCHABLE = ("train.seed", "opt.learning_rate", "opt.warmup_steps", "opt.decay_fraction", "opt.min_lr_ratio",
             "opt.b1", "opt.b2", "opt.eps", "opt.weight_decay", "opt.clip_norm")

# The numbers each optimizer kind and schedule kind reads (research/training/optimizers.py:
# make_schedule reads peak/warmup always, final (min_lr_ratio) unless constant, decay_start
# (decay_fraction) for wsd only; make_optimizer passes b1/b2/eps to adamw, b1/b2 to lion, and
# only weight_decay to adafactor). Models that differ in a number their kind ignores would
# train identically under different names.
_READ_BY = {
    "schedule": {"constant": ("learning_rate", "warmup_steps"),
                 "cosine": ("learning_rate", "warmup_steps", "min_lr_ratio"),
                 "wsd": ("learning_rate", "warmup_steps", "min_lr_ratio", "decay_fraction")},
    "name": {"adamw": ("b1", "b2", "eps", "weight_decay"), "lion": ("b1", "b2", "weight_decay"),
             "adafactor": ("weight_decay",)},
}


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            raise KeyError(dotted)
        node = node[part]
    return node


def _set(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value


def batched_axis(config: ml_collections.ConfigDict) -> tuple[str, tuple] | None:
    """(field, values) of config.batched, or None when the config trains one model."""
    batched = config.get("batched", None)
    if not batched or not batched.get("field", ""):
        if batched and tuple(batched.get("values", ()) or ()):  # values alone would train one model, silently
            raise ConfigError(f"batched.values={tuple(batched['values'])} is set but batched.field is empty: name the "
                              f"field they are values of, e.g. --config.batched.field=opt.learning_rate ({BATCHABLE}).")
        return None
    field, values = batched["field"], tuple(batched.get("values", ()) or ())
    try:
        _get(config, field)
    except KeyError:
        raise ConfigError(f"batched.field={field!r} names no config field; use one of {BATCHABLE}.") from None
    if field not in BATCHABLE:
        raise ConfigError(f"batched.field={field!r} changes the program, so its models cannot share one; "
                          f"batch one of {BATCHABLE}, or run the values one after another.")
    if not values:
        raise ConfigError(f"batched.values is empty: give the values of {field} to train together, "
                          "e.g. --config.batched.values='(1e-3, 3e-3)'.")
    values = tuple(_checked_value(field, _get(config, field), value) for value in values)
    if len(set(values)) != len(values):
        raise ConfigError(f"batched.values={values} repeats a value; each model needs its own workdir.")
    # Values that differ as written but not as the step reads them train identical models under
    # two names (a seed study's 'replicates'): seeds are taken mod 2**32 (jax.random.PRNGKey, the
    # data order), optimizer numbers in float32.
    effective = [value % 2**32 if field == "train.seed" else float(np.float32(value)) if isinstance(value, float)
                 else value for value in values]
    for i, value in enumerate(effective):
        if value in effective[:i]:
            first = values[effective.index(value)]
            raise ConfigError(f"batched.values gives {field}={first!r} and {values[i]!r}, which train the same model "
                              f"({'seeds are read mod 2**32' if field == 'train.seed' else 'equal in float32'}); "
                              "drop one of them.")
    return field, values


def _warn_if_across_devices_alone(config: ml_collections.ConfigDict) -> None:
    """train.models_across_devices lays out K models trained together; a run of one model
    ignored it without a word. A warning, not a refusal: that model trains exactly as without
    it. For a user's single-run config: a scaling sweep drops the flag from the runs it trains
    alone (experiments/scaling_laws/sweep_train.train_alone), for which the advice is no setting."""
    if config.get("train", {}).get("models_across_devices", False):
        log.warning("train.models_across_devices=True is ignored: config.batched names no field, so one model "
                    "trains, its batch split over the devices as usual; to train several models split over the "
                    "devices set batched.field and batched.values, else drop train.models_across_devices.")


def _checked_value(field: str, current: Any, value: Any) -> Any:
    """`value` as the field's own type, or one line saying why it cannot be: a value that is
    not a number, or a fraction for an integer field, would otherwise be cast silently (a
    seed of 1.5 trained as 1 in a workdir named 1.5) or fail deep inside with a traceback."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"batched.values holds {value!r} ({type(value).__name__}): every value of {field} must "
                          "be a number, e.g. --config.batched.values='(1e-3, 3e-3)'.")
    if isinstance(current, int) and not isinstance(current, bool):
        if not float(value).is_integer():
            raise ConfigError(f"batched.values holds {value!r}, but {field} is a whole number; give whole numbers.")
        return int(value)
    return value


def expand_batched_axis(config: ml_collections.ConfigDict, workdir: str) -> tuple[list, list[str]]:
    """([config per model], [workdir per model]); one of each when nothing is batched."""
    axis = batched_axis(config)
    if axis is None:
        _warn_if_across_devices_alone(config)
        return [config], [workdir]
    field, values = axis
    configs, workdirs = [], []
    for value in values:
        one = copy.deepcopy(config)
        one.batched = ml_collections.ConfigDict(dict(field="", values=()))
        _set(one, field, type(_get(config, field))(value))
        configs.append(one)
        workdirs.append(f"{workdir}/{field}={value}")
    return configs, workdirs


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    items = config.items() if hasattr(config, "items") else ()
    out = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def check_trainable_together(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]) -> None:
    """One line naming the first field that keeps these configs out of one program."""
    if len(configs) != len(workdirs) or not configs:
        raise ConfigError(f"{len(configs)} configs and {len(workdirs)} workdirs: give one workdir per config.")
    seen: dict[str, int] = {}
    for index, workdir in enumerate(workdirs):
        # One directory has many spellings ('runs/./a', 'runs/a/', a symlink): as strings they
        # passed as two workdirs, and the two models wrote one run.json, metrics.jsonl and checkpoints.
        # Cloud paths (gs://...) have no links to resolve: only a trailing '/' is dropped.
        key = workdir.rstrip("/") if "://" in workdir else os.path.realpath(workdir)
        if key in seen:
            raise ConfigError(f"models {seen[key]} and {index} share a workdir ({workdirs[seen[key]]!r} and "
                              f"{workdir!r} are one directory); give each model its own.")
        seen[key] = index
    ignored = set(BATCHABLE) | {"batched.field", "batched.values", "train.progress_bar"}
    reference = _flat(configs[0])
    for index, config in enumerate(configs[1:], start=1):
        flat = _flat(config)
        for name in sorted(set(reference) | set(flat)):
            if name in ignored or reference.get(name) == flat.get(name):
                continue
            raise ConfigError(f"models 0 and {index} differ in {name} ({reference.get(name)!r} vs {flat.get(name)!r}): "
                              f"models trained in one program must share their shapes and settings; only "
                              f"{', '.join(BATCHABLE)} may differ.")
    defaults = {f.name: f.default for f in dataclasses.fields(OptimizerConfig)}
    opt = lambda c, field: c.opt.get(field, defaults[field])  # a caller's opt may leave defaults out
    for kind, reads in _READ_BY.items():
        chosen = opt(configs[0], kind)
        for field in sorted({f for r in reads.values() for f in r} - set(reads.get(chosen, ()))):
            if len({opt(c, field) for c in configs}) > 1:
                users = [k for k, r in reads.items() if field in r]
                raise ConfigError(f"the models differ in opt.{field}, which opt.{kind}={chosen!r} does not use: they "
                                  f"would train identically; batch another field, or set opt.{kind} to one of {users}.")
    clips = {bool(c.opt.clip_norm) for c in configs}
    if len(clips) > 1:
        raise ConfigError("opt.clip_norm is 0 for some models and not for others; clipping on/off is part of the "
                          "program: use a large clip_norm instead of 0.")


def stacked_hyperparameters(opt_configs: Sequence[OptimizerConfig]) -> dict[str, jax.Array]:
    """{name: float32 [K]}: each model's optimizer numbers, the vmapped step's traced input."""
    per_model = [hyperparameters(c) for c in opt_configs]
    return {k: jnp.asarray(np.array([v[k] for v in per_model], np.float32)) for k in HYPERPARAMETERS}


def map_over_models(fn: Callable, in_axes: tuple, models_per_call: int) -> Callable:
    """`jax.vmap(fn, in_axes)` over the leading model axis, computed `models_per_call` models
    at a time (0: all at once). Smaller groups run one after another inside the same compiled
    program, so a group's intermediates stay in the CPU's caches: 16 vmapped ladder models of
    1e4 parameters cost 1.7x their 16 separate steps in CPU time on XLA:CPU, while one at a
    time costs 1.0x (measured); accelerators want the whole vmap. The results are the vmap's,
    model by model."""
    if models_per_call < 0:
        raise ConfigError(f"train.models_per_call={models_per_call} must be >= 1, or 0 for all models at once.")
    vmapped = jax.vmap(fn, in_axes=in_axes)
    if models_per_call == 0:
        return vmapped
    mapped_args = [i for i, axis in enumerate(in_axes) if axis == 0]

    def grouped(*args):
        num_models = jax.tree.leaves(args[mapped_args[0]])[0].shape[0]
        if models_per_call >= num_models:
            return vmapped(*args)

        def one(per_model):
            full = list(args)
            for i, value in zip(mapped_args, per_model):
                full[i] = value
            return fn(*full)

        per_model = tuple(args[i] for i in mapped_args)
        if models_per_call == 1:
            return jax.lax.map(one, per_model)
        return jax.lax.map(one, per_model, batch_size=models_per_call)

    return grouped


def map_block_over_models(block_step: Callable, per_model_data: bool, models_per_call: int) -> Callable:
    """One model's block of steps (research/training/blocks.make_block_step of the per-model
    step: (state, batches [N, ...], num_steps, values) -> (state, metrics [N])) -> the same
    block for K stacked models: (state [K], batches [N, (K,) ...], num_steps, values [K]) ->
    (state [K], metrics [N, K]).

    The models are the outer loop and the steps the inner one (map_over_models of the whole
    block), so each model's state is sliced out and written back once per block instead of
    once per step; models_per_call=0 (accelerators)
    is the whole vmap, a scan of the vmapped step. Each model computes what its step alone
    computes; only the order of the models' work changes. (Measured in the optimized HLO of
    a K=16 block: with the step mapped inside the steps' scan, every stacked parameter and
    moment was zero-filled and copied about five times per step; now once per block. CPU time
    per model-step was within noise either way: 5.03-5.10 against 5.06 ms, load ~9.)"""
    data_axis = 0 if per_model_data else None
    mapped = map_over_models(block_step, (0, data_axis, None, 0), models_per_call)

    def together(state, batches, num_steps, values):
        if per_model_data:  # [N, K, ...] -> [K, N, ...]: the model axis leads, as the state's
            batches = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batches)
        state, metrics = mapped(state, batches, num_steps, values)
        return state, jax.tree.map(lambda m: jnp.moveaxis(m, 0, 1), metrics)

    return together


def default_models_per_call(platform: str) -> int:
    """All models at once on accelerators; one at a time on CPU (see map_over_models). CPU
    time per model-step, K=16 ladder models on XLA:CPU, models_per_call 1 / 2 / 4 / 16 (and one
    model alone): 1e4 params 4.86 / 6.65 / 5.95 / 6.10 ms (alone 5.05, load ~6), again
    5.66 / 6.20 / 6.00 / 7.82 (alone 5.45, load 12-15); 1e3: 1.77 / 1.92 / 1.72 / 1.93 (alone
    1.76); 1e5: 16.1 / 15.9 / 14.2 / 15.8 (alone 15.4, load ~10). No group size beats one at
    a time beyond the noise; at 1e4 larger groups are worse."""
    return 1 if platform == "cpu" else 0


def stacked_shardings(shardings: Any) -> Any:
    """A model axis in front of every sharding (not split: each device holds all K models' shards)."""
    return jax.tree.map(lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec)), shardings)


def across_devices_shardings(shardings: Any, mesh: Mesh) -> Any:
    """The model axis split over every device of `mesh`, each model whole on one device
    (train.models_across_devices). The per-model shardings still lay out each model's
    checkpoint, saved and restored as if it were trained alone."""
    split = NamedSharding(mesh, models_spec(mesh))
    return jax.tree.map(lambda _: split, shardings)


def models_spec(mesh: Mesh, leading_axes: int = 0) -> PartitionSpec:
    """A model axis (behind `leading_axes` unsplit ones) split over all of `mesh`'s axes."""
    return PartitionSpec(*([None] * leading_axes), tuple(mesh.axis_names))


def check_models_across_devices(num_models: int, mesh: Mesh) -> None:
    """One line before compiling when the K models cannot be split evenly over the devices."""
    if jax.process_count() > 1:
        raise ConfigError(f"train.models_across_devices=True runs in one process only ({jax.process_count()} "
                          "processes here); set it to False to split each model's batch over the hosts instead.")
    if num_models % mesh.size:
        raise ConfigError(f"train.models_across_devices=True: {num_models} models cannot be split evenly over "
                          f"{mesh.size} devices; train a multiple of {mesh.size} models, or set it to False.")


def over_devices(fn: Callable, mesh: Mesh, in_specs: tuple, out_specs: Any) -> Callable:
    """`fn` run on each device's share of the models (shard_map over the model axis): every
    model is whole on one device, so the devices never communicate. The models' own sharding
    annotations (flax logical constraints) are switched off inside, where there is nothing to
    shard."""
    def local(*args):
        with nn.logical_axis_rules(()):
            return fn(*args)

    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def split_over_devices(block_fn: Callable, eval_fn: Callable, mesh: Mesh, per_model_data: bool
                       ) -> tuple[Callable, Callable, NamedSharding, NamedSharding]:
    """The K-model train block (map_block_over_models) and eval step (map_over_models) with the
    model axis split over the devices, and where their data goes: (block, eval, the train
    blocks' sharding [N, K, ...] or [N, ...], one eval batch's sharding [K, ...] or [...]).
    Each device holds whole batches: its own models', or the one stream they all share."""
    models, shared = models_spec(mesh), PartitionSpec()
    block_data = models_spec(mesh, 1) if per_model_data else shared
    eval_data = models if per_model_data else shared
    block_fn = over_devices(block_fn, mesh, (models, block_data, shared, models), (models, models_spec(mesh, 1)))
    eval_fn = over_devices(eval_fn, mesh, (models, eval_data), models)
    return block_fn, eval_fn, NamedSharding(mesh, block_data), NamedSharding(mesh, eval_data)


def member_getter(shardings: Any):
    """(stacked state, index) -> that model's state, laid out as if trained alone. In one
    process the stacked state is fetched to the host once per state (all K models are saved
    at the same step) and each slice put back: bit-exact, and nothing to compile; across
    processes a jitted slice."""
    if jax.process_count() > 1:
        return jax.jit(lambda stacked, index: jax.tree.map(lambda x: x[index], stacked), out_shardings=shardings)
    fetched: dict[str, Any] = {}

    def get(stacked: Any, index: int) -> Any:
        if fetched.get("of") is not stacked:
            fetched.update(of=stacked, host=jax.device_get(stacked))
        return jax.device_put(jax.tree.map(lambda x: x[index], fetched["host"]), shardings)

    return get
