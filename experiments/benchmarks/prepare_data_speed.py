"""Data preparation throughput: `python -m experiments.benchmarks.prepare_data_speed [--megabytes=8 --workers=1,2]`.

Generates a corpus of --megabytes of English-like documents (one .jsonl file per 500
documents; 10% exact and 10% near duplicates, some short or repetitive ones), then runs the
whole pipeline (default `web` preset: standardise, Gopher rules, decontamination against
every research.evaluation catalog task, exact and MinHash dedup, array_record output) once
per worker count, alternating over --repeats rounds so both see the same machine load.
Reports documents/s and MB/s of input (end to end: engine start-up, all stages, publishing)
and the 1-minute load average before each run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from typing import Sequence

from absl import app, flags

_MEGABYTES = flags.DEFINE_float("megabytes", 8.0, "Size of the generated corpus.")
_WORKERS = flags.DEFINE_list("workers", ["1", "2"], "Worker counts to time.")
_READ_TASKS = flags.DEFINE_integer("read_tasks", 4, "datatrove tasks reading the input.")
_SHARDS = flags.DEFINE_integer("shards", 4, "Output shards (= partition tasks).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Rounds; each round runs every worker count once.")


_VOCABULARY = ("river valley mill stone school morning lunch friend garden herb house cook library student "
               "coffee note winter storm mountain village food ocean climate planet market bread cheese fruit "
               "farmer hill truck music festival square light midnight bridge train station harbour ship "
               "island forest meadow field castle tower window door").split()
_STOP_WORDS = ("the", "and", "of", "to", "with", "that", "have", "be")


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_VOCABULARY) if rng.random() < 0.75 else rng.choice(_STOP_WORDS) for _ in range(n)]


def generate_corpus(folder: str, megabytes: float, seed: int = 0) -> tuple[int, int]:
    """JSONL files of generated documents; returns (documents, bytes)."""
    rng = random.Random(seed)
    docs, size, target = [], 0, int(megabytes * 1e6)
    while size < target:
        kind = rng.random()
        if kind < 0.1 and docs:
            text = rng.choice(docs)  # exact duplicate
        elif kind < 0.2 and docs:
            words = rng.choice(docs).split(" ")
            words[rng.randrange(len(words))] = "variant"
            text = " ".join(words)  # near duplicate
        elif kind < 0.25:
            text = " ".join(_words(rng, 20)) + "."  # short: Gopher drops it
        else:
            words = _words(rng, rng.randint(150, 600))
            text = "\n".join(" ".join(words[i:i + 12]).capitalize() + "." for i in range(0, len(words), 12))
        docs.append(text)
        size += len(text.encode())
    os.makedirs(folder, exist_ok=True)
    for start in range(0, len(docs), 500):
        with open(os.path.join(folder, f"part_{start // 500:04d}.jsonl"), "w") as f:
            for text in docs[start:start + 500]:
                f.write(json.dumps({"text": text}) + "\n")
    return len(docs), size


def measure(workers: Sequence[int], megabytes: float, read_tasks: int, shards: int, repeats: int) -> list[dict]:
    from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs
    root = tempfile.mkdtemp(prefix="prepare_speed_")
    rows = []
    try:
        num_docs, num_bytes = generate_corpus(os.path.join(root, "corpus"), megabytes)
        spec = resolve_inputs(os.path.join(root, "corpus"))
        for round_index in range(repeats):
            for count in workers:
                out = os.path.join(root, f"out_{count}_{round_index}")
                config = PreparationConfig.from_dict(
                    {"execution": {"workers": count, "read_tasks": read_tasks}, "output": {"num_shards": shards}})
                load = open("/proc/loadavg").read().split()[0]
                start = time.perf_counter()
                report = prepare_dataset(spec, output_dir=out, name="speed", config=config)
                seconds = time.perf_counter() - start
                rows.append({"workers": count, "documents": num_docs, "megabytes": num_bytes / 1e6,
                             "seconds": seconds, "docs_per_s": num_docs / seconds,
                             "mb_per_s": num_bytes / 1e6 / seconds, "kept": report["totals"]["docs_out"],
                             "loadavg_1min_before": float(load)})
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv):
    del argv
    import logging
    from loguru import logger
    logger.remove()  # datatrove's per-task INFO logs would bury the table
    logging.getLogger().setLevel(logging.WARNING)
    rows = measure([int(w) for w in _WORKERS.value], _MEGABYTES.value, _READ_TASKS.value, _SHARDS.value,
                   _REPEATS.value)
    print(f"{'workers':>8}{'docs':>8}{'MB':>7}{'seconds':>9}{'docs/s':>9}{'MB/s':>7}{'kept':>7}{'load':>7}")
    for r in rows:
        print(f"{r['workers']:>8}{r['documents']:>8}{r['megabytes']:>7.2f}{r['seconds']:>9.1f}{r['docs_per_s']:>9.1f}"
              f"{r['mb_per_s']:>7.3f}{r['kept']:>7}{r['loadavg_1min_before']:>7.2f}")


if __name__ == "__main__":
    app.run(main)
