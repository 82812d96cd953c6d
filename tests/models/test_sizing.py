"""Sizing arithmetic against hand computation, module counts for config variants, and the CLI."""
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags

from research.models import ConfigError, ModelConfig, build_model, get_config
from research.models import sizing


def test_gpt2_small_flops_match_kaplan_by_hand():
    # Non-embedding N, per layer (D=768, F=3072, biases, 2 LayerNorms of scale+bias):
    #   attention q,k,v: 768*2304 + 2304 = 1,771,776;  out: 768*768 + 768 = 590,592
    #   MLP: 768*3072 + 3072 + 3072*768 + 768 = 4,722,432;  norms: 4*768 = 3,072
    #   = 7,087,872 per layer; 12 layers + final LayerNorm (1,536) = 85,056,000.
    n = 12 * (1_771_776 + 590_592 + 4_722_432 + 3_072) + 1_536
    assert n == 85_056_000 == sizing.param_counts(get_config("gpt2-small")).non_embedding
    # C_forward = 2N + 2 n_layer n_ctx d_attn = 170,112,000 + 2*12*1024*768 (18,874,368).
    flops = sizing.flops_per_token(get_config("gpt2-small"))
    assert flops.forward == 188_986_368
    assert flops.train == 6 * 85_056_000 + 6 * 12 * 1024 * 768 == 566_959_104
    # n_ctx from the argument, not max_len.
    assert sizing.flops_per_token(get_config("gpt2-small"), 128).train == 6 * n + 6 * 12 * 128 * 768
    # The unembedding matmul adds 2 D V = 2*768*50257 = 77,194,752 forward per token.
    exact = sizing.flops_per_token(get_config("gpt2-small"), include_embedding=True)
    assert exact.forward == 188_986_368 + 77_194_752 and exact.train == 3 * exact.forward
    # Without attention: causal attention counted once is 2*12*1024*768 forward per token.
    assert exact.attention_forward == 18_874_368
    assert exact.train_without_attention == 3 * (170_112_000 + 77_194_752)


def test_bert_flops_count_the_mlm_transform_per_token_and_not_the_pooler():
    """The MLM head's transform (dense 768x768 + bias, LayerNorm) runs on every token; the pooler
    on one token per sequence (1/512 of a token's share: left out, as per-sequence work is).
    Counted the other way round, as before, the two cancelled only by coincidence: without a
    pooler the count was 4% short of XLA's."""
    for pooler in (True, False):
        config = get_config("bert-base", pooler=pooler)
        counts = sizing.param_counts(config)
        pooler_params = (768 * 768 + 768) if pooler else 0
        transform = 768 * 768 + 768 + 2 * 768
        attention = 4 * 12 * 512 * 768  # bidirectional: QK^T and the weighted sum over every key
        exact = sizing.flops_per_token(config, include_embedding=True)
        assert exact.forward == 2 * (counts.non_embedding - pooler_params) + attention + 2 * 768 * config.vocab_size
        nominal = sizing.flops_per_token(config)  # no MLM head: the backbone alone
        assert nominal.forward == 2 * (counts.non_embedding - pooler_params - transform) + attention


def test_t5_flops_halves():
    config = get_config("t5-small")  # L=6+6, D=512, H*Dh=512, F=2048, no biases, RMSNorm
    n_enc = 6 * (4 * 512 * 512 + 2 * 512 * 2048 + 2 * 512) + 512  # attention + MLP + 2 norms, final norm
    n_dec = 6 * (8 * 512 * 512 + 2 * 512 * 2048 + 3 * 512) + 512  # + cross-attention, 3 norms
    assert n_enc + n_dec == sizing.param_counts(config).non_embedding
    cross_kv = 6 * 2 * 512 * 512  # the cross-attention's K, V projections: once per source token
    flops = sizing.flops_per_token(config)  # equal source and target lengths, 512
    # Bidirectional and cross-attention: 4 per key (QK^T + weighted sum); causal self: 2 (half the keys).
    assert flops.encoder_forward == 2 * (n_enc + cross_kv) + 4 * 6 * 512 * 512
    assert flops.decoder_forward == 2 * (n_dec - cross_kv) + 6 * (2 * 512 + 4 * 512) * 512  # causal self + cross
    assert flops.forward == flops.encoder_forward + flops.decoder_forward == \
        2 * (n_enc + n_dec) + 6 * (4 * 512 + 2 * 512 + 4 * 512) * 512
    assert flops.attention_forward == 6 * (4 * 512 + 2 * 512 + 4 * 512) * 512
    # Short targets: each target token also pays for source_len / seq_len = 4 source tokens, and for
    # their cross K, V (counted per target token they were 4x too few: 8% of the total undercounted).
    short = sizing.flops_per_token(config, 128, source_len=512)
    assert short.decoder_forward == 2 * (n_dec - cross_kv) + 6 * (2 * 128 + 4 * 512) * 512
    assert short.forward == short.decoder_forward + 4 * short.encoder_forward
    assert short.forward == 2 * n_dec + 4 * 2 * n_enc + 3 * 2 * cross_kv + 6 * (2 * 128 + 4 * 512) * 512 + \
        4 * 4 * 6 * 512 * 512


def test_memory_of_a_hand_checkable_config():
    config = ModelConfig(family="decoder", vocab_size=10, d_model=4, num_layers=1, num_heads=2, num_kv_heads=1,
                         d_ff=8, max_len=6, use_bias=False, norm="rmsnorm", tie_embeddings=False)
    # embedding: tokens 10*4 + positions 6*4 + untied head 4*10 = 104
    # non-embedding: q 4*4 + k,v 2*(4*2) + out 4*4 = 48; MLP 2*4*8 = 64; norms 4+4; final 4 -> 124
    counts = sizing.param_counts(config)
    assert (counts.total, counts.embedding, counts.non_embedding) == (228, 104, 124)
    assert [sizing.weight_bytes(config, d) for d in ("float32", "bfloat16", "int8")] == [912, 456, 228]
    # Weights, grads, Adam m and v in float32 (the only params training keeps): 16 bytes per param.
    assert sizing.train_state_bytes(config, "float32") == sizing.train_state_bytes(config) == 3648
    # KV cache: 2 (k, v) * L=1 * K=1 * Dh=2 values per token.
    assert [sizing.kv_cache_bytes_per_token(config, d) for d in ("float32", "bfloat16", "int8")] == [16, 8, 4]
    assert sizing.kv_cache_bytes_per_token(get_config("bert-base")) == 0
    # llama-7b in bf16: 2 * 32 layers * 32 heads * 128 * 2 bytes = 512 KiB per token.
    assert sizing.kv_cache_bytes_per_token(get_config("llama-7b")) == 524_288


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_train_state_bytes_match_the_state_the_trainer_builds(dtype):
    """Weights + Adam state of the real train state (abstract: nothing allocated), plus a gradient
    tree like the weights, equal the table's figure whatever the compute dtype."""
    import jax
    from research.models import build_model
    from research.training.losses import get_objective
    from research.training.optimizers import OptimizerConfig, make_optimizer
    from research.training.state import _initializer, abstract_batch
    from tests.training.conftest import synthetic_batch
    config = get_config("gpt2-tiny", dtype=dtype)
    optimizer, _ = make_optimizer(OptimizerConfig(total_steps=10))
    batch = abstract_batch(synthetic_batch("decoder", 2, 8, config.vocab_size))
    state = jax.eval_shape(_initializer(build_model(config), get_objective("causal_lm", "decoder"), optimizer, batch),
                           jax.random.key(0))
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)
                              if jax.numpy.issubdtype(x.dtype, jax.numpy.floating))
    assert 2 * nbytes(state.params) + nbytes(state.opt_state) == sizing.train_state_bytes(config)


def test_no_train_state_figure_for_param_dtypes_training_refuses():
    """The report printed "bfloat16 params 995.5 MB" of train state, and train_state_bytes sized it,
    while every trainer refuses param_dtype other than float32 (check_master_weights)."""
    from research.training.train_step import check_master_weights
    config = get_config("gpt2-tiny", param_dtype="bfloat16")
    with pytest.raises(ConfigError, match="model.param_dtype=bfloat16: training keeps float32 master weights"):
        check_master_weights(config)
    for call in (lambda: sizing.train_state_bytes(config), lambda: sizing.train_state_bytes(config, "bfloat16")):
        with pytest.raises(ConfigError, match=r"no train state has bfloat16 parameters: training keeps float32 "
                                              r"master weights .* size param_dtype='float32'"):
            call()
    report = sizing.size_report(config)
    assert report["train_state_bytes"] == {"float32": sizing.train_state_bytes(config.replace(param_dtype="float32"))}
    text, table = sizing.format_report(report), sizing.format_table([report])
    assert "bfloat16 params" not in text and "bf16" not in table
    assert f"train state (float32 weights + grads + Adam m, v; no activations; any compute dtype): " \
           f"{sizing.human_bytes(16 * report['params']['total'])}" in text


def test_bad_dtypes():
    config = get_config("gpt2-tiny")
    with pytest.raises(ConfigError, match="int8 is a serving format"):
        sizing.train_state_bytes(config, "int8")
    with pytest.raises(ConfigError, match="'fp8'"):
        sizing.weight_bytes(config, "fp8")
    with pytest.raises(ConfigError, match="seq_len=0"):
        sizing.flops_per_token(config, 0)


VARIANTS = [
    ("gpt2-tiny", {}), ("gpt2-tiny", {"norm_placement": "post", "tie_embeddings": False}),
    ("gpt2-tiny", {"gated_mlp": True, "num_kv_heads": 2, "head_dim": 8}),
    ("gpt2-tiny", {"use_bias": False, "position": "rope"}), ("llama-tiny", {}),
    ("llama-tiny", {"num_kv_heads": 1, "use_bias": True, "norm": "layernorm"}),
    ("bert-test", {}), ("bert-test", {"num_labels": 3}), ("bert-test", {"num_labels": 3, "pooler": False}),
    ("bert-test", {"tie_embeddings": False, "use_bias": False, "type_vocab_size": 0}),
    ("t5-tiny", {}), ("t5-v1_1-tiny", {"num_encoder_layers": 3, "num_kv_heads": 2}),
    ("llama-tiny", {"qkv_bias": True, "num_kv_heads": 2}), ("t5-tiny", {"qkv_bias": True, "num_kv_heads": 2}),
]


@pytest.mark.parametrize("name,overrides", VARIANTS)
def test_counts_match_unrolled_module(name, overrides):
    config = get_config(name, **overrides)
    model = build_model(config)
    tokens_BT = jnp.ones((1, 4), jnp.int32)
    args = (tokens_BT, tokens_BT) if config.family == "encoder_decoder" else (tokens_BT,)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *args))["params"]
    counts = sizing.param_counts(config)
    assert sizing.count_param_tree(params) == counts.total
    assert sizing.count_param_tree(params, exclude_heads=True) == counts.backbone


def test_human_units():
    assert sizing.human_count(124_439_808) == "124.4M"
    assert sizing.human_count(6_738_415_616) == "6.7B"
    assert sizing.human_count(512) == "512"
    assert sizing.human_bytes(1_244_398_080) == "1.2 GB"
    assert sizing.human_bytes(36_864) == "36.9 KB"


def parse_cli(*args):
    """Parse CLI flags with absl on a fresh FlagValues, as `python -m` would."""
    flag_values = flags.FlagValues()
    sizing.define_flags(flag_values)
    flag_values(["sizing", *args])
    return flag_values


def run_cli(*args):
    fv = parse_cli(*args)
    return sizing.cli_output(fv.model, fv.override, fv.seq_len, fv.source_len, fv.json)


def test_cli_report_contains_the_numbers():
    text = run_cli("--model=gpt2-small")
    for expected in ("124.4M", "124,439,808", "85,056,000", "567.0M", "248.9 MB", "2.0 GB", "36.9 KB"):
        assert expected in text, expected
    # Overrides are parsed by field type: a 4-layer gpt2-small.
    small = json.loads(run_cli("--model=gpt2-small", "--override=num_layers=4", "--override=scan_layers=true",
                               "--override=num_kv_heads=None", "--seq_len=128", "--json"))
    expected = sizing.param_counts(get_config("gpt2-small", num_layers=4))
    assert small["params"]["total"] == expected.total and small["num_layers"] == 4
    assert small["flops_per_token"]["train"] == 6 * expected.non_embedding + 6 * 4 * 128 * 768


def test_cli_json_and_table_cover_all_presets():
    report = json.loads(run_cli("--model=bert-base", "--json"))
    assert report["params"]["backbone"] == 109_482_240
    assert report["train_state_bytes"] == {"float32": 16 * report["params"]["total"]}
    table = run_cli()
    rows = table.splitlines()
    assert rows[0].split()[:5] == ["preset", "family", "L", "D", "H"]
    assert len(rows) == 1 + len(sizing.preset_names())
    assert any(row.split()[:3] == ["t5-small", "encoder_decoder", "6+6"] for row in rows)
    assert len(json.loads(run_cli("--json"))) == len(sizing.preset_names())


@pytest.mark.parametrize("args,message", [
    (("--model=gpt2-small", "--override=num_layer=4"), "no field 'num_layer'; did you mean 'num_layers'"),
    (("--model=gpt2-small", "--override=num_layers=four"), "num_layers='four': expected int"),
    (("--model=gpt2-small", "--override=norm=batchnorm"), "choose one of"),
    (("--model=gpt2-small", "--override=num_layers"), "not field=value"),
    # Learned positions end at max_len: training refuses a longer seq_len, so sizing does too.
    (("--model=gpt2-small", "--seq_len=4096"), "--seq_len=4096 exceeds gpt2-small's max_len=1024"),
    (("--model=gpt2-smal",), "Did you mean gpt2-small"),
    (("--override=num_layers=4",), "--override needs --model"),
])
def test_cli_bad_input(args, message):
    with pytest.raises(ConfigError, match=message):
        run_cli(*args)


def test_cli_entry_point():
    ok = subprocess.run([sys.executable, "-m", "research.models.sizing", "--model=gpt2-tiny", "--json"],
                        capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(ok.stdout)["params"]["total"] == sizing.param_counts(get_config("gpt2-tiny")).total
    bad = subprocess.run([sys.executable, "-m", "research.models.sizing", "--model=gpt2-tiny",
                          "--override=d_modle=8"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["error: --override='d_modle=8': ModelConfig has no field "
                                               "'d_modle'; did you mean 'd_model'?"]


def test_a_sliding_window_counts_only_the_keys_its_queries_see():
    """A windowed query sees min(t + 1, window) keys: counted over full causal length, the
    attention FLOPs of a window of 16 at T 4096 came out 128x too high (MFU too)."""
    full = sizing.flops_per_token(get_config("llama-tiny"), 8)
    windowed = sizing.flops_per_token(get_config("llama-tiny", sliding_window=3), 8)
    # Keys seen over t = 0..7: 1 + 2 + 3 + 3 * 5 = 21 windowed, 1 + ... + 8 = 36 full.
    assert windowed.attention_forward == full.attention_forward * 21 // 36
    assert full.forward - windowed.forward == full.attention_forward - windowed.attention_forward
    wide = sizing.flops_per_token(get_config("llama-tiny", sliding_window=8), 8)
    assert wide == full  # a window as long as the sequence masks nothing


def _value(text: str) -> float:
    """'85.1M' -> 85.1e6 (human_count's units)."""
    return float(text[:-1]) * {"M": 1e6, "B": 1e9}[text[-1]]


def _train_label(config: ModelConfig, seq_len: int, source_len: int | None = None) -> tuple[str, dict]:
    """The label after the text report's train FLOPs, and the report."""
    report = sizing.size_report(config, seq_len, source_len)
    line = next(line for line in sizing.format_report(report).splitlines() if line.startswith("FLOPs"))
    return line.split(" (", 1)[1].rsplit("); with unembedding", 1)[0], report


@pytest.mark.parametrize("name, seq_len, source_len, overrides", [
    ("bert-base", 512, None, {}), ("t5-small", 512, None, {}), ("t5-small", 114, 512, {}),
    ("llama-7b", 2048, None, {"sliding_window": 256}),
])
def test_the_train_label_is_the_formula_of_the_printed_figure(name, seq_len, source_len, overrides):
    """Every family was labelled "6N + 6 L n_ctx d_attn", which gave bert-base 545.7M for its
    567.0M, t5-small 273.8M for 311.5M and a 256-token window at 2048 40.5B for 39.2B."""
    cfg = get_config(name, **overrides)
    label, report = _train_label(cfg, seq_len, source_len)
    n, d_attn, layers = seq_len, cfg.num_heads * cfg.dim_per_head, cfg.num_layers
    non_embedding = report["params"]["non_embedding"]
    if cfg.family == "encoder":
        tokens_n = re.fullmatch(r"6N \+ 12 L n_ctx d_attn, N = (\S+) without the pooler and heads", label)[1]
        assert _value(tokens_n) < non_embedding  # the pooler and MLM transform are left out
        by_label = 6 * _value(tokens_n) + 12 * layers * n * d_attn
    elif cfg.family == "encoder_decoder":
        decoder, encoder = re.fullmatch(r"3 x \(decoder (\S+) \+ encoder (\S+) x source_len / seq_len\); decoder "
                                        r"2N \+ 2 L n_ctx d_attn \+ 4 L source_len d_attn, encoder 2N \+ 4 L "
                                        r"source_len d_attn", label).groups()
        by_label = 3 * (_value(decoder) + _value(encoder) * report["source_len"] / n)
    else:
        share = re.fullmatch(r"6N \+ 6 L n_ctx d_attn x (\S+), the causal keys a sliding window sees", label)[1]
        by_label = 6 * non_embedding + 6 * layers * n * d_attn * float(share)
        # A window the whole sequence fits in hides nothing: Kaplan's formula, as without one.
        assert _train_label(cfg, cfg.sliding_window)[0] == _train_label(get_config(name), 256)[0] \
            == "6N + 6 L n_ctx d_attn"
    assert by_label == pytest.approx(report["flops_per_token"]["train"], rel=2e-3)

@pytest.mark.parametrize("name, family", [("gpt2-small", "a decoder"), ("bert-base", "an encoder")])
def test_cli_refuses_a_source_len_the_model_does_not_read(name, family):
    # It was ignored without a word (while --source_len=0 was refused for them).
    with pytest.raises(ConfigError, match=rf"^--source_len=4096: {name} is {family} that reads no source; drop it"):
        run_cli(f"--model={name}", "--seq_len=128", "--source_len=4096")
    assert "source_len=4096" in run_cli("--model=t5-small", "--source_len=4096")
    assert len(run_cli("--source_len=64").splitlines()) == 1 + len(sizing.preset_names())  # T5 rows read it
