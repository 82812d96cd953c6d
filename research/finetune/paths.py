"""Fine-tuning paths on decoder models as FinetuneJobs: SFT, reward model, DPO / IPO / SimPO.

Each builder turns the run config into data (JSONL files, or a synthetic set with a
checkable rule), a pure loss and an evaluator; research/finetune/trainer.py runs them.
"""
from __future__ import annotations

import itertools
from typing import Any

import jax
import ml_collections
import numpy as np

from research.data.chat_templates import get_chat_template, render_prompt, turn_end_ids
from research.finetune import records as records_lib
from research.finetune.base_model import (BaseModel, abstract_and_init, check_same_vocabulary, job_base_model,
                                         load_reference)
from research.finetune.checks import config_section
from research.finetune.evaluators import greedy_completions, mean_aux
from research.finetune.heads import path_model, with_pretrained_body
from research.finetune.preference_data import (PREFERENCE_FIELDS, preference_rows, rule_reward,
                                               synthetic_preferences)
from research.finetune.preference_losses import (PreferenceConfig, bradley_terry_loss, make_preference_loss,
                                                 reference_log_probs)
from research.finetune.sft_data import SFT_FIELDS, record_messages, sft_examples
from research.finetune.trainer import FinetuneJob
from research.models import build_model
from research.models.config import ConfigError
from research.training import losses



def generation_prompts(config: ml_collections.ConfigDict) -> int:
    """How many eval prompts are completed greedily for exact match / rule reward (0: none)."""
    return int(config.get("generation_prompts", 32))


def load_records(data: dict[str, Any], split: str, fields, synthetic) -> list[tuple[str, dict]]:
    """Records of `split` from data.<split>_file, else `synthetic(rule, count, seed, split)` (in
    memory): the split's side of the synthetic space, so no eval item is a training item."""
    path = data.get(f"{split}_file") or ""
    if path:
        return records_lib.read_jsonl(path, fields)
    other = "eval" if split == "train" else "train"
    if data.get(f"{other}_file"):  # never the user's data beside the preset's synthetic set
        raise ConfigError(f"data.{other}_file is given but data.{split}_file is not: the {split} set would be the "
                          f"preset's synthetic {data.get('synthetic') or ''!r} data, not yours (it was, silently, "
                          f"and keep-best ranked checkpoints on it); give data.{split}_file too.")
    if not data.get("synthetic"):
        raise ConfigError(f"data.{split}_file is empty and data.synthetic is unset; give a JSONL file or a "
                          "synthetic rule.")
    count = int(data.get(f"num_{split}", 256))
    seed = int(data.get("seed", 0)) + (0 if split == "train" else 1_000_003)
    return records_lib.as_records(synthetic(data["synthetic"], count, seed, split),
                                  f"synthetic:{data['synthetic']}:{split}")


def _decoder_base(config: ml_collections.ConfigDict) -> BaseModel:
    base = job_base_model(config)
    if base.config.family != "decoder":
        raise ConfigError(f"path={config.path!r} trains decoder-only models; {base.config.name} is "
                          f"{base.config.family}. Use a GPT/LLaMA preset or checkpoint.")
    return base


def _zoo_params(config: ml_collections.ConfigDict, base: BaseModel):
    """(model, boxed abstract params, seed -> initial params) of a path that trains the zoo model itself."""
    model, example, _ = path_model(config, base.config, config.train.seq_len)
    boxed, init = abstract_and_init(model, example)
    return model, boxed, (lambda seed: base.params if base.params is not None else init(seed))


def _rule_reward_eval(model, tokenizer, template, prompts: list[str], rule: str, max_new_tokens: int):
    """Mean programmatic reward of greedy completions of `prompts` (synthetic sets only)."""
    ids = [render_prompt([{"role": "user", "content": p}], template, tokenizer) for p in prompts]

    def evaluate(params) -> dict[str, float]:
        completions = greedy_completions(model, params, ids, tokenizer, max_new_tokens=max_new_tokens,
                                         template=template)
        return {"eval_rule_reward": float(np.mean([rule_reward(rule, p, c) for p, c in zip(prompts, completions)]))}
    return evaluate


def sft_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """Instruction tuning: causal LM on chat examples, loss on response tokens only, packed."""
    base = _decoder_base(config)
    data, train = config_section(config, "data"), config.train
    template = get_chat_template(data.get("chat_template", "plain"))
    sft_synthetic = lambda rule, n, seed, split: [{"instruction": r["prompt"], "response": r["chosen"]}
                                                 for r in synthetic_preferences(rule, n, seed, split)]
    kwargs = dict(template=template, tokenizer=base.tokenizer, seq_len=train.seq_len)
    train_examples = sft_examples(load_records(data, "train", SFT_FIELDS, sft_synthetic), **kwargs)
    eval_records = load_records(data, "eval", SFT_FIELDS, sft_synthetic)
    eval_examples = sft_examples(eval_records, **kwargs)
    model, boxed, initial = _zoo_params(config, base)
    objective = losses.get_objective("causal_lm", "decoder")
    loss_fn = losses.make_loss_fn(objective, float(train.z_loss))
    eval_loss = mean_aux(loss_fn, model)

    gen_records = eval_records[:generation_prompts(config)]
    chats = [record_messages(w, r) for w, r in gen_records]  # each ends with the reply scored (record_messages)
    prompts = [render_prompt(chat, template, base.tokenizer) for chat in chats]
    targets = [chat[-1]["content"] for chat in chats]
    max_new = int(config.get("generation_tokens", 16))
    rule = data.get("synthetic") if not data.get("eval_file") else None

    def evaluate(params, reference, sharding):
        batches = records_lib.packed_batches(eval_examples, batch_size=train.batch_size, seq_len=train.seq_len,
                                             seed=0, num_epochs=1, shuffle=False)
        metrics = eval_loss(params, itertools.islice(iter(batches), train.eval_batches), sharding)
        if not prompts:
            return metrics
        completions = greedy_completions(model, params, prompts, base.tokenizer, max_new_tokens=max_new,
                                         template=template)
        metrics["eval_exact_match"] = float(np.mean([c.strip() == t.strip() for c, t in zip(completions, targets)]))
        if rule:
            metrics["eval_rule_reward"] = float(np.mean([rule_reward(rule, r.get("instruction", ""), c)
                                                         for (_, r), c in zip(gen_records, completions)]))
        return metrics

    return FinetuneJob(
        name=f"sft {base.config.name} ({base.source})", model=model, loss_fn=loss_fn, abstract_params=boxed,
        tokenizer=base.tokenizer, stop_ids=turn_end_ids(template, base.tokenizer),
        initial_params=lambda: initial(int(train.seed)),
        train_batches=lambda seed: iter(records_lib.packed_batches(train_examples, batch_size=train.batch_size,
                                                                   seq_len=train.seq_len, seed=seed)),
        evaluate=evaluate)


def _pair_rows(config, base: BaseModel):
    data = config_section(config, "data")
    template = get_chat_template(data.get("chat_template", "plain"))
    kwargs = dict(template=template, tokenizer=base.tokenizer, seq_len=config.train.seq_len)
    train_records = load_records(data, "train", PREFERENCE_FIELDS, synthetic_preferences)
    eval_records = load_records(data, "eval", PREFERENCE_FIELDS, synthetic_preferences)
    return template, preference_rows(train_records, **kwargs), preference_rows(eval_records, **kwargs), eval_records


def _row_iterators(train_rows, eval_rows, config):
    batch_size = config.train.batch_size
    train_batches = lambda seed: iter(records_lib.row_batches(train_rows, batch_size=batch_size, seed=seed))
    eval_batches = lambda: itertools.islice(iter(records_lib.row_batches(
        eval_rows, batch_size=batch_size, seed=0, num_epochs=1, shuffle=False)), config.train.eval_batches)
    return train_batches, eval_batches


def reward_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """A reward model: the zoo model + a scalar head, Bradley-Terry loss on preference pairs."""
    base = job_base_model(config)
    if base.config.family == "encoder_decoder":
        raise ConfigError(f"path='reward' puts a scalar head on a decoder or encoder body; {base.config.name} is "
                          "an encoder-decoder. Use a GPT/LLaMA or BERT model.")
    _, train_rows, eval_rows, _ = _pair_rows(config, base)
    model, example, new_modules = path_model(config, base.config, config.train.seq_len)
    boxed, init = abstract_and_init(model, example)

    def initial():
        params = init(int(config.train.seed))
        return params if base.params is None else with_pretrained_body(params, base.params, base.source)

    train_batches, eval_batches = _row_iterators(train_rows, eval_rows, config)
    eval_pairs = mean_aux(bradley_terry_loss, model)
    return FinetuneJob(name=f"reward model {base.config.name} ({base.source})", model=model,
                       loss_fn=bradley_terry_loss, abstract_params=boxed, initial_params=initial,
                       train_batches=train_batches, new_modules=new_modules,
                       evaluate=lambda params, reference, sharding: eval_pairs(params, eval_batches(), sharding))


def preference_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """DPO / IPO / SimPO against a frozen reference: the initial policy, or preference.reference."""
    base = _decoder_base(config)
    preference_section = config_section(config, "preference")
    reference_spec = preference_section.pop("reference", "") or ""
    preference = PreferenceConfig(**preference_section)
    template, train_rows, eval_rows, eval_records = _pair_rows(config, base)
    model, boxed, initial = _zoo_params(config, base)
    loss_fn = make_preference_loss(preference, float(config.train.z_loss))
    train_batches, eval_batches = _row_iterators(train_rows, eval_rows, config)

    reference_model, reference_params = model, None
    if preference.needs_reference and reference_spec:
        reference_config, reference_params = load_reference(reference_spec)
        check_same_vocabulary(base.config, reference_config)
        reference_model = build_model(reference_config)
        reference_params = jax.device_put(reference_params)
    score_reference = jax.jit(lambda params, batch: reference_log_probs(reference_model, params, batch))

    def with_reference(reference, batch):
        if not preference.needs_reference:
            return batch
        return {**batch, **score_reference(reference_params if reference_params is not None else reference, batch)}

    eval_pairs = mean_aux(loss_fn, model)
    data = config_section(config, "data")
    rule = data.get("synthetic") if not data.get("eval_file") else None
    rule_eval = None
    if rule and generation_prompts(config):
        prompts = [r["prompt"] for _, r in eval_records[:generation_prompts(config)]]
        rule_eval = _rule_reward_eval(model, base.tokenizer, template, prompts, rule,
                                      int(config.get("generation_tokens", 16)))

    def evaluate(params, reference, sharding):
        from research.training.partitioning import shard_global_batch
        batches = (with_reference(reference, shard_global_batch(b, sharding)) for b in eval_batches())
        metrics = eval_pairs(params, batches, sharding)
        if rule_eval is not None:
            metrics.update(rule_eval(params))
        return metrics

    return FinetuneJob(
        name=f"{preference.loss} {base.config.name} ({base.source})", model=model, loss_fn=loss_fn,
        tokenizer=base.tokenizer, stop_ids=turn_end_ids(template, base.tokenizer),
        abstract_params=boxed, initial_params=lambda: initial(int(config.train.seed)), train_batches=train_batches,
        evaluate=evaluate, prepare=lambda policy, reference, batch, step: with_reference(reference, batch),
        needs_reference=preference.needs_reference and not reference_spec)
