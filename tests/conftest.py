"""Test setup: 8 fake CPU devices so meshes and sharding run on any machine."""
import os

# Must be set before jax initialises its backends (i.e. before any test imports jax).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent XLA compilation cache for the whole suite, its xdist workers and the
# subprocesses they start (the environment is inherited): many tests compile the same tiny
# programs, and a cache hit returns the same executable, so results are unchanged. Keyed by
# jax's own cache key (version, flags, program), so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"research-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
