"""The runtime alone (requirements.txt + this package) installs and runs the main jobs.

One test, because it builds one fresh virtual environment (pytest-xdist would build a
module fixture once per worker): pip installs requirements.txt and a non-editable copy of
this checkout, then, from outside the checkout so that the installed copy is what runs,
every library module imports, a short pretraining trains and checkpoints, the evaluation
main scores and generates from that checkpoint with its own SentencePiece tokenizer, and
the scaling-law sweep and the launcher plan their jobs (--dry_run). torch and transformers
are neither installable there nor imported; the features that need them fail in one line
saying what to install. It takes about as long as the runtime install itself (pip reuses its
cache of downloaded wheels).
"""
from __future__ import annotations

import re
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("torch", "transformers", "lm_eval")  # test-suite / [hf] / [lm_eval] packages the runtime must not need

# Runs an entry point as `python -m module args...` would, then checks what it imported.
RUN_MODULE = textwrap.dedent("""
    import runpy, sys
    module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
    leaked = [m for m in {optional!r} if m in sys.modules]
    assert not leaked, f"{{module}} imported {{leaked}}"
""").format(optional=OPTIONAL)

# Imports every library module (mains aside: each defines the same absl flags, and they run below)
# and uses each optional feature once, expecting its one-line install hint.
CHECK_IMPORTS = textwrap.dedent(r"""
    import importlib, importlib.util, json, os, pkgutil, re, sys
    optional, scratch = json.loads(sys.argv[1]), sys.argv[2]
    assert [m for m in optional if importlib.util.find_spec(m) is not None] == []
    import research
    assert os.path.dirname(research.__file__).startswith(sys.prefix), research.__file__
    modules, hints = [], {}
    extra_modules = {"research.evaluation.lm_eval_adapter": "lm_eval"}  # the [lm-eval] extra's adapter
    for package in ("research", "experiments", "launch"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            spec = importlib.util.find_spec(info.name)
            source = open(spec.origin).read() if spec.origin and spec.origin.endswith(".py") else ""
            # Entry points define absl flags at import (several define --config or --preset): they
            # cannot share one process; the main jobs among them run on their own below.
            if info.name.endswith("__main__") or re.search(r"^[^\s#].*\bflags\.DEFINE_", source, re.M):
                continue
            try:
                importlib.import_module(info.name)
            except ImportError as e:  # only an optional extra's own module may say what to install
                assert info.name in extra_modules and "pip install" in str(e), (info.name, e)
                hints[extra_modules[info.name]] = str(e)
                continue
            modules.append(info.name)
    leaked = [m for m in optional if m in sys.modules]
    assert not leaked, f"importing the library imported {leaked}"

    from research.evaluation.tokenizer_loading import load_tokenizer
    from research.models import from_hf
    from research.optional_imports import MissingDependencyError
    hf_tokenizer = os.path.join(scratch, "hf_tokenizer")
    os.makedirs(hf_tokenizer)
    open(os.path.join(hf_tokenizer, "tokenizer.json"), "w").write("{}")
    torch_checkpoint = os.path.join(scratch, "torch_checkpoint")
    os.makedirs(torch_checkpoint)
    json.dump({"model_type": "gpt2", "vocab_size": 64, "n_embd": 16, "n_layer": 1, "n_head": 2,
               "n_positions": 32}, open(os.path.join(torch_checkpoint, "config.json"), "w"))
    open(os.path.join(torch_checkpoint, "pytorch_model.bin"), "wb").write(b"not read")
    for name, use in (("transformers", lambda: load_tokenizer(hf_tokenizer)),
                      ("torch", lambda: from_hf(torch_checkpoint))):
        try:
            use()
        except MissingDependencyError as e:
            hints[name] = str(e)
    print(json.dumps({"modules": modules, "hints": hints}))
""")


def _run(command: list, cwd: Path, timeout: int = 600) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _copy_checkout(destination: Path) -> None:
    """The package's sources, without this checkout's build debris (pip builds in the source tree)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "*.pyc")
    for folder in ("research", "experiments", "launch"):
        shutil.copytree(REPO / folder, destination / folder, ignore=ignore)
    shutil.copy(REPO / "setup.py", destination / "setup.py")


def test_runtime_alone_installs_and_runs_main_jobs_without_torch_or_transformers(tmp_path):
    venv, source, work = tmp_path / "venv", tmp_path / "source", tmp_path / "work"
    _copy_checkout(source)
    work.mkdir()
    try:
        _run([sys.executable, "-m", "venv", venv], cwd=work)
        python = venv / "bin" / "python"
        # --no-compile: bytecode is written on first import instead; about halves the install time.
        _run([python, "-m", "pip", "install", "-q", "--no-compile", "-r", REPO / "requirements.txt"], cwd=work)
        _run([python, "-m", "pip", "install", "-q", "--no-compile", "--no-deps", source], cwd=work)
        installed = {p["name"].lower() for p in json.loads(_run([python, "-m", "pip", "list", "--format=json"], work))}
        assert installed.isdisjoint(OPTIONAL) and "research" in installed and "jax" in installed

        report = json.loads(_run([python, "-c", CHECK_IMPORTS, json.dumps(OPTIONAL), tmp_path], cwd=work))
        assert "research.training.loop" in report["modules"] and "launch.backends" in report["modules"]
        for name, hint in report["hints"].items():
            assert len(hint.splitlines()) == 1 and f"pip install {name.replace('_', '-')}" in hint, hint
        assert sorted(report["hints"]) == sorted(OPTIONAL)

        def main(module: str, *flags: str) -> str:
            return _run([python, "-c", RUN_MODULE, module, *flags], cwd=work)

        pretrain = work / "pretrain"
        out = main("experiments.pretrain", f"--config={source}/experiments/configs/pretrain.py:gpt_tiny",
                   f"--workdir={pretrain}", "--config.train.num_steps=3", "--config.opt.warmup_steps=1",
                   "--config.train.batch_size=8", "--config.train.seq_len=32", "--config.train.eval_every_steps=3",
                   "--config.train.eval_batches=1", "--config.checkpoint.every_steps=3",
                   "--config.train.progress_bar=false", "--config.data.max_documents=40",
                   "--config.data.tokenizer.max_training_chars=100000")
        assert "eval_loss=" in out
        assert sorted(os.listdir(pretrain / "checkpoints")) and (pretrain / "metrics.jsonl").is_file()
        steps = [json.loads(line).get("step") for line in (pretrain / "metrics.jsonl").read_text().splitlines()]
        assert 3 in steps

        out = main("experiments.evaluate", f"--checkpoint={pretrain}", "--tasks=addition_3digit", "--num_shots=0",
                   "--num_test=4", "--num_train=4", "--batch_size=4", f"--output_dir={work / 'evaluations'}")
        assert (work / "evaluations" / "step_3.json").is_file(), out

        out = main("experiments.scaling_laws", f"--config={source}/experiments/configs/scaling_laws.py:cpu_tiny",
                   f"--workdir={work / 'sweep'}", "--dry_run")
        assert re.search(r"\b\d+ runs\b", out) and not (work / "sweep").exists()
        out = main("launch", f"--config={source}/experiments/configs/pretrain.py:gpt_tiny",
                   "--module=experiments.pretrain", f"--workdir={work / 'launch'}", "--dry_run")
        assert out.count("-m launch.multihost experiments.pretrain") == 3 and not (work / "launch").exists()
        # The benchmarks that time torch or transformers say so in one line (they raised a traceback).
        for module, flags in (("experiments.benchmarks.matmul_vs_torch", ["--rows=8"]),
                              ("experiments.benchmarks.decode_vs_transformers", ["--rounds=1"])):
            result = subprocess.run([python, "-c", RUN_MODULE, module, *flags], cwd=work, capture_output=True,
                                    text=True, timeout=300)
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1 and "pip install torch" in lines[0], result.stderr
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~1 GB; pytest keeps its last three tmp folders
