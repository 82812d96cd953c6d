"""GRPO from a programmatic reward: group-relative advantages, and a tiny run that raises
the reward of its samples while the KL to the reference stays bounded."""
import numpy as np
import pytest

from research.finetune import finetune_and_evaluate
from research.finetune.grpo import group_advantages
from research.training.metrics import read_metrics

from tests.finetune.conftest import tiny_config


def test_group_advantages_are_standardised_by_the_sample_std_within_each_group():
    # As TRL's GRPOTrainer (scale_rewards="group": torch's unbiased std). By hand: [1, 0, 0, 1] has
    # mean 1/2 and sample std sqrt(4 * 1/4 / 3) = 1/sqrt(3); [0, 1] has mean 1/2, std 1/sqrt(2).
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    advantages = group_advantages(rewards)
    half_over = lambda std: 0.5 / (std + 1e-4)
    np.testing.assert_allclose(advantages[0], half_over(1 / np.sqrt(3)) * np.array([1, -1, -1, 1]), rtol=1e-6)
    np.testing.assert_array_equal(advantages[1], 0)  # a group that all agree teaches nothing
    np.testing.assert_allclose(group_advantages(np.array([[0.0, 1.0]])), [[-half_over(1 / np.sqrt(2)),
                                                                          half_over(1 / np.sqrt(2))]], rtol=1e-6)
    with pytest.raises(ValueError, match="groups of >= 2 rewards, got 1"):  # no NaN from a group of one
        group_advantages(np.array([[1.0], [0.0]]))


def test_tiny_grpo_run_raises_reward_with_bounded_kl(tmp_path):
    steps = 24
    config = tiny_config("grpo_tiny", num_steps=steps)
    config.model.update(dict(num_layers=2, d_model=64))
    config.train.seq_len = 40
    config.grpo.update(dict(group_size=4, max_new_tokens=6))
    config.generation_prompts = 16
    final = finetune_and_evaluate(config, str(tmp_path))
    records = {r["step"]: r for r in read_metrics(str(tmp_path)) if "sample_reward" in r}
    first = np.mean([records[s]["sample_reward"] for s in range(1, 5)])
    last = np.mean([records[s]["sample_reward"] for s in range(steps - 3, steps + 1)])
    kl = [records[s]["sample_kl"] for s in range(1, steps + 1)]
    assert last > 2 * first + 0.03, (first, last)  # seen: 0.027 -> 0.119
    assert final["eval_reward"] > final["before_eval_reward"]
    assert max(kl) < 1.5, kl  # nats per sampled token; kl_coef keeps the policy near the reference
    # The loss's k3 KL to the reference is recorded as such: it was logged and printed as 'accuracy'.
    assert "accuracy" not in records[steps] and "accuracy" not in final
    assert 0 <= records[steps]["kl"] == final["kl"] < 1.5


def _log_softmax_np(logits, temperature, vocab_limit):
    """The sampler's log-probs by hand: logits / T over the first vocab_limit ids (float64)."""
    scaled = np.asarray(logits, np.float64)[..., :vocab_limit] / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    return scaled - np.log(np.exp(scaled).sum(axis=-1, keepdims=True))


def test_grpo_loss_takes_log_probs_under_the_sampling_distribution():
    # The policy is what generate draws from: softmax(logits / T) over the tokenizer's ids. With
    # a reference equal to the policy and log-probs taken under that distribution by hand, the
    # KL term must vanish; log-probs of the full temperature-1 softmax (the old loss) leave a KL.
    import jax
    from research.finetune.run import build_job

    config = tiny_config("grpo_tiny")
    config.grpo.temperature = 0.5
    job = build_job(config)
    params = job.initial_params()
    vocab, limit = job.model.config.vocab_size, job.tokenizer.vocab_size
    assert limit < vocab  # the model's vocabulary is padded above the tokenizer's: the case at issue
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, limit, size=(8, config.train.seq_len)).astype(np.int32)
    logits = np.asarray(job.model.apply({"params": params}, tokens[:, :-1]), np.float64)

    def kl_against(reference_logps_BTV):
        ref = np.take_along_axis(reference_logps_BTV, tokens[:, 1:, None], axis=-1)[..., 0].astype(np.float32)
        batch = {"tokens": tokens, "completion_mask": np.ones_like(tokens, np.float32),
                 "advantages": np.zeros(8, np.float32), "ref_logps": ref}
        loss, aux = job.loss_fn(job.model, params, batch, None)
        return float(aux["accuracy"]), float(loss)  # aux "accuracy" carries the mean k3 KL

    kl, loss = kl_against(_log_softmax_np(logits, 0.5, limit))
    assert abs(kl) < 1e-5 and abs(loss) < 1e-6, (kl, loss)
    kl_full, _ = kl_against(_log_softmax_np(logits, 1.0, vocab))
    assert kl_full > 1e-3, kl_full
    # The gradient is that of the sampler's log-probs: it moves no padded id's logit row.
    grads = jax.grad(lambda p: job.loss_fn(job.model, p, {"tokens": tokens,
                                                          "completion_mask": np.ones_like(tokens, np.float32),
                                                          "advantages": np.ones(8, np.float32),
                                                          "ref_logps": np.zeros(tokens[:, 1:].shape, np.float32)},
                                           None)[0])(params)
    head = [np.asarray(g) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if g.ndim == 2 and vocab in g.shape]
    assert head, "no parameter with a vocabulary axis"
    for g in head:
        rows = g[limit:] if g.shape[0] == vocab else g[:, limit:].T
        np.testing.assert_array_equal(rows, 0)


def test_chat_message_prompts_are_rendered_as_a_chat_and_reach_the_reward_as_messages(tmp_path, monkeypatch):
    # A {"prompt": [messages]} row (the form preference files take) prompted the policy with the
    # Python repr of the list; it must read as the chat, as a string prompt does, and the reward
    # gets every prompt as messages (a string prompt: one user message).
    import json

    import jax
    from research.finetune import grpo as grpo_module
    from research.finetune.reward_source import reward_function

    conversation = [{"role": "system", "content": "Be loud."}, {"role": "user", "content": "Shout: cat"}]
    rows = [{"prompt": conversation}, {"prompt": "Shout: dog"}]
    for split in ("train", "eval"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = _record_rewards(monkeypatch, grpo_module, "prompts")
    config = tiny_config("grpo_tiny")
    config.train.update(dict(seq_len=64, batch_size=2))
    config.grpo.update(dict(group_size=2, max_new_tokens=4))
    config.data.update(dict(train_file=str(tmp_path / "train.jsonl"), eval_file=str(tmp_path / "eval.jsonl")))
    job = grpo_module.grpo_job(config)
    batch = next(job.train_batches(0))
    rendered = {job.tokenizer.decode([int(t) for t in row[:n]])
                for row, n in zip(batch["prompt_tokens"], batch["prompt_length"])}
    assert rendered == {"System: Be loud.\nUser: Shout: cat\nAssistant: ", "User: Shout: dog\nAssistant: "}

    params = job.initial_params()
    job.prepare(params, params, jax.tree.map(jax.numpy.asarray, batch), 1)
    expected = [conversation, [{"role": "user", "content": "Shout: dog"}]]
    assert sorted(map(json.dumps, seen)) == sorted(json.dumps(m) for m in expected for _ in range(2))
    # The rule reads the last user message: the conversation scores as its string form does.
    rule = reward_function("rule", "capitals")
    np.testing.assert_array_equal(rule([conversation, [{"role": "user", "content": "Shout: cat"}]], ["CAT", "CAT"]),
                                  [1.0, 1.0])


def test_a_prompt_ending_with_an_assistant_turn_is_one_line(tmp_path):
    import json

    from research.finetune.grpo import grpo_job
    from research.finetune.records import RecordError

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "Shout: cat"},
                                           {"role": "assistant", "content": "CAT"}]}) + "\n")
    config = tiny_config("grpo_tiny")
    config.data.update(dict(train_file=str(path), eval_file=str(path)))
    with pytest.raises(RecordError, match=rf"^{path}:1: the prompt ends with an assistant message; a GRPO prompt ends "
                                          r"with the user \(or system\) turn the policy answers\.$"):
        grpo_job(config)


@pytest.mark.parametrize("tokenizer_kind,template_name", [("char", "plain"), ("char", "chatml"), ("hf", "chatml")])
def test_a_sample_ends_at_its_turn_end_for_the_reward_and_the_loss(tmp_path, monkeypatch, tokenizer_kind,
                                                                   template_name):
    # The scripted policy says a reply's trained tokens, then (where nothing stops it) an invented
    # next user turn. The reward must read the whole reply (plain's closing "\n" cut "CAT\nCAT" to
    # "CAT"), and the loss train the sampled tokens through the turn's end only, as trl's completion
    # mask ends at the first eos: chatml trains no eos, so the samples ran to max_new_tokens and the
    # tokens after <|im_end|> (a special token in a Qwen-style folder, which the decode also dropped)
    # got the turn's advantage.
    import json

    import jax
    from research.data.chat_templates import render_chat, render_prompt
    from research.evaluation.tokenizer_loading import load_tokenizer
    from research.finetune import grpo as grpo_module
    from tests.finetune.chat_oracles import chatml_folder, scripted_generate

    spec = "char" if tokenizer_kind == "char" else chatml_folder(tmp_path / "tok")
    tokenizer = load_tokenizer(spec)
    template = grpo_module.get_chat_template(template_name)
    replies = {"Shout: cat": "CAT\nCAT", "Shout: dog": "DOG"}
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in replies))
    plans, turn_lengths = {}, {}
    for prompt, reply in replies.items():
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        ids, mask = render_chat(messages, template, tokenizer)
        key = tuple(render_prompt(messages, template, tokenizer))
        plans[key] = [i for i, m in zip(ids, mask) if m] + tokenizer.encode(f"{template.user_open}hi")
        # By hand: plain's turn is the reply, its "\n" and eos; chatml's ends at <|im_end|> (the
        # "\n" after it is never generated when generation stops on the <|im_end|> id).
        turn_lengths[key] = (len(tokenizer.encode(reply + "\n")) + 1 if template_name == "plain"
                             else len(tokenizer.encode(reply + "<|im_end|>")))
    monkeypatch.setattr(grpo_module, "generate", scripted_generate(plans))
    seen = _record_rewards(monkeypatch, grpo_module, "completions")
    config = tiny_config("grpo_tiny")
    config.train.update(dict(seq_len=128, batch_size=2))
    config.grpo.update(dict(group_size=2, max_new_tokens=48))
    config.tokenizer = spec
    config.data.update(dict(train_file=str(tmp_path / "prompts.jsonl"), eval_file=str(tmp_path / "prompts.jsonl"),
                            chat_template=template_name))
    job = grpo_module.grpo_job(config)
    batch = next(job.train_batches(0))
    params = job.initial_params()
    train_batch, _ = job.prepare(params, params, jax.tree.map(jax.numpy.asarray, batch), 1)
    assert sorted(seen) == sorted(reply for reply in replies.values() for _ in range(2))
    mask, tokens = np.asarray(train_batch["completion_mask"]), np.asarray(train_batch["tokens"])
    prompts = [tuple(int(t) for t in row[:n]) for row, n in zip(batch["prompt_tokens"], batch["prompt_length"])]
    for i, prompt in enumerate(p for p in prompts for _ in range(2)):
        start, n = len(prompt), turn_lengths[prompt]
        np.testing.assert_array_equal(mask[i], [0] * start + [1] * n + [0] * (mask.shape[1] - start - n))
        assert list(tokens[i, start:start + n]) == plans[prompt][:n]


def _record_rewards(monkeypatch, grpo_module, what: str) -> list:
    """Make GRPO's reward functions also append what they are given (`what`: "prompts" or
    "completions") to the returned list, scoring as before."""
    from research.finetune.reward_source import reward_function
    seen = []

    def recording_reward(spec, rule):
        rule_fn = reward_function(spec, rule)

        def score(prompts, completions):
            seen.extend(prompts if what == "prompts" else completions)
            return rule_fn(prompts, completions)
        return score

    monkeypatch.setattr(grpo_module, "reward_function", recording_reward)
    return seen


def test_a_prompt_past_the_prompt_budget_names_seq_len_and_max_new_tokens(tmp_path):
    # The budget is train.seq_len - grpo.max_new_tokens; it was reported as seq_len itself
    # ("prompt has 31 tokens > seq_len=20; raise train.seq_len" when train.seq_len was 24).
    import json

    from research.finetune.grpo import grpo_job
    from research.finetune.records import RecordError

    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "Shout: abcdefghij"}) + "\n")  # 'User: ...\nAssistant: ': 35 chars
    config = tiny_config("grpo_tiny")
    config.train.seq_len = 24
    config.grpo.max_new_tokens = 4
    config.data.update(dict(train_file=str(path), eval_file=str(path)))
    with pytest.raises(RecordError, match=rf"^{path}:1: prompt has 35 tokens > 20, the prompt budget train.seq_len=24 "
                                          r"- grpo.max_new_tokens=4; raise --config.train.seq_len to 39 \(up to the "
                                          r"model's max_len\), lower grpo.max_new_tokens, or shorten the prompt\.$"):
        grpo_job(config)


def test_train_z_loss_regularises_the_policys_log_partition_on_the_completion_tokens():
    # train.z_loss was silently 0 in GRPO: it regularises the LM head's own normaliser (raw logits,
    # whole vocabulary), not the sampler's temperature-scaled, vocabulary-limited one.
    from research.finetune.grpo import grpo_loss
    from research.finetune.run import build_job
    from tests.finetune.test_preference_losses import _tiny_decoder, mean_log_z_squared

    model, params = _tiny_decoder()
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 60, (4, 12)).astype(np.int32)
    mask = np.zeros((4, 12), np.float32)
    mask[:, 6:11] = 1
    batch = {"tokens": tokens, "completion_mask": mask, "advantages": rng.normal(size=4).astype(np.float32),
             "ref_logps": np.full((4, 11), -4.0, np.float32)}
    kwargs = dict(kl_coef=0.1, temperature=0.7, vocab_limit=60)
    plain, _ = grpo_loss(model, params, batch, None, **kwargs)
    regularised, aux = grpo_loss(model, params, batch, None, z_loss=0.25, **kwargs)
    expected = mean_log_z_squared(model, params, tokens, mask)
    np.testing.assert_allclose(float(aux["z_loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(regularised), float(plain) + 0.25 * expected, rtol=1e-5)
    config = tiny_config("grpo_tiny")
    config.train.z_loss = 1e-4
    assert build_job(config).loss_fn.keywords["z_loss"] == 1e-4
