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


def _fields_no_flag_can_set(node, path: str) -> list[str]:
    """Leaves that are a plain None: ml_collections refuses any --config override of them (a
    placeholder(type) field, None until given, takes its type's values)."""
    found = []
    for key in node.keys():
        value = node[key]
        if hasattr(value, "keys") and not isinstance(value, dict):
            found += _fields_no_flag_can_set(value, f"{path}.{key}")
        elif value is None and node.get_type(key) is type(None):
            found.append(f"{path}.{key}")
    return found


def test_every_preset_field_that_is_none_can_be_set_from_the_command_line():
    """scaling_laws' data.tokenizer.model_path and data.max_documents were plain None: a sweep on real
    text could not take a trained tokenizer or cap its documents by flag ("NoneType ... not supported")."""
    import importlib
    from ml_collections import config_flags
    for name in ("pretrain", "finetune", "scaling_laws", "emergence", "prepare_data"):
        module = importlib.import_module(f"experiments.configs.{name}")
        for preset in [p for attr in ("PRESETS", "BATCHED_PRESETS", "ACCELERATOR_PRESETS")
                       for p in getattr(module, attr, ())]:
            assert _fields_no_flag_can_set(module.get_config(preset), "config") == [], (name, preset)
    from absl import flags
    argv = ["prog", "--config=experiments/configs/scaling_laws.py:stdlib_tiny",
            "--config.data.tokenizer.model_path=/x.model", "--config.data.max_documents=5"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
    values(argv)
    assert (values.config.data.tokenizer.model_path, values.config.data.max_documents) == ("/x.model", 5)
