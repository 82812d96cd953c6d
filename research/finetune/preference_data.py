"""Preference pairs: JSONL or synthetic records -> fixed-length chosen / rejected rows.

A record is {"prompt": str or chat messages ending with a user turn, "chosen": str, "rejected":
str}. Both responses are rendered after the same prompt with the chat template; the mask marks the
reply's tokens only (what DPO / IPO / SimPO score): an assistant turn inside a multi-turn
prompt is context, as in trl's DPOTrainer / CPOTrainer, whose completion mask covers only
the chosen / rejected completion.

Synthetic sets, so the whole preference loop runs on a CPU with a checkable truth:
    capitals     "Shout: cat" -> chosen "CAT", rejected "cat" (a formatting rule)
    arithmetic   "3+4=" -> chosen "7", rejected a wrong sum
`rule_reward(rule, prompt, completion)` scores any completion by the same rule, for RL.
Every synthetic set (these and research/finetune/task_paths.py's) is split by a stable hash of
its item's text (`held_out`): eval items come from one part of the space, train items from the
rest, so eval_exact_match measures generalisation, not memorised training prompts (arithmetic
has 2,500 prompts: 72 of 128 eval prompts were also training prompts).
"""
from __future__ import annotations

import random
import string
import zlib
from typing import Any, Callable, Literal, Sequence

import numpy as np

from research.data.chat_templates import ChatTemplate, check_messages, render_chat
from research.finetune.records import Record, RecordError, Row, check_fits, pad_row

PREFERENCE_FIELDS = (("prompt", "chosen", "rejected"),)
SyntheticRule = Literal["capitals", "arithmetic"]
Split = Literal["train", "eval"]
# One item in _EVAL_SHARE of each synthetic space is held out for evaluation (arithmetic: 311 of
# its 2,500 prompts, enough for the presets' 128 distinct eval prompts).
_EVAL_SHARE = 8
# The synthetic sets' version, in a run's identity (run_identity.finetune_fingerprint): 2 split each
# space by held_out, so a run started before (version 1: eval items drawn from the whole space,
# 72 of 128 arithmetic eval prompts were training prompts) would resume on other records, silently.
SYNTHETIC_SPLIT_VERSION = 2
# Rejection draws per item before a space is declared too small (a held-out share of 1/8 needs ~8).
_DRAWS_PER_ITEM = 200


def held_out(key: str) -> bool:
    """Whether the synthetic item whose text is `key` belongs to the eval split: crc32, not
    Python's hash(), which differs between processes (each process builds every batch)."""
    return zlib.crc32(key.encode()) % _EVAL_SHARE == 0


def draw_split(rule: str, make: Callable[[random.Random], dict], key: Callable[[dict], str], count: int,
               seed: int, split: Split) -> list[dict]:
    """`count` items of `make` on the `split` side of `held_out`, reproducible by seed. Train items
    may repeat (epochs over a small space, as before); eval items are distinct, so each prompt
    is scored once. RecordError when the space holds too few held-out items."""
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r} must be 'train' or 'eval'.")
    rng, items, seen = random.Random(seed), [], set()
    draws, budget = 0, _DRAWS_PER_ITEM * count + 1000
    while len(items) < count and draws < budget:
        draws += 1
        item = make(rng)
        text = key(item)
        if held_out(text) != (split == "eval") or (split == "eval" and text in seen):
            continue
        seen.add(text)
        items.append(item)
    if len(items) < count:
        raise RecordError(f"data.num_{split}={count}: the synthetic {rule!r} set yields only {len(seen)} distinct "
                          f"{split} items; lower data.num_{split} to {len(seen)} or less, or give data.{split}_file.")
    return items


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def _capitals(rng: random.Random) -> dict[str, str]:
    word = _word(rng)
    return {"prompt": f"Shout: {word}", "chosen": word.upper(), "rejected": word}


def _arithmetic(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    offset = rng.choice([1, 2, 3])
    wrong = a + b - offset if a + b >= offset and rng.random() < 0.5 else a + b + offset
    return {"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(wrong)}


_RULES: dict[str, Callable[[random.Random], dict[str, str]]] = {"capitals": _capitals, "arithmetic": _arithmetic}
# Distinct held-out prompts of the finite spaces (capitals has 26^3 + ... + 26^6 words): what
# data.num_eval may ask for (checks.check_synthetic_sizes, before the claim).
EVAL_CAPACITY = {"arithmetic": sum(held_out(f"{a}+{b}=") for a in range(50) for b in range(50))}


def synthetic_preferences(rule: SyntheticRule, count: int, seed: int, split: Split = "train") -> list[dict[str, str]]:
    """`count` preference records following `rule` (see module docstring) from its `split`
    side of the prompt space (disjoint from the other side), reproducible by seed."""
    if rule not in _RULES:
        raise RecordError(f"synthetic rule {rule!r} is not one of {SyntheticRule.__args__}.")
    return draw_split(rule, _RULES[rule], lambda r: r["prompt"], count, seed, split)


def synthetic_prompts(rule: SyntheticRule, count: int, seed: int, split: Split = "train") -> list[dict[str, str]]:
    """Prompts only (RL): {"prompt": ...} records of `rule`."""
    return [{"prompt": r["prompt"]} for r in synthetic_preferences(rule, count, seed, split)]


def rule_reward(rule: SyntheticRule, prompt: str, completion: str) -> float:
    """The programmatic reward of `completion` in [0, 1]. capitals: half for the share of
    capital letters in the reply, half for the share of the prompt's word said in capitals
    position by position (1 only for the exact answer; the first half keeps the signal
    dense enough for RL from scratch). arithmetic: 1 if the sum is right."""
    if rule == "capitals":
        word = prompt.split(": ", 1)[-1].upper()
        said = completion.strip()
        capitals = sum(c in string.ascii_uppercase for c in said) / max(len(said), 1)
        hits = sum(1 for x, y in zip(said, word) if x == y) / max(len(word), len(said), 1)
        return 0.5 * capitals + 0.5 * hits
    a, b = prompt.rstrip("=").split("+")
    return float(completion.strip() == str(int(a) + int(b)))


def prompt_messages(where: str, prompt: Any) -> list[dict]:
    """A record's 'prompt': a string (one user turn) or a list of chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)) or not prompt:  # check_messages would name 'messages', not 'prompt'
        raise RecordError(f"{where}: field 'prompt' must be a string or a non-empty list of chat messages, got "
                          f"{type(prompt).__name__} {prompt!r:.40}.")
    return list(check_messages(prompt, where))


def preference_row(where: str, record: Record, *, template: ChatTemplate, tokenizer: Any, seq_len: int) -> Row:
    """Rows {chosen,rejected}_{tokens,mask,length} of one record, padded to seq_len."""
    prompt = prompt_messages(where, record["prompt"])
    role = prompt[-1]["role"]
    # A final assistant turn was rendered as two assistant turns (trl continues it: a prefill), and
    # trl refuses a final system turn.
    if role != "user":
        raise RecordError(f"{where}: the prompt ends with {'an' if role == 'assistant' else 'a'} {role} message; a "
                          "preference prompt ends with the user turn that 'chosen' and 'rejected' answer.")
    # render_chat encodes each piece on its own, so the prompt's ids are a prefix of every
    # conversation's ids; nothing before the reply is scored (render_chat would mark the prompt's
    # own assistant turns trainable, and the length-normalised IPO / SimPO would count them).
    context = len(render_chat(prompt, template, tokenizer)[0])
    row: Row = {}
    for side in ("chosen", "rejected"):
        if not isinstance(record[side], str):
            raise RecordError(f"{where}: field {side!r} must be a string.")
    if record["chosen"] == record["rejected"]:
        # Its loss is log 2 with zero gradient whatever the model, and it always counts as wrong
        # (the accuracy's comparison is strict): a data error, not a preference.
        raise RecordError(f"{where}: 'chosen' and 'rejected' are the same text ({record['chosen'][:40]!r}); "
                          "a preference pair needs two different responses: fix or drop the row.")
    for side in ("chosen", "rejected"):
        ids, mask = render_chat([*prompt, {"role": "assistant", "content": record[side]}], template, tokenizer)
        mask = [0] * context + mask[context:]
        check_fits(where, len(ids), seq_len, f"prompt + {side} response")
        row[f"{side}_tokens"] = pad_row(ids, seq_len)
        row[f"{side}_mask"] = pad_row(mask, seq_len, np.float32)
        row[f"{side}_length"] = np.asarray(len(ids), np.int32)
    return row


def preference_rows(records: Sequence[tuple[str, Record]], **kwargs: Any) -> list[Row]:
    return [preference_row(where, record, **kwargs) for where, record in records]
