"""Preference pairs: JSONL or synthetic records -> fixed-length chosen / rejected rows.

A record is {"prompt": str or chat messages, "chosen": str, "rejected": str}. Both
responses are rendered after the same prompt with the chat template; the mask marks the
reply's tokens only (what DPO / IPO / SimPO score): an assistant turn inside a multi-turn
prompt is context, as in trl's DPOTrainer / CPOTrainer, whose completion mask covers only
the chosen / rejected completion.

Synthetic sets, so the whole preference loop runs on a CPU with a checkable truth:
    capitals     "Shout: cat" -> chosen "CAT", rejected "cat" (a formatting rule)
    arithmetic   "3+4=" -> chosen "7", rejected a wrong sum
`rule_reward(rule, prompt, completion)` scores any completion by the same rule, for RL.
"""
from __future__ import annotations

import random
import string
from typing import Any, Literal, Sequence

import numpy as np

from research.data.chat_templates import ChatTemplate, check_messages, render_chat
from research.finetune.records import Record, RecordError, Row, check_fits, pad_row

PREFERENCE_FIELDS = (("prompt", "chosen", "rejected"),)
SyntheticRule = Literal["capitals", "arithmetic"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def synthetic_preferences(rule: SyntheticRule, count: int, seed: int) -> list[dict[str, str]]:
    """`count` preference records following `rule` (see module docstring), reproducible by seed."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        if rule == "capitals":
            word = _word(rng)
            records.append({"prompt": f"Shout: {word}", "chosen": word.upper(), "rejected": word})
        elif rule == "arithmetic":
            a, b = rng.randint(0, 49), rng.randint(0, 49)
            offset = rng.choice([1, 2, 3])
            wrong = a + b - offset if a + b >= offset and rng.random() < 0.5 else a + b + offset
            records.append({"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": str(wrong)})
        else:
            raise RecordError(f"synthetic rule {rule!r} is not one of {SyntheticRule.__args__}.")
    return records


def synthetic_prompts(rule: SyntheticRule, count: int, seed: int) -> list[dict[str, str]]:
    """Prompts only (RL): {"prompt": ...} records of `rule`."""
    return [{"prompt": r["prompt"]} for r in synthetic_preferences(rule, count, seed)]


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
