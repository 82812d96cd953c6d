"""Data preparation configs (research.data.preparation.PreparationConfig as a ConfigDict).

    python -m experiments.prepare_data --input='corpus/**/*.txt,more.jsonl' --output_dir=/data/tfds \\
        --name=my_corpus --config=experiments/configs/prepare_data.py:web
    python -m experiments.pretrain --config=experiments/configs/pretrain.py:gpt_tiny --workdir=/tmp/run \\
        --config.data.source=tfds --config.data.tfds_name=my_corpus --config.data.data_dir=/data/tfds

Presets:
  web (default)  prose: Gopher quality + repetition rules with the paper's thresholds; C4 off
  c4             web plus C4's line and page rules (terminal punctuation, >= 5 sentences, no '{')
  code           source code and markdown: the prose heuristics off; standardise, dedup and
                 decontamination only

Override any field: --config.dedup.jaccard_threshold=0.7 --config.output.num_shards=16
--config.execution.workers=8 --config.blocklist.words='("badword","bad phrase")'
--config.decontamination.tasks='("my_tasks/capitals.json",)'. Near-dedup reads every digit run
as '0' (FineWeb's choice): --config.dedup.normalize_numbers=False keeps apart texts that differ
only in their numbers (tables, logs). A cluster run:
--config.execution.executor=slurm --config.execution.slurm_partition=cpu (see README).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from research.data.preparation.config import PreparationConfig

PRESETS = ("web", "c4", "code")


def get_config(arg: str = "web") -> ml_collections.ConfigDict:
    """The preset `arg` (one of PRESETS): every field of PreparationConfig, at its default unless the preset says."""
    if arg not in PRESETS:
        raise ValueError(f"unknown prepare_data preset {arg!r}; choose one of {PRESETS}.")
    config = ml_collections.ConfigDict(dataclasses.asdict(PreparationConfig()))
    # A field whose default is None has no type to override it with on the command line
    # (--config.decontamination.num_test=5 failed): a placeholder gives it one.
    config.decontamination.num_test = ml_collections.config_dict.placeholder(int)
    if arg == "c4":
        config.c4_quality.enabled = True
    if arg == "code":
        config.gopher_quality.enabled = False
        config.gopher_repetition.enabled = False
    return config
