"""Instruction tuning data: chat records -> causal-LM examples with loss on response tokens only.

SFT is pretraining's causal-LM objective (research.training.losses, "causal_lm") on a
different data transform: the loss weight of a target token is 1 only where the chat
template marks the token as the assistant's (its reply, closing text and eos): every
assistant turn of a multi-turn conversation is trained, as trl's assistant_only_loss (a
preference pair, research/finetune/preference_data.py, scores only its reply). Examples
are packed with segment ids, so attention never crosses examples.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from research.data.chat_templates import ChatTemplate, check_messages, instruction_messages, render_chat
from research.finetune.records import Record, RecordError, Row, check_fits

SFT_FIELDS = (("messages",), ("instruction", "response"))


def record_messages(where: str, record: Record) -> list[dict]:
    """Chat messages of an SFT record (either form), ending with the assistant reply; RecordError
    names the row."""
    if "messages" in record:
        messages = check_messages(record["messages"], where)
    else:
        for field in ("instruction", "response", "input"):
            if field in record and not isinstance(record[field], str):
                raise RecordError(f"{where}: field {field!r} must be a string.")
        messages = instruction_messages(record["instruction"], record.get("input", ""), record["response"])
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError(f"{where}: the conversation has no assistant message to learn from.")
    if messages[-1]["role"] != "assistant":  # eval prompted with the whole chat, scored the reply before it
        raise RecordError(f"{where}: the conversation ends with a {messages[-1]['role']} message; an SFT "
                          "conversation ends with the assistant reply it is trained and scored on: drop the "
                          "trailing turn(s) or add the reply.")
    return messages


def sft_example(where: str, record: Record, *, template: ChatTemplate, tokenizer: Any, seq_len: int) -> Row:
    """One unpacked causal-LM example: inputs = ids[:-1], targets = ids[1:], and the loss
    weight of each target = whether the template marks it trainable."""
    ids, trainable = render_chat(record_messages(where, record), template, tokenizer)
    check_fits(where, len(ids) - 1, seq_len, "the conversation")
    return {"inputs": np.asarray(ids[:-1], np.int32), "targets": np.asarray(ids[1:], np.int32),
            "loss_weights": np.asarray(trainable[1:], np.float32)}


def sft_examples(records: Sequence[tuple[str, Record]], *, template: ChatTemplate, tokenizer: Any,
                 seq_len: int) -> list[Row]:
    return [sft_example(where, record, template=template, tokenizer=tokenizer, seq_len=seq_len)
            for where, record in records]
