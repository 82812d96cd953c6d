"""Data preparation: raw text -> cleaned, filtered, deduplicated, decontaminated TFDS dataset + report.

    from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs

    report = prepare_dataset(resolve_inputs("corpus/**/*.txt,extra.jsonl", text_field="text"),
                             output_dir="/data/tfds", name="my_corpus", config=PreparationConfig())
    # pretraining: DataConfig(source="tfds", tfds_name="my_corpus", data_dir="/data/tfds")

Stages, in order (each reported with documents / words in and out, drops by reason, examples):
  standardise        Unicode form, line endings, control characters, whitespace; bad UTF-8
  gopher_quality     Gopher's document heuristics (datatrove's filter, the paper's thresholds)
  gopher_repetition  Gopher's repeated lines / paragraphs / n-grams
  c4_quality         C4's line and page rules (off by default: they delete code)
  blocklist          configured words or phrases
  decontamination    word n-grams shared with research.evaluation tasks or task files
  exact_dedup        equal normalised text (NFKC, case-folded, whitespace collapsed)
  near_dedup         MinHash LSH (datatrove's minhash stages) at a Jaccard threshold

The first six are pure functions of one document (`document_stages`); the engine is
datatrove: its local executor (tasks and worker processes on this machine) by default, its
Slurm or Ray executors for clusters (`ExecutionConfig.executor`).
"""
from research.data.preparation.config import PreparationConfig
from research.data.preparation.inputs import InputSpec, resolve_inputs
from research.data.preparation.prepare import prepare_dataset, read_report

__all__ = ["InputSpec", "PreparationConfig", "prepare_dataset", "read_report", "resolve_inputs"]
