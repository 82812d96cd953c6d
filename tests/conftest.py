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
            # xdist joins all of a test's group names into one ("a_multiprocess"): another group
            # on these tests would take them out of "multiprocess", beside the others.
            assert item.get_closest_marker("xdist_group") is None, \
                f"{item.nodeid}: a multi-process test belongs to the 'multiprocess' xdist group only"
            item.add_marker(pytest.mark.xdist_group("multiprocess"))
# One persistent XLA compilation cache for the whole suite, its xdist workers and the
# subprocesses they start (the environment is inherited): many tests compile the same tiny
# programs, and a cache hit returns the same executable, so results are unchanged. Keyed by
# jax's own cache key (version, flags, program), so a stale entry is never used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"research-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture
def young_gc_after_failed_reads(monkeypatch):
    """checkpointing.quiet_restore collects the garbage 5 times (0.1 s apart) after a failed orbax
    read, so the abandoned reads complain while stderr is still redirected. A full collection walks
    the whole heap, which in an xdist worker that has run hundreds of tests is large: measured on 2
    cores after 81 in-process tests (690k objects) each full collection took 0.5-0.95 s, 7.3 s of
    test_every_step_damaged_is_one_error's 8.6 s. Here it collects generations 0 and 1 only (~0 s):
    the reads a failed restore abandons are young (its first collection freed 66, 33, 66 objects
    against a full one's 76, 33, 66 in three tests), and any collected later are still silenced by
    the library's permanent hooks (the asyncio log filter _AbandonedCheckpointReads and
    _unraisable_hook, which wraps pytest's sys.unraisablehook: the tests pass with
    -W error::pytest.PytestUnraisableExceptionWarning); the 0.1 s sleeps that let tensorstore's
    threads finish are kept. The test of the noise itself restores in a process of its own, which
    this does not reach, with the library's full collections
    (test_checkpoint_fallback.py::test_a_damaged_step_is_reported_in_its_one_line_and_nothing_else)."""
    import gc

    from research.training import checkpointing

    class YoungGC:
        def __getattr__(self, name):
            return getattr(gc, name)

        @staticmethod
        def collect(generation=2):
            return gc.collect(min(generation, 1))

    monkeypatch.setattr(checkpointing, "gc", YoungGC())
