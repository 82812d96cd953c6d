"""Experiment mains turn a bad --config into one line on stderr, not a traceback."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, config", [
    ("experiments.pretrain", "experiments/configs/pretrain.py:gpt_tinyy"),
    ("experiments.scaling_laws", "experiments/configs/scaling_laws.py:cpu_tinyy"),
    ("experiments.finetune", "experiments/configs/finetune.py:sft_tinyy"),
])
def test_unknown_preset_is_one_line(module, config, tmp_path):
    result = subprocess.run([sys.executable, "-m", module, f"--config={config}", f"--workdir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: unknown") and "choose one of" in lines[0]
    assert not list(tmp_path.iterdir())  # nothing written before the error
