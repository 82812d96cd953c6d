"""Chat templates: messages -> token ids with a mask of the tokens a model is trained to say.

One home for every user of chat formatting (SFT data, preference data, evaluation prompts,
generation from a tuned model):

    template = get_chat_template("plain")
    ids, trainable = render_chat(messages, template, tokenizer)      # SFT / preference rows
    prompt_ids = render_prompt(messages, template, tokenizer)        # for generation

A message is {"role": "system" | "user" | "assistant", "content": str}. The template wraps
each message in fixed text; the tokens of an assistant message's content, its closing text
and the end-of-sequence token are "trainable" (mask 1), everything else (system and user
turns, the assistant's opening marker) is context (mask 0). Each piece is encoded on its
own and the ids concatenated, so the mask boundary is exact for any tokenizer (a subword
tokenizer may then split a boundary differently from encoding the whole string at once;
training and generation use the same pieces, so they agree). Pieces after the first are
encoded as the text they continue: a SentencePiece tokenizer (research's, a Llama-style
folder) marks a text's start as a word start ("▁"), which put a space before every piece
('User: hi\n Assistant:  It is 4.') that the whole text does not have. A tokenizer whose default
encoding opens a text with special tokens (a Llama-style Hugging Face folder's <s>) gets
them first, as context, by the rule the evaluation harness encodes contexts with.

A generated turn ends at `turn_end_ids` (generation stops there) and `cut_turn` gives its
ids and reply text:

    out = generate(..., stop_tokens=turn_end_ids(template, tokenizer))
    length, reply = cut_turn(out.tokens_BN[0][:out.lengths_B[0]], template, tokenizer)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from research.models.config import ConfigError

ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatTemplate:
    """The fixed text around each role's content. `{}`-free strings; content goes between."""

    name: str
    system_open: str
    system_close: str
    user_open: str
    user_close: str
    assistant_open: str  # context: the model is prompted with it
    assistant_close: str  # trained: the model learns to end its turn
    eos_after_assistant: bool = True  # append tokenizer.eos_id after each assistant turn (trained)


CHAT_TEMPLATES: dict[str, ChatTemplate] = {
    # Short markers: cheap for character-level tokenizers (the CPU presets).
    "plain": ChatTemplate(name="plain", system_open="System: ", system_close="\n", user_open="User: ",
                          user_close="\n", assistant_open="Assistant: ", assistant_close="\n"),
    # ChatML (OpenAI, Qwen): the markers are plain text here, so any tokenizer can encode them.
    "chatml": ChatTemplate(name="chatml", system_open="<|im_start|>system\n", system_close="<|im_end|>\n",
                           user_open="<|im_start|>user\n", user_close="<|im_end|>\n",
                           assistant_open="<|im_start|>assistant\n", assistant_close="<|im_end|>\n",
                           eos_after_assistant=False),
}


def get_chat_template(name: str) -> ChatTemplate:
    if name not in CHAT_TEMPLATES:
        raise ConfigError(f"chat template {name!r} is not one of {sorted(CHAT_TEMPLATES)}.")
    return CHAT_TEMPLATES[name]


def instruction_messages(instruction: str, input_text: str = "", response: str | None = None) -> list[dict]:
    """An (instruction, input, response) record as chat messages (Alpaca style: input follows the instruction)."""
    user = instruction if not input_text else f"{instruction}\n{input_text}"
    messages = [{"role": "user", "content": user}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def check_messages(messages: Any, where: str = "messages") -> list[Mapping[str, str]]:
    """ConfigError naming `where` unless `messages` is a list of {role, content} with known roles."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects.")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ConfigError(f"{where}: message {i} needs fields 'role' and 'content', got {message!r}.")
        if message["role"] not in ROLES:
            raise ConfigError(f"{where}: message {i} has role {message['role']!r}; use one of {ROLES}.")
        if not isinstance(message["content"], str):
            raise ConfigError(f"{where}: message {i} content must be a string.")
    return messages


def _pieces(messages: Sequence[Mapping[str, str]], template: ChatTemplate) -> list[tuple[str, bool]]:
    pieces: list[tuple[str, bool]] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "assistant":
            pieces += [(template.assistant_open, False), (content + template.assistant_close, True)]
        else:
            opening, closing = ((template.system_open, template.system_close) if role == "system"
                                else (template.user_open, template.user_close))
            pieces.append((opening + content + closing, False))
    return pieces


def _leading_special_ids(tokenizer: Any, text: str) -> list[int]:
    """The special ids the tokenizer's default encoding puts before `text` (a Llama-style <s>).

    The rule is the evaluation harness's (HFTokenizer.encode_context, lm-eval's HFLM), so a
    Hugging Face model is fine-tuned on the input it is evaluated (and was pretrained) on.
    Tokenizers without encode_context (research's own SentencePiece and char tokenizers) get
    none: their pretraining adds no bos (research/data/objectives.py). Special tokens the
    default puts after a text (T5's </s>) are not leading and stay off."""
    encode_context = getattr(tokenizer, "encode_context", None)
    if encode_context is None or not text:
        return []
    plain, full = [int(i) for i in tokenizer.encode(text)], [int(i) for i in encode_context(text)]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
    return full[:start]


# Encoded before a piece that continues a text, then dropped: a newline, which tokenizers keep a
# token of its own (research's reserve piece 5 for it; byte-level BPE does not merge it with letters).
_ANCHOR = "\n"


def _encode_continuing(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` where it continues earlier text: no word-start mark of its own. Encoded after
    _ANCHOR, whose ids are then dropped; where the anchor's ids are not a prefix of the result
    (the text's first token merged with it), the text is encoded alone."""
    anchor = [int(i) for i in tokenizer.encode(_ANCHOR)]
    ids = [int(i) for i in tokenizer.encode(_ANCHOR + text)]
    return ids[len(anchor):] if ids[:len(anchor)] == anchor else [int(i) for i in tokenizer.encode(text)]


def _encode_pieces(pieces: list[tuple[str, bool]], template: ChatTemplate, tokenizer: Any,
                   ) -> tuple[list[int], list[int]]:
    ids = _leading_special_ids(tokenizer, pieces[0][0]) if pieces else []
    mask = [0] * len(ids)
    for k, (text, trainable) in enumerate(pieces):
        piece = ([] if not text else _encode_continuing(tokenizer, text) if k else
                 [int(i) for i in tokenizer.encode(text)])
        ids += piece
        mask += [int(trainable)] * len(piece)
        if trainable and template.eos_after_assistant:
            ids.append(int(tokenizer.eos_id))
            mask.append(1)
    return ids, mask


def render_chat(messages: Sequence[Mapping[str, str]], template: ChatTemplate,
                tokenizer: Any) -> tuple[list[int], list[int]]:
    """(token ids, trainable mask 0/1) of a whole conversation; see the module docstring."""
    return _encode_pieces(_pieces(messages, template), template, tokenizer)


def render_prompt(messages: Sequence[Mapping[str, str]], template: ChatTemplate, tokenizer: Any) -> list[int]:
    """Token ids of the conversation so far plus the assistant's opening: what a model continues.
    A prefix of render_chat's ids for the conversation with the reply."""
    context = list(messages[:-1]) if messages and messages[-1]["role"] == "assistant" else list(messages)
    return _encode_pieces(_pieces(context, template) + [(template.assistant_open, False)], template, tokenizer)[0]


def turn_end_ids(template: ChatTemplate, tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a generated assistant turn, for generate(stop_tokens=...): eos, and the
    closing marker when the tokenizer spells it as one id (ChatML's <|im_end|> in a Qwen-style
    vocabulary, whose generation_config stops on it). chatml trains no eos, and a Hugging Face
    decode drops a special <|im_end|>, so without its id nothing would end the turn."""
    ids = [int(tokenizer.eos_id)]
    marker = template.assistant_close.strip()  # plain's "\n" is no marker: replies hold newlines
    if marker:
        encoded = [int(i) for i in tokenizer.encode(marker)]
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return tuple(ids)


def cut_turn(ids: Sequence[int], template: ChatTemplate, tokenizer: Any) -> tuple[int, str]:
    """(length, reply) of generated ids: length counts the ids of the assistant turn, its end
    included (what a policy gradient trains, as trl's completion mask ends at the first eos),
    and reply is the text before that end.

    The end is the first turn_end_ids id. A template that appends eos is ended by eos alone:
    a reply may itself hold the closing text (plain's "\\n" in a multi-line reply), so only a
    closing text at its very end is dropped. A template without eos (chatml) is also ended by
    the closing marker spelled in several ids (a char or SentencePiece tokenizer); the turn's
    ids then run through the first one whose text completes it."""
    ids = [int(i) for i in ids]
    stops = turn_end_ids(template, tokenizer)
    stop = next((k for k, t in enumerate(ids) if t in stops), None)
    content = ids if stop is None else ids[:stop]  # decoded without the end: a decode may spell it
    text = tokenizer.decode(content)
    length = len(ids) if stop is None else stop + 1
    if template.eos_after_assistant:
        return length, text.removesuffix(template.assistant_close)
    marker = template.assistant_close.strip() or template.assistant_close
    cut = text.find(marker)
    if cut < 0:
        return length, text
    low, high = 1, len(content)  # the shortest prefix whose text holds the marker (text grows with ids)
    while low < high:
        middle = (low + high) // 2
        if marker in tokenizer.decode(content[:middle]):
            high = middle
        else:
            low = middle + 1
    return low, text[:cut]
