"""GRPO's evaluation: the rule metric only on the rule's own prompts, and its completion length."""
import json

import pytest

from research.finetune import finetune_and_evaluate
from research.finetune.checks import check_config
from research.models.config import ConfigError

from tests.finetune.conftest import tiny_config

FREE_TEXT = ["Capital of France?", "Name a color.", "Say hi.", "What is 2+2?"]


def test_the_rule_reward_is_reported_beside_a_reward_model_only_on_the_rules_own_prompts(tmp_path, monkeypatch):
    # With the user's free-text prompts and a reward model, the step-0 evaluation scored them with
    # data.synthetic's rule: arithmetic died on split("+"), capitals logged a meaningless number.
    from research.finetune import grpo as grpo_module

    def reward_model(spec, rule):  # stands in for a trained reward run's scores
        return lambda prompts, completions: [0.5] * len(completions)
    monkeypatch.setattr(grpo_module, "reward_function", reward_model)
    for split in ("train", "eval"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in FREE_TEXT))
    files = dict(train_file=str(tmp_path / "train.jsonl"), eval_file=str(tmp_path / "eval.jsonl"))
    for rule, data_files in (("arithmetic", files), ("capitals", files), ("capitals", {})):
        config = tiny_config("grpo_tiny")
        config.grpo.reward = f"reward_model:{tmp_path}"
        config.generation_prompts = 4
        config.data.update(dict(synthetic=rule, **data_files))
        job = grpo_module.grpo_job(config)
        metrics = job.evaluate(job.initial_params(), None, None)
        assert metrics["eval_reward"] == 0.5
        # On the rule's own synthetic prompts it stays: the rule the reward model learned from.
        assert ("eval_rule_reward" in metrics) == (not data_files), (rule, metrics)


def test_generation_tokens_other_than_the_sample_length_is_refused_on_grpo(tmp_path):
    # It was validated, then ignored: GRPO's evaluation completes grpo.max_new_tokens.
    config = tiny_config("grpo_tiny")
    assert config.generation_tokens is None  # the preset leaves it to grpo.max_new_tokens
    check_config(config)
    config.generation_tokens = config.grpo.max_new_tokens  # the same length: nothing is ignored
    check_config(config)
    config.generation_tokens = 16
    with pytest.raises(ConfigError, match=r"^generation_tokens=16 has no effect on path='grpo': its evaluation "
                                          r"completes grpo.max_new_tokens=8 tokens, as its samples; set "
                                          r"--config.grpo.max_new_tokens=16 instead of --config.generation_tokens\.$"):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
