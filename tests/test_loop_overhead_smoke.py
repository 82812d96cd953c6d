"""experiments/benchmarks/loop_overhead.py builds its runs from the cpu_tiny sweep preset: a preset
change (the fields the sweep sets per run are None there) broke it with a TypeError, unseen, because
no test ran it. One tiny size, no PyTorch reference, no K-models comparison."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_loop_overhead_benchmark_measures_one_tiny_size():
    result = subprocess.run([sys.executable, "-m", "experiments.benchmarks.loop_overhead", "--sizes=1e3",
                             "--steps=20", "--ks=", "--torch_ref=/nonexistent"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("N=")]
    assert "loop" in line and "ms/step" in line and "step alone" in line, line
