"""Zoo models with task heads: a scalar reward (or value) head and a per-token classifier.

The zoo model sits under "body" with its own parameter names, so a pretrained model's
parameters (or a LoRA adapter's target paths) carry over unchanged; the head is a Dense
layer under "head". Also what a zoo model's own heads take from the init: those it lacks
(with_fresh_heads), a tagger's head (with_pretrained_tagger), and what its Hugging Face export
keeps of it (export_plan).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.models import build_model
from research.models.config import ConfigError, ModelConfig
from research.models.layers import Dense

log = logging.getLogger(__name__)

Array = jax.Array


def _hidden(body: nn.Module, config: ModelConfig, tokens_BT: Array, segment_ids_BT: Array | None,
            deterministic: bool) -> Array:
    """Final hidden states [B, T, D] of a decoder or an encoder body."""
    if config.family == "decoder":
        return body(tokens_BT, segment_ids_BT=segment_ids_BT, deterministic=deterministic, return_hidden=True)
    if config.family == "encoder":
        return body.encode(tokens_BT, segment_ids_BT=segment_ids_BT, deterministic=deterministic)
    raise ConfigError(f"{config.name}: heads here take decoder or encoder bodies, not {config.family}; use a "
                      "GPT/LLaMA or BERT preset.")


class ScalarHeadModel(nn.Module):
    """tokens [B, T], lengths [B] -> one scalar per row [B]: a linear head on the hidden
    state of the row's last token (decoder: it has seen the whole row; BERT: token 0, its
    [CLS]). Right-padded rows; lengths count the real tokens."""

    config: ModelConfig

    def setup(self):
        self.body = build_model(self.config)
        self.head = Dense((1,), ("embed",), ("classes",), self.config, use_bias=True)

    def __call__(self, tokens_BT: Array, lengths_B: Array, *, deterministic: bool = True) -> Array:
        t = tokens_BT.shape[1]
        segment_BT = (jnp.arange(t)[None, :] < lengths_B[:, None]).astype(jnp.int32)
        hidden_BTD = _hidden(self.body, self.config, tokens_BT, segment_BT, deterministic)
        index_B = jnp.maximum(lengths_B - 1, 0) if self.config.family == "decoder" else jnp.zeros_like(lengths_B)
        last_BD = jnp.take_along_axis(hidden_BTD, index_B[:, None, None].astype(jnp.int32), axis=1)[:, 0]
        return self.head(last_BD)[:, 0].astype(jnp.float32)


class TokenClassifier(nn.Module):
    """tokens [B, T] -> per-token label logits [B, T, num_labels] (NER-style tagging)."""

    config: ModelConfig
    num_labels: int

    def setup(self):
        self.body = build_model(self.config)
        self.dropout = nn.Dropout(self.config.dropout_rate)
        self.head = Dense((self.num_labels,), ("embed",), ("classes",), self.config, use_bias=True)

    def __call__(self, tokens_BT: Array, *, segment_ids_BT: Array | None = None, deterministic: bool = True) -> Array:
        hidden_BTD = _hidden(self.body, self.config, tokens_BT, segment_ids_BT, deterministic)
        return self.head(self.dropout(hidden_BTD, deterministic=deterministic)).astype(jnp.float32)


def path_model(config: Mapping[str, Any], model_config: ModelConfig,
               seq_len: int) -> tuple[nn.Module, tuple[np.ndarray, ...], tuple[str, ...]]:
    """(model, example inputs [1, seq_len] to initialise it on, fresh task heads) of fine-tuning
    path config["path"] on a base of `model_config`: the zoo model itself, or one of the head models
    above (whose body holds only the parameters their forward pass uses: no LM head, pooler or MLM
    head). The fresh heads are FinetuneJob.new_modules: trained in full under LoRA, never adapted.
    Every job builder and the pre-claim LoRA check (checks.check_lora_targets) build their
    parameter tree from this, so the targets the check accepts are the ones training adapts."""
    path = config.get("path")
    ones = np.ones((1, seq_len), np.int32)
    if path == "reward":
        return ScalarHeadModel(model_config), (ones, np.full((1,), seq_len, np.int32)), ("head",)
    if path == "token_classification":
        return TokenClassifier(model_config, int(config.get("num_token_labels", 3))), (ones,), ("head",)
    example = (ones, ones) if model_config.family == "encoder_decoder" else (ones,)
    # peft's modules_to_save for sequence classification: the classifier trains in full under LoRA.
    return build_model(model_config), example, ("classifier",) if path == "classification" else ()


_HEADS = ("classifier", "pooler", "mlm_head")  # what a BERT checkpoint may lack or size otherwise


def with_fresh_heads(params: Any, pretrained: Any, where: str) -> Any:
    """The zoo model's `params` with every module taken from `pretrained`, except heads it lacks
    or holds in other shapes, which stay freshly initialised: a BertModel checkpoint (no
    classifier, no MLM head) fine-tuned for classification gets a new classifier, as transformers'
    from_pretrained gives one (a device_put of mismatched trees was a traceback, the workdir left
    claimed). A pretrained classifier of another number of labels is replaced, and said so; a
    missing body module is an error, as in with_pretrained_body."""
    missing = sorted(name for name in params if name not in pretrained and name not in _HEADS)
    if missing:
        raise ConfigError(f"{where}: the pretrained model lacks {missing} that the fine-tuned model needs; load a "
                          "model of the same preset.")
    merged = {}
    for name, fresh in params.items():
        taken = pretrained.get(name)
        same = taken is not None and jax.tree.structure(taken) == jax.tree.structure(fresh) and all(
            np.shape(a) == np.shape(b) for a, b in zip(jax.tree.leaves(taken), jax.tree.leaves(fresh)))
        if taken is not None and not same:
            if name not in _HEADS:
                raise ConfigError(f"{where}: its {name} does not fit this model's shapes; load a model of the same "
                                  "preset.")
            log.warning("%s: its %s does not fit this model (another number of labels?); a new one is trained.",
                        where, name)
        merged[name] = taken if same else fresh
    return merged


def with_pretrained_body(params: Any, body_params: Any, where: str) -> Any:
    """`params` of a head model with its body replaced by pretrained `body_params` (extra
    pretrained leaves such as an LM head are dropped; missing ones are an error)."""
    def take(target, source, path):
        if not isinstance(target, dict):
            return source
        missing = sorted(set(target) - set(source))
        if missing:
            raise ConfigError(f"{where}: the pretrained model lacks {[f'{path}{m}' for m in missing]} that the "
                              "fine-tuned model needs; load a model of the same preset.")
        return {k: take(v, source[k], f"{path}{k}/") for k, v in target.items()}
    return {**params, "body": take(params["body"], body_params, "")}


def with_pretrained_tagger(params: Any, tagger: Any, where: str) -> Any:
    """TokenClassifier `params` with the head of a pretrained tagger (bert.folder_tagger; None: none)
    when it has this run's number of labels, as transformers keeps it; another number is replaced,
    said so, as with_fresh_heads replaces a classifier."""
    if tagger is None:
        return params
    fresh = params["head"]
    held, wanted = np.shape(tagger["kernel"])[-1], np.shape(fresh["kernel"])[-1]
    if held != wanted:
        log.warning("%s: its token classifier has %d labels and num_token_labels=%d; a new one is trained.",
                    where, held, wanted)
        return params
    # The init's dtype (param_dtype), as the pretrained body's leaves have it.
    return {**params, "head": jax.tree.map(lambda t, f: np.asarray(t, f.dtype), tagger, fresh)}


# Heads of a zoo model that a path's loss never reads (classify reads the pooler and classifier):
# they leave the run as the init gave them, so one the init lacked is random.
UNREAD_HEADS = {"classification": ("mlm_head",)}
_MAX_CHAIN = 8  # fine-tuning runs followed back to their first init (as base_model's loaders do)


class ExportPlan(NamedTuple):
    left_out: tuple[str, ...]  # heads neither loaded nor trained: not exported
    hf_fields: dict[str, Any]  # config.json fields kept from the Hugging Face folder the run started from


def export_plan(config: Mapping[str, Any], model_config: ModelConfig) -> ExportPlan:
    """What a Hugging Face export of fine-tuning `config`'s zoo model (of `model_config`) takes from
    config.init: a head its path never reads (UNREAD_HEADS) is left out unless the init held one (a
    BertForSequenceClassification folder has no MLM head: the random one exported was loaded by
    transformers as a trained one, without its "newly initialized" warning); config.json keeps the
    label names and classifier dropout of the Hugging Face folder the run started from
    (bert.carried_config), which ModelConfig does not hold. Checkpoint inits are followed through
    the fine-tuning runs they continue (run.json's inits). An init no longer readable keeps every
    head and LABEL_i names, said so: the export comes after training."""
    unread = UNREAD_HEADS.get(config.get("path"), ())
    if not unread and not model_config.num_labels:
        return ExportPlan((), {})
    try:
        chain = _init_chain(str(config.get("init", "")))
        kind, where, _ = chain[-1]
        left_out = tuple(head for head in unread if not _init_holds(chain, head))
        fields = {}
        if kind == "hf" and model_config.family == "encoder":
            from research.models.hf import bert
            from research.models.hf.checkpoint_files import read_hf_config
            fields = bert.carried_config(read_hf_config(where), model_config)
    except (OSError, ValueError) as error:  # ConfigError and CheckpointError are ValueErrors
        log.warning("export: config.init=%r could not be read again (%s); the export keeps every head and writes "
                    "LABEL_i label names.", config.get("init"), error)
        return ExportPlan((), {})
    return ExportPlan(left_out, fields)


def _init_chain(init: str) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(kind, location, saved config of a checkpoint run) of `init` and of the inits of the
    fine-tuning runs it continues, up to one that is none (a folder, a seed, a pretraining run)."""
    from research.finetune.run_identity import run_init_spec
    from research.training.checkpoint_loading import run_config
    chain = []
    for _ in range(_MAX_CHAIN):
        kind, _, where = init.partition(":")
        saved = run_config(where) if kind == "checkpoint" else {}
        chain.append((kind, where, saved))
        if "path" not in saved or "init" not in saved:
            break
        init = run_init_spec(where, saved)
    return chain


def _init_holds(chain: list[tuple[str, str, Mapping[str, Any]]], head: str) -> bool:
    """Whether the first init of `chain` that is not a run leaving `head` unread held it (a
    pretraining run, or a path that trains it, holds it trained)."""
    for kind, where, saved in chain:
        if kind == "checkpoint" and head not in UNREAD_HEADS.get(saved.get("path"), ()):
            return True
        if kind == "hf":
            from research.models.hf import bert
            return head in bert.folder_heads(where)
    return False  # a seeded init
