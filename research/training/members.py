"""The models of one run of the train loop (research/training/loop.py), one `Member` each.

A run trains one model, or K models together (research/training/model_batch.py); every model
keeps its own config, workdir, metrics.jsonl, checkpoints and fate, as if trained alone. Here:
restoring them to a common step, reading a block's metrics into each model's records (and
stopping a model whose loss is not finite), and saving one model's slice of the state.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from research.atomic_files import write_text_atomically
from research.models.config import ConfigError
from research.training import metrics as metrics_lib
from research.training import preemption
from research.training import resume_changes
from research.training import workdir as workdir_lib
from research.training.checkpoint_loading import checkpoint_steps_in
from research.training.checkpointing import BEST_METRIC, CheckpointConfig, CheckpointError, Checkpointer
from research.training.state import stack_trees, with_shardings

log = logging.getLogger(__name__)
DIVERGED_FILE = "diverged.json"  # in a model's workdir: it stopped on a NaN/Inf while trained with others


class TrainingDivergedError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; the bad state was not saved."""


@dataclasses.dataclass
class Member:
    """One model of the run: its own config, workdir, records, checkpoints and fate."""

    index: int
    config: ml_collections.ConfigDict
    workdir: str
    checkpoint: CheckpointConfig
    writer: metrics_lib.MetricWriter
    checkpointer: Checkpointer
    throughput: metrics_lib.Throughput | None = None
    last: dict[str, float] = dataclasses.field(default_factory=dict)
    held: dict[str, float] = dataclasses.field(default_factory=dict)  # the boundary step's train metrics
    timed: bool = False  # the throughput clock has started (after the first, compiling call)
    error: TrainingDivergedError | None = None
    diverged_at: int | None = None  # the step whose loss was not finite (error)
    good_step: int | None = None  # then its newest checkpoint before the state that gave it
    # Whose lines the console shows: model 0's, then the next model still training once it diverged.
    console: bool = False

    def __post_init__(self):
        self.console = self.index == 0


def _far_behind(saved: list[list[int]], every_steps: int) -> list[int]:
    """Indices of the models whose newest saved step (0: none) lies before the save preceding
    the newest step any model saved. A kill between the models' saves leaves each either at
    that newest step or at the save before it; a model further behind was added later or
    diverged before saving, and the others' work must not be thrown away for it. The save before
    is read off the leader's own steps on disk; from checkpoint.every_steps only where the leader
    kept no earlier one (keep_last=1): a rerun with another every_steps (an allowed change) was
    refused after an ordinary kill, or, set to the run's length, restarted every model from step 0
    and deleted the finished ones' checkpoints."""
    newest = [max(steps, default=0) for steps in saved]
    leader = max(newest)
    earlier = [s for s in saved[newest.index(leader)] if s < leader]
    previous = max(earlier) if earlier else (leader - 1) // every_steps * every_steps  # (0: none)
    return [i for i, n in enumerate(newest) if n < previous]


def _diverged_step(workdir: str) -> int | None:
    """The step at which the model in `workdir` stopped on a NaN/Inf while trained with others
    (its DIVERGED_FILE), else None."""
    try:
        with open(os.path.join(workdir, DIVERGED_FILE), encoding="utf-8") as f:
            return int(json.load(f)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_steps_left(workdirs: Sequence[str], num_steps: int, stop_after_steps: int) -> None:
    """ConfigError, in one line, when a finished run is rerun with fewer train.num_steps than it
    saved; a warning line when train.stop_after_steps is at or below the step already saved, so
    this session trains nothing (it once said nothing at all). Not an error: a scheduler may
    resubmit a session's command after it ended, and a study reruns every size's session."""
    newest = [max(checkpoint_steps_in(os.path.join(w, "checkpoints")), default=0) for w in workdirs]
    for workdir, saved in zip(workdirs, newest):
        if saved > num_steps:
            raise ConfigError(f"--workdir={workdir} holds a checkpoint at step {saved}, past train.num_steps="
                              f"{num_steps}; set train.num_steps={saved} or more, or use a new --workdir.")
    # Models trained together resume from a step all of them saved: at most the lowest newest one.
    reached, workdir = min(zip(newest, workdirs))
    if 0 < stop_after_steps <= reached:
        log.warning("train.stop_after_steps=%d: --workdir=%s already saved step %d, so this session trains nothing; "
                    "give a later step, or 0 to train to train.num_steps=%d.", stop_after_steps, workdir, reached,
                    num_steps)


def check_common_start(workdirs: Sequence[str], every_steps: int) -> None:
    """Models trained in one program resume from a step all of them saved. A model far behind
    the others would force all back to step 0 (or back to its own step) and lose the others'
    work: refuse in one line instead, before anything is created or deleted. Far behind:
      - _far_behind (more than one save behind the newest);
      - a NaN stop recorded past its newest checkpoint while another model saved beyond that
        (it would diverge again on each rerun, each time taking the others back);
      - no checkpoint while another model has one, and its workdir not claimed together with
        a model that has one (a value added to batched.values, or first started alone);
      - no step in common with the others that saved, and not claimed together with them (_apart).
    A model with no checkpoint claimed together with the others and no NaN stop was killed
    between the models' first saves: all restart from step 0 (restore_or_init)."""
    saved_steps = [list(checkpoint_steps_in(os.path.join(w, "checkpoints"))) for w in workdirs]
    newest = [max(steps, default=0) for steps in saved_steps]
    why = {i: f"step {newest[i]}" if newest[i] else "no checkpoint"
           for i in _far_behind(saved_steps, max(every_steps, 1))}
    # (every_steps 0 is refused later, with the config's checks)
    leaders = {workdir_lib.absolute_workdir(w) for w, n in zip(workdirs, newest) if n > 0}
    for i, (workdir, saved) in enumerate(zip(workdirs, newest)):
        if i in why or saved == max(newest):
            continue
        diverged = _diverged_step(workdir)
        if diverged is not None and diverged > saved:
            why[i] = f"{f'step {saved}' if saved else 'no checkpoint'}: diverged at step {diverged}"
        elif not saved and not leaders & set(workdir_lib.claimed_with(workdir)):
            why[i] = "new"
        elif saved and _apart(saved_steps, i, workdirs):
            why[i] = f"step {saved}, trained apart from the others: no step in common"
    if why:
        raise CheckpointError(
            f"model(s) {', '.join(f'{i} ({workdirs[i]}, {why[i]})' for i in sorted(why))} are behind the "
            f"others (saved up to step {max(newest)}): models trained in one program resume from a step all of them "
            "saved. Train the new (or diverged) value(s) in a run of their own (or drop them from batched.values), "
            "or use a new workdir; nothing was changed.")


def _apart(saved_steps: list[list[int]], i: int, workdirs: Sequence[str]) -> bool:
    """Whether model i, which saved, shares no saved step with the other models that saved and was
    not claimed together with them: runs of one shape trained apart (a sweep's shards), one save
    apart. Resumed together they restarted all from step 0, over saved work, as after a kill
    between the saves of models trained together."""
    others = [j for j, steps in enumerate(saved_steps) if steps and j != i]
    if not others or set(saved_steps[i]) & set.intersection(*(set(saved_steps[j]) for j in others)):
        return False
    together = set(workdir_lib.claimed_with(workdirs[i]))
    return not {workdir_lib.absolute_workdir(workdirs[j]) for j in others} <= together


def restore_or_init(members: list[Member], abstract: Any, shardings: Any, sources: list, fresh_source: Callable,
                    init: Callable[[], Any], stacked_shardings: Any | None) -> tuple[Any, list]:
    """The initial state, restored from the latest intact checkpoint every model has (a kill
    between the models' saves leaves some a step ahead: those later steps are dropped), else
    fresh, and the data iterators positioned to match it. K models' states are stacked laid
    out as `stacked_shardings` (None: one model)."""
    if all(m.checkpointer.latest_step() is None for m in members):
        for m in members:  # records of a run killed (or stopped by a NaN) before its first save: redone now
            m.writer.forget_after(-1)
        return init(), sources
    while True:
        all_steps = [sorted(m.checkpointer.all_steps()) for m in members]
        common = set.intersection(*map(set, all_steps))
        if not common:
            if _far_behind(all_steps, members[0].checkpoint.every_steps):  # never restart over the others' work
                raise CheckpointError(
                    "the models trained together saved no common checkpoint step ("
                    + "; ".join(f"model {m.index}: {s or 'none'}" for m, s in zip(members, all_steps))
                    + "), so they cannot resume together; continue each model in a run of its own or use a new "
                    "workdir; nothing was deleted.")
            # Each model keeps the group's last common step until all have saved a newer one
            # (Checkpointer.hold_from), so only folders from before that rule (a kill between the
            # models' saves with keep_last 1) or edited by hand get here: all start again.
            log.warning("the models saved no common step (a kill between their saves; checkpoint.keep_last=%d): "
                        "all restart from step 0", members[0].checkpoint.keep_last)
            for m in members:
                m.checkpointer.delete_after(0)
                m.writer.forget_after(-1)
            return init(), sources
        for m in members:
            m.checkpointer.delete_after(max(common))
        states = []
        for m in members:
            own = m.index if len(sources) > 1 else 0
            iterator = sources[own] if m.index == own else fresh_source()  # shared data: restore it once
            # [issue-13b] The newest step that restores intact: a damaged one is logged and moved aside.
            state, iterator = m.checkpointer.restore(with_shardings(abstract, shardings), iterator)
            if m.index == own:
                sources[own] = iterator
            states.append(state)
        restored = {int(jax.device_get(s.step)) for s in states}
        if len(restored) == 1:  # else a model fell back past a damaged step: all go back to a common one
            break
    step = restored.pop()
    for m in members:
        if len(members) > 1:  # until every model has committed a newer step (release_held)
            m.checkpointer.hold_from(step)
        m.writer.forget_after(step)
        # [issue-13b] Resuming with another num_steps / schedule, batch size or optimizer number: say so in one line.
        saved_config, config = m.checkpointer.restore_config(step), m.config.to_dict()
        for warning in (resume_changes.schedule_change(saved_config, config, step),
                        resume_changes.resume_changes(saved_config, config, step)):
            if warning:  # models trained together: whose schedule, named as record_block names a model
                whose = f"model {m.index} ({m.workdir}): " if stacked_shardings is not None else ""
                log.warning("%s%s", whose, warning)
    return (states[0] if stacked_shardings is None else stack_trees(states, stacked_shardings)), sources


def log_step(member: Member, step: int, record: dict[str, Any], progress: metrics_lib.ConsoleProgress, *,
             keep: bool = False) -> None:
    """One logged step of one model: metrics.jsonl / TensorBoard / W&B, and the console line
    (the console member's: model 0's until it diverges; `keep`: an evaluation step, its line
    stays above the bar)."""
    member.writer.write(step, record)
    if member.console and "loss" in record:
        progress.report(step, record, keep=keep)  # [issue-13b]


def stop_if_not_finite(members: list[Member], step: int, finite: np.ndarray,
                       eval_metrics: Sequence[Mapping[str, float]], *, stacked: bool) -> None:
    """Stop each model whose state after step `step`'s update is not finite, before it is saved:
    parameters not all finite (`finite`: one flag per model), or an evaluation loss that is not.
    A step's loss is computed before its update, so an update that overflowed (a learning rate of
    1e35: parameters of 1e35, finite, whose loss is NaN) passed the loss check, was saved, and was
    named "Last good checkpoint": a rerun from it diverged again at once."""
    for m, ok, metrics in zip(members, np.asarray(finite).reshape(-1), eval_metrics):
        if m.error is not None:
            continue
        if not ok:
            _stop_diverged(m, members, step, "its parameters after the update are not finite", stacked=stacked)
        elif BEST_METRIC in metrics and not np.isfinite(metrics[BEST_METRIC]):
            _stop_diverged(m, members, step, f"{BEST_METRIC}={metrics[BEST_METRIC]} of the state after its update is "
                           "not finite", stacked=stacked)


def _stop_diverged(m: Member, members: list[Member], step: int, what: str, *, stacked: bool,
                   state_step: int | None = None) -> None:
    """Model m diverged at `step` (`what`, computed from the state after step `state_step`, default
    `step`): record why (raised at once when it trains alone); the others go on."""
    state_step = step if state_step is None else state_step
    steps = sorted(m.checkpointer.all_steps())
    good = [s for s in steps if s < state_step]
    saved = f"Last good checkpoint: step {good[-1]} in {m.checkpointer.directory}" if good else "No good checkpoint"
    if state_step in steps:  # its parameters give this value: resumed from, it diverges again whatever the settings
        saved = (f"The checkpoint of step {state_step} holds the state that gave it: delete "
                 f"{os.path.join(m.checkpointer.directory, str(state_step))} before rerunning. {saved}")
    m.error = TrainingDivergedError(
        f"{f'model {m.index} ({m.workdir}): ' if stacked else ''}step {step}: {what}; stopped "
        f"without saving. {saved}; lower opt.learning_rate or raise warmup and rerun.")
    m.diverged_at, m.good_step = step, (good[-1] if good else None)
    m.checkpointer.wait()
    if not stacked:
        raise m.error
    if jax.process_index() == 0:  # check_common_start reads it: a rerun would diverge again
        write_text_atomically(os.path.join(m.workdir, DIVERGED_FILE),
                              json.dumps({"step": step, "error": str(m.error)}) + "\n")
    log.warning("%s", m.error)
    if m.console:  # the others go on: show one of them, not a console gone silent
        m.console = False
        survivor = next((o for o in members if o.error is None), None)
        if survivor is not None:
            survivor.console = True
            log.warning("the console now shows model %d (%s)", survivor.index, survivor.workdir)


def record_block(members: list[Member], first: int, num_steps: int, device_metrics: Any, hold: int | None, *,
                 stacked: bool, log_every_steps: int, progress: metrics_lib.ConsoleProgress) -> None:
    """A block's metrics (steps first .. first + num_steps - 1) on the host: log them, stop a
    model on NaN/Inf (raised at once when it trains alone). The step `hold` (an evaluation
    step) is kept for its record with the eval metrics."""
    host = {k: np.asarray(v).reshape(len(v), -1)[:num_steps] for k, v in jax.device_get(device_metrics).items()}
    for m in members:
        if m.error is not None:
            continue
        if m.timed:
            for _ in range(num_steps):
                m.throughput.step_done()
        else:  # the first call compiled: the clock starts now, as after step 1 before
            m.throughput.step_done()
            m.timed = True
        speed = m.throughput.read()
        for j in range(num_steps):
            step = first + j
            values = {k: float(v[j, m.index]) for k, v in host.items()}
            if not (np.isfinite(values["total_loss"]) and np.isfinite(values["grad_norm"])):
                # (computed from the state after step - 1: a checkpoint of that step gives it again)
                _stop_diverged(m, members, step, f"loss={values['total_loss']} grad_norm={values['grad_norm']} is "
                               "not finite", stacked=stacked, state_step=step - 1)
                break
            m.last.update(values)
            if step == hold:
                m.held = {**values, **speed}
            elif step % log_every_steps == 0:
                log_step(m, step, {**values, **speed}, progress)


def release_held(members: list[Member]) -> None:
    """Models trained together, before a round of saves and after the last: once every model
    still training has committed its newest step, each drops the older step it kept for the
    group (Checkpointer.hold_from: a kill between the models' saves leaves a step in common)."""
    if len(members) < 2:
        return
    for m in members:
        m.checkpointer.wait()
    active = [m for m in members if m.error is None]
    newest = [m.checkpointer.latest_step() for m in active]
    if active and None not in newest:
        for m in active:
            m.checkpointer.release_held(min(newest))
    for m in members:  # one that diverged saves nothing more: it keeps its error's "last good checkpoint" on
        if m.error is not None and m.good_step is not None:
            m.checkpointer.release_held(m.good_step)


def save_member(m: Member, step: int, own_state: Any, position: Any, best_metric: float | None) -> None:
    """Save model m at `step`: `own_state` is its slice of the state, laid out as if trained
    alone, `position` its data iterator's position; best_metric None: the step was not
    evaluated (keep_best 0)."""
    m.checkpointer.save(step, own_state, position, m.config.to_dict(),
                        None if best_metric is None else {BEST_METRIC: best_metric})
    marker = os.path.join(m.workdir, DIVERGED_FILE)
    if os.path.exists(marker) and jax.process_index() == 0:  # an earlier NaN stop, now trained past
        os.remove(marker)


def interrupted(members: list[Member], signal_name: str, step: int) -> preemption.Interrupted:
    """The stop on a signal after the models still training saved `step`. A model that diverged
    earlier saved nothing there and a rerun refuses it (check_common_start), so the line names
    only the saved checkpoints, and says to drop the diverged models instead of "rerun the same
    command"."""
    release_held(members)
    saved = ", ".join(m.checkpointer.directory for m in members if m.error is None)
    diverged = [m for m in members if m.error is not None]
    if not diverged:
        return preemption.Interrupted(signal_name, step, saved)
    names = ", ".join(f"{m.index} ({m.workdir}, diverged at step {m.diverged_at})" for m in diverged)
    return preemption.Interrupted(signal_name, step, saved, advice=(
        f"model(s) {names} were not saved, and a rerun cannot continue them together with the others: with "
        f"--config.batched drop their value(s) ({', '.join(os.path.basename(m.workdir) for m in diverged)}) from "
        "batched.values (or train them in a run of their own), then rerun to continue the others"))
