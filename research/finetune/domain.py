"""Domain adaptation: continued pretraining of a base model on a folder of domain text.

    config.path = "domain", config.data.folder = a folder of .txt / .md files (searched
    recursively; one document per file), config.init = checkpoint:<run workdir> | hf:<folder>

The base model's own tokenizer is reused (never retrained: the embeddings are tied to its
ids), and the documents go through pretraining's pipeline unchanged: the files become a TFDS
array_record dataset (research/data/text_files.py, under data.data_dir, "" = TFDS's default
as in pretraining), split into train / validation by a hash of each file's path
(data.validation_fraction), then tokenized, cut into windows by the family's pretraining
objective (decoder: causal_lm; BERT: masked_lm; T5: span_corruption) or data.objective, built
for the family as pretraining builds it (T5's prefix_lm: encoder-decoder examples), packed and
batched by research/data/pipeline.py, whose grain iterator the checkpoints save. The loss is
pretraining's (research/training/losses.py), so LoRA and everything else in the loop apply.
Evaluation: the objective's mean loss and accuracy on up to train.eval_batches validation batches.
"""
from __future__ import annotations

import glob
import itertools
import os
from typing import Any

import ml_collections
import numpy as np

from research.data.config import DataConfig, DataError
from research.data.objectives import Objective, objective_for_family
from research.data.pipeline import make_batch_dataset
from research.data.tokenizer import SpecialTokens
from research.finetune.base_model import abstract_and_init, base_model_config, job_base_model
from research.finetune.checks import config_section
from research.finetune.evaluators import mean_aux
from research.finetune.heads import path_model
from research.finetune.trainer import FinetuneJob
from research.models.config import ConfigError
from research.training import losses

DOMAIN_SUFFIXES = (".txt", ".md")
# The pretraining objective of each family (research/data/objectives.py names).
FAMILY_OBJECTIVES = {"decoder": "causal_lm", "encoder": "masked_lm", "encoder_decoder": "span_corruption"}


def domain_files(folder: str) -> list[str]:
    """The non-empty .txt / .md files under `folder`; one line naming the folder when there are none."""
    if not folder:
        raise ConfigError("path='domain' needs data.folder, a folder of .txt / .md files: "
                          "--config.data.folder=/path/to/domain_text.")
    if not os.path.isdir(folder):
        raise ConfigError(f"data.folder={folder!r} is not a folder; give a folder of .txt / .md files.")
    files = sorted(p for suffix in DOMAIN_SUFFIXES
                   for p in glob.glob(os.path.join(glob.escape(folder), "**", f"*{suffix}"), recursive=True)
                   if os.path.isfile(p) and os.path.getsize(p) > 0)
    if not files:
        raise ConfigError(f"data.folder={folder!r} holds no non-empty {' or '.join(DOMAIN_SUFFIXES)} file; put the "
                          "domain text there (one document per file).")
    return files


class PipelineTokenizer:
    """A finetune tokenizer (char, Hugging Face, SentencePiece) as the pipeline's Tokenizer:
    int32 ids without special tokens, and the special ids objectives need."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self._special: SpecialTokens | None = None

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text), dtype=np.int32)

    def special_tokens(self) -> SpecialTokens:
        if hasattr(self._tokenizer, "special_tokens"):  # research.data.Tokenizer (SentencePiece)
            return self._tokenizer.special_tokens()
        if self._special is None:
            self._special = self._special_tokens()
        return self._special

    def _special_tokens(self) -> SpecialTokens:
        ids = dict(pad_id=int(self._tokenizer.pad_id), eos_id=int(self._tokenizer.eos_id),
                   bos_id=getattr(self._tokenizer, "bos_id", None), mask_id=getattr(self._tokenizer, "mask_id", None))
        special, num_extra_ids = set(), 0
        # research.evaluation's HFTokenizer keeps the transformers tokenizer as _tokenizer.
        hf = getattr(self._tokenizer, "_tokenizer", None)
        if hf is not None and hasattr(hf, "all_special_ids"):
            # BERT has no bos: its encoding opens with [CLS] ([CLS] ... [SEP], eos being [SEP]), and
            # masked LM's windows open with bos, so they open as the model was trained.
            if ids["bos_id"] is None and getattr(hf, "cls_token_id", None) is not None:
                ids["bos_id"] = int(hf.cls_token_id)
            # Every special token ([UNK], [CLS], sentinels...), not only pad / eos / mask: masked LM
            # must neither choose them for the loss nor draw them as random replacements.
            special = {int(i) for i in hf.all_special_ids}
            num_extra_ids = hf_sentinel_count(hf, self.vocab_size, getattr(self._tokenizer, "path", ""))
            special |= {self.vocab_size - 1 - i for i in range(num_extra_ids)}
        special |= {v for v in ids.values() if v is not None}
        unk = getattr(self._tokenizer, "unk_id", None)  # (the char tokenizer's 3) no token of the text
        if unk is not None:
            special.add(int(unk))
        return SpecialTokens(vocab_size=self.vocab_size, special_ids=tuple(sorted(special)),
                             num_extra_ids=num_extra_ids, **ids)


def hf_sentinel_count(hf: Any, vocab_size: int, path: str = "") -> int:
    """How many T5 sentinels (<extra_id_0> .. <extra_id_{n-1}>) a Hugging Face tokenizer has; they must
    sit where span corruption writes them (sentinel i = vocab_size - 1 - i), as T5's tokenizers put them.
    Without this count T5's own span corruption was refused for want of sentinels."""
    vocab = hf.get_vocab()
    found = {int(token[len("<extra_id_"):-1]): index for token, index in vocab.items()
             if token.startswith("<extra_id_") and token.endswith(">") and token[len("<extra_id_"):-1].isdigit()}
    for i in range(len(found)):
        if found.get(i) != vocab_size - 1 - i:
            where = "is missing" if i not in found else f"is id {found[i]}"
            raise ConfigError(f"tokenizer {path!r}: <extra_id_{i}> {where}, but the pipeline's sentinel {i} is id "
                              f"{vocab_size - 1 - i} (vocab_size - 1 - i, T5's layout); use a tokenizer with "
                              f"<extra_id_0> .. <extra_id_{len(found) - 1}> at the top of its vocabulary, "
                              "counting down.")
    return len(found)


def domain_data_config(config: ml_collections.ConfigDict) -> DataConfig:
    """Pretraining's DataConfig for data.folder's files (checked here, before anything is written)."""
    data = config_section(config, "data")
    files = domain_files(str(data.get("folder", "") or ""))
    fraction = float(data.get("validation_fraction", 0.1))
    data_config = DataConfig(source="files", file_patterns=tuple(glob.escape(p) for p in files),
                             validation_fraction=fraction, data_dir=str(data.get("data_dir", "") or ""))
    from research.data.sources import in_validation
    root = os.path.commonpath([os.path.dirname(p) for p in files])
    held_out = sum(in_validation(os.path.relpath(p, root), fraction) for p in files)
    if held_out in (0, len(files)):
        raise ConfigError(f"data.folder={data['folder']!r}: its {len(files)} file(s) split into {len(files) - held_out} "
                          f"train and {held_out} validation file(s) at data.validation_fraction={fraction}; add files "
                          "or change validation_fraction so both splits have one.")
    return data_config


def domain_objectives(config: ml_collections.ConfigDict, family: str) -> tuple[losses.Objective, Objective]:
    """(loss objective, data objective) of data.objective ("" = the family's pretraining objective)
    for a `family` model; one line if that family cannot train on it. The data objective is
    pretraining's (objective_for_family): the bare name made prefix_lm's decoder batches for T5,
    whose loss then failed on them (KeyError 'encoder_inputs') after the run folder was written."""
    name = str(config_section(config, "data").get("objective") or FAMILY_OBJECTIVES[family])
    return losses.get_objective(name, family), objective_for_family(name, family)


def check_domain_objective(config: ml_collections.ConfigDict) -> None:
    """domain_objectives' refusal from the base model's config alone (no weights, no data), where
    base_model_config can read it (checks.check_config, before the claim); otherwise domain_job
    refuses it once the base is loaded."""
    model_config = base_model_config(config.get("init", "random"), config.get("model") or {})
    if model_config is not None:
        domain_objectives(config, model_config.family)


def domain_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """Continued pretraining of config.init on data.folder with the base model's tokenizer."""
    data_config = domain_data_config(config)
    base = job_base_model(config)
    train = config.train
    loss_objective, data_objective = domain_objectives(config, base.config.family)
    tokenizer = PipelineTokenizer(base.tokenizer)
    model, example, _ = path_model(config, base.config, train.seq_len)
    loss_fn = losses.make_loss_fn(loss_objective, float(train.z_loss))

    def batches(split: str, seed: int, num_epochs: int | None):
        try:
            return make_batch_dataset(data_config, tokenizer=tokenizer, objective=data_objective,
                                      batch_size=train.batch_size, seq_len=train.seq_len, split=split, seed=seed,
                                      shard_index=0, shard_count=1,
                                      num_epochs=num_epochs, model_max_len=base.config.max_len,
                                      model_vocab_size=base.config.vocab_size)
        except DataError as error:
            raise ConfigError(f"data.folder={config.data.folder!r}: {error}") from None

    batches("train", 0, 1)  # sizes, objective and tokenizer checked before the loop starts
    boxed, init = abstract_and_init(model, example)
    eval_loss = mean_aux(loss_fn, model)

    def evaluate(params, reference, sharding):
        return eval_loss(params, itertools.islice(iter(batches("validation", 0, 1)), train.eval_batches), sharding)

    return FinetuneJob(
        name=f"domain adaptation of {base.config.name} ({base.source}) on {config.data.folder}", model=model,
        tokenizer=base.tokenizer,
        loss_fn=loss_fn, abstract_params=boxed,
        initial_params=lambda: base.params if base.params is not None else init(int(train.seed)),
        train_batches=lambda seed: iter(batches("train", seed, None)), evaluate=evaluate)
