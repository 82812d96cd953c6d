"""Real data from flags alone: JSONL with a text field, TFDS by name with chosen splits; the
accelerator presets resolve to valid configs (without allocating anything)."""
import json
import os
import subprocess
import sys

import jax
import pytest

from experiments.configs import pretrain
from research import data as data_lib
from research.data.sources import document_source
from research.models import get_config
from research.training import partitioning
from research.training.checkpointing import CheckpointConfig
from research.training.loop import _rules
from research.training.train_config import TrainConfig
from research.training.metrics import read_metrics
from research.training.optimizers import OptimizerConfig
from research.training.workdir import run_fingerprint

from tests.training.test_resume import REPO


def _write_jsonl(path, count=120):
    lines = [{"id": i, "body": f"document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(40))}
             for i in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_pretrain_on_jsonl_from_flags_alone(tokenizers, tmp_path):
    _write_jsonl(tmp_path / "corpus" / "part.jsonl")
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "experiments.pretrain", "--config=experiments/configs/pretrain.py:gpt_tiny",
               "--config.data.source=files", f"--config.data.file_patterns={tmp_path}/corpus/*.jsonl",
               "--config.data.text_field=body", f"--config.data.data_dir={tmp_path}/tfds",
               f"--config.data.tokenizer.model_path={tokenizers['plain']}", "--config.model.num_layers=1",
               "--config.train.num_steps=2", "--config.train.batch_size=8", "--config.train.seq_len=32",
               "--config.train.log_every_steps=1", "--config.train.eval_batches=1", "--config.train.peak_flops=1e9",
               "--config.opt.warmup_steps=1", f"--workdir={workdir}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = [r for r in read_metrics(str(workdir)) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and all(r["num_tokens"] > 0 for r in steps)
    fingerprint = json.load(open(workdir / "run.json"))["fingerprint"]
    assert fingerprint["data.text_field"] == "body" and fingerprint["data.source"] == "files"


def test_tfds_by_name_reads_the_chosen_splits(tmp_path):
    """A corpus without a validation split (like wikipedia): validation = the first half of train."""
    _write_jsonl(tmp_path / "corpus" / "part.jsonl", count=40)
    files = data_lib.DataConfig(source="files", file_patterns=(f"{tmp_path}/corpus/*.jsonl",), text_field="body",
                                data_dir=str(tmp_path / "tfds"), validation_fraction=0.0)
    train_docs = document_source(files, "train")  # prepares an ordinary TFDS dataset under data_dir
    (prepared,) = [d for d, _, names in os.walk(tmp_path / "tfds") if any(".array_record-" in n for n in names)]
    config = pretrain.get_config("gpt_tiny")
    config.data.update(dict(source="tfds", tfds_name="research_text_files/" + os.path.basename(os.path.dirname(prepared)),
                            data_dir=str(tmp_path / "tfds"), text_field="text", train_split="train[50%:]",
                            validation_split="train[:50%]"))
    by_name = data_lib.DataConfig(**config.data.to_dict())
    validation, train = document_source(by_name, "validation"), document_source(by_name, "train")
    assert len(validation) == len(train) == 20
    assert [validation[i] for i in range(20)] + [train[i] for i in range(20)] == [train_docs[i] for i in range(40)]


def test_splits_are_for_tfds_only():
    with pytest.raises(data_lib.DataError, match="apply to source='tfds' only"):
        data_lib.DataConfig(source="stdlib", validation_split="train[:1%]")


@pytest.mark.parametrize("fields, message", [
    # Each trained on the standard library, silently, with the default source.
    (dict(file_patterns=("corpus/*.txt",)), r"file_patterns=\('corpus/\*.txt',\) apply to source='files' only, "
                                           r"not source='stdlib'; add --config.data.source=files"),
    (dict(tfds_name="c4/en"), r"tfds_name='c4/en' applies to source='tfds' only, not source='stdlib'"),
    (dict(source="files", file_patterns=("a.txt",), tfds_name="lm1b"), r"tfds_name='lm1b' applies to source='tfds'"),
    (dict(source="synthetic", text_field="body"), r"text_field='body' applies to source='tfds' or 'files'"),
])
def test_a_field_of_another_source_is_one_line(fields, message):
    with pytest.raises(data_lib.DataError, match=message):
        data_lib.DataConfig(**fields)


@pytest.mark.parametrize("preset", pretrain.ACCELERATOR_PRESETS)
def test_accelerator_preset_resolves_and_fits_an_8_device_host(preset):
    config = pretrain.get_config(preset)
    fields = {k: v for k, v in config.model.to_dict().items() if v is not None}
    model_config = get_config(fields.pop("preset"), **fields)
    train = TrainConfig(**config.train.to_dict())
    OptimizerConfig(total_steps=train.num_steps, **config.opt.to_dict())
    CheckpointConfig(**config.checkpoint.to_dict())
    data_config = data_lib.DataConfig(**config.data.to_dict())
    assert data_config.source == "tfds" and data_config.tfds_name == "c4/en"
    assert data_config.tokenizer.vocab_size <= model_config.vocab_size
    assert train.seq_len <= model_config.max_len
    mesh = partitioning.make_training_mesh(tuple(config.mesh.shape))
    assert mesh.size == len(jax.devices()) == 8
    partitioning.check_batch_size(train.batch_size, train.microbatches, mesh, _rules(config.mesh))
    partitioning.check_model_fits_mesh(model_config, mesh, _rules(config.mesh))
    assert run_fingerprint(config.to_dict())["model.name"] == model_config.name
