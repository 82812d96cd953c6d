"""GRPO (Shao et al. 2024): RL with group-relative advantages, from a programmatic reward or
the score of a trained reward model (grpo.reward, research/finetune/reward_source.py).

A prompt ({"prompt": ...} per JSONL row) is a string or chat messages, as in preference files
(research/finetune/preference_data.py): it is rendered with data.chat_template and the
assistant's opening (the generation prompt), as trl renders conversational prompts.

Each step has a sampling phase and the ordinary train step:
  1. sample `group_size` completions of every prompt in the batch with research.decoding
     (temperature sampling, key fold_in(seed key, step), so a resumed run samples the same);
     each ends at the template's turn end (research/data/chat_templates.py cut_turn): the
     reward reads the reply before it, and the loss trains the sampled tokens through it,
     as trl's completion mask ends at the first eos;
  2. score them with the reward (grpo.reward: data.synthetic's rule_reward, or a reward
     model trained by path="reward"; it gets the prompt as chat messages, reward_source.py),
     and set each completion's
     advantage to (r - mean of its group) / (std of its group + eps): no value model (the
     sample std, Bessel-corrected, as TRL's GRPOTrainer with scale_rewards="group");
  3. add the frozen reference's per-token log-probs, then run research.training's train
     step on the loss below.

The policy is the distribution the completions are drawn from: softmax(logits / temperature)
over the tokenizer's ids (research.decoding's vocab_limit; the model's padded ids are never
drawn). Every log-prob below, the reference's included, is taken under that same distribution
(as TRL's GRPOTrainer scales logits by its temperature), so the update is the policy gradient
of the sampler itself, not of the model's full temperature-1 softmax.

Loss per completion token (one policy update per sample, so the PPO ratio is 1 and only
its gradient matters): -A * exp(logp - stop_grad(logp)) + kl_coef * k3, with the k3 KL
estimator exp(ref - logp) - (ref - logp) - 1 (Schulman 2020), averaged over all
completion tokens of the batch, plus train.z_loss times the mean log Z ** 2 of the policy's LM
head on those tokens (its raw softmax normaliser, as SFT regularises it). Logged per step:
sample_reward (mean reward of the samples), sample_kl (mean per-token log-ratio
log pi - log ref on the samples) and kl (the loss's mean k3 estimate on them).
Rewards are computed on the host from decoded text: on several processes every process
samples the same completions (one program, one key), gathers them and scores them itself, so
each builds the same global batch and places its own rows (partitioning.shard_global_batch).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.data.chat_templates import cut_turn, get_chat_template, render_prompt, turn_end_ids
from research.decoding import generate, vocab_limit_for
from research.finetune import records as records_lib
from research.finetune.checks import config_section
from research.finetune.evaluators import greedy_completions
from research.finetune.paths import _decoder_base, _zoo_params, generation_prompts, load_records
from research.finetune.preference_data import prompt_messages, rule_reward, synthetic_prompts
from research.finetune.preference_losses import mean_square, token_log_probs, token_log_probs_and_log_z
from research.finetune.records import RecordError, pad_row
from research.finetune.reward_source import last_user_text, reward_function
from research.finetune.trainer import FinetuneJob
from research.models.config import ConfigError
from research.training.partitioning import shard_global_batch, to_host


@dataclasses.dataclass(frozen=True, kw_only=True)
class GrpoConfig:
    """config.grpo: completions per prompt, their length and temperature, and the KL weight."""

    group_size: int = 8
    max_new_tokens: int = 8
    temperature: float = 1.0
    kl_coef: float = 0.05
    reward: str = "rule"  # | "reward_model:<workdir of a path='reward' run>"

    def __post_init__(self):
        if self.group_size < 2:
            raise ConfigError(f"grpo.group_size={self.group_size} must be >= 2 (advantages compare a group).")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"grpo.max_new_tokens={self.max_new_tokens} must be positive: the length of each "
                              "sampled completion (e.g. --config.grpo.max_new_tokens=8).")
        if not math.isfinite(self.temperature) or self.temperature <= 0:  # nan passed "<= 0": NaN loss at step 1
            raise ConfigError(f"grpo.temperature={self.temperature} must be positive: GRPO samples its completions "
                              "(e.g. --config.grpo.temperature=1.0).")
        if not math.isfinite(self.kl_coef) or self.kl_coef < 0:
            raise ConfigError(f"grpo.kl_coef={self.kl_coef} must be finite and >= 0: the weight of the KL to the "
                              "reference (0 = none; e.g. --config.grpo.kl_coef=0.05).")


def check_prompt_budget(seq_len: int, grpo: GrpoConfig) -> None:
    """A prompt's budget is train.seq_len - grpo.max_new_tokens: the rest of a row is the sample's."""
    if seq_len - grpo.max_new_tokens <= 1:
        raise ConfigError(f"train.seq_len={seq_len} leaves no room for prompts after grpo.max_new_tokens="
                          f"{grpo.max_new_tokens}; raise --config.train.seq_len above {grpo.max_new_tokens + 1}.")


def check_prompt_fits(where: str, length: int, seq_len: int, grpo: GrpoConfig) -> None:
    """One line naming both settings: records.check_fits reported the prompt budget as seq_len
    ('> seq_len=20; raise train.seq_len' when train.seq_len was 24)."""
    budget = seq_len - grpo.max_new_tokens
    if length > budget:
        raise RecordError(f"{where}: prompt has {length} tokens > {budget}, the prompt budget train.seq_len={seq_len} "
                          f"- grpo.max_new_tokens={grpo.max_new_tokens}; raise --config.train.seq_len to "
                          f"{length + grpo.max_new_tokens} (up to the model's max_len), lower grpo.max_new_tokens, "
                          "or shorten the prompt.")


def group_advantages(rewards_BG: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """(r - group mean) / (group std + eps) over the last axis (the G completions of a prompt),
    with the sample std (ddof=1) as TRL's GRPOTrainer (torch's unbiased std); G >= 2."""
    if rewards_BG.shape[-1] < 2:  # the sample std of one reward is undefined (NaN)
        raise ValueError(f"group_advantages needs groups of >= 2 rewards, got {rewards_BG.shape[-1]}.")
    mean = rewards_BG.mean(axis=-1, keepdims=True)
    return (rewards_BG - mean) / (rewards_BG.std(axis=-1, ddof=1, keepdims=True) + eps)


def generation_messages(where: str, prompt: Any) -> list[dict]:
    """A GRPO prompt (a string, or chat messages as in preference files) as chat messages that end
    with the turn the policy answers; RecordError naming the row otherwise."""
    messages = prompt_messages(where, prompt)
    if messages[-1]["role"] == "assistant":  # render_prompt would drop it and answer the turn before
        raise records_lib.RecordError(f"{where}: the prompt ends with an assistant message; a GRPO prompt ends with "
                                      "the user (or system) turn the policy answers.")
    return messages


def grpo_loss(model, params, batch, rng, *, kl_coef: float, temperature: float = 1.0,
              vocab_limit: int | None = None, z_loss: float = 0.0):
    """Token-level GRPO loss on sampled completions (see module docstring), in the loop's aux form;
    temperature and vocab_limit: the sampler's, so logp is the log-prob of what was drawn."""
    logps_BT, log_z_BT = token_log_probs_and_log_z(model, params, batch["tokens"], rng, temperature=temperature,
                                                   vocab_limit=vocab_limit)
    mask_BT = batch["completion_mask"][:, 1:].astype(jnp.float32)
    ratio_BT = jnp.exp(logps_BT - jax.lax.stop_gradient(logps_BT))
    log_ratio_ref_BT = batch["ref_logps"] - logps_BT
    kl_BT = jnp.exp(log_ratio_ref_BT) - log_ratio_ref_BT - 1.0
    per_token = -batch["advantages"][:, None] * ratio_BT + kl_coef * kl_BT
    n = jnp.sum(mask_BT)
    loss = jnp.sum(per_token * mask_BT) / jnp.maximum(n, 1.0)
    kl = jnp.sum(kl_BT * mask_BT) / jnp.maximum(n, 1.0)
    z_term = mean_square(log_z_BT, mask_BT)
    # "accuracy" is the loop's second per-token mean: here the k3 KL to the reference (recorded as "kl").
    return loss + z_loss * z_term, {"cross_entropy": loss, "z_loss": z_term, "accuracy": kl, "num_tokens": n}


def check_rule_reads_prompts(rule: str, records: dict, chats: dict) -> None:
    """A ConfigError unless the programmatic rule can read every prompt's task (prompts from files:
    the arithmetic rule failed on 'Capital of France?' at the first evaluation, after training)."""
    for split in ("train", "eval"):
        for (where, _), messages in zip(records[split], chats[split]):
            try:
                rule_reward(rule, last_user_text(messages), "")
            except (ValueError, IndexError):
                raise ConfigError(f"{where}: grpo.reward='rule' (data.synthetic={rule!r}) cannot read this prompt "
                                  f"({last_user_text(messages)[:40]!r}); give prompts of that rule's form, or "
                                  "grpo.reward='reward_model:<workdir>'.") from None


def grpo_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    base = _decoder_base(config)
    section = config_section(config, "grpo")
    grpo = GrpoConfig(**section)
    data = config_section(config, "data")
    rule = data.get("synthetic")
    reward_fn = reward_function(grpo.reward, rule)
    template = get_chat_template(data.get("chat_template", "plain"))
    tokenizer, train = base.tokenizer, config.train
    check_prompt_budget(train.seq_len, grpo)
    prompt_len = train.seq_len - grpo.max_new_tokens

    prompt_records = {s: load_records(data, s, (("prompt",),), synthetic_prompts) for s in ("train", "eval")}
    # Every prompt as chat messages (what the reward function gets, reward_source.py), rendered
    # with the template's generation prompt, as preference rows render theirs.
    prompt_chats = {s: [generation_messages(w, r["prompt"]) for w, r in prompt_records[s]] for s in ("train", "eval")}
    if grpo.reward == "rule":
        check_rule_reads_prompts(rule, prompt_records, prompt_chats)
    if (check_reward_prompts := getattr(reward_fn, "check_prompts", None)) is not None:  # a reward model
        # Before anything compiles: a prompt filling the reward model's seq_len leaves no reply to score.
        located = {s: list(zip((w for w, _ in prompt_records[s]), prompt_chats[s])) for s in ("train", "eval")}
        check_reward_prompts(located["train"] + located["eval"][:max(generation_prompts(config), 1)])

    def prompt_row(index, where, messages):
        ids = render_prompt(messages, template, tokenizer)
        check_prompt_fits(where, len(ids), train.seq_len, grpo)
        return {"prompt_tokens": pad_row(ids, prompt_len), "prompt_length": np.asarray(len(ids), np.int32),
                "index": np.asarray(index, np.int32)}

    rows = [prompt_row(i, w, m) for i, ((w, _), m) in enumerate(zip(prompt_records["train"], prompt_chats["train"]))]
    model, boxed, initial = _zoo_params(config, base)
    vocab_limit = vocab_limit_for(tokenizer, model.config.vocab_size)
    # Log-probs under the sampler's distribution (module docstring), for the reference and, in
    # sample_kl, the policy.
    sampler_log_probs = jax.jit(lambda params, tokens: token_log_probs(
        model, params, tokens, None, temperature=grpo.temperature, vocab_limit=vocab_limit))
    sample_key = jax.random.fold_in(jax.random.PRNGKey(int(train.seed)), 3)
    turn_ends = turn_end_ids(template, tokenizer)

    def sample_and_score(policy, reference, batch, step):
        host = {k: to_host(v) for k, v in batch.items()}
        prompts = [list(row[:n]) for row, n in zip(host["prompt_tokens"], host["prompt_length"])]
        repeated = [p for p in prompts for _ in range(grpo.group_size)]
        # vocab_limit: no padded id the tokenizer cannot decode for the reward.
        out = generate(model, policy, repeated, max_new_tokens=grpo.max_new_tokens, temperature=grpo.temperature,
                       stop_tokens=turn_ends, rng=jax.random.fold_in(sample_key, step), vocab_limit=vocab_limit)
        tokens_BN = to_host(out.tokens_BN)
        # Each sample up to its turn's end (that included): what the reward reads and the loss trains.
        # A sample that runs on past it (chatml with a closing marker of several ids) would otherwise
        # give the post-turn tokens the turn's advantage.
        turns = [cut_turn(row[:n], template, tokenizer) for row, n in zip(tokens_BN, to_host(out.lengths_B))]
        lengths_B = np.asarray([n for n, _ in turns])
        completions = [reply for _, reply in turns]
        group_prompts = [prompt_chats["train"][int(i)] for i in host["index"] for _ in range(grpo.group_size)]
        rewards = np.asarray(reward_fn(group_prompts, completions), np.float32)
        advantages = group_advantages(rewards.reshape(-1, grpo.group_size)).reshape(-1).astype(np.float32)
        tokens = np.zeros((len(repeated), train.seq_len), np.int32)
        mask = np.zeros((len(repeated), train.seq_len), np.float32)
        for i, (prompt, n) in enumerate(zip(repeated, lengths_B)):
            tokens[i, :len(prompt)] = prompt
            tokens[i, len(prompt):len(prompt) + n] = tokens_BN[i, :n]
            mask[i, len(prompt):len(prompt) + n] = 1.0
        ref_logps = to_host(sampler_log_probs(reference, tokens))
        # k1 estimate of KL(policy || reference) per sampled token: log pi - log ref, both under
        # the sampler's distribution (generate's log_probs_BN are the temperature-1 full softmax).
        policy_logps = to_host(sampler_log_probs(policy, tokens))
        ref_on_samples, policy_on_samples = (
            np.concatenate([logps[i, len(p) - 1:len(p) - 1 + n] for i, (p, n) in enumerate(zip(repeated, lengths_B))])
            for logps in (ref_logps, policy_logps))
        train_batch = {"tokens": tokens, "completion_mask": mask, "advantages": advantages, "ref_logps": ref_logps}
        sharding = jax.tree.leaves(batch)[0].sharding
        extra = {"sample_reward": float(rewards.mean()),
                 "sample_kl": float(np.mean(policy_on_samples - ref_on_samples))}
        return shard_global_batch(train_batch, sharding), extra

    eval_prompts = prompt_chats["eval"][:max(generation_prompts(config), 1)]
    # Beside a reward model, the rule it was trained to prefer is reported where the eval prompts
    # are that rule's own (as the preference path's): prompts from data.eval_file are not its form
    # (arithmetic's rule died on free text at the step-0 evaluation; capitals' gave a meaningless score).
    rule_scores_eval = bool(rule) and grpo.reward != "rule" and not data.get("eval_file")
    eval_ids = [render_prompt(p, template, tokenizer) for p in eval_prompts]

    def evaluate(params, reference, sharding):
        completions = greedy_completions(model, params, eval_ids, tokenizer, max_new_tokens=grpo.max_new_tokens,
                                         template=template)
        reward = float(np.mean(reward_fn(eval_prompts, completions)))
        # eval_loss (what keep-best minimises) is the negative greedy reward.
        metrics = {"eval_reward": reward, "eval_loss": -reward}
        if rule_scores_eval:
            metrics["eval_rule_reward"] = float(np.mean([rule_reward(rule, last_user_text(p), c)
                                                         for p, c in zip(eval_prompts, completions)]))
        return metrics

    return FinetuneJob(
        name=f"grpo {base.config.name} ({base.source})", model=model, tokenizer=tokenizer, stop_ids=turn_ends,
        loss_fn=functools.partial(grpo_loss, kl_coef=grpo.kl_coef, temperature=grpo.temperature,
                                  vocab_limit=vocab_limit, z_loss=float(train.z_loss)), abstract_params=boxed,
        initial_params=lambda: initial(int(train.seed)),
        train_batches=lambda seed: iter(records_lib.row_batches(rows, batch_size=train.batch_size, seed=seed)),
        evaluate=evaluate, prepare=sample_and_score, needs_reference=True, metric_names={"accuracy": "kl"})

