"""How large is a model: parameter counts, FLOPs per token and memory, from its config alone.

Everything here is arithmetic on a ModelConfig (nothing is allocated or traced), so it is
instant even for a 13B preset; tests/models/test_presets.py checks the counts against
`jax.eval_shape(model.init)` for every preset.

Conventions (Kaplan et al. 2020, "Scaling Laws for Neural Language Models"):
  * embedding parameters = token embedding + learned position table + token-type table
    + T5 relative-position bias tables + an untied LM head (and BERT's MLM output bias).
    Kaplan et al. exclude all embedding and unembedding matrices from N, so a tied model and
    its untied twin have the same non-embedding count.
  * non-embedding = total - embedding: attention, MLP, norms and biases, pooler and heads.
  * backbone = total minus task heads (BERT's `mlm_head` and `classifier`), i.e. what HF's
    BertModel holds; for decoders and T5 the backbone is the whole model.

CLI:
    python -m research.models.sizing --model=gpt2-small [--json] [--seq_len=1024]
        [--override=num_layers=4 --override=d_model=256]
    python -m research.models.sizing            # one row per preset
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from typing import Any, Literal, Sequence

import jax
from absl import app, flags

from research.models.config import ConfigError, ModelConfig
from research.models.encoder import HEAD_PARAMS
from research.models.layout import unbox
from research.models.presets import get_config, preset_names

ServeDType = Literal["float32", "bfloat16", "int8"]
# Training keeps float32 master weights: every trainer refuses another param_dtype
# (research/training/train_step.py check_master_weights), so there is no bf16-params train state.
TrainPrecision = Literal["float32"]
BYTES_PER_VALUE: dict[str, int] = {"float32": 4, "bfloat16": 2, "int8": 1}
# Bytes of training state per parameter with AdamW (activations not included). Gradients and
# optax's Adam moments take the parameters' dtype: weights 4 + grads 4 + Adam m 4 + Adam v 4 = 16.
# The compute dtype (ModelConfig.dtype) does not enter: bf16 compute over float32 params (the
# default recipe) saves activation memory and time, not train-state memory. (ZeRO's mixed
# precision, bf16 copies beside f32 master weights and f32 moments, would be 2 + 2 + 4 + 4 + 4 = 16;
# this codebase keeps no second copy.) bfloat16 params are for inference: weight_bytes.
TRAIN_BYTES_PER_PARAM: dict[str, int] = {"float32": 4 + 4 + 4 + 4}


@dataclasses.dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model (see the module docstring for the conventions)."""

    total: int  # every parameter the module creates, task heads included
    embedding: int
    non_embedding: int  # total - embedding
    backbone: int  # total - task heads; == total except for encoders with heads


@dataclasses.dataclass(frozen=True)
class FlopsPerToken:
    """Matmul FLOPs per token (a multiply-add is 2 FLOPs), Kaplan et al. 2020 Table 1. forward and
    train are per target token; for encoder_decoder, forward = decoder_forward + encoder_forward *
    source_len / target_len (encoder_forward includes the decoder's cross-attention key / value
    projections of each source token). Decoders' encoder_forward is 0, encoders' decoder_forward."""

    forward: int
    train: int  # 3 x forward: the backward pass costs twice the forward
    encoder_forward: int  # per source token
    decoder_forward: int  # per target token
    attention_forward: int = 0  # the share of `forward` in attention logits and weighted sums

    @property
    def train_without_attention(self) -> int:
        """6N-style training FLOPs: the parameter matmuls only (MFU "without attention")."""
        return 3 * (self.forward - self.attention_forward)


# --- Parameter counts ------------------------------------------------------------------

def _norm(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.use_bias else 1)


def _attention(cfg: ModelConfig) -> int:
    """q [D,H,Dh], k and v [D,K,Dh], out [H,Dh,D], plus their biases."""
    d, q_width, kv_width = cfg.d_model, cfg.num_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    weights = d * q_width + 2 * d * kv_width + q_width * d
    return weights + (q_width + 2 * kv_width if cfg.use_bias or cfg.qkv_bias else 0) + (d if cfg.use_bias else 0)


def _mlp(cfg: ModelConfig) -> int:
    inputs = 2 if cfg.gated_mlp else 1
    weights = (inputs + 1) * cfg.d_model * cfg.d_ff
    return weights + ((inputs * cfg.d_ff + cfg.d_model) if cfg.use_bias else 0)


def _final_norm(cfg: ModelConfig) -> int:
    # Pre-norm stacks end with a norm; post-norm blocks already end with one.
    return _norm(cfg) if cfg.norm_placement == "pre" else 0


def _self_attention_stack(cfg: ModelConfig, num_layers: int) -> int:
    """Decoder (GPT-2/LLaMA), BERT or T5-encoder blocks: attention + MLP + 2 norms each."""
    return num_layers * (_attention(cfg) + _mlp(cfg) + 2 * _norm(cfg)) + _final_norm(cfg)


def _t5_decoder_stack(cfg: ModelConfig) -> int:
    """T5 decoder blocks: self-attention + cross-attention + MLP + 3 norms each."""
    return cfg.num_layers * (2 * _attention(cfg) + _mlp(cfg) + 3 * _norm(cfg)) + _final_norm(cfg)


def _dense_with_bias(cfg: ModelConfig, features: int) -> int:
    # BERT's pooler, MLM transform and classifier always carry biases (as in HF), whatever use_bias says.
    return cfg.d_model * features + features


def _encoder_heads(cfg: ModelConfig) -> tuple[int, int]:
    """(non-embedding, embedding) params of BERT's task heads (research/models/encoder.py):
    mlm_head = transform dense + norm, then a tied (or untied [D, V]) decoder plus an output
    bias [V], both counted as unembedding; classifier = dense to num_labels over the pooled
    output, which exists only with a pooler."""
    mlm_transform = _dense_with_bias(cfg, cfg.d_model) + _norm(cfg)
    classifier = _dense_with_bias(cfg, cfg.num_labels) if cfg.pooler and cfg.num_labels else 0
    return mlm_transform + classifier, cfg.vocab_size + _untied_head(cfg)


def _untied_head(cfg: ModelConfig) -> int:
    return 0 if cfg.tie_embeddings else cfg.d_model * cfg.vocab_size  # [D, V], no bias


def _token_and_position_tables(cfg: ModelConfig) -> int:
    tables = cfg.vocab_size * cfg.d_model + cfg.type_vocab_size * cfg.d_model
    if cfg.position == "learned":
        tables += cfg.max_len * cfg.d_model
    if cfg.position == "relative" and cfg.family == "encoder_decoder":
        tables += 2 * cfg.relative_buckets * cfg.num_heads  # one [buckets, H] table per stack
    return tables


def param_counts(config: ModelConfig) -> ParamCounts:
    """Analytic parameter counts of the module research.models.build_model(config) creates."""
    cfg = config
    embedding = _token_and_position_tables(cfg)
    heads = 0
    if cfg.family == "decoder":
        embedding += _untied_head(cfg)
        non_embedding = _self_attention_stack(cfg, cfg.num_layers)
    elif cfg.family == "encoder":
        pooler = _dense_with_bias(cfg, cfg.d_model) if cfg.pooler else 0
        head_non_embedding, head_embedding = _encoder_heads(cfg)
        # BERT normalises the summed embeddings ("embed_norm") before its post-norm blocks.
        non_embedding = _norm(cfg) + _self_attention_stack(cfg, cfg.num_layers) + pooler + head_non_embedding
        embedding += head_embedding
        heads = head_non_embedding + head_embedding
    else:
        embedding += _untied_head(cfg)
        non_embedding = _self_attention_stack(cfg, cfg.encoder_layers) + _t5_decoder_stack(cfg)
    total = embedding + non_embedding
    return ParamCounts(total=total, embedding=embedding, non_embedding=non_embedding, backbone=total - heads)


def count_param_tree(params: Any, *, exclude_heads: bool = False) -> int:
    """Number of values in a params tree (arrays, ShapeDtypeStructs or flax boxes).

    exclude_heads drops an Encoder's top-level task heads (encoder.HEAD_PARAMS), giving
    the backbone count.
    """
    params = unbox(params)
    if exclude_heads:
        params = {k: v for k, v in params.items() if k not in HEAD_PARAMS}
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


# --- FLOPs ----------------------------------------------------------------------------

def _causal_keys_seen(n_ctx: int, window: int | None) -> tuple[int, int]:
    """(sum over t of min(t + 1, window), of t + 1): a window was charged as full length (128x at T 4096, w 16)."""
    full = n_ctx * (n_ctx + 1) // 2
    return (full if window is None or window >= n_ctx else window * (window + 1) // 2 + (n_ctx - window) * window), full


def flops_per_token(config: ModelConfig, seq_len: int | None = None, *, source_len: int | None = None,
                    include_embedding: bool = False) -> FlopsPerToken:
    """Kaplan et al. 2020 Table 1: C_forward = 2N + attention, training = 3 C_forward.

    N is the backbone's non-embedding count (norms and biases included, which Kaplan drop as
    sub-leading), d_attn = H * Dh, and n_ctx = seq_len (default config.max_len). Attention
    (QK^T and the weighted sum of V) costs 4 n_ctx d_attn per token and layer over all
    keys; causal self-attention is counted once, i.e. over the half of the keys a query
    sees (2 n_layer n_ctx d_attn, Kaplan's term; MaxText counts it this way since 2025). A
    sliding window (Mistral) shrinks that in proportion to the keys its queries see.
    Bidirectional self-attention (encoders) and cross-attention count 4 per key.

    encoder_decoder: encoder tokens cost 2 N_enc + 4 L_enc S d_attn each; decoder tokens
    2 N_dec + 2 L_dec T d_attn (causal self) + 4 L_dec S d_attn (cross), with T = seq_len
    and S = source_len (default seq_len, i.e. equal source and target lengths); the
    cross-attention's key and value projections, part of N_dec, run once per source token, so
    they are counted with the encoder's tokens (at S = T the total is the same; at the span-
    corruption shape T=114, S=512 counting them per target token undercounted t5-small by 8%).

    include_embedding adds the unembedding matmul, 2 D V per (target) token forward; the
    input lookup is a gather and costs no matmul FLOPs.
    """
    cfg = config
    n_ctx = cfg.max_len if seq_len is None else seq_len
    source = n_ctx if source_len is None else source_len
    for flag, value in (("seq_len", n_ctx), ("source_len", source)):
        if value <= 0:
            raise ConfigError(f"{flag}={value} must be a positive number of tokens.")
    d_attn = cfg.num_heads * cfg.dim_per_head
    unembed = 2 * cfg.d_model * cfg.vocab_size if include_embedding else 0
    encoder_forward = decoder_forward = 0
    if cfg.family == "decoder":
        seen, full = _causal_keys_seen(n_ctx, cfg.sliding_window)
        attention = 2 * cfg.num_layers * n_ctx * d_attn * seen // full
        decoder_forward = 2 * param_counts(cfg).non_embedding + attention + unembed
        forward = decoder_forward
    elif cfg.family == "encoder":
        counts = param_counts(cfg)
        heads_non_embedding, _ = _encoder_heads(cfg)
        # The pooler runs once per sequence (its [CLS] token: left out, as per-sequence work is); the
        # masked-LM head's transform (dense + norm) runs on every token, with the unembedding it feeds.
        pooler = _dense_with_bias(cfg, cfg.d_model) if cfg.pooler else 0
        backbone_non_embedding = counts.non_embedding - heads_non_embedding - pooler
        mlm_transform = _dense_with_bias(cfg, cfg.d_model) + _norm(cfg) if include_embedding else 0
        attention = 4 * cfg.num_layers * n_ctx * d_attn
        encoder_forward = 2 * (backbone_non_embedding + mlm_transform) + attention + unembed
        forward = encoder_forward
    else:
        encoder_attention = 4 * cfg.encoder_layers * source * d_attn
        decoder_attention = cfg.num_layers * (2 * n_ctx + 4 * source) * d_attn
        kv_width = cfg.kv_heads * cfg.dim_per_head
        cross_kv = cfg.num_layers * 2 * (cfg.d_model * kv_width + (kv_width if cfg.use_bias or cfg.qkv_bias else 0))
        encoder_forward = 2 * (_self_attention_stack(cfg, cfg.encoder_layers) + cross_kv) + encoder_attention
        decoder_forward = 2 * (_t5_decoder_stack(cfg) - cross_kv) + decoder_attention + unembed
        # Integer division is exact for equal lengths, the common case.
        forward = decoder_forward + encoder_forward * source // n_ctx
        attention = decoder_attention + encoder_attention * source // n_ctx
    return FlopsPerToken(forward=forward, train=3 * forward, encoder_forward=encoder_forward,
                         decoder_forward=decoder_forward, attention_forward=attention)


# --- Memory ---------------------------------------------------------------------------

def _bytes_per_value(dtype: str, allowed: Sequence[str]) -> int:
    if dtype not in allowed:
        raise ConfigError(f"dtype={dtype!r} is not one of {tuple(allowed)}.")
    return BYTES_PER_VALUE[dtype]


def weight_bytes(config: ModelConfig, dtype: ServeDType = "bfloat16") -> int:
    """Bytes to hold all weights for serving (int8: one byte per weight, scales ignored)."""
    return param_counts(config).total * _bytes_per_value(dtype, typing.get_args(ServeDType))


def train_state_bytes(config: ModelConfig, precision: TrainPrecision | None = None) -> int:
    """Bytes of weights + gradients + Adam state (TRAIN_BYTES_PER_PARAM); no activations.

    precision: the parameters' dtype (default: the config's param_dtype); only float32 trains."""
    precision = config.param_dtype if precision is None else precision
    if precision not in TRAIN_BYTES_PER_PARAM:
        raise ConfigError(f"{config.name}: no train state has {precision} parameters: training keeps float32 "
                          "master weights (int8 is a serving format, bfloat16 params are for inference: "
                          "weight_bytes); size param_dtype='float32', whatever the compute dtype.")
    return param_counts(config).total * TRAIN_BYTES_PER_PARAM[precision]


def kv_cache_bytes_per_token(config: ModelConfig, dtype: ServeDType = "bfloat16") -> int:
    """2 (keys and values) * L * K * Dh * bytes for each cached token of one sequence. Encoders do
    not decode (0). For encoder_decoder this is the decoder's self-attention cache per target
    token; cross-attention keys/values, if cached, cost the same per source token."""
    if config.family == "encoder":
        return 0
    return 2 * config.num_layers * config.kv_heads * config.dim_per_head * _bytes_per_value(
        dtype, typing.get_args(ServeDType))


# --- Reports and human units ----------------------------------------------------------

def size_report(config: ModelConfig, seq_len: int | None = None, source_len: int | None = None) -> dict[str, Any]:
    """Every figure of this module for one config, as a JSON-serialisable dict."""
    n_ctx = config.max_len if seq_len is None else seq_len
    counts = param_counts(config)
    flops = flops_per_token(config, n_ctx, source_len=source_len)
    exact = flops_per_token(config, n_ctx, source_len=source_len, include_embedding=True)
    serve_dtypes = typing.get_args(ServeDType)
    return {
        "name": config.name, "family": config.family, "num_layers": config.num_layers,
        "encoder_layers": config.encoder_layers if config.family == "encoder_decoder" else 0,
        "d_model": config.d_model, "num_heads": config.num_heads, "kv_heads": config.kv_heads,
        "head_dim": config.dim_per_head, "d_ff": config.d_ff, "vocab_size": config.vocab_size,
        "seq_len": n_ctx, "source_len": (n_ctx if source_len is None else source_len)
        if config.family == "encoder_decoder" else 0,
        "params": dataclasses.asdict(counts),
        "flops_per_token": {**dataclasses.asdict(flops), "forward_with_embedding": exact.forward,
                            "train_with_embedding": exact.train},
        "weight_bytes": {d: weight_bytes(config, d) for d in serve_dtypes},
        "train_state_bytes": {p: train_state_bytes(config, p) for p in TRAIN_BYTES_PER_PARAM},
        "kv_cache_bytes_per_token": {d: kv_cache_bytes_per_token(config, d) for d in serve_dtypes},
    }


def human_count(n: float) -> str:
    """124439808 -> '124.4M' (K, M, B, T are powers of 1000)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:g}"


def human_bytes(n: float) -> str:
    """1_244_398_080 -> '1.2 GB' (decimal units: 1 GB = 1e9 bytes)."""
    for scale, suffix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n:g} B"


def _train_formula(report: dict[str, Any]) -> str:
    """What the train figure counts for this family (flops_per_token's docstring derives each)."""
    f, d_attn = report["flops_per_token"], report["num_heads"] * report["head_dim"]
    if report["family"] == "encoder":  # every key; N: only the parameters every token runs through
        n = human_count((f["forward"] - f["attention_forward"]) // 2)
        return f"6N + 12 L n_ctx d_attn, N = {n} without the pooler and heads"
    if report["family"] == "encoder_decoder":  # cross-attention K/V run per source token: the encoder's
        return (f"3 x (decoder {human_count(f['decoder_forward'])} + encoder {human_count(f['encoder_forward'])} x "
                "source_len / seq_len); decoder 2N + 2 L n_ctx d_attn + 4 L source_len d_attn, encoder 2N + 4 L "
                "source_len d_attn")
    share = f["attention_forward"] / (2 * report["num_layers"] * report["seq_len"] * d_attn)  # < 1: a sliding window
    return "6N + 6 L n_ctx d_attn" + (f" x {share:.3f}, the causal keys a sliding window sees" if share < 1 else "")


def format_report(report: dict[str, Any]) -> str:
    """A readable multi-line summary of `size_report`."""
    p, f = report["params"], report["flops_per_token"]
    layers = (f"L={report['encoder_layers']}+{report['num_layers']} (encoder+decoder)"
              if report["family"] == "encoder_decoder" else f"L={report['num_layers']}")
    lines = [
        f"{report['name']} ({report['family']}): {layers} D={report['d_model']} H={report['num_heads']} "
        f"K={report['kv_heads']} Dh={report['head_dim']} F={report['d_ff']} V={report['vocab_size']}",
        f"params: total {human_count(p['total'])} ({p['total']:,}), embedding {human_count(p['embedding'])}, "
        f"non-embedding {human_count(p['non_embedding'])} ({p['non_embedding']:,})"
        + (f", backbone {human_count(p['backbone'])} ({p['backbone']:,})" if p["backbone"] != p["total"] else ""),
        f"FLOPs/token at seq_len={report['seq_len']}"
        + (f", source_len={report['source_len']}" if report["source_len"] else "")
        + f": forward {human_count(f['forward'])}, train {human_count(f['train'])} ({_train_formula(report)}); "
        f"with unembedding: train {human_count(f['train_with_embedding'])}",
        "serve weights: " + ", ".join(f"{d} {human_bytes(b)}" for d, b in report["weight_bytes"].items()),
        f"train state (float32 weights + grads + Adam m, v; no activations; any compute dtype): "
        f"{human_bytes(report['train_state_bytes']['float32'])}",
    ]
    kv = report["kv_cache_bytes_per_token"]
    if kv["bfloat16"]:
        lines.append("KV cache per token: " + ", ".join(f"{d} {human_bytes(b)}" for d, b in kv.items())
                     + f"; bfloat16 for {report['seq_len']} tokens: {human_bytes(kv['bfloat16'] * report['seq_len'])}")
    return "\n".join(lines)


def format_table(reports: Sequence[dict[str, Any]]) -> str:
    """One row per report: family, L, D, H, total, non-embedding, train FLOPs/token, and train-state
    memory (float32 master weights, the only ones training keeps)."""
    header = ("preset", "family", "L", "D", "H", "total", "non-emb", "train FLOPs/tok", "train mem")
    rows = [header]
    for r in reports:
        layers = f"{r['encoder_layers']}+{r['num_layers']}" if r["family"] == "encoder_decoder" else str(r["num_layers"])
        rows.append((r["name"], r["family"], layers, str(r["d_model"]), str(r["num_heads"]),
                     human_count(r["params"]["total"]), human_count(r["params"]["non_embedding"]),
                     human_count(r["flops_per_token"]["train"]), human_bytes(r["train_state_bytes"]["float32"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


# --- CLI --------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[str, Any]:
    """'num_layers=4' -> ('num_layers', 4), the value parsed by the ModelConfig field's type."""
    field, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"--override={text!r} is not field=value; write e.g. --override=num_layers=4.")
    hints = typing.get_type_hints(ModelConfig)
    if field not in hints:
        near = difflib.get_close_matches(field, hints, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"fields: {', '.join(sorted(hints))}."
        raise ConfigError(f"--override={text!r}: ModelConfig has no field {field!r}; {hint}")
    return field, _parse_value(field, raw, hints[field])


def _parse_value(field: str, raw: str, kind: Any) -> Any:
    options = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None`
        if raw.lower() == "none":
            return None
        return _parse_value(field, raw, next(o for o in options if o is not type(None)))
    if typing.get_origin(kind) is Literal:
        if raw not in options:
            raise ConfigError(f"--override {field}={raw!r}: choose one of {options}.")
        return raw
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"--override {field}={raw!r}: expected true or false.")
        return raw.lower() in ("true", "1")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"--override {field}={raw!r}: expected {kind.__name__}, e.g. {field}=4.") from None


def cli_output(model: str | None, overrides: Sequence[str] = (), seq_len: int | None = None,
               source_len: int | None = None, as_json: bool = False) -> str:
    """The text the CLI prints: one model's report, or a table of every preset."""
    if model is None:
        if overrides:
            raise ConfigError("--override needs --model; pick a preset, e.g. --model=gpt2-small.")
        reports = [size_report(get_config(name), seq_len, source_len) for name in preset_names()]
        return json.dumps(reports, indent=2) if as_json else format_table(reports)
    config = get_config(model, **dict(parse_override(o) for o in overrides))
    if source_len is not None and config.family != "encoder_decoder":  # it was ignored without a word
        raise ConfigError(f"--source_len={source_len}: {config.name} is a{'n' * (config.family == 'encoder')} "
                          f"{config.family} that reads no source; drop it (--seq_len sets its length).")
    if config.position == "learned" and seq_len is not None and seq_len > config.max_len:
        # Training refuses it too: a learned position table has max_len rows.
        raise ConfigError(f"--seq_len={seq_len} exceeds {config.name}'s max_len={config.max_len} (learned positions "
                          f"cannot go further); give at most {config.max_len}, or --override=max_len={seq_len}.")
    report = size_report(config, seq_len, source_len)
    return json.dumps(report, indent=2) if as_json else format_report(report)


def define_flags(flag_values: flags.FlagValues) -> None:
    """The CLI's absl flags, defined on `flag_values` (tests parse with a fresh FlagValues)."""
    flags.DEFINE_string("model", None, "Preset name (research.models.preset_names()); omit for a table "
                        "of all presets.", flag_values=flag_values)
    flags.DEFINE_multi_string("override", [], "field=value for a ModelConfig field; repeatable.",
                              flag_values=flag_values)
    flags.DEFINE_integer("seq_len", None, "Context length n_ctx for FLOPs (default: the config's max_len).",
                         flag_values=flag_values)
    flags.DEFINE_integer("source_len", None, "Encoder-decoder source length (default: seq_len); other "
                         "families read no source.", flag_values=flag_values)
    flags.DEFINE_bool("json", False, "Print JSON instead of text.", flag_values=flag_values)


def _main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag.")
    fv = flags.FLAGS
    try:
        print(cli_output(fv.model, fv.override, fv.seq_len, fv.source_len, fv.json))
    except ConfigError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    # Flags are defined only when run as a program, so importing sizing never claims flag names.
    define_flags(flags.FLAGS)
    app.run(_main)
