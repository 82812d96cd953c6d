"""One-line warnings for a run resumed with settings its checkpoint was not saved with: allowed
(num_steps, the learning-rate schedule, batch size, z_loss, eval_batches, dropout, compute dtype
and the optimizer's numbers may change on resume; research/training/workdir.py), but never
silent, since the rest of such a run is neither the saved run continued nor a fresh run of the
new config."""
from __future__ import annotations

from typing import Any, Mapping

from research.training.workdir import describe_value

# What the learning rate at a step depends on (research.training.optimizers.OptimizerConfig).
_SCHEDULE_FIELDS = ("learning_rate", "schedule", "warmup_steps", "decay_fraction", "min_lr_ratio")
# The optimizer's other numbers (OptimizerConfig), reported by resume_changes.
_OPT_NUMBERS = ("b1", "b2", "eps", "weight_decay", "clip_norm")
# Model fields free on resume that change what the steps compute (remat and the attention kernel do
# not), reported by resume_changes; a change of dropout resumed silently.
_MODEL_NUMBERS = ("dropout_rate", "dtype")


def schedule_change(saved_config: Mapping[str, Any], config: Mapping[str, Any], step: int) -> str | None:
    """A one-line warning when resuming at `step` with a different learning-rate schedule than
    the checkpoint was saved with (train.num_steps or opt's schedule fields); None otherwise."""
    from research.training.optimizers import OptimizerConfig, make_schedule

    def schedule_of(run: Mapping[str, Any]) -> dict[str, Any]:
        opt = dict(run.get("opt", {}))
        return {"train.num_steps": dict(run.get("train", {})).get("num_steps"),
                **{f"opt.{k}": opt.get(k) for k in _SCHEDULE_FIELDS}}

    before, now = schedule_of(saved_config), schedule_of(config)
    changed = [k for k in now if before.get(k) != now[k] and _read_by_either(k, saved_config, config)]
    if not changed:
        return None
    fields = ", ".join(f"{k} {describe_value(before.get(k))} -> {describe_value(now[k])}" for k in changed)
    try:
        rates = []
        for run in (saved_config, config):
            opt_config = OptimizerConfig(total_steps=run["train"]["num_steps"], **dict(run["opt"]))
            rates.append(float(make_schedule(opt_config)(step)))
        # schedule(step) drives the next update, step + 1, the step whose record logs it (train_step):
        # named "at step {step}", it was a rate the curves show one step later.
        rate_text = f": learning rate of step {step + 1}, the next, was {rates[0]:.3g}, is now {rates[1]:.3g}"
    except Exception:  # an old checkpoint's config may not build today's optimizer; the fields suffice
        rate_text = ""
    return (f"resuming at step {step} with a changed learning-rate schedule ({fields}){rate_text}; "
            "the rest of the run follows the new schedule.")


def _read_by_either(key: str, saved_config: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether schedule field `key` is read by the saved run's schedule or this one's: a cosine run's
    decay_fraction (a saved config may carry any, from before OptimizerConfig refused unread values)
    was reported as a changed schedule whose rate was the same before and after."""
    from research.training.model_batch import _READ_BY
    field = key.partition(".")[2]
    if key.startswith("train.") or field not in {f for r in _READ_BY["schedule"].values() for f in r}:
        return True
    return any(field in _READ_BY["schedule"].get(dict(run.get("opt", {})).get("schedule", "cosine"), (field,))
               for run in (saved_config, config))


def resume_changes(saved_config: Mapping[str, Any], config: Mapping[str, Any], step: int) -> str | None:
    """A one-line warning when resuming at `step` with another train.batch_size, train.z_loss,
    train.eval_batches, model.dropout_rate, model.dtype or lora.dropout, or optimizer number (opt.b1,
    b2, eps, weight_decay, clip_norm) than the checkpoint was saved with; None otherwise. Allowed, as a deliberate change may be, but never
    silent. (train.microbatches gives the same gradient; the schedule is schedule_change's.)"""
    from research.training.optimizers import OptimizerConfig

    def numbers(run: Mapping[str, Any]) -> dict[str, Any]:
        opt, train, model = dict(run.get("opt", {})), dict(run.get("train", {})), dict(run.get("model", {}))
        return {**{f"train.{k}": train.get(k) for k in ("batch_size", "z_loss", "eval_batches")},
                **{f"opt.{k}": opt.get(k, getattr(OptimizerConfig, k)) for k in _OPT_NUMBERS},
                **{f"model.{k}": model.get(k) for k in _MODEL_NUMBERS},
                # A fine-tuning run's adapter dropout (free on resume, run_identity.py), as the model's.
                "lora.dropout": dict(run.get("lora") or {}).get("dropout")}

    before, now = numbers(saved_config), numbers(config)
    changed = [k for k in now if before[k] is not None and now[k] is not None and before[k] != now[k]]
    if not changed:
        return None
    fields = ", ".join(f"{k} {describe_value(before[k])} -> {describe_value(now[k])}" for k in changed)
    consequences = []
    if "train.batch_size" in changed:
        # The data pipeline's packing depends on the batch size (research/data/pipeline.py).
        consequences.append(f"the saved data position belongs to batch size {before['train.batch_size']}, so the "
                            "data that follows is neither the saved run's stream nor a fresh run's")
    if "train.z_loss" in changed:
        consequences.append("the steps that follow minimise another loss than the saved run's (total_loss before and "
                            "after are not comparable)")
    if "train.eval_batches" in changed:
        consequences.append("evaluations from here score another set of validation batches: their eval_loss is not "
                            "comparable with the earlier ones, and checkpoint.keep_best ranks checkpoints across both")
    if any(k.startswith(("model.", "lora.")) for k in changed):
        consequences.append("the steps that follow train with another dropout or compute precision than the saved "
                            "run's")
    if any(k.startswith("opt.") for k in changed):
        consequences.append("the steps that follow apply the new optimizer value(s) to a state built with the old, "
                            "as neither the saved run nor a fresh run of this config would")
    return f"resuming at step {step} with {fields}: {'; '.join(consequences)}."


def resume_warnings(saved_config: Mapping[str, Any], config: Mapping[str, Any], step: int) -> list[str]:
    """The lines of schedule_change and resume_changes that apply, in that order: what a run resumed
    at `step` logs (fine-tuning's loop; pretraining's names each model's)."""
    return [line for line in (schedule_change(saved_config, config, step), resume_changes(saved_config, config, step))
            if line]
