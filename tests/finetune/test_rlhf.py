"""RLHF against a trained reward model: a BERT body with a scalar head learns a preference,
then GRPO raises that reward model's score of the policy's replies with bounded KL."""
import pytest

from research.finetune import finetune_and_evaluate
from research.models.config import ConfigError
from research.training.metrics import read_metrics

from tests.finetune.conftest import tiny_config


def test_grpo_raises_the_score_of_a_bert_reward_model_with_bounded_kl(tmp_path):
    reward = tiny_config("reward_tiny", num_steps=20)
    reward.model.preset = "bert-test"  # a zoo encoder with a scalar head on its first token
    trained = finetune_and_evaluate(reward, str(tmp_path / "reward"))
    assert trained["before_eval_accuracy"] < 0.8 and trained["eval_accuracy"] > 0.9, trained

    steps = 12
    config = tiny_config("grpo_tiny", num_steps=steps)
    config.model.update(dict(num_layers=2, d_model=64))
    config.train.seq_len = 40
    config.grpo.update(dict(group_size=4, max_new_tokens=6, reward=f"reward_model:{tmp_path / 'reward'}"))
    config.generation_prompts = 16
    final = finetune_and_evaluate(config, str(tmp_path / "grpo"))
    # The greedy replies' mean reward-model score (seen -0.16 -> 1.04), and the rule the reward
    # model learned from its pairs (capital letters; seen 0.04 -> 0.51), both rise.
    assert final["eval_reward"] > final["before_eval_reward"] + 0.5, final
    assert final["eval_rule_reward"] > final["before_eval_rule_reward"] + 0.2, final
    kl = [r["sample_kl"] for r in read_metrics(str(tmp_path / "grpo")) if "sample_kl" in r]
    assert len(kl) == steps and max(kl) < 1.0, kl  # nats per sampled token (seen max 0.13)


def test_a_reward_source_that_is_not_a_reward_run_is_one_line(tmp_path):
    config = tiny_config("grpo_tiny")
    config.grpo.reward = f"reward_model:{tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match=r"^grpo.reward='reward_model:.*nowhere': '.*nowhere' is not a folder"):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    config.grpo.reward = "ppo"
    with pytest.raises(ConfigError, match=r"^grpo.reward='ppo' must be 'rule' or 'reward_model:<workdir of a reward run>'"):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_bert_reward_model_reads_the_reply_of_a_conversation_longer_than_its_seq_len(tmp_path, caplog):
    # The conversation was cut to its first seq_len tokens: the reply went, and every sample of a
    # group scored alike (GRPO's advantages all zero). A prompt that fills seq_len alone is refused.
    import json

    import numpy as np
    from research.finetune.reward_source import load_reward_model
    reward = tiny_config("reward_tiny", num_steps=4)
    reward.model.preset, reward.train.seq_len = "bert-test", 40
    finetune_and_evaluate(reward, str(tmp_path / "reward"))
    score = load_reward_model(str(tmp_path / "reward"))
    long_prompt = [{"role": "user", "content": "Please answer in the shortest way you can. Shout: cat"}]
    assert len(score.conversation_ids(long_prompt, "CAT")) > 40
    with caplog.at_level("WARNING"):
        rewards = score([long_prompt] * 2, ["CAT", "cat"])
    assert rewards[0] != rewards[1], rewards
    assert [r for r in caplog.records if "longer than its train.seq_len=40" in r.getMessage()]

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "x" * 60}) + "\n")
    config = tiny_config("grpo_tiny")
    config.train.seq_len = 80
    config.grpo.reward = f"reward_model:{tmp_path / 'reward'}"
    config.data.update(dict(train_file=str(tmp_path / "prompts.jsonl"), eval_file=str(tmp_path / "prompts.jsonl")))
    with pytest.raises(ConfigError, match=r"^.*prompts\.jsonl.*: the prompt takes \d+ tokens of grpo\.reward=.*whose "
                                          r"train\.seq_len=40 leaves no room for the reply it scores; train the"):
        finetune_and_evaluate(config, str(tmp_path / "grpo"))
    assert not (tmp_path / "grpo").exists()
    assert np.isfinite(rewards).all()
    # A decoder reward reads the conversation's last seq_len tokens, the reply among them: not refused.
    decoder = tiny_config("reward_tiny", num_steps=1)
    decoder.train.seq_len = 40
    finetune_and_evaluate(decoder, str(tmp_path / "decoder_reward"))
    decoder_score = load_reward_model(str(tmp_path / "decoder_reward"))
    assert len(decoder_score.conversation_ids(long_prompt, "")) >= 40
    decoder_score.check_prompts([("prompts.jsonl:1", long_prompt)])
