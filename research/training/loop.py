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
    mesh        shape (data, fsdp, tensor) with -1 filling the rest; dcn_shape (the part of each axis
                across slices / hosts, e.g. (2, 1, 1); empty: one slice); logical-axis rules

    batched     optional {field, values}: train one model per value in one program (below)

Resuming is automatic: if <workdir>/checkpoints holds a checkpoint, the run restores state
and data position from the latest intact one (onto the current mesh) and continues exactly.
A workdir holding another run is refused before anything is written (research/training/workdir.py);
Ctrl-C / SIGTERM stop at the end of the current block of steps, after saving that step
(research/training/preemption.py).

Speed: the loop runs up to train.steps_per_call steps per compiled call (0: chosen from the
model's FLOPs per step, research/training/blocks.py) on batches a background thread has
already stacked and put on the devices (research/data/prefetch.py), and fetches a block's
metrics once, after dispatching the next block. Calls end at evaluation and checkpoint
steps, so those land exactly where they would with one step per call, and the losses are
bit-identical to it.

Many models: `train_together(configs, workdirs)` trains K configs that differ only in seed
or optimizer numbers as one program (research/training/model_batch.py); each workdir gets
its own metrics.jsonl, checkpoints and result, as if the model had been trained alone
(each model's records, restore and saves: research/training/members.py).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec

from research import data as data_lib
from research.models import build_model, get_config
from research.models.config import ConfigError
from research.sharding import DEFAULT_RULES, Rules, describe_mesh
from research.data.prefetch import BlockPrefetcher
from research.data.tokenizer import encoder_decoder_ids
from research.training import blocks, losses, members as members_lib, metrics as metrics_lib, model_batch
from research.training import partitioning, programs as programs_lib
from research.training import peak_flops as peak_flops_lib
from research.training import preemption, workdir as workdir_lib, workdir_lock  # [issue-13b]
from research.training.checkpointing import BEST_METRIC, CheckpointConfig, Checkpointer
from research.training.optimizers import OptimizerConfig, make_optimizer, schedule_warning
from research.training.members import TrainingDivergedError
from research.training.state import create_stacked_train_state, create_train_state, train_state_shardings
from research.training.train_config import TrainConfig
from research.training.train_step import check_master_weights

log = logging.getLogger(__name__)


def _sub_config(section: Any) -> dict[str, Any]:
    return section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)


def _rules(mesh_config: Any) -> Rules:
    rules = mesh_config.get("rules", None) or DEFAULT_RULES
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train (or resume) the run described by `config` in `workdir`; returns the last
    train and eval metrics. Writes metrics.jsonl, tensorboard/, checkpoints/ there.

    With `config.batched.field` set, trains one model per value of that field together in
    <workdir>/<field>=<value> (see train_together) and returns their metrics keyed
    "<field>=<value>/<metric>"; a diverged model raises once the others have finished.
    """
    configs, workdirs = model_batch.expand_batched_axis(config, workdir)
    if model_batch.batched_axis(config) is None:
        return _train(configs, workdirs, stacked=False)[0]
    results = train_together(configs, workdirs)
    failed = [str(r) for r in results if isinstance(r, Exception)]
    if failed:
        stop = int(config.train.get("stop_after_steps", 0) or 0)
        reached = (f"stopped at train.stop_after_steps={stop}" if 0 < stop < int(config.train.num_steps)
                   else "finished")
        others = f" (the others {reached})" if len(failed) < len(results) else ""
        raise TrainingDivergedError(f"{len(failed)} of {len(results)} models diverged{others}: " + " | ".join(failed))
    return {f"{os.path.basename(w)}/{k}": v for w, r in zip(workdirs, results) for k, v in r.items()}


def train_together(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str]
                   ) -> list[dict[str, float] | TrainingDivergedError]:
    """Train K configs as one compiled program (jax.vmap of the train step over stacked
    states), model i into workdirs[i] with its own metrics.jsonl, checkpoints and results,
    exactly as train_and_evaluate(configs[i], workdirs[i]) would (losses equal to float32
    rounding). The configs may differ only in model_batch.BATCHABLE fields (seed, learning
    rate and the optimizer's other numbers): a study groups its same-shape runs and calls
    this once per group. Rerunning resumes every model from their latest common checkpoint.

    Returns, per model, its last train and eval metrics, or the TrainingDivergedError that
    stopped it (naming the model's index and the step); the other models go on.
    """
    model_batch.check_trainable_together(configs, workdirs)
    members_lib.check_common_start(workdirs, int(configs[0].checkpoint.every_steps))
    return _train(list(configs), list(workdirs), stacked=True)


def _train(configs: list[ml_collections.ConfigDict], workdirs: list[str], *, stacked: bool
           ) -> list[dict[str, float] | TrainingDivergedError]:
    config = configs[0]  # every config shares what is read from it here (check_trainable_together)
    model_fields = {k: v for k, v in _sub_config(config.model).items() if v is not None}
    model_config = get_config(model_fields.pop("preset"), **model_fields)
    data_config = data_lib.DataConfig(**_sub_config(config.data))
    # A T5's decoder trains from its tokenizer's pad: generation and scoring start from the same id, as
    # the configs saved with the run say (loading one builds this model). Pad-0 runs are left as they were.
    ids = encoder_decoder_ids(data_config.tokenizer, model_config.family, model_fields)
    if ids:
        configs = [copy.deepcopy(c) for c in configs]  # the caller's config stays its own
        for c in configs:
            with c.unlocked():
                c.model.update(ids)
        config, model_config = configs[0], dataclasses.replace(model_config, **ids)
    model = build_model(model_config)
    objective = losses.get_objective(config.objective, model_config.family)
    trains = [TrainConfig(**_sub_config(c.train)) for c in configs]
    opt_configs = [OptimizerConfig(total_steps=t.num_steps, **_sub_config(c.opt)) for t, c in zip(trains, configs)]
    for line in dict.fromkeys(filter(None, map(schedule_warning, opt_configs))):  # once per distinct line
        log.warning("%s", line)
    checkpoint_config = CheckpointConfig(**_sub_config(config.checkpoint))
    train = trains[0]
    rules = _rules(config.mesh)
    num_models = len(configs)
    across = stacked and train.models_across_devices  # each model whole on one device

    # Everything a user can get wrong is checked here, before any compilation.
    mesh = partitioning.make_training_mesh(tuple(config.mesh.shape), config.mesh.get("dcn_shape", None))
    if across:  # each model's whole batch on one device: only the microbatches must divide it
        model_batch.check_models_across_devices(num_models, mesh)
        partitioning.check_microbatches(train.batch_size, train.microbatches)
    else:
        partitioning.check_batch_size(train.batch_size, train.microbatches, mesh, rules,
                                      config.mesh.get("dcn_shape", None))
    # Across devices too: each model's checkpoint is laid out as if trained alone on this mesh.
    partitioning.check_model_fits_mesh(model_config, mesh, rules)  # [issue-13b]
    check_master_weights(model_config)
    data_objective = data_lib.objective_for_family(config.objective, model_config.family,
                                                   _sub_config(config.get("objective_options", {})))
    # The objective's settings (mask_rate, noise spans, seq_len) and every row it packs (span corruption's
    # decoder rows too), before the workdir is claimed and a tokenizer trained in it for nothing.
    data_lib.check_batch_shape(train.batch_size, train.seq_len, model_config.max_len, data_objective)
    wandb_config = metrics_lib.WandbConfig(**_sub_config(config.get("wandb", {})))  # [issue-13b] off by default
    # [issue-13b] The config is valid: refuse an unwritable workdir or one holding another run (every
    # model's, before any is created), then create them.
    claimed = workdir_lib.claim_all([(w, c.to_dict()) for c, w in zip(configs, workdirs)],
                                    record=jax.process_index() == 0)
    local_batch = train.batch_size // jax.process_count()
    seeds = [t.seed for t in trains]
    per_model_data = len(set(seeds)) > 1  # the seed orders the data too: one stream per model
    data_seeds = seeds if per_model_data else seeds[:1]

    def batches(split: str, seed: int, num_epochs: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        return data_lib.make_batch_iterator(
            data_config, tokenizer=tokenizer, objective=data_objective, batch_size=local_batch,
            seq_len=train.seq_len, split=split, seed=seed, num_epochs=num_epochs,
            model_max_len=model_config.max_len, model_vocab_size=model_config.vocab_size)

    # Until this call saves a checkpoint, nothing of it exists to resume: a bad input or a stop (Ctrl-C,
    # SIGTERM, a second Ctrl-C while the first block compiles) then withdraws the claims this call made
    # (below), so a corrected or changed command is not refused as "another run".
    members, writers, prefetcher, guard, saved = [], [], None, None, []
    try:
        # After the claim: a workdir holding another run is that line, not advice on num_steps (which,
        # followed, met the refusal).
        members_lib.check_steps_left(workdirs, train.num_steps, train.stop_after_steps)
        tokenizer = data_lib.build_shared_tokenizer(data_config, workdirs)  # in each workdir, as if alone
        # One epoch of validation at most, each row once (on several processes all stop where the
        # shortest shard ends: research/training/evaluation.py).
        eval_epochs = 1
        # Shapes from one validation batch, so the train iterators are untouched until step 0.
        example = next(batches("validation", train.seed, eval_epochs))
        objective.check_batch(example, model_config.max_len)
        batch_spec = {k: jax.ShapeDtypeStruct((train.batch_size, *v.shape[1:]), v.dtype) for k, v in example.items()}

        # The optimizer here only gives the state its structure (init, restore); each step builds its own
        # from the traced hyperparameters (below).
        optimizer, _ = make_optimizer(opt_configs[0])
        loss_fn = losses.make_loss_fn(objective, train.z_loss)
        batch_sharding = partitioning.batch_sharding(mesh, rules)
        batch_partition = partitioning.batch_partition_spec(rules)
        if across:  # no model's batch is split: nothing in a model names a mesh axis
            batch_partition = PartitionSpec()
        for c, w in zip(configs, workdirs):  # one at a time: a stop while the next starts finds those before it
            writers.append(metrics_lib.MetricWriter(w, wandb=wandb_config, run_config=c.to_dict()))  # [issue-13b]
        members = [members_lib.Member(i, c, w, checkpoint_config, writer,
                                      Checkpointer(os.path.join(os.path.abspath(w), "checkpoints"), checkpoint_config))
                   for i, (c, w, writer) in enumerate(zip(configs, workdirs, writers))]
        sources = [batches("train", seed) for seed in data_seeds]
        guard = preemption.Guard().install()  # [issue-13b] SIGINT/SIGTERM from here on: save and stop cleanly

        with partitioning.sharding_context(mesh, rules):
            abstract, shardings = train_state_shardings(model, objective, optimizer, batch_spec, mesh, rules)
            state_shardings = shardings
            if stacked:
                state_shardings = (model_batch.across_devices_shardings(shardings, mesh) if across
                                   else model_batch.stacked_shardings(shardings))

            def initial_state():
                if stacked:
                    return create_stacked_train_state(model, objective, optimizer, batch_spec, mesh, rules, seeds,
                                                      state_shardings)
                return create_train_state(model, objective, optimizer, batch_spec, mesh, rules, train.seed,
                                          shardings)[0]

            state, sources = members_lib.restore_or_init(members, abstract, shardings, sources,
                                                         lambda: batches("train", train.seed), initial_state,
                                                         state_shardings if stacked else None)

            batch_bytes = len(data_seeds) * sum(v.nbytes for v in example.values())
            programs = programs_lib.build_programs(
                model, loss_fn, opt_configs, train, mesh, shardings=shardings, state_shardings=state_shardings,
                batch_sharding=batch_sharding, batch_partition=batch_partition, stacked=stacked, across=across,
                per_model_data=per_model_data,
                # One validation stream for every seed: runs then differ only by what they trained
                # on, not by which tokens scored them.
                validation_streams=lambda: [batches("validation", 0, eval_epochs) for _ in data_seeds],
                batch_bytes=batch_bytes)
            train_block, extra_args, run_eval = programs.train_block, programs.extra_args, programs.run_eval
            params_finite, member_state = programs.params_finite, programs.member_state

            target_len = example[objective.targets_key].shape[1]
            encoder_decoder = model_config.family == "encoder_decoder"
            source_len = example[objective.length_keys[0]].shape[1] if encoder_decoder else None
            size = metrics_lib.model_size(model_config, abstract.params, target_len, source_len)
            peak_flops = peak_flops_lib.peak_flops(list(mesh.devices.flat), override=train.peak_flops).flops_per_second
            start_step = int(jax.device_get(state.step).reshape(-1)[0])
            tokens_per_step = train.batch_size * target_len
            block_len = blocks.resolve_block_len(
                train.steps_per_call, flops_per_step=num_models * tokens_per_step * size["train_flops_per_token"],
                peak_flops=peak_flops, batch_bytes=batch_bytes,
                longest_block=blocks.longest_block(train.num_steps, train.eval_every_steps,
                                                   checkpoint_config.every_steps))
            if jax.process_count() > 1:  # each process timed its own peak: all must run the same calls
                from jax.experimental import multihost_utils
                block_len = int(multihost_utils.broadcast_one_to_all(np.int32(block_len)))
            log.info("%s: %s params (%s embedding, %s non-embedding), %.3g train FLOPs/token; mesh %s; "
                     "peak %.3g FLOP/s; %d model(s)%s, up to %d steps per call; starting at step %d", model_config.name,
                     f"{size['params_total']:,}", f"{size['params_embedding']:,}", f"{size['params_non_embedding']:,}",
                     size["train_flops_per_token"], describe_mesh(mesh, config.mesh.get("dcn_shape", None)),
                     peak_flops, num_models, f" split over the {mesh.size} devices" if across else "", block_len,
                     start_step)
            for m in members:
                m.throughput = metrics_lib.Throughput(tokens_per_step, size["train_flops_per_token"], peak_flops,
                                                      models_in_program=num_models)
                if start_step == 0:
                    m.writer.write(0, {**size, "peak_flops": peak_flops, "devices": mesh.size})

            end_step = min(train.num_steps, train.stop_after_steps or train.num_steps)
            is_boundary = blocks.boundary_test(train.eval_every_steps, checkpoint_config.every_steps,
                                               end_step=end_step)
            plan = list(blocks.block_plan(start_step, end_step, block_len, is_boundary))
            prefetcher = BlockPrefetcher(sources, plan, block_len, lambda host: partitioning.shard_batch(
                host, programs.train_sharding), per_member=per_model_data)

            if guard.should_stop(start_step):  # [issue-13b] a signal during setup: nothing new to save
                raise preemption.Interrupted(guard.signal_name, start_step, saved=False)
            if start_step == train.num_steps:  # a rerun of a finished run: only its evaluation follows
                log.warning("%s", workdir_lib.already_finished(workdirs, start_step))

            def save_model(m: members_lib.Member, step: int, state: Any, block: Any, best_metric: float | None) -> None:
                # Model m's slice of the state, laid out as if trained alone, and its data position.
                own = state if member_state is None else member_state(state, m.index)
                members_lib.save_member(m, step, own, block.positions[m.index if per_model_data else 0], best_metric)
                m.writer.flush()  # the events up to a checkpoint survive a kill, as metrics.jsonl's records do
                saved.append(step)

            def record(first: int, num_steps: int, device_metrics: Any, hold: int | None) -> None:
                members_lib.record_block(members, first, num_steps, device_metrics, hold, stacked=stacked,
                                         log_every_steps=train.log_every_steps, progress=progress)

            # [issue-13b] console: bar on a terminal, plain lines in a log.
            with metrics_lib.ConsoleProgress(train.num_steps, start_step, z_loss_weight=train.z_loss,
                                             enabled=train.progress_bar and jax.process_index() == 0) as progress:
                step, pending, unevaluated_stop = start_step, None, False
                for block in prefetcher:
                    first, step = step + 1, step + block.num_steps
                    state, block_metrics = train_block(state, block.batches, np.int32(block.num_steps), *extra_args)
                    if pending is not None:  # fetch the previous block now that this one is queued
                        record(*pending, hold=None)
                    pending = (first, block.num_steps, block_metrics)
                    progress.update(block.num_steps)
                    final = step == train.num_steps
                    save = step % checkpoint_config.every_steps == 0 or final
                    # A checkpoint step is evaluated only when keep-best ranks checkpoints by it:
                    # otherwise a sweep whose runs score on 800 validation batches and save every
                    # 500 steps spent more time evaluating than training its small models.
                    evaluate = (step % train.eval_every_steps == 0 or final
                                or (save and checkpoint_config.keep_best > 0))
                    if save or evaluate:
                        # Check this block before saving: a NaN state must never become a checkpoint.
                        record(*pending, hold=step)
                        pending = None
                        eval_metrics = run_eval(state.params) if evaluate else [{} for _ in members]
                        if save:  # the previous round committed by all: each drops the step held for it
                            members_lib.release_held(members)
                        # ... and never one whose next loss cannot be finite (an overflowed update).
                        members_lib.stop_if_not_finite(members, step, params_finite(state.params), eval_metrics,
                                                       stacked=stacked)
                        for m, metrics in zip(members, eval_metrics):
                            if m.error is not None:
                                continue
                            members_lib.log_step(m, step, {**m.held, **metrics}, progress, keep=True)
                            m.last.update(metrics)
                            if save:
                                save_model(m, step, state, block, metrics.get(BEST_METRIC))
                        for m in members:  # after every model's save: evaluation and saving are not training time
                            m.throughput.restart()
                    if all(m.error is not None for m in members):
                        break
                    # [issue-13b] A signal, or train.stop_after_steps: the block just run ends at `step`;
                    # save it (unless just saved) and stop; rerunning continues bit-exactly, with the
                    # records and evaluations of a run that never stopped. Checked once per block on
                    # every process.
                    signalled = guard.should_stop(step) and step < end_step
                    if signalled or (step == end_step and not final):
                        if not save:
                            if pending is not None:  # never save a NaN state
                                record(*pending, hold=None)
                                pending = None
                            members_lib.stop_if_not_finite(members, step, params_finite(state.params),
                                                           [{} for _ in members], stacked=stacked)
                            members_lib.release_held(members)
                            for m, metrics in zip(members, eval_metrics if evaluate else [{} for _ in members]):
                                if m.error is None:  # its eval loss ranks it for keep_best / step='best'; none: last
                                    save_model(m, step, state, block, metrics.get(BEST_METRIC, float("inf")))
                        if signalled:
                            raise members_lib.interrupted(members, guard.signal_name, step)
                        unevaluated_stop = not evaluate
                if pending is not None:
                    record(*pending, hold=None)
                members_lib.release_held(members)
                # Nothing left (a finished run rerun, or stop_after_steps at or below the restored step), or
                # stop_after_steps at a step not evaluated: report the model at `step` with the train metrics
                # its run recorded, as a rerun of the command does (not the stop step's unrecorded losses
                # beside an older step's evaluation: the two sessions reported different numbers).
                if unevaluated_stop or (end_step <= start_step and not any("eval_loss" in m.last for m in members)):
                    for m, metrics in zip(members, run_eval(state.params)):
                        if m.error is None:
                            m.last.clear()
                            m.last.update({**metrics_lib.last_train_metrics(m.workdir, step), **metrics})
    except (ConfigError, data_lib.DataError, KeyboardInterrupt, preemption.Interrupted):
        if not saved and jax.process_index() == 0:  # the process that recorded the claims
            withdrawn = workdir_lib.unclaim(claimed)  # only those with no checkpoint: a resumed run keeps its own
            for w, writer in zip(workdirs, writers):  # and their records: a rerun must not show this setup's curves
                if w in withdrawn:
                    writer.discard_or_warn()  # an error there is a warning line: the stop stays the stop
        raise
    finally:
        # Run last-registered first, each even when one before raised (a second Ctrl-C while a save
        # finishes). The Guard goes last: until the saves commit, a signal is a stop request, not an
        # exception raised inside checkpointer.close() that skipped every close after it.
        with contextlib.ExitStack() as closing:
            closing.callback(workdir_lock.release, workdirs)  # the very last: the run is over
            if guard is not None:
                closing.callback(guard.uninstall)  # [issue-13b]
            for writer in writers:
                closing.callback(writer.close)
            for m in members:
                closing.callback(m.checkpointer.close)  # waits for a save in flight
            if prefetcher is not None:
                closing.callback(prefetcher.close)
    return [m.error if m.error is not None else dict(m.last) for m in members]
