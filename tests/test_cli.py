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
    if module == "experiments.scaling_laws":  # the whole line, exit 1 (with or without --dry_run: flag parsing)
        from experiments.configs.scaling_laws import PRESETS
        assert result.returncode == 1 and lines == [
            f"error: unknown scaling_laws preset 'cpu_tinyy'; choose one of {PRESETS}."]


# Every entry point: each defines its flags only when it runs as a program.
ENTRY_POINTS = ("experiments.pretrain", "experiments.finetune", "experiments.prepare_data",
                "experiments.scaling_laws.__main__", "experiments.scaling_laws.lr_check",
                "experiments.scaling_laws.fit", "experiments.evaluate", "experiments.generate", "experiments.emergence")


def test_entry_points_import_together_and_define_no_flags():
    """Two of them in one process (a test session, a notebook) raised absl's DuplicateFlagError:
    each defined --config / --workdir / --output_dir on import."""
    code = (f"import importlib; from absl import flags; [importlib.import_module(m) for m in {ENTRY_POINTS!r}]; "
            "print(sorted(n for n in ('config', 'workdir', 'output_dir', 'seed', 'steps') if n in flags.FLAGS))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
