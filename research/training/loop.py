"""`train_and_evaluate(config, workdir)`: the one train loop for every model family.

A family enters only through its model (research.models.build_model) and its objective
(research/training/losses.py + the data transform in research/data); everything below is
shared. The config is an ml_collections.ConfigDict (experiments/configs/pretrain.py):

    model       preset + ModelConfig field overrides (dtype, dropout_rate, ...; None = preset's)
    objective   causal_lm | prefix_lm | masked_lm | span_corruption; objective_options
    data        research.data.DataConfig fields (source, tokenizer, ...)
    train       TrainConfig: steps, batch, microbatches, seed, z_loss, logging, evaluation
    opt         research.training.optimizers.OptimizerConfig (total_steps = train.num_steps)
    checkpoint  research.training.checkpointing.CheckpointConfig
    mesh        shape (data, fsdp, tensor) with -1 filling the rest; logical-axis rules

Resuming is automatic: if <workdir>/checkpoints holds a checkpoint, the run restores state
and data position from the latest one (onto the current mesh) and continues exactly.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import tqdm

from research import data as data_lib
from research.models import build_model, get_config
from research.models.config import ConfigError
from research.sharding import DEFAULT_RULES, Rules
from research.training import losses, metrics as metrics_lib, partitioning, peak_flops as peak_flops_lib
from research.training.checkpointing import BEST_METRIC, CheckpointConfig, Checkpointer
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import TrainState, create_train_state, train_state_shardings, with_shardings
from research.training.train_step import evaluate, jit_eval_step, jit_train_step, make_eval_step, make_train_step

log = logging.getLogger(__name__)


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; the bad state was not saved."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The loop's own settings (config.train)."""

    num_steps: int
    batch_size: int  # global rows per optimizer step, over all processes
    seq_len: int  # packed row length (encoder-decoder: the source length)
    microbatches: int = 1  # gradient accumulation: batch_size / microbatches rows per pass
    seed: int = 0
    z_loss: float = 0.0
    log_every_steps: int = 10
    eval_every_steps: int = 100  # checkpoint steps are evaluated too (keep-best needs it)
    eval_batches: int = 4
    stop_after_steps: int = 0  # > 0: leave after this step (checkpointed); rerunning continues; 0: off
    peak_flops: float = 0.0  # FLOP/s of all devices for MFU; 0 = datasheet bf16 peak (measured on CPU)
    progress_bar: bool = True

    def __post_init__(self):
        for field in ("num_steps", "batch_size", "seq_len", "microbatches", "log_every_steps",
                      "eval_every_steps", "eval_batches"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"train.{field}={getattr(self, field)} must be positive.")


def _sub_config(section: Any) -> dict[str, Any]:
    return section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)


def _rules(mesh_config: Any) -> Rules:
    rules = mesh_config.get("rules", None) or DEFAULT_RULES
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def _data_objective(name: str, family: str, options: dict[str, Any]):
    """The data-side objective (research.data), told to build encoder-decoder examples for T5."""
    objective = data_lib.get_objective(name)
    if family == "encoder_decoder" and "encoder_decoder" in {f.name for f in dataclasses.fields(objective)}:
        options = {"encoder_decoder": True, **options}
    return dataclasses.replace(objective, **options) if options else objective


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (or resume) the run described by `config` in `workdir`; returns the last
    train and eval metrics. Writes metrics.jsonl, tensorboard/, checkpoints/ there."""
    os.makedirs(workdir, exist_ok=True)
    model_fields = {k: v for k, v in _sub_config(config.model).items() if v is not None}
    model_config = get_config(model_fields.pop("preset"), **model_fields)
    model = build_model(model_config)
    objective = losses.get_objective(config.objective, model_config.family)
    train = TrainConfig(**_sub_config(config.train))
    opt_config = OptimizerConfig(total_steps=train.num_steps, **_sub_config(config.opt))
    checkpoint_config = CheckpointConfig(**_sub_config(config.checkpoint))
    rules = _rules(config.mesh)

    # Everything a user can get wrong is checked here, before any compilation.
    mesh = partitioning.make_training_mesh(tuple(config.mesh.shape))
    partitioning.check_batch_size(train.batch_size, train.microbatches, mesh, rules)
    data_config = data_lib.DataConfig(**_sub_config(config.data))
    data_objective = _data_objective(config.objective, model_config.family,
                                     _sub_config(config.get("objective_options", {})))
    tokenizer = data_lib.build_tokenizer(data_config, workdir)
    local_batch = train.batch_size // jax.process_count()

    def batches(split: str, seed: int) -> Iterator[dict[str, np.ndarray]]:
        return data_lib.make_batch_iterator(
            data_config, tokenizer=tokenizer, objective=data_objective, batch_size=local_batch,
            seq_len=train.seq_len, split=split, seed=seed, model_max_len=model_config.max_len,
            model_vocab_size=model_config.vocab_size)

    # Shapes from one validation batch, so the train iterator is untouched until step 0.
    example = next(batches("validation", train.seed))
    objective.check_batch(example, model_config.max_len)
    batch_spec = {k: jax.ShapeDtypeStruct((train.batch_size, *v.shape[1:]), v.dtype) for k, v in example.items()}

    optimizer, schedule = make_optimizer(opt_config)
    loss_fn = losses.make_loss_fn(objective, train.z_loss)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    checkpointer = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), checkpoint_config)
    writer = metrics_lib.MetricWriter(workdir)
    train_iter = batches("train", train.seed)

    try:
        with partitioning.sharding_context(mesh, rules):
            abstract, shardings = train_state_shardings(model, objective, optimizer, batch_spec, mesh, rules)
            if checkpointer.latest_step() is not None:
                state, train_iter = checkpointer.restore(with_shardings(abstract, shardings), train_iter)
                writer.forget_after(int(state.step))
            else:
                state, _ = create_train_state(model, objective, optimizer, batch_spec, mesh, rules, train.seed)
            train_step = jit_train_step(make_train_step(model, loss_fn, optimizer, schedule,
                                                        microbatches=train.microbatches,
                                                        batch_spec=partitioning.batch_partition_spec(rules),
                                                        param_shardings=shardings.params),
                                        shardings, batch_sharding)
            eval_step = jit_eval_step(make_eval_step(model, loss_fn), shardings.params, batch_sharding)

            target_len = example[objective.targets_key].shape[1]
            encoder_decoder = model_config.family == "encoder_decoder"
            source_len = example[objective.length_keys[0]].shape[1] if encoder_decoder else None
            size = metrics_lib.model_size(model_config, abstract.params, target_len, source_len)
            peak_flops = peak_flops_lib.peak_flops(list(mesh.devices.flat), override=train.peak_flops).flops_per_second
            start_step = int(state.step)
            log.info("%s: %s params (%s embedding, %s non-embedding), %.3g train FLOPs/token; mesh %s; "
                     "peak %.3g FLOP/s; starting at step %d", model_config.name, f"{size['params_total']:,}",
                     f"{size['params_embedding']:,}", f"{size['params_non_embedding']:,}",
                     size["train_flops_per_token"], dict(mesh.shape), peak_flops, start_step)
            if start_step == 0:
                writer.write(0, {**size, "peak_flops": peak_flops, "devices": mesh.size})

            def run_eval(params) -> dict[str, float]:
                validation = batches("validation", train.seed)  # the same batches every time
                return evaluate(eval_step, params, itertools.islice(validation, train.eval_batches), batch_sharding)

            throughput = metrics_lib.Throughput(train.batch_size * target_len, size["train_flops_per_token"],
                                                peak_flops)
            last: dict[str, float] = {}

            def fetch(step: int, device_metrics: Any) -> dict[str, float]:
                """One step's metrics on the host; stops the run on NaN/Inf."""
                values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
                if not (np.isfinite(values["total_loss"]) and np.isfinite(values["grad_norm"])):
                    checkpointer.wait()
                    raise TrainingDivergedError(
                        f"step {step}: loss={values['total_loss']} grad_norm={values['grad_norm']} is not finite; "
                        f"stopped without saving. Last good checkpoint: step {checkpointer.latest_step()} in "
                        f"{checkpointer.directory}; lower opt.learning_rate or raise warmup and rerun.")
                throughput.step_done()
                last.update(values)
                return values

            end_step = min(train.num_steps, train.stop_after_steps or train.num_steps)
            with tqdm.tqdm(total=train.num_steps, initial=start_step, disable=not train.progress_bar
                           or jax.process_index() != 0, desc="train", unit="step") as progress:
                pending = None  # (step, metrics) dispatched but not yet fetched
                for step in range(start_step + 1, end_step + 1):
                    batch = partitioning.shard_batch(next(train_iter), batch_sharding)
                    state, step_metrics = train_step(state, batch)
                    if pending is not None:  # fetch step t-1 now that step t is queued behind it
                        values = fetch(*pending)
                        if pending[0] % train.log_every_steps == 0:
                            writer.write(pending[0], {**values, **throughput.read()})
                            progress.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
                    pending = (step, step_metrics)
                    progress.update(1)
                    save = step % checkpoint_config.every_steps == 0 or step == end_step
                    if save or step % train.eval_every_steps == 0:
                        # Check this step before saving: a NaN state must never become a checkpoint.
                        values, pending = fetch(step, step_metrics), None
                        speed = throughput.read()
                        eval_metrics = run_eval(state.params)
                        writer.write(step, {**values, **speed, **eval_metrics})
                        last.update(eval_metrics)
                        if save:
                            checkpointer.save(step, state, train_iter, config.to_dict(),
                                              {BEST_METRIC: eval_metrics[BEST_METRIC]})
                        throughput.restart()  # evaluation and saving are not training time
                if end_step == start_step and "eval_loss" not in last:
                    last.update(run_eval(state.params))  # nothing left to train: report the restored model
    finally:
        checkpointer.close()  # waits for a save in flight
        writer.close()
    return dict(last)

