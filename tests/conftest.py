"""Test setup: 8 fake CPU devices so meshes and sharding run on any machine."""
import os
import signal

import pytest

# Must be set before jax initialises its backends (i.e. before any test imports jax).
# LLVM optimisation level 1 instead of XLA's default 2 (unless XLA_FLAGS already chooses one):
# the suite compiles ~2,000 tiny programs and on a cold cache compiling is ~45% of its time.
# Measured on 2 cores, cold caches, alternating: a compile-heavy pair of test files 58.0 / 60.5 s
# at level 2 against 47.9 / 51.2 s at level 1; the three preset runs (600 steps each, run-time
# bound) 98.6 s against 96.9 s. Level 0 compiles faster still but made the preset runs 1.7x slower.
# The flag reaches every subprocess the tests start (they inherit the environment).
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=1"
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A background job of a non-interactive shell (`cmd &`) starts with SIGINT ignored, and its
# children inherit that: the Ctrl-C tests' commands would never see their signal. Python's own
# handler again, which exec resets to the default in every subprocess the tests start.
signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tests that start several processes joined by jax.distributed run one at a time, on one xdist
# worker (tests/run.sh: --dist loadgroup). In the suite at def8a63 a 2-process test's process hung in
# jax.distributed's exit past the test's 80 s while other such tests ran on the other worker (the
# cause not isolated: alone, and beside four busy processes, it passes in 5-13 s).
MULTIPROCESS_MODULES = ("tests.training.test_multiprocess", "tests.training.test_process_batch_slices",
                        "tests.finetune.test_multiprocess", "tests.finetune.test_stops")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group into each test's id
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__ in MULTIPROCESS_MODULES:
            item.add_marker(pytest.mark.xdist_group("multiprocess"))
# One persistent XLA compilation cache for the whole suite, its xdist workers and the
# subprocesses they start (the environment is inherited): many tests compile the same tiny
# programs, and a cache hit returns the same executable, so results are unchanged. Keyed by
# jax's own cache key (version, flags, program), so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"research-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
