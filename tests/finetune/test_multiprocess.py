"""Fine-tuning on two local processes joined by jax.distributed equals one process with their devices.

Each worker (tests/finetune/multiprocess_worker.py) is its own Python process: 2 processes x 2
fake CPU devices against 1 process x 4, one mesh over all devices. Fine-tuning builds every
global batch on every process and each places the rows its devices hold, so both runs train
on the same batches; only the order of floating-point reductions may differ. Until 2026-12-06
fine-tuning was refused on several processes: its evaluation read generated replies and
predicted labels from arrays spanning both processes, and each process drew other batches.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from research.training.metrics import read_metrics
from tests.training.test_multiprocess import free_port, run_all, worker_env

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")


def commands(preset: str, workdir, out, *flags: str, processes: int) -> list:
    """The worker on `processes` processes (4 devices in all)."""
    if processes == 1:
        return [([sys.executable, WORKER, preset, str(workdir), f"{out}_0.json", *flags], worker_env(4))]
    port = free_port()
    return [([sys.executable, WORKER, preset, str(workdir), f"{out}_{i}.json", *flags],
             worker_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
            for i in range(processes)]


def run(tmp_path, preset: str, name: str, *flags: str, processes: int) -> list[dict]:
    """Train; returns each process's final metrics."""
    run_all(commands(preset, tmp_path / name, tmp_path / name, *flags, processes=processes), tmp_path)
    return [json.loads((tmp_path / f"{name}_{i}.json").read_text())["final"] for i in range(processes)]


def assert_same(multi: dict, single: dict) -> None:
    assert sorted(multi) == sorted(single)
    for key in single:  # margins near 0 (reward, DPO) need an absolute tolerance beside the relative one
        np.testing.assert_allclose(multi[key], single[key], rtol=1e-5, atol=1e-6, err_msg=key)


def logged(workdir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(str(workdir)) if "loss" in r]


SFT_FLAGS = ("--generation_prompts=6",)
OTHER_FLAGS = ("--generation_prompts=4",)  # DPO, classification, T5 and GRPO


def grpo_flags(reward_dir) -> tuple[str, ...]:
    return (f"--grpo_reward=reward_model:{reward_dir}", *OTHER_FLAGS)


@pytest.fixture(scope="module")
def one_process_runs(tmp_path_factory):
    """Every one-process reference of this module (1 process x 4 devices): SFT with generation and
    export, DPO, classification, T5, and GRPO scored by a reward model (trained here first, in this
    process, as a run's earlier stage would be). The five runs train one after another in one worker
    process (multiprocess_worker.py --runs), each in its own workdir with its own config: one
    process start instead of five (~3-4 s each, mostly imports). The two-process runs compared with
    them each still start their own two processes. Returns (directory: each run's workdir is its
    preset's name, the SFT export is export/), {preset: final metrics}, the reward model's workdir."""
    from research.finetune import finetune_and_evaluate
    from tests.finetune.conftest import tiny_config
    tmp_path = tmp_path_factory.mktemp("one_process")
    reward = tiny_config("reward_tiny", num_steps=2)
    reward.opt.warmup_steps = 1
    finetune_and_evaluate(reward, str(tmp_path / "reward"))
    flags = {"sft_tiny": (*SFT_FLAGS, f"--export_dir={tmp_path / 'export'}"), "dpo_tiny": OTHER_FLAGS,
             "classify_tiny": OTHER_FLAGS, "t5_tiny": OTHER_FLAGS, "grpo_tiny": grpo_flags(tmp_path / "reward")}
    runs = [[preset, str(tmp_path / preset), str(tmp_path / f"{preset}.json"), *f] for preset, f in flags.items()]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    # Five runs in one process: a longer deadline than one run's.
    run_all([([sys.executable, WORKER, f"--runs={tmp_path / 'runs.json'}"], worker_env(4))], tmp_path, timeout=300)
    finals = {preset: json.loads((tmp_path / f"{preset}.json").read_text())["final"] for preset in flags}
    return tmp_path, finals, tmp_path / "reward"


def test_sft_on_two_processes_matches_one_with_generation_and_export(tmp_path, one_process_runs):
    single_dir, single = one_process_runs[0], one_process_runs[1]["sft_tiny"]
    multi = run(tmp_path, "sft_tiny", "multi", *SFT_FLAGS, f"--export_dir={tmp_path / 'export'}", processes=2)
    assert multi[0] == multi[1]  # every process reports the same, globally reduced, metrics
    assert "eval_exact_match" in single and "before_eval_exact_match" in single  # greedy replies were generated
    assert_same(multi[0], single)
    # Process 0 alone wrote the records: each step once, the losses of the one-process run.
    steps, losses = zip(*logged(tmp_path / "multi"))
    single_steps, single_losses = zip(*logged(single_dir / "sft_tiny"))
    assert steps == single_steps == (1, 2, 3)
    np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
    assert losses[-1] < losses[0]  # it trained: the comparison is not of constants
    # The export gathered the sharded weights: the same tensors as the one-process export.
    from safetensors.numpy import load_file
    exported, reference = (load_file(str(d / "export" / "model.safetensors")) for d in (tmp_path, single_dir))
    assert sorted(exported) == sorted(reference)
    for name in reference:  # Adam's first steps move a weight whose gradient is ~0 by up to +-lr on rounding
        np.testing.assert_allclose(exported[name], reference[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_sft_stopped_and_resumed_on_two_processes_then_one_matches_one_uninterrupted(tmp_path, one_process_runs):
    """Stopped after step 1 and 2 on two processes, finished on one: every process holds the same
    data position (it builds every batch), so the run resumes on any number of processes. The one
    that finishes is this (pytest) process with its 8 devices, resharding the 2 x 2 devices' save:
    another process count and device count than the save's, without a process start (~3-4 s)."""
    single_dir, single = one_process_runs[0], one_process_runs[1]["sft_tiny"]
    for stop, processes in ((1, 2), (2, 2)):
        run(tmp_path, "sft_tiny", "resumed", *SFT_FLAGS, f"--stop_after_steps={stop}", processes=processes)
        assert [step for step, _ in logged(tmp_path / "resumed")] == list(range(1, stop + 1))
    from research.finetune import finetune_and_evaluate
    from tests.finetune.multiprocess_worker import base_config  # the workers' config, the mesh over 8 devices
    final = finetune_and_evaluate(base_config("sft_tiny", *SFT_FLAGS), str(tmp_path / "resumed"))
    assert_same(final, single)  # before_* too: the step-0 evaluation the first session recorded
    steps, losses = zip(*logged(tmp_path / "resumed"))
    assert steps == (1, 2, 3)
    np.testing.assert_allclose(losses, [loss for _, loss in logged(single_dir / "sft_tiny")], rtol=1e-5)


# Preference pairs (reference log-probs), BERT classification (labels predicted on the host) and
# T5 (beam search on the host). GRPO (sampling, rewards and advantages on the host) on two
# processes is test_grpo_scored_by_a_reward_model_on_two_processes_matches_one, which also scores
# its greedy evaluation replies by the rule (eval_rule_reward) on as many prompts as this test did.
@pytest.mark.parametrize("preset", ["dpo_tiny", "classify_tiny", "t5_tiny"])
def test_other_paths_on_two_processes_match_one(tmp_path, preset, one_process_runs):
    multi = run(tmp_path, preset, "multi", *OTHER_FLAGS, processes=2)
    assert multi[0] == multi[1]
    assert_same(multi[0], one_process_runs[1][preset])


def run_to_failure(argvs, logs_dir, timeout: int = 120) -> tuple[list[int], list[str]]:
    """Run the commands together (processes expected to fail); their exit codes and output. Any
    still running after `timeout` (a process waiting on a failed peer) is killed: code -9."""
    paths = [logs_dir / f"worker_{i}.log" for i in range(len(argvs))]
    processes = []
    for (argv, env), path in zip(argvs, paths):
        with open(path, "w") as log:  # files, not pipes: a full pipe would block a worker
            processes.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    try:
        for p in processes:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in processes], [path.read_text() for path in paths]


def test_grpo_scored_by_a_reward_model_on_two_processes_matches_one(tmp_path, one_process_runs):
    """The reward model scores inside the training mesh: on two processes its scores spanned
    both and reading them on the host died at step 1. Also GRPO's own two-process path (sampling,
    group advantages, greedy evaluation replies on the host): the rule the reward model learnt
    scores the 4 evaluation prompts' replies (eval_rule_reward), compared like every metric."""
    _, finals, reward_dir = one_process_runs  # the reward model and the one-process run: the fixture
    single = finals["grpo_tiny"]
    multi = run(tmp_path, "grpo_tiny", "multi", *grpo_flags(reward_dir), processes=2)
    assert {"eval_reward", "eval_rule_reward", "sample_reward"} <= set(single)  # all compared below
    assert multi[0] == multi[1]
    assert_same(multi[0], single)


def test_an_export_process_0_cannot_write_fails_on_every_process(tmp_path):
    """Process 0 writes the export alone: its failure left it short of the barrier the others
    waited at, and both processes hung until killed."""
    # A folder under a file is refused before training now (checks.check_export_dir): the write
    # itself fails here, as a full disk would, on process 0 only.
    argvs = commands("sft_tiny", tmp_path / "run", tmp_path / "run", f"--export_dir={tmp_path / 'export'}",
                     "--export_fails_on=0", processes=2)
    codes, logs = run_to_failure(argvs, tmp_path)
    assert all(code not in (0, -9) for code in codes), codes
    assert "No space left on device (the test's)" in logs[0]
    assert "export_dir=" in logs[1] and "process 0 could not write the export" in logs[1]


def test_processes_that_build_different_batches_stop_in_one_line(tmp_path):
    """Every process builds each global batch and keeps its own rows: data read in another order on
    process 1 (another file on its host, a hash-seed-dependent order) trained silently on rows no
    single batch holds. Now both processes stop at the first step, with one line."""
    argvs = commands("sft_tiny", tmp_path / "run", tmp_path / "run", "--reverse_data_on=1", processes=2)
    codes, errors = run_to_failure(argvs, tmp_path)
    assert codes == [1, 1], [e[-2000:] for e in errors]
    for index, error in enumerate(errors):
        assert (f"process(es) [1] built another batch for step 1 than process 0 (this is process {index} of 2): "
                "fine-tuning builds every batch on every process") in error
    assert not (tmp_path / "run" / "checkpoints").exists()
