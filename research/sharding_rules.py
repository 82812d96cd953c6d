"""The logical-axis names of the model zoo and the default rules that map them onto mesh axes.

Kept apart from research.sharding (meshes, NamedShardings), and free of jax and flax: the
experiment configs name DEFAULT_RULES, and the launcher, which only reads a config to plan and
submit jobs (e.g. on a cluster's login node), imported jax and flax through them (1.5 of the 2.3 s
a `python -m launch ... --dry_run` took). The pretraining, emergence and scaling-law configs now
import no jax; the fine-tuning config still does, through research.finetune.lora's targets.
"""
from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis names used by the model zoo. Parameters use the first group; activations
# use the "activation_" names so that e.g. a batch dimension can take (data, fsdp) while
# the embed dimension of a weight takes fsdp, without the two competing in one spec.
PARAM_AXES = (
    "vocab", "embed", "heads", "kv_heads", "kv", "mlp", "layers",
    "positions", "token_types", "relpos_buckets", "classes",
)
ACTIVATION_AXES = (
    "activation_batch", "activation_length", "activation_embed",
    "activation_heads", "activation_kv", "activation_mlp", "activation_vocab",
    "cache_batch", "cache_length", "cache_heads", "cache_kv",
)

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# FSDP shards weights along embed; tensor parallelism splits heads, MLP and vocab
# (Megatron style); batch is split over every data-like axis.
DEFAULT_RULES: Rules = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("positions", None),
    ("token_types", None),
    ("relpos_buckets", None),
    ("classes", None),
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_batch", ("data", "fsdp")),
    ("cache_length", None),
    ("cache_heads", "tensor"),
    ("cache_kv", None),
)
