"""Bad input to the pretraining and evaluation mains: one line on stderr, exit 1, nothing written."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=experiments/configs/pretrain.py:gpt_tiny"


def run(module, *args):
    """(exit code, stderr lines) of `python -m module args` (8 fake CPU devices, from conftest)."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.parametrize("args, expected", [
    ([CONFIG, "--config.train.num_stepz=3"], 'error: --config.train.num_stepz is not a config key; '
                                             'did you mean "num_steps"?'),
    (["--config=experiments/configs/pretrainn.py:gpt_tiny"],
     "error: --config: config file 'experiments/configs/pretrainn.py' does not exist; files in experiments/configs/: "
     "emergence.py, finetune.py, prepare_data.py, pretrain.py, scaling_laws.py."),
    (["--config=experiments/configs/pretrainn.py:gpt_tiny", "--config.train.num_steps=3"],
     "error: --config: config file 'experiments/configs/pretrainn.py' does not exist; files in experiments/configs/: "
     "emergence.py, finetune.py, prepare_data.py, pretrain.py, scaling_laws.py."),
    ([CONFIG, "--config.mesh.shape=(1,1,8)"],
     "error: model gpt2-tiny: num_heads=4 does not split over mesh axis tensor of size 8 (rule 'heads' -> 'tensor', "
     "mesh {'data': 1, 'fsdp': 1, 'tensor': 8}); use a tensor size that divides 4 (e.g. 4) via --config.mesh.shape, "
     "or the rule ('heads', None) to replicate it."),
    ([CONFIG, "--config.mesh.dcn_shape=(2,1,1)"],
     "error: mesh.dcn_shape: dcn_shape (2, 1, 1) spans 2 processes but the 8 devices are in 1 process; make its "
     "product 1. (mesh.shape=(-1, 1, 1); leave dcn_shape empty on one slice / host)"),
    ([CONFIG, "--config.train.num_steps=10"], "error: opt.warmup_steps=30 must lie in [0, total_steps=10]."),
    ([CONFIG, "--config.objective_options.mask_rate=0.3"],
     "error: --config.objective_options.mask_rate is not a config key; config.objective_options declares no keys; "
     "set it whole: --config.objective_options=\"{'mask_rate': VALUE}\"."),
    (["--config=experiments/configs/pretrain.py:bert_tiny", "--config.objective_options={'mask_rat': 0.3}"],
     "error: objective_options ['mask_rat'] are not options of objective='masked_lm'; it takes "
     "['mask_rate', 'mask_token_fraction', 'random_token_fraction']."),
    ([CONFIG, "--config.model=gpt2-small"], "error: --config.model is a group of fields, not a value; set one of its "
                                             "fields, e.g. --config.model.preset=gpt2-small (the config file lists them)."),
])
def test_bad_pretrain_input_is_one_line_and_leaves_nothing(args, expected, tmp_path):
    workdir = tmp_path / "run"
    code, lines = run("experiments.pretrain", *args, f"--workdir={workdir}")
    assert code == 1 and lines == [expected], lines
    assert not workdir.exists()


def test_data_error_after_the_workdir_was_created_removes_it(tmp_path):
    """No file matches the glob: found when the data is opened, after the workdir is claimed."""
    workdir = tmp_path / "run"
    code, lines = run("experiments.pretrain", CONFIG, "--config.data.source=files",
                      f"--config.data.file_patterns={tmp_path}/corpus/*.jsonl",
                      f"--config.data.data_dir={tmp_path}/tfds", f"--workdir={workdir}")
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "corpus/*.jsonl" in lines[0], lines
    assert not workdir.exists()


def test_uncreatable_workdir_is_one_line(tmp_path):
    """(tests/training/test_workdir.py covers the other ways a workdir cannot be created.)"""
    (tmp_path / "a_file").write_text("x")
    workdir = str(tmp_path / "a_file" / "run")
    code, lines = run("experiments.pretrain", CONFIG, f"--workdir={workdir}")
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and f"--workdir={workdir}" in lines[0]
    assert not os.path.exists(workdir)


def test_workdir_of_another_run_is_refused_in_one_line(tmp_path):
    from experiments.configs import pretrain
    from research.training import workdir as workdir_lib
    from research.training import workdir_lock
    workdir = tmp_path / "run"
    workdir_lib.claim(str(workdir), pretrain.get_config("gpt_tiny").to_dict())
    workdir_lock.release([str(workdir)])  # that run ended, having saved (one with no checkpoint may be replaced)
    (workdir / "checkpoints" / "5").mkdir(parents=True)
    before = sorted(os.listdir(workdir))
    code, lines = run("experiments.pretrain", CONFIG, "--config.model.d_model=128", f"--workdir={workdir}")
    assert code == 1 and lines == [
        f"error: --workdir={workdir} holds another run (model.d_model: 64 there, 128 now); use a new --workdir, "
        f"or delete {workdir} to start over."], lines
    assert sorted(os.listdir(workdir)) == before  # the other run's workdir is untouched


def test_evaluate_num_test_zero_is_one_line(tmp_path):
    code, lines = run("experiments.evaluate", f"--checkpoint={tmp_path}", "--num_test=0")
    assert code == 1 and lines == ["error: flag --num_test=0: 0 is not a positive integer"], lines


def _loop_overhead_flag_check(monkeypatch, flag):
    """experiments.benchmarks.loop_overhead._check_flags's exit message for `flag`, in this process.
    The module defines its flags on absl's global FLAGS on import, and its --steps / --output are
    also experiments.benchmarks.accelerator_train's (imported by tests/test_mesh_rules.py): a plain
    import here could raise DuplicateFlagError there. So it is loaded afresh, not into sys.modules,
    with its flags on a FlagValues of its own."""
    import functools
    import importlib.util
    from absl import flags
    own = flags.FlagValues()
    spec = importlib.util.find_spec("experiments.benchmarks.loop_overhead")
    module = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as patch:
        for name in [n for n in dir(flags) if n.startswith("DEFINE_")]:
            patch.setattr(flags, name, functools.partial(getattr(flags, name), flag_values=own))
        spec.loader.exec_module(module)
    own(["loop_overhead", flag])
    with pytest.raises(SystemExit) as stop:
        module._check_flags()
    return stop.value.code


def test_loop_overhead_benchmark_bad_flag_is_one_line_before_measuring(monkeypatch):
    """Each was a traceback; --ks=0 only after every size had been measured. One command shows main
    checks before measuring (its default sizes take minutes), in one line; each flag's exact line
    comes from its check, loop_overhead._check_flags, run in-process."""
    code, lines = run("experiments.benchmarks.loop_overhead", "--ks=0")
    assert code != 0 and lines[-1] == "error: --ks=0: '0' must be a whole number of models >= 1." and \
        len([line for line in lines if "Error" in line]) == 0, lines
    for flag, expected in [
        ("--sizes=abc", "error: --sizes=abc: 'abc' is not a number; e.g. --sizes=1e4,1e5 --ks=1,16."),
        ("--ks=0", "error: --ks=0: '0' must be a whole number of models >= 1."),
        ("--rounds=0", "error: --rounds=0 must be >= 1."),
        ("--steps=0", "error: --steps=0 must be >= 1."),
    ]:
        assert _loop_overhead_flag_check(monkeypatch, flag) == expected
