"""The step profiler maps a trace of a compiled XLA:CPU program onto its HLO instructions
(experiments/benchmarks/step_profile.py): if a jaxlib upgrade renames the trace events, the
breakdown would silently come out empty; this catches it."""
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import step_profile


def test_trace_of_a_compiled_program_maps_onto_its_dots_and_transposes(tmp_path):
    def f(x, w):
        h = jnp.tanh(x @ w)
        return (h.T @ x).sum() + jnp.transpose(h).copy()[::2].sum()

    x, w = jnp.asarray(np.ones((256, 128), np.float32)), jnp.asarray(np.ones((128, 256), np.float32))
    compiled = jax.jit(f).lower(x, w).compile()
    library = step_profile.matmul_library(compiled.as_text())
    assert "YNNPACK" in library or "Eigen" in library, library
    result = step_profile.profile(lambda: jax.block_until_ready(compiled(x, w)), compiled.as_text(), steps=3,
                                  log_dir=str(tmp_path))
    assert result["total_seconds"] > 0
    assert result["by_category"].get("dots", 0) > 0, result
    # Most of the time is matched to HLO instructions: renamed trace events would leave nearly all of
    # it unmatched. (Not a tight bound: in a 1 ms program the runtime's own bookkeeping events took
    # 2-8% of the time in different runs.)
    assert result["unmatched_seconds"] <= 0.5 * result["total_seconds"], result
    assert "dots" in step_profile.format_breakdown(result)
