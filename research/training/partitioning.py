"""Shardings of the train state and of batches on a (data, fsdp, tensor) mesh.

Parameters take the shardings their logical axis names map to under the config's rules
table. Optimizer statistics that mirror a parameter (Adam's mu and nu, Lion's momentum,
Adafactor's unfactored second moment, per layer of a scanned stack too) take that
parameter's sharding; anything else (step counts, Adafactor's factored row and
column statistics, O(rows + cols)) is replicated.
"""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.models.config import ConfigError
from research.sharding import (ACTIVATION_AXES, DEFAULT_RULES, PARAM_AXES, Rules, logical_to_sharding, make_mesh,
                               make_mesh_across_network, resolve_mesh_shape, unmapped_logical_axes)


def make_training_mesh(shape: tuple[int, ...], dcn_shape: Sequence[int] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh of `shape` over all devices; -1 fills the rest.

    `dcn_shape` (config mesh.dcn_shape; empty or None: one slice / host) says how much of each
    axis spans the slow network between TPU slices or GPU hosts, e.g. (2, 1, 1): the data axis
    across 2 slices, fsdp and tensor within each (research.sharding.make_hybrid_mesh).
    research.sharding.describe_mesh says which mesh was built (the loop logs it once the whole
    config is valid, so that a bad config prints only its error line)."""
    try:
        resolve_mesh_shape(tuple(shape), jax.device_count())
    except ValueError as error:
        raise ConfigError(f"mesh.shape: {error}") from None
    if not dcn_shape:
        mesh = make_mesh(tuple(shape))
    else:
        try:
            mesh = make_mesh_across_network(tuple(shape), tuple(dcn_shape))
        except ValueError as error:
            raise ConfigError(f"mesh.dcn_shape: {error} (mesh.shape={tuple(shape)}; leave "
                              "dcn_shape empty on one slice / host)") from None
    return mesh


def batch_partition_spec(rules: Rules) -> PartitionSpec:
    """Leading batch axis split like the "activation_batch" logical axis; other axes replicated."""
    return nn.logical_to_mesh_axes(("activation_batch",), rules)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, batch_partition_spec(rules))


def data_parallel_size(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch axis is split."""
    axes = _rule_mesh_axes(batch_partition_spec(rules)[0])
    return int(np.prod([mesh.shape[a] for a in axes]))


def check_microbatches(batch_size: int, microbatches: int) -> None:
    """The batch must split into whole microbatches."""
    if microbatches < 1 or batch_size % microbatches:
        raise ConfigError(f"batch_size={batch_size} is not divisible by train.microbatches={microbatches}; "
                          "choose a divisor of the batch size.")


def check_batch_size(batch_size: int, microbatches: int, mesh: Mesh, rules: Rules,
                     dcn_shape: Sequence[int] | None = None, *, whole_batch_on_every_process: bool = False) -> None:
    """Each microbatch must split evenly over the data-parallel devices and the processes, and
    each process must hold a slice of the batch of its own (check_processes_own_batch_slices;
    dcn_shape, config mesh.dcn_shape, only names the network split in its message).

    whole_batch_on_every_process: every process builds each whole batch and places the rows its
    devices hold (shard_global_batch; fine-tuning), so the two process conditions, which come from
    each process feeding batch_size / process_count rows of its own, do not apply: processes may
    share batch slices, e.g. tensor parallelism across hosts."""
    check_microbatches(batch_size, microbatches)
    check_rules_name_mesh_axes(mesh, rules)  # the batch's rule is read here, before check_model_fits_mesh
    ways = data_parallel_size(mesh, rules)
    micro = batch_size // microbatches
    if micro % ways:
        raise ConfigError(f"microbatch size {micro} (batch_size={batch_size} / microbatches={microbatches}) is not "
                          f"divisible by the {ways} data-parallel devices of mesh {dict(mesh.shape)}; "
                          f"use a batch size that is a multiple of {ways * microbatches}.")
    if whole_batch_on_every_process:
        return
    if batch_size % jax.process_count():
        raise ConfigError(f"batch_size={batch_size} does not split over {jax.process_count()} processes.")
    check_processes_own_batch_slices(mesh, rules, dcn_shape)


def process_batch_slices(mesh: Mesh, rules: Rules) -> dict[int, set[int]]:
    """process index -> the slices of the batch its devices hold (a slice: an index along the
    batch's mesh axes, of data_parallel_size(mesh, rules) in all)."""
    axes = _rule_mesh_axes(batch_partition_spec(rules)[0])
    sizes = [mesh.shape[a] for a in axes]
    held: dict[int, set[int]] = {}
    for index in np.ndindex(*mesh.devices.shape):
        coords = [index[list(mesh.axis_names).index(a)] for a in axes]
        batch_slice = int(np.ravel_multi_index(coords, sizes)) if axes else 0
        held.setdefault(int(mesh.devices[index].process_index), set()).add(batch_slice)
    return held


def check_processes_own_batch_slices(mesh: Mesh, rules: Rules, dcn_shape: Sequence[int] | None = None) -> None:
    """One line unless the processes hold disjoint, equal shares of the batch's slices.

    Why: each process feeds batch_size / process_count rows of its own data shard (the loop's
    local batch; the pipeline shards by process index). Processes that share a slice (the batch
    not split across them, e.g. tensor parallelism across hosts) would each feed different rows
    as the same rows: a batch of the wrong size whose "replicas" differ, wrong without an error."""
    held = process_batch_slices(mesh, rules)
    shares = sorted({len(s) for s in held.values()})
    overlap = sum(len(s) for s in held.values()) != len(set().union(*held.values()))
    if len(held) > 1 and (overlap or len(shares) > 1):
        network = f" with mesh.dcn_shape={tuple(dcn_shape)}" if dcn_shape else ""
        raise ConfigError(
            f"mesh {dict(mesh.shape)}{network} has the {len(held)} processes share slices of the batch (split "
            f"{data_parallel_size(mesh, rules)} way(s), over data x fsdp), but each process feeds rows of its own; "
            f"split data (or fsdp) across the processes, e.g. mesh.dcn_shape=({len(held)}, 1, 1) with mesh.shape's "
            f"data a multiple of {len(held)}.")


def _model_axis_sizes(config: Any) -> dict[str, list[tuple[str, int]]]:
    """Logical parameter axis -> the (ModelConfig field, size) of every dimension laid on it;
    its keys are the model's parameter axes (research/models builds exactly these)."""
    sizes = {"vocab": [("vocab_size", config.vocab_size)], "embed": [("d_model", config.d_model)],
             "heads": [("num_heads", config.num_heads)], "kv": [("head_dim", config.dim_per_head)],
             "mlp": [("d_ff", config.d_ff)]}
    if config.kv_heads != config.num_heads:  # grouped-query key/value projections (attention.py)
        sizes["kv_heads"] = [("num_kv_heads", config.kv_heads)]
    if config.family == "encoder":  # BERT's pooler and MLM transform: [D, D] kernels, D on "mlp" (encoder.py)
        sizes["mlp"].append(("d_model", config.d_model))
    if config.type_vocab_size:
        sizes["token_types"] = [("type_vocab_size", config.type_vocab_size)]
    if config.scan_layers:
        sizes["layers"] = [("num_layers", config.num_layers)]
        if config.family == "encoder_decoder" and config.encoder_layers != config.num_layers:
            # T5's scanned encoder stack is its own "layers" dimension (num_encoder_layers)
            sizes["layers"].append(("num_encoder_layers", config.encoder_layers))
    if config.position == "learned":
        sizes["positions"] = [("max_len", config.max_len)]
    if config.position == "relative":
        sizes["relpos_buckets"] = [("relative_buckets", config.relative_buckets)]
    if config.family == "encoder" and config.num_labels:  # BERT's sequence classifier [D, num_labels] (encoder.py)
        sizes["classes"] = [("num_labels", config.num_labels)]
    return sizes


def _param_axis_sizes(boxed_params: Any) -> dict[str, list[tuple[str, int]]]:
    """Logical axis -> (parameter path, size) of every dimension laid on it in `boxed_params`
    (abstract, with flax's logical names): a fine-tuning head's axes, which no ModelConfig field
    sizes (the reward head's 1 output, a tagger's num_token_labels, both on "classes")."""
    sizes: dict[str, list[tuple[str, int]]] = {}
    boxes = jax.tree_util.tree_leaves_with_path(boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for path, box in boxes:
        if isinstance(box, nn.LogicallyPartitioned):
            for name, size in zip(box.names, box.value.shape):
                if name is not None:
                    sizes.setdefault(name, []).append((f"{'/'.join(_path_names(path))}'s {name} dimension", size))
    return sizes


def model_logical_axes(config: Any) -> tuple[str, ...]:
    """The logical axes `config`'s model names: its parameters' and its activations' (the KV
    cache's only where the model decodes: decoder and encoder_decoder families)."""
    decodes = config.family in ("decoder", "encoder_decoder")
    activations = [a for a in ACTIVATION_AXES if decodes or not a.startswith("cache_")]
    return (*_model_axis_sizes(config), *activations)


def _rule_mesh_axes(mesh_axes: Any) -> tuple[str, ...]:
    return () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def check_rules_name_mesh_axes(mesh: Mesh, rules: Rules) -> None:
    """Every mesh axis a rule names must be one of `mesh`'s; one line, not a KeyError (e.g.
    MaxText's 'model' axis is this mesh's 'tensor')."""
    for logical, mesh_axes in rules:
        unknown = [a for a in _rule_mesh_axes(mesh_axes) if a not in mesh.axis_names]
        if unknown:
            near = difflib.get_close_matches(unknown[0], mesh.axis_names, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(
                f"mesh.rules: rule ({logical!r}, {mesh_axes!r}) names mesh axis {unknown[0]!r}, which the mesh does "
                f"not have; {hint}use one of its axes {tuple(mesh.axis_names)} (tensor parallelism is 'tensor'), "
                "or None to replicate.")


def check_rules_name_each_axis_once(rules: Rules) -> None:
    """flax applies the first rule of a logical axis and drops later ones without a word: an
    override appended to DEFAULT_RULES did nothing, and the size check read the dropped rule."""
    first: dict[str, Any] = {}
    for logical, mesh_axes in rules:
        if logical in first:
            raise ConfigError(
                f"mesh.rules names logical axis {logical!r} twice (({logical!r}, {first[logical]!r}), then "
                f"({logical!r}, {mesh_axes!r})); flax applies only the first, so give each name once (change the "
                "first rule instead of adding another).")
        first[logical] = mesh_axes


def check_rules_map_model_axes(model_config: Any, rules: Rules, boxed_params: Any = None) -> None:
    """Every logical axis the model names (and `boxed_params`', a fine-tuning head's) must have a
    rule, and every rule must name a logical axis of the models: flax replicates an unmapped axis
    without a word, so a typo ('embd') or a dropped rule ('activation_batch') would quietly keep
    full weight copies (or the whole batch) on every device, and a rule of no axis ('mpl') does nothing."""
    extra = _param_axis_sizes(boxed_params) if boxed_params is not None else {}
    missing = sorted(unmapped_logical_axes(PartitionSpec(*model_logical_axes(model_config), *extra), rules))
    known = (*PARAM_AXES, *ACTIVATION_AXES)
    strays = [name for name, _ in rules if name not in known]
    if strays and not missing:
        near = difflib.get_close_matches(strays[0], known, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ConfigError(
            f"mesh.rules: rule(s) {strays} name no logical axis of the models, so they do nothing; {hint}use the names "
            f"of research.sharding_rules.PARAM_AXES / ACTIVATION_AXES (e.g. {known[:3]}), or drop the rule.")
    if not missing:
        return
    hint = f" (rule(s) {strays} name no logical axis of the models)" if strays else ""
    defaults = dict(DEFAULT_RULES)
    example = ", ".join(f"({name!r}, {defaults.get(name)!r})" for name in missing)
    split = [name for name in missing if defaults.get(name) is not None]
    replicate = f"({split[0]!r}, None)" if split else "None"
    raise ConfigError(
        f"mesh.rules has no rule for logical axis(es) {missing} of model {model_config.name}{hint}, so flax would "
        f"replicate them silently (a full copy on every device); add one for each, e.g. {example} as in "
        f"DEFAULT_RULES, or {replicate} to replicate one on purpose.")


def check_model_fits_mesh(model_config: Any, mesh: Mesh, rules: Rules, boxed_params: Any = None) -> None:
    """The rules must name only `mesh`'s axes, each logical axis once, and map every logical axis
    the model uses, and every model dimension that they split over mesh axes must divide evenly
    over them (e.g. tensor parallelism over more devices than there are heads); one line, before
    compiling. boxed_params: the abstract parameters the run trains where they hold axes that
    `model_config` does not size (a fine-tuning job's task head; trainer.run_job)."""
    check_rules_name_mesh_axes(mesh, rules)
    check_rules_name_each_axis_once(rules)
    check_rules_map_model_axes(model_config, rules, boxed_params)
    sizes = _model_axis_sizes(model_config)
    if boxed_params is not None:
        sizes.update({k: v for k, v in _param_axis_sizes(boxed_params).items() if k not in sizes})
    for logical, mesh_axes in rules:
        if logical not in sizes or mesh_axes is None:
            continue
        axes = _rule_mesh_axes(mesh_axes)
        ways = int(np.prod([mesh.shape[a] for a in axes]))
        for field, size in sizes[logical]:
            if ways > 1 and size % ways:
                divisors = [d for d in range(1, ways + 1) if size % d == 0 and ways % d == 0]
                raise ConfigError(
                    f"model {model_config.name}: {field}={size} does not split over mesh axis "
                    f"{'x'.join(axes)} of size {ways} (rule {logical!r} -> {mesh_axes!r}, mesh {dict(mesh.shape)}); "
                    f"use a {'x'.join(axes)} size that divides {size} (e.g. {max(divisors)}) via --config.mesh.shape, "
                    f"or the rule ({logical!r}, None) to replicate it.")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_names(path: tuple) -> tuple[str, ...]:
    return tuple(_key_name(k) for k in path)


def param_shardings(boxed_params: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings of (abstract) params created with logical axis names; unboxed tree structure."""
    return logical_to_sharding(nn.get_partition_spec(boxed_params), mesh, rules)


def mirrored_shardings(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
    """Shardings for `tree` (e.g. an optimizer state): a leaf of a parameter's shape whose key
    path ends with that parameter's path takes its sharding; so does one whose path holds the
    parameter's names in order with others between them and ends with its last name (a state
    kept per layer of a scanned stack, optimizers.each_scanned_layer: ('layers', 0, 'v', 'mlp',
    'wi', 'kernel') for the parameter ('layers', 'mlp', 'wi', 'kernel'), replicated on every
    device before, 8x its sharded size on an 8-way fsdp mesh); the longest such path wins.
    Others replicate."""
    by_path = {}
    for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(shardings)):
        by_path[_path_names(path)] = (tuple(leaf.shape), sharding)
    lengths = sorted({len(p) for p in by_path}, reverse=True)
    by_last_name: dict[str, list[tuple[str, ...]]] = {}
    for names in sorted((p for p in by_path if p), key=len, reverse=True):  # (): params that are one array
        by_last_name.setdefault(names[-1], []).append(names)
    replicated = NamedSharding(mesh, PartitionSpec())

    def in_order(wanted: tuple[str, ...], names: tuple[str, ...]) -> bool:
        rest = iter(names)
        return all(name in rest for name in wanted)  # each found after the previous one

    def pick(path, leaf):
        names = _path_names(path)
        for n in lengths:
            hit = by_path.get(names[-n:]) if len(names) >= n else None
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        for candidate in by_last_name.get(names[-1], []) if names else []:
            if by_path[candidate][0] == tuple(leaf.shape) and in_order(candidate, names):
                return by_path[candidate][1]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def shard_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays split over the mesh (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def shard_global_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """A whole batch, the same on every process -> global arrays split over the mesh: each
    process places the rows its own devices hold. The batches then do not depend on how many
    processes share the mesh (fine-tuning's in-memory data: every process builds every batch)."""
    def place(value: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
    return {k: place(np.asarray(v)) for k, v in batch.items()}


def to_host(value: Any) -> np.ndarray:
    """An array's whole value on this host. A global array spanning several processes is
    gathered from all of them (a collective: every process must make the same call); np.asarray
    alone refuses such an array."""
    if isinstance(value, jax.Array) and not (value.is_fully_addressable or value.is_fully_replicated):
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def processes_differing(parts: Sequence[bytes]) -> list[int]:
    """The processes whose `parts` (hashed together) differ from process 0's, [] on one process.
    A collective: every process must make the same call."""
    if jax.process_count() < 2:
        return []
    import hashlib
    from jax.experimental import multihost_utils
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    every = np.asarray(multihost_utils.process_allgather(np.frombuffer(digest.digest(), np.uint8)))
    return [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]


def shard_size_bytes(tree: Any) -> dict[Any, int]:
    """Bytes each device holds of `tree`'s arrays (its addressable shards)."""
    held: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Mesh and logical-axis rules for tracing: activation constraints in the models bind here."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield
