"""What a BERT classifier's Hugging Face export keeps of its init: a head the classification path
never trains (the MLM head) only if the init held one, and the init folder's label names and
classifier dropout. The oracle is transformers on the same folders (random weights built here)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from research.finetune import finetune_and_evaluate
from research.finetune.heads import export_plan
from research.models import from_hf
from tests.finetune.conftest import tiny_config

LABELS = {"0": "NEGATIVE", "1": "POSITIVE"}
TOKENS = np.random.default_rng(0).integers(5, 90, (2, 12)).astype(np.int32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{kind: folder} of a BertForSequenceClassification with named labels (no MLM head) and a
    BertForMaskedLM (an MLM head, no classifier)."""
    root = tmp_path_factory.mktemp("export_heads")
    hf_config = dict(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    labels = dict(id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                  classifier_dropout=0.3)
    for name, cls, extra in (("classifier", transformers.BertForSequenceClassification, labels),
                             ("mlm", transformers.BertForMaskedLM, {})):
        torch.manual_seed(0)
        cls(transformers.BertConfig(**hf_config, **extra)).save_pretrained(root / name)
    return {"classifier": root / "classifier", "mlm": root / "mlm"}


@pytest.fixture(scope="module")
def run(folders, tmp_path_factory):
    """(run workdir, export) of a classification fine-tune from the classifier folder."""
    root = tmp_path_factory.mktemp("classify")
    config = tiny_config("classify_tiny", num_steps=2)
    config.opt.warmup_steps = 0
    config.init = f"hf:{folders['classifier']}"
    config.model.update(num_layers=None, d_model=None)
    config.export_dir = str(root / "hf")
    finetune_and_evaluate(config, str(root / "run"))
    return root / "run", root / "hf"


def _masked_lm_missing(folder) -> list[str]:
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    return sorted(info["missing_keys"])


def _plan(init: str, model_config, path: str = "classification"):
    config = tiny_config("classify_tiny")
    config.path, config.init = path, init
    return export_plan(config, model_config)


def test_a_classifier_exports_no_mlm_head_that_its_init_lacked(folders, run):
    """A classifier fine-tuned from a folder without an MLM head trains none: the fresh random one
    was exported as cls.predictions.*, and transformers loaded it as trained, without the "newly
    initialized" report it gives on the source folder. One loaded from the init is kept."""
    _, export = run
    assert not any(name.startswith("cls.") for name in load_file(str(export / "model.safetensors")))
    assert _masked_lm_missing(export) == _masked_lm_missing(folders["classifier"])
    assert "cls.predictions.transform.dense.weight" in _masked_lm_missing(export)
    model, params = from_hf(str(export))
    assert "mlm_head" not in params
    # Still the classifier transformers scores alike.
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()(
        torch.tensor(TOKENS, dtype=torch.long)).logits.detach().numpy()
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, TOKENS, method="classify")), theirs,
                               atol=1e-5)
    assert _plan(f"hf:{folders['mlm']}", model.config).left_out == ()  # a pretrained MLM head stays


def test_the_export_keeps_the_init_folders_label_names_and_classifier_dropout(run):
    """config_to_hf wrote LABEL_i and no classifier_dropout whatever the init folder said."""
    _, export = run
    written = json.loads((export / "config.json").read_text())
    assert (written["id2label"], written["label2id"]) == (LABELS, {"NEGATIVE": 0, "POSITIVE": 1})
    assert written["classifier_dropout"] == 0.3
    loaded = transformers.AutoConfig.from_pretrained(export)
    assert (loaded.id2label, loaded.classifier_dropout) == ({0: "NEGATIVE", 1: "POSITIVE"}, 0.3)


def test_the_export_plan_follows_runs_seeds_and_a_changed_number_of_labels(folders, run):
    """A run continued from a classification run's checkpoint holds that run's fresh MLM head: the
    chain is followed to the folder; a seeded init holds no head; other label counts get LABEL_i;
    a path that reads no head of a model without labels reads nothing."""
    workdir, export = run
    model_config = from_hf(str(export))[0].config
    kept = {"id2label": LABELS, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}, "classifier_dropout": 0.3}
    assert _plan(f"checkpoint:{workdir}", model_config) == (("mlm_head",), kept)
    assert _plan(f"hf:{folders['classifier']}", model_config.replace(num_labels=3)) == (
        ("mlm_head",), {"classifier_dropout": 0.3})
    assert _plan("random", model_config) == (("mlm_head",), {})
    assert _plan(f"hf:{folders['mlm']}", model_config.replace(num_labels=0), path="domain") == ((), {})
