"""prepare_dataset: the composed pipeline on a datatrove executor, published atomically with a report.

    report = prepare_dataset(resolve_inputs("corpus/**/*.md"), output_dir="/data/tfds",
                             name="my_corpus", config=PreparationConfig())

Work happens in `{output_dir}/.{name}-preparing-{fingerprint}/` (the fingerprint covers the
inputs' paths, sizes and mtimes, the config, and what its blocklist and task files hold).
datatrove marks each finished task there, so rerunning after an interruption continues where
it stopped; the last step renames the finished dataset to `{output_dir}/{name}/{version}`,
the only way a dataset appears there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
from typing import Any, Iterator, Mapping, Sequence

from datatrove.pipeline.base import PipelineStep

from research.atomic_files import unwritable_reason
from research.data.config import DataError
from research.data.preparation import engine_steps, report, tfds_output
from research.data.preparation.config import PreparationConfig
from research.data.preparation.counters import merge_counters
from research.data.preparation.decontamination import ContaminationIndex, contamination_index, decontamination_items
from research.data.preparation.document_stages import blocklist_words
from research.data.preparation.inputs import DocumentReader, InputSpec
from research.data.preparation.lsh import lsh_bands

REPORT_NAME = "preparation_report.json"

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything of one preparation lives."""

    output_dir: str
    name: str
    version: str
    fingerprint: str

    @property
    def final(self) -> str:
        return os.path.join(self.output_dir, self.name, self.version)

    @property
    def work(self) -> str:
        return os.path.join(self.output_dir, f".{self.name}-preparing-{self.fingerprint}")

    @property
    def partitions(self) -> str:  # documents after the document stages, by hash partition and reading task
        return os.path.join(self.work, "partitions")

    @property
    def unique(self) -> str:  # each partition after exact dedup, sorted by key
        return os.path.join(self.work, "unique")

    @property
    def signatures(self) -> str:  # minhash signatures
        return os.path.join(self.work, "signatures")

    @property
    def buckets(self) -> str:  # minhash duplicate pairs per band
        return os.path.join(self.work, "buckets")

    @property
    def remove_ids(self) -> str:  # minhash clusters: positions to remove per partition
        return os.path.join(self.work, "remove_ids")

    @property
    def shards(self) -> str:  # array_record shards per partition and split
        return os.path.join(self.work, "shards")

    @property
    def counters(self) -> str:  # per-stage counters per task
        return os.path.join(self.work, "counters")

    @property
    def logs(self) -> str:  # datatrove logs and completion marks per stage
        return os.path.join(self.work, "logs")

    @property
    def staging(self) -> str:  # the dataset being assembled
        return os.path.join(self.work, "staging")

    @property
    def read_tasks_record(self) -> str:  # how many tasks split the reading (stage 1) of this work dir
        return os.path.join(self.work, "read_tasks.json")


def _file_contents(config: PreparationConfig, words: Sequence[str],
                   items: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """Digests of what the config's files hold (the config names only their paths): a blocklist
    file or a task file edited in place must change the fingerprint, or a rerun would return the
    old dataset with documents that should now be dropped. Likewise the items decontamination
    matches (a catalog task whose generator changed), and the versions of the document stages'
    matching and of the word and sentence splitting (when a stage uses it)."""
    from research.data.preparation.document_stages import DOCUMENT_STAGES_VERSION
    contents = {"document_stages": str(DOCUMENT_STAGES_VERSION)}
    if config.blocklist.words_file:
        contents["blocklist_words"] = hashlib.sha256("\n".join(words).encode()).hexdigest()
    if (config.gopher_quality.enabled or config.gopher_repetition.enabled or config.c4_quality.enabled
            or config.dedup.near):  # the stages that split words (with WORDS); absent, nothing changes
        from research.data.preparation.document_stages import WORDS_VERSION
        contents["word_splitting"] = str(WORDS_VERSION)
    items = decontamination_items(config.decontamination) if items is None else items
    if items:
        contents["task_items"] = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    return contents


def fingerprint(spec: InputSpec, config: PreparationConfig, words: Sequence[str] | None = None,
                items: Mapping[str, Sequence[str]] | None = None) -> str:
    """A digest of what decides the output (the executor does not): the inputs, the config and the
    contents of the files it names. `words`, `items`: the blocklist and the decontamination items,
    if already read."""
    decisive = config.to_dict()
    decisive.pop("execution")
    contents = _file_contents(config, blocklist_words(config.blocklist) if words is None else words, items)
    text = json.dumps([spec.fingerprint(), decisive] + ([contents] if contents else []), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Finalise(PipelineStep):
    """The last task: assemble the TFDS dataset and report in the work dir, then rename it into place."""

    name = "assemble, report, publish"
    type = "WRITER"

    def __init__(self, layout: Layout, description: dict[str, Any]):
        super().__init__()
        self.layout, self.description = layout, description

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        layout = self.layout
        staged = os.path.join(layout.staging, layout.version)
        stages = merge_counters(layout.counters, self.description["config"]["max_examples"])
        try:
            splits = tfds_output.assemble_dataset(layout.shards, staged, name=layout.name,
                                                  description=f"Prepared by research.data.preparation from "
                                                              f"{self.description['input']}.")
        except DataError as error:  # say which rules removed everything, in the same line
            raise DataError(f"{error} Drops: {report.drop_summary(stages)}.") from None
        report.write_report(staged, report.build_report(stages, splits, self.description))
        os.makedirs(os.path.dirname(layout.final), exist_ok=True)
        os.rename(staged, layout.final)  # atomic: the dataset appears complete or not at all
        # The intermediate copies of the corpus go now (a cluster run has no driver to do it);
        # the logs stay with the work dir, which the local driver removes when it returns.
        for intermediate in (layout.partitions, layout.unique, layout.signatures, layout.buckets,
                             layout.remove_ids, layout.shards, layout.staging):
            shutil.rmtree(intermediate, ignore_errors=True)


READ_STAGE = "1_read_and_filter"


def reading_tasks(layout: Layout, requested: int) -> int:
    """How many tasks read this work dir's inputs: `requested`, or the count its reading started with.

    Task r of n reads files r, r+n, ... and datatrove skips the tasks it marked complete, so
    resuming with another n would skip files (finished ranks of the old split) or read some
    twice (old partition files of ranks the new split no longer has). So the first run records
    n; a finished reading is reused whatever a rerun asks (the later stages read the partitions
    of every task, sorted, so they do not depend on n), and an unfinished one continues only
    with its own n: a DataError names both, before anything runs or is deleted.
    """
    recorded = None
    try:
        with open(layout.read_tasks_record, encoding="utf-8") as f:
            recorded = int(json.load(f)["read_tasks"])
    except FileNotFoundError:
        # A work dir started before the record existed: datatrove's own description of the
        # stage (written as its tasks start) says how many there were.
        try:
            with open(os.path.join(layout.logs, READ_STAGE, "executor.json"), encoding="utf-8") as f:
                recorded = int(json.load(f)["world_size"])
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
    if recorded == requested:
        return recorded
    # No reading task ever started (datatrove writes the stage's executor.json as they start):
    # a run that failed before reading (Ray missing, a failed submit) read nothing, so its
    # count binds nothing.
    started = os.path.isfile(os.path.join(layout.logs, READ_STAGE, "executor.json"))
    if recorded is None or not started:
        os.makedirs(layout.work, exist_ok=True)
        tmp = f"{layout.read_tasks_record}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"read_tasks": requested}, f)
        os.replace(tmp, layout.read_tasks_record)
        return requested
    completions = os.path.join(layout.logs, READ_STAGE, "completions")
    if all(os.path.isfile(os.path.join(completions, f"{rank:05d}")) for rank in range(recorded)):
        return recorded  # finished: its tasks are all skipped, and nothing after depends on the count
    raise DataError(f"{layout.work} is partly read with execution.read_tasks={recorded}, not {requested} (another "
                    f"split of the inputs would lose or repeat documents); rerun with "
                    f"--config.execution.read_tasks={recorded} to continue, or delete {layout.work} to read "
                    f"everything again with {requested}.")


def _pipelines(spec: InputSpec, layout: Layout, config: PreparationConfig, contamination: ContaminationIndex | None,
               description: dict[str, Any], words: Sequence[str] | None = None) -> list[tuple[str, list, int]]:
    """(stage name, datatrove pipeline, tasks) in dependency order."""
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig

    from research.data.preparation.document_stages import SHINGLE_WORDS

    partitions, dedup = config.output.num_shards, config.dedup
    bands, rows = lsh_bands(dedup.jaccard_threshold, dedup.num_permutations)
    minhash = MinhashConfig(n_grams=dedup.shingle_size, num_buckets=bands, hashes_per_bucket=rows, seed=dedup.seed,
                            norm_config=TextNormConfig(norm_numbers=dedup.normalize_numbers),
                            hash_config=HashConfig(precision=64, hash_fc="sha1"))
    partition_steps: list = [engine_steps.PartitionReader(layout.partitions)]
    if dedup.exact:
        partition_steps.append(engine_steps.ExactDedupStep(layout.counters, config.max_examples))
    stored: list = [engine_steps.StoredPartitionReader(layout.unique)]
    if dedup.near:
        partition_steps += [engine_steps.PartitionStore(layout.unique),
                            MinhashDedupSignature(layout.signatures, config=minhash, language=SHINGLE_WORDS)]
        stored.append(engine_steps.NearDedupStep(MinhashDedupFilter(layout.remove_ids), layout.counters,
                                                 config.max_examples))
    else:
        partition_steps.append(engine_steps.PartitionStore(layout.unique))
    stored.append(tfds_output.ShardWriter(layout.shards, config.output.validation_fraction))
    stages = engine_steps.DocumentStagesStep(config, contamination, layout.counters, words)
    pipelines = [
        (READ_STAGE, [DocumentReader(spec), stages, engine_steps.PartitionWriter(layout.partitions, partitions)],
         config.execution.read_tasks),
        ("2_exact_dedup", partition_steps, partitions),
    ]
    if dedup.near:
        pipelines += [("3_minhash_buckets", [MinhashDedupBuckets(layout.signatures, layout.buckets, config=minhash)], bands),
                      ("4_minhash_clusters", [MinhashDedupCluster(layout.buckets, layout.remove_ids, config=minhash)], 1)]
    pipelines += [("5_near_dedup_and_shards", stored, partitions),
                  ("6_publish", [Finalise(layout, description)], 1)]
    return pipelines


# What datatrove's worker processes import; the forkserver imports it once and forks every
# worker from there (otherwise each worker of each stage spends seconds on these imports).
_WORKER_PRELOAD = ["research.data.preparation.prepare", "tensorflow_datasets", "array_record.python.array_record_module"]


def _executors(pipelines: list[tuple[str, list, int]], layout: Layout, config: PreparationConfig) -> list:
    execution, executors, previous = config.execution, [], None
    if execution.executor == "local" and execution.workers > 1:
        import multiprocess.forkserver
        multiprocess.forkserver.set_forkserver_preload(_WORKER_PRELOAD)
    for stage, pipeline, tasks in pipelines:
        logging_dir = os.path.join(layout.logs, stage)
        if execution.executor == "local":
            from datatrove.executor import LocalPipelineExecutor
            executor = LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(execution.workers, tasks),
                                             logging_dir=logging_dir, depends=previous)
        elif execution.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor
            executor = SlurmPipelineExecutor(
                pipeline, tasks=tasks, time=execution.slurm_time, partition=execution.slurm_partition,
                cpus_per_task=execution.slurm_cpus_per_task, mem_per_cpu_gb=execution.slurm_mem_per_cpu_gb,
                logging_dir=logging_dir, depends=previous, job_name=f"prepare_{layout.name}_{stage}",
                env_command=execution.slurm_env_command or None)
        else:
            try:
                from datatrove.executor.ray import RayPipelineExecutor
                import ray  # noqa: F401  (datatrove imports it lazily; fail here, in one line)
            except ImportError:
                raise DataError("execution: executor='ray' needs Ray; pip install 'ray[default]'.") from None
            executor = RayPipelineExecutor(pipeline, tasks=tasks, workers=execution.workers,
                                           logging_dir=logging_dir, depends=previous)
        executors.append(executor)
        previous = executor
    return executors


# TFDS finds a dataset's files by a pattern whose name part is ASCII ([a-zA-Z]\w*); pretraining
# looks it up lower-case. Its file names add up to ~45 characters ('.NAME-preparing-<12 hex>',
# 'NAME-validation.array_record-00000-of-00004'), and file systems allow 255 bytes (some 143).
_NAME = re.compile(r"[a-z][a-z0-9_]*")
MAX_NAME_CHARS = 96


def check_destination(output_dir: str, name: str) -> None:
    """A DataError unless `name` is a usable dataset name and `output_dir` is (or can be made) a
    writable directory; cheap, so callers run it before reading any input."""
    if not _NAME.fullmatch(name or ""):
        raise DataError(f"--name={name!r} must be a TFDS dataset name: lower-case ASCII letters, digits and '_', "
                        "starting with a letter (e.g. 'my_corpus').")
    if len(name) > MAX_NAME_CHARS:
        raise DataError(f"--name is {len(name)} characters long; give at most {MAX_NAME_CHARS} (the dataset's file "
                        "names add ~45 to it, and file systems cap names at 255 bytes, some at 143).")
    if _registered_tfds_name(name):
        raise DataError(f"--name={name!r} is a dataset TFDS itself defines: reading it back by name would load TFDS's "
                        f"{name} (its own builder and version), not this one; choose another name, e.g. 'my_{name}'.")
    reason = unwritable_reason(output_dir)
    if reason:
        raise DataError(f"--output_dir={output_dir!r}: {reason}; give a writable directory (the dataset goes in "
                        "OUTPUT_DIR/NAME/VERSION).")


def _registered_tfds_name(name: str) -> bool:
    import tensorflow_datasets as tfds
    try:
        tfds.builder_cls(name)
    except Exception:  # DatasetNotFoundError, or a registered builder whose module fails to import  # noqa: BLE001
        return False
    return True


def read_report(dataset_dir: str) -> dict[str, Any]:
    with open(os.path.join(dataset_dir, REPORT_NAME), encoding="utf-8") as f:
        return json.load(f)


def prepare_dataset(spec: InputSpec, *, output_dir: str, name: str, config: PreparationConfig) -> dict[str, Any]:
    """Run (or resume, or find already done) the preparation; returns the report.

    With the local executor this returns when the dataset is published; with slurm / ray it
    returns once the jobs are submitted (the report then has only `submitted`).
    """
    check_destination(output_dir, name)
    output_dir = os.path.abspath(output_dir)
    spec = spec.excluding(output_dir)
    words = blocklist_words(config.blocklist)  # read once: the workers use what the fingerprint covers
    items = decontamination_items(config.decontamination)  # read once: the index is built from what is fingerprinted
    layout = Layout(output_dir, name, config.output.version, fingerprint(spec, config, words, items))
    done = _published_report(layout)
    if done is not None and not os.path.isdir(layout.work):
        return done
    with _work_dir_lock(layout):
        done = _published_report(layout)  # published by a run that held the lock a moment ago
        if done is not None:
            # A run killed between publishing and removing its work dir left it (up to a few copies
            # of the corpus, under a dot name); nothing can resume it.
            shutil.rmtree(layout.work, ignore_errors=True)
            return done
        return _prepare(spec, layout, config, words, items)


def _published_report(layout: Layout) -> dict[str, Any] | None:
    """The report of the dataset this preparation publishes, if it is published; a DataError if
    another preparation's dataset holds its place."""
    if not os.path.isdir(layout.final):
        return None
    try:
        done = read_report(layout.final)
    except (OSError, ValueError):
        done = {}
    if done.get("fingerprint") == layout.fingerprint:
        return done
    raise DataError(f"{layout.final} already holds a dataset prepared from other inputs or settings (or by an "
                    "earlier version of this code); delete it or choose another --name.")


@contextlib.contextmanager
def _work_dir_lock(layout: Layout) -> Iterator[None]:
    """An exclusive flock in the work dir for the whole preparation. Two runs of one command in one
    work dir (a command started twice) wrote over each other's files and broke it for every later
    rerun (datatrove's 'Hash order error', KeyErrors) until it was deleted by hand; the second is now
    refused in one line. A POSIX record lock (lockf), not flock: the kernel drops it when its holder
    dies, and a process the holder forked (datatrove's manager) does not inherit it; an inherited
    flock outlived a killed run in that orphan and refused every rerun."""
    os.makedirs(layout.work, exist_ok=True)
    with open(os.path.join(layout.work, ".lock"), "a") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EACCES or EAGAIN: held by another process
            raise DataError(f"another prepare_data run is preparing {layout.name!r} from these inputs and settings "
                            f"in {layout.work}; let it finish (then rerun for its report) or stop it first.") from None
        try:
            yield
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)


def _prepare(spec: InputSpec, layout: Layout, config: PreparationConfig, words: Sequence[str],
             items: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """prepare_dataset's work, under the work dir's lock."""
    name = layout.name
    contamination = contamination_index(config.decontamination, items) if (
        config.decontamination.tasks or config.decontamination.all_catalog_tasks) else None
    read_tasks = reading_tasks(layout, config.execution.read_tasks)
    if read_tasks != config.execution.read_tasks:  # a finished reading reused: run (and report) its count
        config = dataclasses.replace(config, execution=dataclasses.replace(config.execution, read_tasks=read_tasks))
    description = report.description(spec, config, layout.fingerprint, contamination,
                                     lsh_bands(config.dedup.jaccard_threshold, config.dedup.num_permutations))
    executors = _executors(_pipelines(spec, layout, config, contamination, description, words), layout, config)
    try:
        executors[-1].run()  # runs (or submits) the chain of dependencies first
    except DataError:
        # Bad input: fixing it changes the fingerprint, so this work dir could never be resumed.
        shutil.rmtree(layout.work, ignore_errors=True)
        raise
    if config.execution.executor != "local":
        return {"submitted": True, "work_dir": layout.work, "dataset_dir": layout.final}
    if not os.path.isdir(layout.final):
        raise DataError(f"preparation of {name!r} stopped before publishing; see the logs under {layout.logs} "
                        "and rerun the same command to continue.")
    shutil.rmtree(layout.work, ignore_errors=True)
    _warn_of_other_work_dirs(layout)
    return read_report(layout.final)


def _warn_of_other_work_dirs(layout: Layout) -> None:
    """Name the work dirs of this name's other fingerprints: an interrupted preparation whose
    inputs or settings then changed can never be resumed, and its dir would stay, unseen
    (a dot name), holding up to a copy of the corpus. Not deleted here: another preparation
    of the same name with other settings may still be running in it."""
    for work in sorted(glob.glob(os.path.join(glob.escape(layout.output_dir), f".{glob.escape(layout.name)}-preparing-*"))):
        if work != layout.work and os.path.isdir(work):
            size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(work) for f in files)
            log.warning("%s (%.1f MB) is the work dir of a preparation of %r with other inputs or settings, left "
                        "by an interrupted run; delete it unless that preparation is still running.",
                        work, size / 1e6, layout.name)
