"""Evaluate a zoo model on ability tasks: a training run's checkpoint or a Hugging Face folder.

    python -m experiments.evaluate --checkpoint=/tmp/gpt_tiny --tasks=addition_3digit,copying --num_shots=0,1,5
    python -m experiments.evaluate --checkpoint=/tmp/gpt_tiny --step=200 --tokenizer=char --tasks=addition
    python -m experiments.evaluate --hf_dir=/path/to/gpt2 --tasks=unscramble_anagram1 --num_shots=0,4

--checkpoint is a run's workdir (experiments.pretrain); its latest step and its own
SentencePiece tokenizer are used unless --step / --tokenizer say otherwise (--step=best: the
kept step with the lowest eval loss, which checkpoint.keep_best keeps). --tokenizer is
'char', a SentencePiece .model file, or a Hugging Face tokenizer folder (the default for
--hf_dir). Task names: research/evaluation/task_catalog.py, or a .json task file.

Prints the table and writes <output_dir>/<name>.json and .csv (one row per task and shot
count; name: step_<N> for a checkpoint, the folder's name for --hf_dir). output_dir defaults
to <checkpoint>/evaluations; for --hf_dir nothing is written unless --output_dir is given
(a model folder may be read-only, and the current directory is nobody's). Earlier results
are never replaced silently: when <name>.json exists the new table goes to <name>_v2.json
(then _v3, ...) and the log says so (evaluations finishing together get one name each);
--overwrite replaces it instead. The JSON's metadata records the options that produced it.
Bad input (unknown task, no checkpoint, more shots than a few-shot split holds, an
unwritable output_dir) fails with one line before anything is compiled.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from absl import app, flags, logging

from research.compile_interrupts import ctrl_c_after_compiles
from research.models.config import ConfigError

if TYPE_CHECKING:
    from research.training.checkpoint_loading import Step


def evaluate_model(*, tasks: Sequence[str], num_shots: Sequence[int] | None = None, checkpoint: str | None = None,
                   step: Step = None, hf_dir: str | None = None, tokenizer: str | None = None,
                   num_test: int = 100, num_train: int = 64, seed: int = 0, batch_size: int = 16,
                   dtype: str | None = None, output_dir: str | None = None, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Evaluate one model on every (task, shots) pair (num_shots None: each task at its own count, a
    task file's num_fewshot, else 0); print (and write) the table; return its rows."""
    from research.training.checkpoint_loading import checkpoint_root, load_checkpoint, load_hf, run_workdir
    from research.evaluation.suite import plan_suite

    if (checkpoint is None) == (hf_dir is None):
        raise ConfigError("give exactly one of --checkpoint=RUN_DIR and --hf_dir=HF_FOLDER.")
    if batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size} must be >= 1.")
    if num_test < 1:
        raise ConfigError(f"--num_test={num_test} must be >= 1 (evaluation documents per generated task).")
    if num_train < 0:
        raise ConfigError(f"--num_train={num_train} must be >= 0 (few-shot pool per generated task).")
    if output_dir is not None:
        check_writable(output_dir)
    entries = plan_suite(list(tasks), None if num_shots is None else list(num_shots), num_test=num_test,
                         num_train=num_train, seed=seed)
    if checkpoint is not None:
        root = checkpoint_root(checkpoint)  # a directory without checkpoints fails here, before any loading
        if output_dir is None:  # the default needs only the root: refused before the checkpoint is read
            output_dir = os.path.join(run_workdir(root), "evaluations")
            check_writable(output_dir)
        overrides = {"dtype": dtype} if dtype else {}
        loaded = load_checkpoint(root, step=step, tokenizer=tokenizer, **overrides)
        name = f"step_{loaded.step}"
    else:
        if step is not None:
            raise ConfigError("--step selects a checkpoint step; it does not apply to --hf_dir.")
        loaded = load_hf(hf_dir, tokenizer=tokenizer, **({"dtype": dtype} if dtype else {}))
        name = os.path.basename(os.path.abspath(hf_dir))  # "." named the files "..json", hidden
    stem = None if output_dir is None else os.path.join(output_dir, name)
    # Every option that can change a number in the table (the rest, tasks and shots, are in its
    # rows): runs differing only in --seed wrote step_N.json and step_N_v2.json that no file told apart.
    # tokenizer None: the run's (or folder's) own; dtype None: as trained (model_config holds the one used).
    settings = {"seed": seed, "num_test": num_test, "num_train": num_train, "tokenizer": tokenizer,
                "dtype": dtype, "batch_size": batch_size}
    return _run(loaded, entries, batch_size, stem, overwrite, log, settings=settings)


def check_tasks_fit(entries, harness) -> None:
    """Every task before the first runs (a failure after earlier tasks had been evaluated lost
    their rows): each task's kind suits the model's family (harness.unsupported), a decoder's
    generated tokens, which share its context with the prompt, leave room for a prompt, and every
    target (or choice) fits max_length as the scoring tokenizes it (evaluator.misfit)."""
    from research.evaluation.evaluator import misfit

    config = harness.config
    family, max_length, model_name = config.family, harness.max_length, config.name
    for entry in entries:
        spec = entry.task.spec
        reason = harness.unsupported(spec.output_type)
        if reason:
            raise ConfigError(f"task {entry.name}: {reason} Drop it from --tasks.")
        if family == "decoder" and spec.output_type == "generate_until" and spec.max_new_tokens >= max_length:
            raise ConfigError(f"task {entry.name} generates up to {spec.max_new_tokens} tokens, which leaves no "
                              f"room for its prompt in {model_name}'s context of {max_length}; drop it from --tasks "
                              "or evaluate a model with a longer context.")
    # Tokenizing every document is the slow part: only once every task passed the checks above.
    for entry in entries:
        reason = misfit(harness, entry.task, num_fewshot=entry.num_fewshot)
        if reason:
            raise ConfigError(f"task {entry.name}: {reason}")


def check_writable(directory: str) -> None:
    """ConfigError unless `directory` exists writable or can be created; creates nothing."""
    from research.atomic_files import unwritable_reason
    reason = unwritable_reason(directory)
    if reason:
        raise ConfigError(f"output directory {directory!r}: {reason}; pass another --output_dir.")


def reserve_stem(stem: str) -> str:
    """`stem` if neither stem.json nor stem.csv exists, else the first free stem_v2, stem_v3, ...;
    its .json is created empty, so a concurrent caller gets another name (write_rows then replaces it)."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)  # output_dir may not exist yet
    candidate, version = stem, 1
    while True:
        # O_EXCL: checking that a name is free and writing it later let two evaluations finishing
        # together both pick it, and the later replaced the earlier.
        try:
            os.close(os.open(candidate + ".json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            pass
        else:
            if not os.path.exists(candidate + ".csv"):
                return candidate
            os.remove(candidate + ".json")  # a .csv left without its .json still holds results
        version += 1
        candidate = f"{stem}_v{version}"


def write_results(rows: Sequence[dict[str, Any]], stem: str, overwrite: bool,
                  metadata: dict[str, Any]) -> tuple[dict[str, str], str]:
    """Write rows to `stem` (overwrite) or to the name reserve_stem gives; (write_rows' paths, the stem used)."""
    from research.evaluation.results_table import write_rows

    if overwrite:
        return write_rows(rows, stem, metadata=metadata), stem
    target = reserve_stem(stem)
    try:
        return write_rows(rows, target, metadata=metadata), target
    except BaseException:
        with contextlib.suppress(OSError):  # the empty placeholder would hold the name for nothing
            if os.path.getsize(target + ".json") == 0:
                os.remove(target + ".json")
        raise


def _run(loaded, entries, batch_size: int, stem: str | None, overwrite: bool,
         log: Callable[[str], None], *, settings: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    from research.evaluation.harness import Harness
    from research.evaluation.results_table import format_table
    from research.evaluation.suite import computed_metrics, run_suite
    from research.models import sizing

    # A prefix-LM decoder is scored and generated from with its context read as it was trained.
    harness = Harness(loaded.model, loaded.params, loaded.tokenizer, batch_size=batch_size, stop_ids=loaded.stop_ids,
                      bidirectional_prompt=loaded.bidirectional_prompt)
    config = loaded.model.config
    check_tasks_fit(entries, harness)
    counts = sizing.param_counts(config)
    identity = {"model": config.name, "step": loaded.step, "params_non_embedding": counts.non_embedding}
    log(f"evaluating {loaded.source} ({config.name}, {sizing.human_count(counts.total)} params) on "
        f"{len(entries)} task/shot pairs")
    rows = []
    for entry in entries:
        start = time.perf_counter()
        row = {**identity, **run_suite(harness, [entry])[0]}
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        log(f"  {entry.name} {entry.num_fewshot}-shot: {row['seconds']:.1f} s")
    # Every metric a task computed, in the tasks' order: a fixed list left out word_perplexity,
    # bits_per_byte, is_greedy, ..., which without --output_dir were then shown nowhere.
    log(format_table(rows, ["task", "num_shots", "num_examples", *computed_metrics(entries)]))
    if stem is None:
        log("not written: pass --output_dir=DIR to keep this table as JSON and CSV.")
        return rows
    import jax
    if jax.process_index() == 0:  # on several hosts every process holds the same rows: one writes
        # The free name is reserved only now, after the long work, so an evaluation started later
        # but finishing first takes the lower version.
        replaced = overwrite and os.path.exists(stem + ".json")
        metadata = {"source": loaded.source, "model_config": config.to_dict(), "settings": settings or {}}
        paths, target = write_results(rows, stem, overwrite, metadata)
        note = (" (replacing the earlier results: --overwrite)" if replaced else
                f" ({stem}.json holds earlier results, kept; --overwrite replaces them)" if target != stem else "")
        log(f"wrote {paths['json']} and {paths['csv']}{note}")
    else:
        log("the results are written by process 0")
    if jax.process_count() > 1:  # no process exits before the files exist
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("experiments.evaluate: results written")
    return rows


def _shots(values: Sequence[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--num_shots={','.join(values)} must be comma-separated integers, e.g. 0,1,5.") from None


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module (tests, notebooks) adds no
    # global flags that could collide with another entry point's.
    flags.DEFINE_string("checkpoint", None, "A training run's workdir (or its checkpoints/ folder).")
    flags.DEFINE_string("step", None, "Checkpoint step to evaluate (default: the latest; 'best': the kept step "
                        "with the lowest eval loss).")
    flags.DEFINE_string("hf_dir", None, "A Hugging Face checkpoint folder, instead of --checkpoint.")
    flags.DEFINE_string("tokenizer", None, "'char', a SentencePiece .model, or a HF tokenizer folder.")
    flags.DEFINE_list("tasks", ["addition_3digit"], "Task names (research/evaluation/task_catalog.py) or .json files.")
    flags.DEFINE_list("num_shots", [], "Few-shot example counts, e.g. 0,1,5; default: each task's own (a task "
                      "file's num_fewshot, else 0).")
    flags.DEFINE_integer("num_test", 100, "Evaluation documents per generated task.", lower_bound=1)
    flags.DEFINE_integer("num_train", 64, "Few-shot pool size per generated task.", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Seed of the generated tasks' documents.")
    flags.DEFINE_integer("batch_size", 16, "Rows per jitted scoring / generation call.", lower_bound=1)
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: as trained).")
    flags.DEFINE_string("output_dir", None, "Where to write the results (see the module docstring).")
    flags.DEFINE_bool("overwrite", False, "Replace <name>.json/.csv if they exist (default: write <name>_v2, ...).")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    ctrl_c_after_compiles()  # a Ctrl-C mid-compile must not end in a segfault at exit
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from research.data import DataError

    try:
        from research.training.checkpoint_loading import parse_step
        evaluate_model(tasks=f.tasks, num_shots=_shots(f.num_shots) or None, checkpoint=f.checkpoint,
                       step=parse_step(f.step),
                       hf_dir=f.hf_dir, tokenizer=f.tokenizer, num_test=f.num_test, num_train=f.num_train,
                       seed=f.seed, batch_size=f.batch_size, dtype=f.dtype, output_dir=f.output_dir,
                       overwrite=f.overwrite)
    except (ConfigError, DataError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    from experiments.cli import parse_flags
    _define_flags()
    app.run(main, flags_parser=parse_flags)
