"""The fine-tuning loop: pretraining's train state, train step, optimizer, checkpoints and metrics.

A path (SFT, reward model, DPO, classification, text-to-text, GRPO) is a `FinetuneJob`: a
model, a pure loss of the train loop's signature, its initial parameters, a checkpointable
batch iterator and an evaluator. This module runs it with research/training's pieces:
`make_train_step` / `jit_train_step` (the same pure, sharded, microbatched step),
`make_optimizer`, `TrainState`, `Checkpointer` (orbax, async, data-iterator state) and
`MetricWriter` (metrics.jsonl + TensorBoard). What fine-tuning adds around the step:

  * initial parameters from a checkpoint, a Hugging Face folder or a seed (job.initial_params);
  * LoRA: params {"base", "lora"}, an optimizer that updates only "lora", and checkpoints
    that hold only "lora" (the base is reloaded from its source on resume); a job's fresh task
    heads (job.new_modules) sit under "trained", are trained in full and checkpointed too;
  * a frozen reference (the initial policy) for DPO / RL, kept outside the train state;
  * `job.prepare(policy, reference, batch, step)`: frozen inputs added to a batch before the
    step (reference log-probs), or for RL the sampling phase that builds the batch.

Resuming is automatic and exact: rerunning with the same workdir restores state and data
position from the latest checkpoint, and every key is a fold_in of the step.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from research.finetune.lora import (BASE, LORA, TRAINED, LoraConfig, adapter_optimizer, init_lora, lora_loss_fn,
                                   merged_params, split_trained)
from research.models.config import ConfigError
from research.sharding import DEFAULT_RULES
from research.training import (metrics as metrics_lib, partitioning, preemption, resume_changes,
                               workdir as workdir_lib)
from research.training.checkpoint_loading import RESOLVED_MODEL
from research.training.checkpointing import BEST_METRIC, CheckpointConfig, CheckpointError, Checkpointer
from research.training.loop import TrainingDivergedError
from research.training.train_config import TrainConfig
from research.training.optimizers import OptimizerConfig, make_optimizer
from research.training.state import TrainState, with_shardings
from research.training.train_step import check_master_weights, jit_train_step, make_train_step

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneJob:
    """Everything the loop needs from one fine-tuning path."""

    name: str
    model: nn.Module  # what loss_fn applies: a zoo model or a zoo model with a head
    loss_fn: Callable  # (model, params, batch, rng) -> (loss, aux), research.training.losses.LossFn
    abstract_params: Any  # boxed abstract params (jax.eval_shape of init): logical axes -> shardings
    initial_params: Callable[[], Any]  # unboxed starting parameters (pretrained, or a seeded init)
    train_batches: Callable[[int], Iterator[Batch]]  # seed -> checkpointable (grain) iterator of local batches
    # (params, reference or None, batch sharding) -> metrics, eval_loss included
    evaluate: Callable[[Any, Any, NamedSharding], dict[str, float]]
    # (policy params, reference or None, sharded batch, step) -> sharded batch the step trains on,
    # or (that batch, host metrics to log with the step)
    prepare: Callable[[Any, Any, dict, int], dict] | None = None
    needs_reference: bool = False
    # Top-level parameter subtrees the job initialises fresh (task heads): under LoRA they have
    # nothing pretrained to adapt, so they are trained in full (peft's modules_to_save).
    new_modules: tuple[str, ...] = ()
    # The fine-tuning tokenizer: its special ids go into an exported Hugging Face config.
    tokenizer: Any = None
    # The ids a generated turn ends at (a chat path's chat_templates.turn_end_ids): an export's
    # generation_config.json stops there, where a chatml-tuned model ends its turn with <|im_end|>.
    stop_ids: tuple[int, ...] = ()
    # The train step's fixed metric keys renamed where this path's loss means another thing by them
    # (GRPO's 'accuracy' is its KL to the reference): recorded and returned under the new name.
    metric_names: dict[str, str] = dataclasses.field(default_factory=dict)


def _sub(section: Any) -> dict[str, Any]:
    return section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)


def lora_config(config: ml_collections.ConfigDict) -> LoraConfig | None:
    """config.lora with rank 0 (or absent) means full fine-tuning; a dropout there is refused
    (it has no adapter to act on), as is any value LoraConfig refuses."""
    section = _sub(config.get("lora", {}) or {})
    if not section or not section.get("rank"):
        if section.get("dropout"):
            raise ConfigError(f"lora.dropout={section['dropout']} needs lora.rank > 0: rank 0 is full fine-tuning, "
                              "which has no adapter to drop out; set --config.lora.rank=8, or lora.dropout=0.")
        return None
    if "targets" in section:
        section["targets"] = tuple(section["targets"])
    return LoraConfig(**section)


# Paths whose trl trainer turns dropout off by default (DPOConfig, CPOConfig for SimPO, RewardConfig:
# disable_dropout=True); GRPOConfig's default is False, and SFT and classification keep dropout.
DROPOUT_OFF_PATHS = ("preference", "reward")


def dropout_disabled(config: Any) -> bool:
    """config.disable_dropout, or where it is unset (None) trl's default for config.path."""
    value = config.get("disable_dropout")
    return config.get("path") in DROPOUT_OFF_PATHS if value is None else bool(value)


def _without_dropout(loss_fn: Callable) -> Callable:
    """The loss with a deterministic forward (no dropout key), as trl's disable_dropout_in_model
    sets every Dropout's p to 0, an adapter's included."""
    def loss(model, params, batch, rng):
        del rng  # dropout's only use of the key
        return loss_fn(model, params, batch, None)
    return loss


def loop_configs(config: Any) -> tuple[TrainConfig, OptimizerConfig, CheckpointConfig]:
    """config.train / opt / checkpoint as the pretraining loop's configs, whose own checks refuse a
    bad value in one line; checks.check_config builds them before the claim and any loading."""
    # eval_batches None: GRPO's presets (its evaluation counts prompts, not batches; checks.py).
    train = TrainConfig(**{k: v for k, v in _sub(config.get("train") or {}).items()
                           if not (k == "eval_batches" and v is None)})
    return (train, OptimizerConfig(total_steps=train.num_steps, **_sub(config.get("opt") or {})),
            CheckpointConfig(**_sub(config.get("checkpoint") or {})))


def run_job(job: FinetuneJob, config: ml_collections.ConfigDict, workdir: str,
            writer: metrics_lib.MetricWriter) -> dict[str, float]:
    """Train (or resume) `job` in `workdir`; returns {before_*: step-0 eval, last train and eval metrics}.
    `writer` (the caller's, which closes it) takes the records: a caller withdrawing its claim
    on a stop discards them."""
    os.makedirs(workdir, exist_ok=True)
    train, opt_config, checkpoint_config = loop_configs(config)
    rules = tuple((n, tuple(a) if isinstance(a, list) else a) for n, a in (config.mesh.get("rules") or DEFAULT_RULES))
    mesh = partitioning.make_training_mesh(tuple(config.mesh.shape), config.mesh.get("dcn_shape"))
    # Every process builds every batch (shard_global_batch): processes may share slices of it.
    partitioning.check_batch_size(train.batch_size, train.microbatches, mesh, rules, whole_batch_on_every_process=True)
    # One line, not JAX's IndivisibleError; the job's tree sizes its task head (a tagger's labels, a reward's 1).
    partitioning.check_model_fits_mesh(job.model.config, mesh, rules, job.abstract_params)
    check_master_weights(job.model.config)
    lora = lora_config(config)

    optimizer, schedule = make_optimizer(opt_config)
    loss_fn = job.loss_fn
    boxed = job.abstract_params
    if lora is not None:
        optimizer, loss_fn = adapter_optimizer(optimizer), lora_loss_fn(loss_fn, lora)
        frozen, heads = split_trained(job.abstract_params, job.new_modules)
        # Adapters on the frozen base only: a fresh head trains in full, and merged_params never
        # applies an adapter to it. checks.lora_check_tree builds this same tree before the claim
        # (heads.path_model, split the same way), so a bad target is named there, not after the claim.
        adapters = jax.eval_shape(lambda key: init_lora(frozen, lora, key), jax.random.PRNGKey(0))
        boxed = {BASE: frozen, LORA: adapters, **({TRAINED: heads} if heads else {})}
    if dropout_disabled(config):
        # The reference (job.prepare, evaluation) is always scored without dropout: a policy scored
        # with it gave, at step 1 where the two are equal, a DPO loss of 0.688 and accuracy 0.75, not
        # log 2 and 0, from dropout noise alone. Wrapped outside LoRA, so the adapters' dropout goes too.
        loss_fn = _without_dropout(loss_fn)
    batch_sharding = partitioning.batch_sharding(mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    # Every process builds every batch (shard_global_batch): a run resumes on any number of processes.
    checkpointer = Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"), checkpoint_config,
                                data_same_on_every_process=True)
    train_iter = job.train_batches(train.seed)
    # The model's resolved config beside the run config: config.model is only a preset and the
    # overrides applied to what config.init loaded (a checkpoint's or Hugging Face folder's own
    # config), so load_checkpoint and a next fine-tuning stage rebuild the model from this.
    saved_config = {**config.to_dict(), RESOLVED_MODEL: job.model.config.to_dict()}
    last: dict[str, float] = {}
    guard: preemption.Guard | None = None
    try:
        with partitioning.sharding_context(mesh, rules):
            param_sh = partitioning.param_shardings(boxed, mesh, rules)
            params = _initial_params(job, lora, boxed, param_sh, train.seed)
            abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
            opt_sh = partitioning.mirrored_shardings(jax.eval_shape(optimizer.init, abstract_params),
                                                     abstract_params, param_sh, mesh)
            shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)
            state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                               opt_state=jax.jit(optimizer.init, out_shardings=opt_sh)(params),
                               rng=jax.device_put(jax.random.fold_in(jax.random.PRNGKey(train.seed), 1), replicated))
            # The frozen starting policy: under LoRA the base itself (B = 0 there), read from the
            # current state because the step donates (and replaces) its buffers; otherwise a copy.
            initial_copy = jax.tree.map(jnp.copy, params) if job.needs_reference and not lora else None

            def reference() -> Any:
                return state.params[BASE] if lora and job.needs_reference else initial_copy

            if checkpointer.latest_step() is not None:
                view_sh = _checkpoint_view(shardings, lora)
                target = with_shardings(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                     _checkpoint_view(state, lora)), view_sh)
                try:
                    restored, train_iter = checkpointer.restore(target, train_iter)
                except CheckpointError as error:
                    if lora is not None:
                        _check_saved_adapters(checkpointer, boxed[LORA], lora, error)
                    raise
                state = restored.replace(params={**restored.params, BASE: params[BASE]}) if lora else restored
                writer.forget_after(int(state.step))
                # Another num_steps / schedule, batch size or optimizer number than the checkpoint's is
                # allowed, but never silent (as pretraining's resume says it, members.restore_or_init).
                for line in resume_changes.resume_warnings(checkpointer.restore_config(int(state.step)),
                                                           config.to_dict(), int(state.step)):
                    log.warning("%s", line)
            else:  # records of a run killed before its first save: redone now (as pretraining's restore_or_init)
                writer.forget_after(-1)

            step_fn = jit_train_step(make_train_step(job.model, loss_fn, optimizer, schedule,
                                                     microbatches=train.microbatches,
                                                     batch_spec=partitioning.batch_partition_spec(rules)),
                                     shardings, batch_sharding)
            merge = jax.jit(lambda p: merged_params(p, lora)) if lora else (lambda p: p)

            def run_eval() -> dict[str, float]:
                return {k: float(v) for k, v in job.evaluate(merge(state.params), reference(), batch_sharding).items()}

            start_step = int(state.step)
            trainable = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
                {k: v for k, v in params.items() if k != BASE} if lora else params))
            total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
            log.info("%s: %s trainable of %s params; mesh %s; starting at step %d", job.name, f"{trainable:,}",
                     f"{total:,}", dict(mesh.shape), start_step)
            if start_step == 0:
                before = run_eval()
                writer.write(0, {"params_trainable": trainable, "params_total": total, **before})
                last.update({f"before_{k}": v for k, v in before.items()})
            else:  # a resumed run returns the step-0 evaluation too, as its first session recorded it
                last.update(_recorded_before(workdir))
            end_step = min(train.num_steps, train.stop_after_steps or train.num_steps)
            if start_step == train.num_steps:  # a rerun of a finished run: only its evaluation follows
                log.warning("%s", workdir_lib.already_finished([workdir], start_step))
            elif 0 < train.stop_after_steps <= start_step:  # as the pretraining loop says it (members.check_steps_left)
                log.warning("train.stop_after_steps=%d: --workdir=%s already saved step %d, so this session trains "
                            "nothing and reports the restored model; give a later step, or 0 to train to "
                            "train.num_steps=%d.", train.stop_after_steps, workdir, start_step, train.num_steps)
            evaluated = None  # the last step evaluated in this session
            guard = preemption.Guard().install()  # until the steps end (or the finally below)
            if start_step < end_step and guard.should_stop(start_step):  # a stop during the setup
                raise preemption.Interrupted(guard.signal_name, start_step, saved=False)
            for step in range(start_step + 1, end_step + 1):
                host_batch = next(train_iter)
                if step == start_step + 1:
                    _check_same_batch_on_every_process(host_batch, step)
                batch = partitioning.shard_global_batch(host_batch, batch_sharding)
                extra: dict[str, float] = {}
                if job.prepare is not None:
                    batch = job.prepare(merge(state.params), reference(), batch, step)
                    if isinstance(batch, tuple):  # (batch, host metrics of the sampling phase)
                        batch, extra = batch
                state, step_metrics = step_fn(state, batch)
                values = {job.metric_names.get(k, k): float(v) for k, v in jax.device_get(step_metrics).items()}
                values.update(extra)
                if not (np.isfinite(values["total_loss"]) and np.isfinite(values["grad_norm"])):
                    checkpointer.wait()
                    raise TrainingDivergedError(
                        f"step {step}: loss={values['total_loss']} grad_norm={values['grad_norm']} is not finite; "
                        f"stopped without saving; lower opt.learning_rate and rerun.")
                last.update(values)
                # A step where train.stop_after_steps ends this session is saved but neither
                # evaluated nor recorded beyond the logging schedule: the run continued later has
                # the records of one that never stopped. Keep-best ranks that save last.
                regular_save = step % checkpoint_config.every_steps == 0 or step == train.num_steps
                record = dict(values) if step % train.log_every_steps == 0 or regular_save else {}
                best = {BEST_METRIC: float("inf")}
                if regular_save or step % train.eval_every_steps == 0:
                    eval_metrics = run_eval()
                    # With the step's train metrics, as pretraining records an evaluated step: a stop
                    # there reports them, and its rerun reads them back from here.
                    record.update({**values, **eval_metrics})
                    last.update(eval_metrics)
                    best = {BEST_METRIC: eval_metrics[BEST_METRIC]}
                    evaluated = step
                if regular_save or step == end_step:
                    checkpointer.save(step, _checkpoint_view(state, lora), train_iter, saved_config, best)
                if record:
                    writer.write(step, record)
                # Ctrl-C / SIGTERM (on several processes, the coordination service's preemption
                # notice, so all stop at one step): save this step and stop; the rerun continues.
                if step < end_step and guard.should_stop(step):
                    if not regular_save:
                        checkpointer.save(step, _checkpoint_view(state, lora), train_iter, saved_config, best)
                    raise preemption.Interrupted(guard.signal_name, step, checkpointer.directory)
            # A Ctrl-C during the last step (one process; several stop where the service says): that
            # step is saved; what remains (an export, the rerun of a finished run's evaluation) is left
            # to the rerun rather than making the stop wait for it.
            stop = guard.signal_name if guard.requested and jax.process_count() == 1 else None
            guard.uninstall()
            if stop and start_step < end_step:
                raise preemption.Interrupted(stop, end_step, checkpointer.directory)
            # Nothing left to train (a finished run rerun, or stop_after_steps at or below the restored step),
            # or stop_after_steps at a step not evaluated: the model at that step, evaluated, with the train
            # metrics its run recorded, in both sessions (the first returned the stop step's unrecorded
            # losses beside an older evaluation; a rerun returned the evaluation alone, no 'loss').
            if evaluated != end_step:
                evaluation = run_eval()  # first: on several processes, past process 0's last record
                last = {**{k: v for k, v in last.items() if k.startswith("before_")},
                        **metrics_lib.last_train_metrics(workdir, max(start_step, end_step)), **evaluation}
            if config.get("export_dir"):
                _export(job, merge(state.params), config)
    finally:
        if guard is not None:
            guard.uninstall()
        with preemption.stops_held():  # a stop now waits for the last save to commit, then stops
            checkpointer.close()
    return last


def _recorded_before(workdir: str) -> dict[str, float]:
    """before_* of metrics.jsonl's step-0 record (the evaluation before training); {} without one
    (no file on this process)."""
    first = next((r for r in metrics_lib.recorded_metrics(workdir) if r.get("step") == 0), {})
    return {f"before_{k}": v for k, v in first.items() if k not in ("step", "params_trainable", "params_total")}


def _check_same_batch_on_every_process(batch: Batch, step: int) -> None:
    """One line when processes built different batches: every process builds each global batch
    and places only its own rows (partitioning.shard_global_batch), so a data file that differs
    between hosts, or an order that depends on the process (Python's per-process hash seed), would
    train on rows no single batch holds, silently. Checked at a session's first step."""
    differing = partitioning.processes_differing(
        [part for key in sorted(batch) for part in (key.encode(), np.ascontiguousarray(batch[key]).tobytes())])
    if differing:
        raise ConfigError(f"process(es) {differing} built another batch for step {step} than process 0 (this is "
                          f"process {jax.process_index()} of {jax.process_count()}): fine-tuning builds every batch on "
                          "every process, so each needs the same data files and order; copy the same files to every "
                          "host (or set PYTHONHASHSEED if your data's order depends on it).")


def _initial_params(job: FinetuneJob, lora: LoraConfig | None, boxed: Any, param_sh: Any, seed: int) -> Any:
    if lora is None:
        return jax.device_put(job.initial_params(), param_sh)
    from flax.core import meta
    base, heads = split_trained(job.initial_params(), job.new_modules)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
    # Adapters of the frozen base's targets (run_job: a head is never adapted).
    adapters = jax.jit(lambda k: meta.unbox(init_lora(boxed[BASE], lora, k)), out_shardings=param_sh[LORA])(key)
    params = {BASE: jax.device_put(base, param_sh[BASE]), LORA: adapters}
    return {**params, TRAINED: jax.device_put(heads, param_sh[TRAINED])} if heads else params


def _check_saved_adapters(checkpointer: Checkpointer, adapters: Any, lora: LoraConfig, error: Exception) -> None:
    """A CheckpointError naming the LoRA adapters the latest checkpoint holds beyond (or lacks
    against) those this config builds, raised when a restore failed and they differ. Without it
    the restore's own error (a tree mismatch, "delete the damaged steps") sends the run's owner
    after steps that are not damaged: the same config made other adapters under older code, which
    also put them on biases and fresh heads (where they trained nothing); now only the frozen
    base's projection kernels get one (lora.target_paths). Nothing is adapted for compatibility:
    such a run cannot resume. Returns where the saved tree cannot be read (the restore error says why)."""
    import orbax.checkpoint as ocp
    from research.finetune.lora import _path
    step = checkpointer.latest_step()
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that an item folder has no step metadata; it needs none
    try:
        metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(checkpointer.directory, str(step), "state"))
        tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata.tree
        saved_adapters = tree["params"][LORA]
    except Exception:  # a damaged or foreign step: nothing to compare
        return
    finally:
        absl_logger.setLevel(level)

    def adapted(tree: Any) -> set[str]:  # the kernels' parents: {parent: {"lora_a", "lora_b"}}
        return {_path(p).rsplit("/", 1)[0] for p, _ in jax.tree_util.tree_flatten_with_path(
            tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))[0]}
    saved, built = adapted(saved_adapters), adapted(adapters)
    if saved != built:
        raise CheckpointError(
            f"checkpoint step {step} in {checkpointer.directory} holds LoRA adapters other than those "
            f"lora.targets={lora.targets} gives now (there only: {sorted(saved - built)}; here only: "
            f"{sorted(built - saved)}): adapters now go on the frozen base's projection kernels only, and older "
            "code also made them on biases and fresh heads, where they trained nothing; this run cannot resume "
            "with this code: train it again in a new --workdir.") from error


def _checkpoint_view(state: TrainState, lora: LoraConfig | None) -> TrainState:
    """What a checkpoint holds: the whole state, or under LoRA everything but the frozen base."""
    return state.replace(params={k: v for k, v in state.params.items() if k != BASE}) if lora else state


def _export(job: FinetuneJob, params: Any, config: ml_collections.ConfigDict) -> None:
    """Merged weights as a Hugging Face folder in config.export_dir (zoo models only; heads have no
    HF layout here), its config carrying the job's tokenizer's special ids: the architecture's
    defaults (GPT-2's 50256) may lie outside a fine-tuning vocabulary, and generate() stops on
    config's eos id; generation_config.json adds the job's turn ends (ChatML's <|im_end|>, which
    chatml trains in place of eos): without them generate() ran past the end of the turn. What it
    keeps of config.init (a head the path never trained is written only if the init held one; the
    init folder's label names) is heads.export_plan's."""
    from research.finetune.heads import export_plan
    from research.models import to_hf
    path = str(config.export_dir)
    if job.model.__class__.__module__.startswith("research.finetune"):
        raise ConfigError(f"export_dir: {job.name} trains a model with a task head, which has no Hugging Face "
                          "export here; unset export_dir.")

    def gathered(x):
        value = partitioning.to_host(x)  # on several processes a collective: every one takes part
        return value if jax.process_index() == 0 else None  # only the writer keeps the whole model
    host = jax.tree.map(gathered, params)
    # One writer. Every process learns whether it wrote the folder: with a bare barrier, a write
    # that failed on process 0 (the path a file, a full disk) left it short of the barrier and
    # every process hung.
    failure = None
    if jax.process_index() == 0:
        try:
            # Read on the writer only: the gather above is a collective over the same tree everywhere.
            plan = export_plan(config, job.model.config)
            host = {name: value for name, value in host.items() if name not in plan.left_out}
            to_hf(job.model, host, path, tokenizer=job.tokenizer, stop_ids=job.stop_ids)
            if plan.hf_fields:
                _update_hf_config(path, plan.hf_fields)
        except Exception as error:  # reported on every process below, raised here as it was
            failure = error
    failed = failure is not None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        failed = bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))
    if failure is not None:
        raise failure
    if failed:
        raise ConfigError(f"export_dir={path!r}: process 0 could not write the export (its log says why); the "
                          "checkpoints are saved: fix the folder and rerun the same command to export.")
    log.info("exported merged weights to %s", path)


def _update_hf_config(path: str, fields: dict[str, Any]) -> None:
    """`fields` set in the config.json that to_hf wrote in `path` (as write_checkpoint writes it)."""
    import json
    from research.models.hf.checkpoint_files import CONFIG_FILE, read_hf_config
    hf_config = {**read_hf_config(path), **fields}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
