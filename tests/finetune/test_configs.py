"""Every fine-tuning preset resolves into a job; task metrics agree with hand-computed values."""
import numpy as np
import pytest

from experiments.configs import finetune as finetune_configs
from research.finetune import PATHS, build_job
from research.finetune.evaluators import classification_metrics, text_metrics
from research.models import get_config
from research.models.config import ConfigError

from tests.finetune.conftest import tiny_config


@pytest.mark.parametrize("preset", finetune_configs.TINY)
def test_every_tiny_preset_builds_its_job(preset, tmp_path):
    config = tiny_config(preset)
    if preset == "domain_tiny":  # the one preset that reads the user's folder (data.folder)
        from tests.finetune.test_domain import domain_folder
        config.data.update(dict(folder=str(domain_folder(tmp_path / "notes")), data_dir=str(tmp_path / "data"),
                                validation_fraction=0.25))
    job = build_job(config)
    batch = next(job.train_batches(0))
    assert all(v.shape[0] == config.train.batch_size for v in batch.values())


def test_a_t5_of_this_codebase_reads_inputs_ending_in_eos_as_in_pretraining():
    """Span corruption and prefix LM end every encoder input with eos (research/data/objectives.py);
    text-to-text fine-tuning with this codebase's own tokenizer fed them without it, and prompts
    to such a model (generate, the evaluation harness) lacked it too."""
    from research.evaluation.tokenizer_loading import context_encoder
    job = build_job(tiny_config("t5_tiny"))
    eos, batch = job.tokenizer.eos_id, next(job.train_batches(0))
    for inputs, segments in zip(batch["encoder_inputs"], batch["encoder_segment_ids"]):
        assert inputs[int(segments.sum()) - 1] == eos
    assert context_encoder(job.tokenizer, "encoder_decoder")("ab") == [*job.tokenizer.encode("ab"), eos]
    assert context_encoder(job.tokenizer, "decoder")("ab") == job.tokenizer.encode("ab")


def test_every_path_has_a_preset_and_gpu_presets_resolve():
    assert {finetune_configs.get_config(p).path for p in finetune_configs.TINY} == set(PATHS)
    for preset in finetune_configs.GPU:
        config = finetune_configs.get_config(preset)
        assert config.init == "hf:" and config.model.dtype == "bfloat16"
        # The model overrides must be ModelConfig fields and values (a remat="dots" was refused
        # only when a user ran the preset on an accelerator).
        get_config("llama-tiny", **config.model.to_dict())
    with pytest.raises(ConfigError, match=r"^path='ppo' is not one of"):
        config = tiny_config("sft_tiny")
        config.path = "ppo"
        build_job(config)


def test_task_metrics_by_hand():
    metrics = text_metrics(["the cat", "a b c d"], ["the cat sat", "a b c d"])
    assert metrics["eval_exact_match"] == 0.5
    # ROUGE-L F of "the cat" vs "the cat sat": LCS 2, precision 1, recall 2/3 -> F = 0.8; the second is 1.
    np.testing.assert_allclose(metrics["eval_rouge_l"], (0.8 + 1.0) / 2)
    assert text_metrics(["a b c d e"], ["a b c d e"])["eval_bleu"] == pytest.approx(100.0)
    metrics = classification_metrics([0, 1, 1, 1], [0, 1, 0, 1])
    assert metrics["eval_accuracy"] == 0.75
    np.testing.assert_allclose(metrics["eval_f1"], (2 / 3 + 0.8) / 2)  # macro: class 0 F1 2/3, class 1 F1 0.8


@pytest.mark.parametrize("num_beams", [1, 3])
def test_num_beams_set_on_the_command_line_reaches_the_decoding(monkeypatch, num_beams):
    """The text-to-text evaluation read num_beams with a default of 4 and no key, so the command
    line refused --config.num_beams=1 ('is not a config key'). num_beams=1 is greedy decoding, as
    the config's error message and transformers say: it ran a one-beam search, which keeps the best
    finished prefix it has seen ([11, 1, eos] where greedy went on [11, 1, 1, 1, 1, 1])."""
    import os

    from absl import flags
    from ml_collections import config_flags

    from research.finetune import task_paths
    from tests.finetune.conftest import REPO, TINY_MODEL

    argv = ["finetune", f"--config={os.path.join(REPO, 'experiments/configs/finetune.py')}:t5_tiny",
            f"--config.num_beams={num_beams}"]
    flag_values = flags.FlagValues()  # as experiments/finetune.py parses its command line
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert finetune_configs.get_config("t5_tiny").num_beams == 4  # the default, as before
    config.model.update(TINY_MODEL)
    config.train.update(dict(batch_size=8, seq_len=48, eval_batches=0))
    config.data.update(dict(num_train=8, num_eval=8))
    config.generation_prompts = 2

    class Reached(Exception):
        pass

    def beam_search(*args, num_beams, **kwargs):
        raise Reached("beam_search", num_beams)

    def generate(*args, temperature=0.0, **kwargs):
        raise Reached("generate", temperature)
    monkeypatch.setattr(task_paths, "beam_search", beam_search)
    monkeypatch.setattr(task_paths, "generate", generate)
    job = build_job(config)
    with pytest.raises(Reached) as reached:
        job.evaluate(None, None, None)  # no eval batches (eval_batches=0): straight to the decoding
    assert reached.value.args == (("generate", 0.0) if num_beams == 1 else ("beam_search", num_beams))


@pytest.mark.parametrize("key", ["progress_bar", "peak_flops"])
def test_a_train_key_the_trainer_does_not_read_is_refused_on_the_command_line(key):
    """The fine-tuning trainer logs neither a progress bar nor MFU: both keys were declared, an
    override of them accepted and ignored. The command line's refusal of an undeclared key is one
    path for every key (ml_collections' KeyError on the locked config -> experiments.cli.parse_flags):
    one command runs it (progress_bar); each key is checked on the locked preset in-process."""
    import os
    import subprocess
    import sys
    config = finetune_configs.get_config("sft_tiny")
    config.lock()  # as --config loads it
    assert key not in config.train
    with pytest.raises(KeyError, match=f'Key "{key}" does not exist'):
        config.train[key] = 1
    if key != "progress_bar":
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-m", "experiments.finetune",
                             "--config=experiments/configs/finetune.py:sft_tiny", f"--config.train.{key}=1",
                             "--workdir=/nonexistent/never_made"], cwd=repo, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: --config.train.{key} is not a config key")
