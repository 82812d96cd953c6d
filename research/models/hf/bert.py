"""Hugging Face BERT (model_type "bert": BERT, MiniLM, ...) <-> research.models.encoder.Encoder.

Name map (HF `BertForMaskedLM` state_dict -> our unrolled params); HF linear weights are
[out, in], our kernels [in, ..., out], and q/k/v/out kernels split H and Dh:

    bert.embeddings.{word,position,token_type}_embeddings   token_embed, position_embed, token_type_embed
    bert.embeddings.LayerNorm                               embed_norm
    bert.encoder.layer.i.attention.self.{query,key,value}   layers_i/attention/{query,key,value}  [D, H, Dh]
    bert.encoder.layer.i.attention.output.dense             layers_i/attention/out                [H, Dh, D]
    bert.encoder.layer.i.attention.output.LayerNorm         layers_i/attention_norm
    bert.encoder.layer.i.{intermediate,output}.dense        layers_i/mlp/{wi,wo}
    bert.encoder.layer.i.output.LayerNorm                   layers_i/mlp_norm
    bert.pooler.dense                                       pooler
    cls.predictions.transform.{dense,LayerNorm}, .bias      mlm_head/{transform,transform_norm}, mlm_head/bias
    classifier                                              classifier (BertForSequenceClassification;
                                                            a BertForTokenClassification's: folder_tagger)

The pooler, MLM head and classifier are optional on import (BertModel checkpoints have no
MLM head, BertForMaskedLM ones no pooler): what the checkpoint lacks is left out of the
params, so only the methods that need it fail, and a head the config does not declare
(pooler=False, num_labels=0) is skipped. The body must be complete.

config_to_hf names labels LABEL_i; a fine-tuned export keeps its init folder's names
(`carried_config`), and leaves out a head the init lacked and fine-tuning never trained
(`folder_heads` says which the init held; research/finetune/heads.py export_plan decides).

A stored cls.predictions.decoder.weight that differs from the word embeddings is loaded
untied whatever tie_word_embeddings says, as transformers does (`config_for_weights`).
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, NamedTuple

import numpy as np

from research.models.config import ConfigError, ModelConfig
from research.models.hf import (ACTIVATION_TO_HF, CheckpointError, check_convertible, check_tied_head, hf_activation,
                                model_layout, unrolled_layout, untie_distinct_head)
from research.models.hf.checkpoint_files import read_hf_config, read_tensors_ending_with, take

MODEL_TYPE = "bert"
_BASE_PREFIX = "bert."  # BertFor* wrap BertModel under "bert."; BertModel checkpoints have no prefix
# Tensors that carry no weights of their own: buffers, the NSP head, and whichever of the two
# output-bias names the MLM head does not read (see `_mlm_bias_names`).
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids", "cls.seq_relationship.weight",
            "cls.seq_relationship.bias", "cls.predictions.bias", "cls.predictions.decoder.bias")
_TIED_DECODER = "cls.predictions.decoder.weight"  # tied: equal to the word embeddings (checked)
_WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# config.json fields of a classifier that ModelConfig does not hold: a fine-tuned export keeps its
# init's (`carried_config`); the label names only while the number of labels is the same.
_LABEL_FIELDS = ("id2label", "label2id")
_CLASSIFIER_FIELDS = ("classifier_dropout",)


class Convert(NamedTuple):
    """How one tensor changes layout between HF and us, given the config."""

    to_ours: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]


_SAME = Convert(lambda w, c: w, lambda p, c: p)
_LINEAR = Convert(lambda w, c: w.T, lambda p, c: p.T)  # [out, in] <-> [in, out]
_QKV = Convert(lambda w, c: w.T.reshape(c.d_model, c.num_heads, c.dim_per_head),
               lambda p, c: p.reshape(c.d_model, -1).T)  # [H*Dh, D] <-> [D, H, Dh]
_QKV_BIAS = Convert(lambda w, c: w.reshape(c.num_heads, c.dim_per_head), lambda p, c: p.reshape(-1))
_OUT = Convert(lambda w, c: w.T.reshape(c.num_heads, c.dim_per_head, c.d_model),
               lambda p, c: p.reshape(-1, c.d_model).T)  # [D, H*Dh] <-> [H, Dh, D]


def config_from_hf(hf_config: dict) -> ModelConfig:
    """A BERT-architecture config.json dict -> encoder ModelConfig (pooler on, MLM head tied)."""
    get = hf_config.get
    if get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ConfigError(f"config_from_hf(bert): model_type={get('model_type')!r} is not 'bert'.")
    if get("position_embedding_type", "absolute") != "absolute":
        raise ConfigError(f"bert: position_embedding_type={get('position_embedding_type')!r} is not supported; "
                          "only 'absolute' (learned) positions are.")
    if get("is_decoder", False) or get("add_cross_attention", False):
        raise ConfigError("bert: is_decoder / add_cross_attention configs are not supported; only the "
                          "bidirectional encoder is.")
    return ModelConfig(
        name=get("_name_or_path") or "hf-bert",
        family="encoder",
        vocab_size=get("vocab_size", 30522),
        d_model=get("hidden_size", 768),
        num_layers=get("num_hidden_layers", 12),
        num_heads=get("num_attention_heads", 12),
        d_ff=get("intermediate_size", 3072),
        max_len=get("max_position_embeddings", 512),
        position="learned",
        norm="layernorm",
        norm_eps=get("layer_norm_eps", 1e-12),
        norm_placement="post",
        activation=hf_activation(get("hidden_act", "gelu"), MODEL_TYPE),
        use_bias=True,
        tie_embeddings=get("tie_word_embeddings", True),
        type_vocab_size=get("type_vocab_size", 2),
        pooler=True,
        num_labels=_num_labels(hf_config, "ForSequenceClassification"),
        pad_token_id=get("pad_token_id") or 0,
        # One rate for all dropout sites; BERT checkpoints use the same value for both.
        dropout_rate=get("hidden_dropout_prob", 0.1),
    )


def config_for_weights(config: ModelConfig, state_dict: dict[str, np.ndarray]) -> ModelConfig:
    """`config` untied when the weights store an MLM decoder other than the word embeddings."""
    return untie_distinct_head(config, {_hf_name(n): v for n, v in state_dict.items()}, _TIED_DECODER,
                               _WORD_EMBEDDINGS)


def config_to_hf(config: ModelConfig) -> dict:
    """config.json dict that transformers' BertConfig accepts."""
    check_convertible(config, "BERT", {
        "family": "encoder", "position": "learned", "norm": "layernorm", "norm_placement": "post",
        "use_bias": True, "gated_mlp": False, "kv_heads": config.num_heads, "scale_attention_logits": True,
        "scale_tied_logits": False, "dim_per_head": config.d_model // config.num_heads})
    if config.type_vocab_size < 1:
        raise ConfigError(f"{config.name}: BERT needs type_vocab_size >= 1, got {config.type_vocab_size}.")
    hf = {
        "architectures": ["BertForSequenceClassification" if config.num_labels else "BertForMaskedLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.d_ff,
        "hidden_act": ACTIVATION_TO_HF[config.activation],
        "hidden_dropout_prob": config.dropout_rate,
        "attention_probs_dropout_prob": config.dropout_rate,
        "max_position_embeddings": config.max_len,
        "type_vocab_size": config.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": config.norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": config.tie_embeddings,
        "is_decoder": False,
    }
    if config.num_labels:
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(config.num_labels)}
    return hf


def params_from_hf(state_dict: dict[str, np.ndarray], config: ModelConfig) -> dict:
    """HF tensors (with or without the "bert." prefix) -> our params (stacked if scan_layers)."""
    state_dict = {_hf_name(name): np.asarray(value) for name, value in state_dict.items()}
    groups = _name_map(config)
    # The body is required; a head is converted when the config declares it and the checkpoint has it.
    held = _held(groups, state_dict)
    used = {group: names for group, names in groups.items() if _declared(group, config) and (
        group == "body" or group in held)}
    ignore = _IGNORED + tuple(n for group, names in groups.items() if group not in used for n in names)
    shapes = {n: entry.hf_shape for names in used.values() for n, entry in names.items()}
    check_tied_head(config, state_dict, _TIED_DECODER, _WORD_EMBEDDINGS)
    tensors = take({n: v for n, v in state_dict.items() if n != _TIED_DECODER or not config.tie_embeddings},
                   shapes, MODEL_TYPE, ignore=ignore)
    unrolled: dict = {}
    for names in used.values():
        for hf_name, entry in names.items():
            _set(unrolled, entry.path, entry.convert.to_ours(tensors[hf_name], config))
    return model_layout(unrolled, config)


def folder_heads(path: str) -> set[str]:
    """The heads (pooler, mlm_head, classifier) of which the BERT checkpoint folder `path` holds
    tensors, as params_from_hf finds them; only the heads' tensors are read."""
    heads = {group: names for group, names in _name_map(config_from_hf(read_hf_config(path))).items()
             if group != "body"}
    suffixes = tuple(name for names in heads.values() for name in names)
    return _held(heads, {_hf_name(name) for name in read_tensors_ending_with(path, suffixes)})


def folder_tagger(path: str) -> dict[str, np.ndarray] | None:
    """The per-token classifier of the BertForTokenClassification folder `path` as our Dense params
    ({"kernel": [D, C], "bias": [C]}), as transformers' AutoModelForTokenClassification keeps it
    (params_from_hf leaves it out: the zoo model has no per-token head); None for other
    architectures (a sequence classifier reads the pooled [CLS], not each token) or a folder
    without one. Only its two tensors are read."""
    hf_config = read_hf_config(path)
    num_labels = _num_labels(hf_config, "ForTokenClassification")
    if not num_labels:
        return None
    config = config_from_hf(hf_config).replace(num_labels=num_labels)
    names = _name_map(config)["classifier"]
    stored = {_hf_name(name): value for name, value in read_tensors_ending_with(path, tuple(names)).items()}
    if not _held({"classifier": names}, stored):
        return None
    tensors = take(stored, {name: entry.hf_shape for name, entry in names.items()}, MODEL_TYPE)
    return {entry.path[-1]: entry.convert.to_ours(tensors[name], config) for name, entry in names.items()}


def carried_config(source: Mapping[str, Any], config: ModelConfig) -> dict[str, Any]:
    """The fields of an init's config.json (`source`) that an export of `config`, fine-tuned from
    it, keeps: config_to_hf writes LABEL_i names and no classifier_dropout, which lost a folder's
    own label names (NEGATIVE, POSITIVE). Another number of labels keeps no names."""
    if not config.num_labels:
        return {}
    same_labels = len(source.get("id2label") or {}) == config.num_labels
    fields = (_LABEL_FIELDS if same_labels else ()) + _CLASSIFIER_FIELDS
    return {field: source[field] for field in fields if field in source}


def params_to_hf(params: Any, config: ModelConfig) -> dict[str, np.ndarray]:
    """Our params (boxed or not, scanned or not) -> BertForMaskedLM state_dict names ("bert."
    prefixed body and pooler, "cls." MLM head) plus "classifier.*"; heads the params lack or
    the config does not declare are left out."""
    unrolled = unrolled_layout(params, config)
    state_dict: dict[str, np.ndarray] = {}
    for group, names in _name_map(config).items():
        found = {hf_name: _get(unrolled, entry.path) for hf_name, entry in names.items()}
        missing = ["/".join(names[n].path) for n, value in found.items() if value is None]
        if group != "body" and (len(missing) == len(found) or not _declared(group, config)):
            continue  # a head these params lack, or one the config does not use
        if missing:
            raise CheckpointError(f"{config.name}: params lack {', '.join(missing[:6])}; "
                                  "are they params of this config?")
        for hf_name, value in found.items():
            prefix = _BASE_PREFIX if group in ("body", "pooler") else ""
            state_dict[prefix + hf_name] = np.asarray(names[hf_name].convert.to_hf(value, config))
    used_bias, other_bias = _mlm_bias_names(config)
    if used_bias in state_dict:
        # BertForMaskedLM's state_dict lists both bias names, and the decoder even when tied.
        state_dict[other_bias] = state_dict[used_bias]
        if config.tie_embeddings:
            state_dict[_TIED_DECODER] = state_dict["bert.embeddings.word_embeddings.weight"]
    return state_dict


class _Entry(NamedTuple):
    path: tuple[str, ...]  # our param path in the unrolled tree
    convert: Convert
    hf_shape: tuple[int, ...]


def _name_map(config: ModelConfig) -> dict[str, dict[str, _Entry]]:
    """group -> {HF name without "bert." -> where and how it lives in our params}."""
    d, f, v, hd = config.d_model, config.d_ff, config.vocab_size, config.num_heads * config.dim_per_head

    def linear(hf: str, path: tuple[str, ...], out: int, inp: int, weight: Convert = _LINEAR,
               bias: Convert = _SAME) -> dict[str, _Entry]:
        return {f"{hf}.weight": _Entry(path + ("kernel",), weight, (out, inp)),
                f"{hf}.bias": _Entry(path + ("bias",), bias, (out,))}

    def norm(hf: str, path: tuple[str, ...]) -> dict[str, _Entry]:
        return {f"{hf}.weight": _Entry(path + ("scale",), _SAME, (d,)),
                f"{hf}.bias": _Entry(path + ("bias",), _SAME, (d,))}

    def table(hf: str, name: str, rows: int) -> dict[str, _Entry]:
        return {f"embeddings.{hf}.weight": _Entry((name, "embedding"), _SAME, (rows, d))}

    body = {**table("word_embeddings", "token_embed", v), **table("position_embeddings", "position_embed",
                                                                  config.max_len)}
    if config.type_vocab_size:
        body.update(table("token_type_embeddings", "token_type_embed", config.type_vocab_size))
    body.update(norm("embeddings.LayerNorm", ("embed_norm",)))
    for i in range(config.num_layers):
        hf, ours = f"encoder.layer.{i}", (f"layers_{i}",)
        for proj in ("query", "key", "value"):
            body.update(linear(f"{hf}.attention.self.{proj}", ours + ("attention", proj), hd, d, _QKV, _QKV_BIAS))
        body.update(linear(f"{hf}.attention.output.dense", ours + ("attention", "out"), d, hd, _OUT))
        body.update(norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_norm",)))
        body.update(linear(f"{hf}.intermediate.dense", ours + ("mlp", "wi"), f, d))
        body.update(linear(f"{hf}.output.dense", ours + ("mlp", "wo"), d, f))
        body.update(norm(f"{hf}.output.LayerNorm", ours + ("mlp_norm",)))
    mlm = {**linear("cls.predictions.transform.dense", ("mlm_head", "transform"), d, d),
           **norm("cls.predictions.transform.LayerNorm", ("mlm_head", "transform_norm")),
           _mlm_bias_names(config)[0]: _Entry(("mlm_head", "bias"), _SAME, (v,))}
    if not config.tie_embeddings:
        mlm[_TIED_DECODER] = _Entry(("mlm_head", "decoder", "kernel"), _LINEAR, (v, d))
    return {"body": body, "pooler": linear("pooler.dense", ("pooler",), d, d), "mlm_head": mlm,
            "classifier": linear("classifier", ("classifier",), config.num_labels, d)}


def _mlm_bias_names(config: ModelConfig) -> tuple[str, str]:
    """(bias the MLM logits use, its alias). Tying shares cls.predictions.bias with the
    decoder; untied, transformers adds cls.predictions.decoder.bias and leaves the other unused."""
    names = ("cls.predictions.bias", "cls.predictions.decoder.bias")
    return names if config.tie_embeddings else names[::-1]


def _held(groups: Mapping[str, Mapping[str, _Entry]], present: Collection[str]) -> set[str]:
    """The groups of which `present` (HF names without "bert.") holds a tensor."""
    return {group for group, names in groups.items() if any(name in present for name in names)}


def _num_labels(hf_config: Mapping[str, Any], architecture: str) -> int:
    """The classifier size of a config.json whose architectures end with `architecture`, else 0."""
    if not any(a.endswith(architecture) for a in hf_config.get("architectures") or []):
        return 0
    return hf_config.get("num_labels") or len(hf_config.get("id2label") or {}) or 2


def _declared(group: str, config: ModelConfig) -> bool:
    return {"pooler": config.pooler, "classifier": config.num_labels > 0}.get(group, True)


def _hf_name(name: str) -> str:
    """Drop the "bert." prefix and map TF-era LayerNorm.gamma / .beta names to weight / bias."""
    if name.startswith(_BASE_PREFIX):
        name = name[len(_BASE_PREFIX):]
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree
