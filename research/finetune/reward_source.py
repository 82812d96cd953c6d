"""What GRPO optimises: a programmatic rule, or the score of a trained reward model.

    grpo.reward = "rule"                 data.synthetic's rule_reward (capitals, arithmetic)
    grpo.reward = "reward_model:<dir>"   the workdir of a path="reward" run (e.g. reward_tiny):
                                         its latest checkpoint's scalar head model

A reward function gets each prompt as chat messages (a string prompt is one user message, as
research/finetune/preference_data.prompt_messages makes it; trl's conversational format) and
each completion as decoded text. The rule scores the content of the prompt's last user message
(for a string prompt: the string itself).

A reward model reads text, not the policy's ids: each completion is decoded, and the
(prompt messages, completion) conversation is rendered with the reward run's own chat template and
tokenizer exactly as its training pairs were (research/finetune/preference_data.py), so a
reward model with another tokenizer or family (a BERT body) scores a decoder policy. Rows
are padded to the reward run's train.seq_len. A prompt whose conversation fills that length
with an empty reply is refused before training for an encoder (RewardModel.check_prompts); a longer
conversation keeps its reply and loses the start of its prompt (a decoder scores the last
token; an encoder keeps its first, which it scores, and the last seq_len - 1), with a warning:
cut from the end, a BERT reward read no reply at all and scored every sample of a group alike,
so GRPO's group advantages were zero and the run trained on nothing.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research.data.chat_templates import get_chat_template, render_chat
from research.finetune.base_model import load_base_model
from research.finetune.heads import ScalarHeadModel
from research.finetune.preference_data import rule_reward
from research.models.config import ConfigError
from research.training.partitioning import to_host

REWARD_MODEL = "reward_model:"
Messages = Sequence[Mapping[str, str]]
# (prompts as chat messages, completions) -> one reward per completion, float32 [N]
RewardFn = Callable[[Sequence[Messages], Sequence[str]], np.ndarray]
log = logging.getLogger(__name__)


def last_user_text(messages: Messages) -> str:
    """The content of the last user message (what a rule reads as the task); "" if there is none."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def load_reward_model(workdir: str) -> "RewardModel":
    """The scoring function of the reward model trained in `workdir` (latest checkpoint)."""
    from research.training.checkpoint_loading import checkpoint_root, checkpoint_steps_in, restore_params, run_config
    root = checkpoint_root(workdir)
    step = checkpoint_steps_in(root)[-1]
    saved = run_config(root, step)
    if saved.get("path") != "reward":
        raise ConfigError(f"grpo.reward={REWARD_MODEL}{workdir} is a path={saved.get('path')!r} run; give the "
                          "workdir of a path='reward' run (e.g. the reward_tiny preset).")
    if (saved.get("lora") or {}).get("rank"):
        raise ConfigError(f"grpo.reward={REWARD_MODEL}{workdir} holds LoRA adapters only; train the reward "
                          "model with lora.rank=0 (full fine-tuning).")
    # The base as run.json records it: the saved init and tokenizer may be relative to the directory the
    # reward run was launched from, which from anywhere else failed or found a same-named folder.
    from research.finetune.run_identity import run_init_spec, run_tokenizer_spec
    base = load_base_model(run_init_spec(root, saved), saved["model"], run_tokenizer_spec(root, saved))
    params = jax.device_put(restore_params(os.path.join(root, str(step))))
    template = get_chat_template(saved.get("data", {}).get("chat_template", "plain"))
    return RewardModel(workdir, base, params, template, int(saved["train"]["seq_len"]))


class RewardModel:
    """A RewardFn scoring with a reward run's model (module docstring)."""

    def __init__(self, workdir: str, base: Any, params: Any, template: Any, seq_len: int):
        self.workdir, self.tokenizer, self.template, self.seq_len = workdir, base.tokenizer, template, seq_len
        self.decoder = base.config.family == "decoder"
        model = ScalarHeadModel(base.config)
        self._params = params
        self._score_rows = jax.jit(lambda params, tokens, lengths: model.apply({"params": params}, tokens, lengths))
        self._warned = False

    def conversation_ids(self, prompt: Messages, completion: str) -> list[int]:
        """The ids the reward model reads for `completion` after `prompt`, before any cut."""
        return render_chat([*prompt, {"role": "assistant", "content": completion}], self.template, self.tokenizer)[0]

    def check_prompts(self, prompts: Sequence[tuple[str, Messages]]) -> None:
        """ConfigError (one line) for the first (where, prompt) whose conversation with an empty reply
        leaves an encoder no room for one reply token within the reward run's train.seq_len (a decoder
        reads the conversation's last seq_len tokens, the reply among them: warned when it scores)."""
        if self.decoder:
            return
        for where, prompt in prompts:
            length = len(self.conversation_ids(prompt, ""))
            if length >= self.seq_len:
                raise ConfigError(
                    f"{where}: the prompt takes {length} tokens of grpo.reward={REWARD_MODEL}{self.workdir}, whose "
                    f"train.seq_len={self.seq_len} leaves no room for the reply it scores; train the reward model "
                    f"with a train.seq_len above {length} plus the replies' length, or shorten the prompts.")

    def __call__(self, prompts: Sequence[Messages], completions: Sequence[str]) -> np.ndarray:
        tokens = np.zeros((len(prompts), self.seq_len), np.int32)
        lengths = np.zeros((len(prompts),), np.int32)
        cut = 0
        for i, (prompt, completion) in enumerate(zip(prompts, completions)):
            ids = self.conversation_ids(prompt, completion)
            if len(ids) > self.seq_len:
                cut += 1  # the reply stays: the start of the prompt goes (an encoder keeps the token it scores)
                ids = ids[-self.seq_len:] if self.decoder else ids[:1] + ids[len(ids) - self.seq_len + 1:]
            tokens[i, :len(ids)], lengths[i] = ids, len(ids)
        if cut and not self._warned:
            self._warned = True
            log.warning("%d of %d conversations scored by %s%s are longer than its train.seq_len=%d: their prompts "
                        "lose their start (said once); a reward model trained with a longer seq_len reads them whole.",
                        cut, len(prompts), REWARD_MODEL, self.workdir, self.seq_len)
        # to_host: called inside the training mesh, on several processes the scores span all of them.
        return to_host(self._score_rows(self._params, jnp.asarray(tokens), jnp.asarray(lengths))).astype(np.float32)


def reward_function(spec: str, rule: str | None) -> RewardFn:
    """grpo.reward `spec` as a RewardFn (see module docstring)."""
    if spec == "rule":
        if not rule:
            raise ConfigError("grpo.reward='rule' needs a programmatic reward: set data.synthetic (capitals or "
                              "arithmetic), or use grpo.reward='reward_model:<reward run workdir>'.")
        return lambda prompts, completions: np.asarray(
            [rule_reward(rule, last_user_text(p), c) for p, c in zip(prompts, completions)], np.float32)
    if spec.startswith(REWARD_MODEL):
        return load_reward_model(spec[len(REWARD_MODEL):])
    raise ConfigError(f"grpo.reward={spec!r} must be 'rule' or '{REWARD_MODEL}<workdir of a reward run>'.")
