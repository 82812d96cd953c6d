"""Run metrics: JSONL + TensorBoard writers, model size at init, throughput and MFU.

MFU (model FLOPs utilisation, Chowdhery et al. 2022) = achieved model FLOP/s / peak FLOP/s,
with model FLOPs from research/models/sizing.py (6N + attention, per target token,
unembedding included) and the peak either given or measured by a matmul benchmark on the
same devices.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import secrets
import sys
import time
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from research.atomic_files import write_text_atomically
from research.training import setup_files
from research.models import sizing
from research.models.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
THROUGHPUT_KEYS = ("tokens_per_second", "mfu")  # Throughput.read's: a train record's timing, not the step's result


WANDB_ID_FILE = "wandb_run_id"
WANDB_DIR = "wandb"  # wandb.init(dir=workdir) keeps its runs (offline: the whole log) here


@dataclasses.dataclass(frozen=True, kw_only=True)
class WandbConfig:
    """Optional Weights & Biases logging beside TensorBoard (config.wandb); off unless `project` is set."""

    project: str = ""  # "" = off
    entity: str = ""  # "" = the account's default
    name: str = ""  # "" = the workdir's name
    mode: str = "online"  # online | offline (sync later with `wandb sync <workdir>/wandb`)

    def __post_init__(self):
        if self.mode not in ("online", "offline"):
            raise ConfigError(f"wandb.mode={self.mode!r} is not one of ('online', 'offline').")
        if self.project and importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"wandb.project={self.project!r} is set but wandb is not installed; "
                              "`pip install wandb` or leave wandb.project empty.")


def _summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported lazily (only process 0 needs it) and without
    torch: tensorboardX imports torch when it is installed, only to accept torch tensors,
    which costs every training process 2-12 s of start-up (measured); we log numbers."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError inside tensorboardX only
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends one JSON record per logged step to <workdir>/metrics.jsonl and mirrors the
    scalars to TensorBoard event files in <workdir>/tensorboard, and to Weights & Biases when
    `wandb.project` is set (one W&B run per workdir: a resumed run continues it). Only
    process 0 writes."""

    def __init__(self, workdir: str, *, enabled: bool | None = None, wandb: WandbConfig | None = None,
                 run_config: Mapping[str, Any] | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tensorboard = None
        self._wandb_run = None
        # What the workdir held of this writer's files before it started: `discard` removes the
        # rest and only the rest (a resumed run's earlier event files stay).
        self._before: dict[str, setup_files.Before] = {}
        if self.enabled:
            use_wandb = wandb is not None and bool(wandb.project)
            owned = [self.path, os.path.join(workdir, TENSORBOARD_DIR)]
            owned += [os.path.join(workdir, WANDB_ID_FILE), os.path.join(workdir, WANDB_DIR)] if use_wandb else []
            self._before = {path: setup_files.snapshot(path) for path in owned}
            try:  # a Ctrl-C while W&B starts (seconds): what was made so far is still this writer's to discard
                SummaryWriter = _summary_writer_class()
                os.makedirs(workdir, exist_ok=True)
                # Named apart: names hold the second they were made in, and a writer made in the same
                # second as another on this workdir (a resume in one process) opened over its file.
                self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                                  filename_suffix=f".{secrets.token_hex(4)}")
                from tensorboardX.proto.summary_pb2 import Summary
                self._summary = Summary
                if use_wandb:
                    try:
                        self._wandb_run = _start_wandb(workdir, wandb, run_config or {})
                    except Exception as error:  # noqa: BLE001 -- any W&B start-up failure: one line
                        # Not logged in, no network, a bad entity: a traceback, and the workdir's
                        # claim stayed (only a ConfigError withdraws it), refusing a corrected rerun.
                        text = " ".join(str(error).split())[:160]
                        raise ConfigError(f"wandb.project={wandb.project!r}: Weights & Biases did not start "
                                          f"({type(error).__name__}: {text}); run `wandb login`, or set "
                                          "--config.wandb.mode=offline (or wandb.project='' to log locally only).") \
                            from None
            except BaseException:
                # Also where the caller keeps its claim (a resumed run): harmless, as discard removes
                # only what this writer added, none of which any run needs.
                self.discard_or_warn()
                raise

    def forget_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites them, so the log reads as one run. Event
        files cannot be rewritten: TensorBoard is told to purge their steps past `step` instead (a
        kill between checkpoints showed the redone steps twice)."""
        if self.enabled and self._tensorboard is not None:
            self._reopen_tensorboard(purge_step=step + 1)
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line a kill -9 cut short while it was appended: its step is redone
                if record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        write_text_atomically(self.path, "".join(kept))  # a kill during this rewrite must not lose the history
        if isinstance(self._before.get(self.path), int):  # a file from before: the records dropped here are
            # dropped by design (a run restarting), so discard cuts the file back to what is left, not to them
            self._before[self.path] = os.path.getsize(self.path)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {name: value for name, value in record.items()
                   if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if scalars:  # one event per step, not one per scalar: a sweep logging every step of small
            # models spent 0.85 ms of each step in 9 add_scalar calls, 0.27 ms this way (measured)
            self._tensorboard.file_writer.add_summary(self._summary(value=[
                self._summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()]),
                int(step))
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=int(step))

    def flush(self) -> None:
        """Write out what TensorBoard buffers (up to 120 s of events): called at each checkpoint, so a
        kill -9 loses no event of a step the rerun resumes after (steps up to the checkpoint were
        never redone, and were missing for good)."""
        if self._tensorboard is not None:
            self._reopen_tensorboard()

    def _reopen_tensorboard(self, purge_step: int | None = None) -> None:
        """Close the event file (which drains tensorboardX's queue: its flush() writes only what its
        thread has dequeued) and go on in a new one, named apart (see __init__)."""
        old, self._tensorboard = self._tensorboard, None
        old.close()
        self._tensorboard = _summary_writer_class()(old.logdir, purge_step=purge_step,
                                                    filename_suffix=f".{secrets.token_hex(4)}")

    def close(self) -> None:
        self._close()

    def _close(self, exit_code: int | None = None) -> None:
        # Each is let go of before it is closed: a close that raises is not tried again by the
        # caller's `finally` (which would replace the stop being handled).
        tensorboard, self._tensorboard = self._tensorboard, None
        run, self._wandb_run = self._wandb_run, None
        try:
            if tensorboard is not None:
                tensorboard.close()
        finally:
            if run is not None:
                run.finish() if exit_code is None else run.finish(exit_code=exit_code)

    def discard(self) -> None:
        """Close, then remove what this writer added to the workdir (metrics.jsonl's new records,
        its TensorBoard event file, a W&B id file and offline run), keeping what was there before
        it started: for a run whose workdir claim is withdrawn (nothing of it saved), whose curves a
        rerun would otherwise show beside its own. An online W&B run stays on the server, marked
        failed. A metrics.jsonl that was there is cut back to what it held, or, after `forget_after`,
        to what that kept: with no checkpoint, restore_or_init's forget_after(-1) dropped the earlier
        records by design (the run starts over), so the file is left empty, as a rerun would make it.
        Entries of a symlinked tensorboard/ or wandb/ that were there stay (shared log storage);
        the link itself is never removed. A second process writing to the same workdir at the same
        time is not supported: what it added would be removed too."""
        try:
            self._close(exit_code=1)  # a run about to be deleted did not finish
        finally:
            before, self._before = self._before, {}
            setup_files.remove_added(before, appended=self.path)

    def discard_or_warn(self) -> None:
        """`discard`, for a caller handling a stop (Ctrl-C, SIGTERM) or a bad input: an error while
        cleaning up (W&B's finish, a file it may not remove) is one warning line, and the stop goes
        on with its own line and exit code."""
        try:
            self.discard()
        except Exception as error:
            log.warning("could not remove the stopped setup's records from %s (%s: %s); remove them by hand if a "
                        "rerun shows them", os.path.dirname(self.path) or ".", type(error).__name__, error)


def _start_wandb(workdir: str, config: WandbConfig, run_config: Mapping[str, Any]) -> Any:
    """A W&B run whose id is kept in <workdir>/wandb_run_id, so rerunning the workdir resumes it."""
    import wandb  # optional dependency, imported only when asked for

    id_file = os.path.join(workdir, WANDB_ID_FILE)
    if os.path.exists(id_file):
        with open(id_file) as f:
            run_id = f.read().strip()
    else:
        run_id = secrets.token_hex(8)  # W&B ids: lowercase letters and digits
        with open(id_file, "w") as f:
            f.write(run_id + "\n")
    return wandb.init(project=config.project, entity=config.entity or None,
                      name=config.name or os.path.basename(os.path.abspath(workdir)), id=run_id, resume="allow",
                      dir=workdir, mode=config.mode, config=dict(run_config),
                      reinit="create_new")  # models trained together: one W&B run each, side by side


def _plain(value: Any) -> Any:
    """numpy / jax scalars -> Python numbers for JSON."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    array = np.asarray(value)
    return array.item() if array.ndim == 0 else array.tolist()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of <workdir>/metrics.jsonl, in order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def recorded_metrics(workdir: str) -> Iterator[dict[str, Any]]:
    """The records of <workdir>/metrics.jsonl in order, skipping a line a kill -9 cut short (process 0
    drops it on resume; another process may read first); none without the file (on this process)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def last_train_metrics(workdir: str, step: int) -> dict[str, float]:
    """The train metrics of <workdir>/metrics.jsonl's last train record at or before `step`, as
    the run that trained it returned them (its evaluation and throughput left out): a rerun with
    nothing left to train reports them again. {} when there is none (no file on this process)."""
    last = {}
    for record in recorded_metrics(workdir):
        if "loss" in record and record["step"] <= step:
            last = record
    return {k: v for k, v in last.items() if k != "step" and k not in THROUGHPUT_KEYS and not k.startswith("eval_")}


def model_size(config: ModelConfig, params: Any, target_len: int, source_len: int | None = None) -> dict[str, int]:
    """Parameter counts (total from the actual tree, the embedding share by sizing's
    convention) and training FLOPs per target token at these sequence lengths."""
    total = sizing.count_param_tree(params)
    embedding = sizing.param_counts(config).embedding
    flops = sizing.flops_per_token(config, target_len, source_len=source_len, include_embedding=True)
    return {"params_total": total, "params_embedding": embedding, "params_non_embedding": total - embedding,
            "train_flops_per_token": flops.train,
            "train_flops_per_token_without_attention": flops.train_without_attention}


def measure_peak_flops(devices: Sequence[jax.Device] | None = None, *, size: int = 1024,
                       dtype: Any = jnp.float32, repeats: int = 5) -> float:
    """Matmul FLOP/s of `devices` together (default: all): chained [size, size] matmuls on each
    device (two on CPU, four elsewhere), the best of `repeats` timed runs. A practical peak, below
    the data sheet's."""
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.asarray(devices), ("devices",))
    sharding = NamedSharding(mesh, PartitionSpec("devices"))
    n = len(devices)
    # One host-drawn matrix per operand, each device's shard built from it where it lives
    # (make_array_from_callback: no cross-process check or gather, unlike a device_put of a host
    # array onto a multi-process sharding): a matmul's speed does not depend on its values, and
    # drawing n x size x size normals with jax.random took 0.5 s of the 2.9 s the measurement cost
    # every training process on 8 fake CPU devices. On CPU two chained products per call (four
    # before) leave dispatch negligible (~0.2 s a call there); the best of five calls gave the same
    # peak as before, 1.79-1.84e11 FLOP/s against 1.77-1.82e11, alternating, in 1.4 s. Accelerators
    # not in the data-sheet table keep four: a product takes microseconds there.
    rng = np.random.default_rng(0)
    a, b = (jax.make_array_from_callback((n, size, size), sharding, lambda index, m=m: m)
            for m in (rng.standard_normal((1, size, size)).astype(dtype) for _ in range(2)))
    chain = 2 if devices[0].platform == "cpu" else 4

    @jax.jit
    def matmuls(a, b):
        for _ in range(chain):
            a = jnp.einsum("NIJ,NJK->NIK", a, b) * (1.0 / size)
        return a

    matmuls(a, b).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmuls(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return chain * n * 2 * size**3 / best


class Throughput:
    """tokens/s and MFU over the steps fetched since the last reading.

    The first step (compilation) is never timed, and `restart` drops time spent outside
    training (evaluation, checkpointing) from the current window.

    With K models in one program each member's tokens/s is its own (its share of the wall
    time), but MFU is the program's: the devices run all K models' FLOPs in that time, and a
    member's 1/K share read as if the machine idled ((K - 1)/K) of it.
    """

    def __init__(self, tokens_per_step: float, flops_per_token: float, peak_flops: float | None,
                 models_in_program: int = 1):
        self.tokens_per_step, self.flops_per_token, self.peak_flops = tokens_per_step, flops_per_token, peak_flops
        self.models_in_program = models_in_program
        self._start, self._steps = 0.0, -1

    def step_done(self) -> None:
        self._steps += 1
        if self._steps == 0:
            self._start = time.perf_counter()

    def restart(self) -> None:
        if self._steps >= 0:  # before the first fetched step there is nothing to drop
            self._start, self._steps = time.perf_counter(), 0

    def read(self) -> dict[str, float]:
        """{tokens_per_second, mfu (a fraction; when a peak is known)}; empty before a timed step."""
        if self._steps <= 0:
            return {}
        now = time.perf_counter()
        tokens_per_second = self._steps * self.tokens_per_step / max(now - self._start, 1e-9)
        self._start, self._steps = now, 0
        out = {"tokens_per_second": tokens_per_second}  # THROUGHPUT_KEYS: last_train_metrics leaves them out
        if self.peak_flops:
            out["mfu"] = tokens_per_second * self.models_in_program * self.flops_per_token / self.peak_flops
        return out


def _count(value: float) -> str:
    """12345 -> '12.3k': a rate short enough for a console line."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def weighted_z_loss(metrics: Mapping[str, Any], weight: float) -> dict[str, Any]:
    """`metrics` with every z_loss ("z_loss", or "<field>=<value>/z_loss" of K models trained
    together) as it enters the total loss, weight x raw value: the raw log-partition term (~30)
    printed beside the loss reads as if it were part of it even where its weight is 0."""
    return {k: v * weight if k == "z_loss" or k.endswith("/z_loss") else v for k, v in metrics.items()}


def console_line(step: int, total_steps: int, metrics: Mapping[str, float], *, z_loss_weight: float = 0.0) -> str:
    """One human line of a logged step: loss, z_loss as it enters the total (weight x raw value,
    the raw value stays in metrics.jsonl), learning rate, tokens/s, MFU, and eval loss when present."""
    parts = [f"step {step}/{total_steps}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if z_loss_weight and "z_loss" in metrics:
        parts.append(f"z_loss {z_loss_weight * metrics['z_loss']:.2e}")
    if "learning_rate" in metrics:
        parts.append(f"lr {metrics['learning_rate']:.2e}")
    if "tokens_per_second" in metrics:
        parts.append(f"{_count(metrics['tokens_per_second'])} tok/s")
    if "mfu" in metrics:
        parts.append(f"MFU {100 * metrics['mfu']:.1f}%")
    if "eval_loss" in metrics:
        parts.append(f"eval_loss {metrics['eval_loss']:.4f}")
    return " | ".join(parts)


class ConsoleProgress:
    """The run's console: a tqdm bar whose postfix is the latest `console_line` on a terminal;
    plain lines, one per report and never a carriage return, when `stream` is not a terminal
    (a redirected log, a SLURM output file). Reports at eval/checkpoint steps stay above the bar."""

    def __init__(self, total_steps: int, initial_step: int, *, enabled: bool = True, z_loss_weight: float = 0.0,
                 stream: Any = None):
        import sys
        self.total_steps, self.z_loss_weight, self.enabled = total_steps, z_loss_weight, enabled
        self._stream = sys.stderr if stream is None else stream
        self._bar = None
        if enabled and getattr(self._stream, "isatty", lambda: False)():
            import tqdm
            self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                                  file=self._stream, dynamic_ncols=True)

    def update(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def report(self, step: int, metrics: Mapping[str, float], *, keep: bool = False) -> None:
        """Show `step`'s metrics; `keep` prints the line above a terminal's bar too (eval steps)."""
        if not self.enabled:
            return
        line = console_line(step, self.total_steps, metrics, z_loss_weight=self.z_loss_weight)
        if self._bar is None:
            self._stream.write(line + "\n")
            self._stream.flush()
        else:
            self._bar.set_postfix_str(line.split(" | ", 1)[-1], refresh=False)
            if keep:
                self._bar.write(line, file=self._stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
