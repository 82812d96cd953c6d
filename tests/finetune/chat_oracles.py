"""Oracles for chat rendering and turn ends. Hugging Face tokenizer folders built here:
byte-level BPE (GPT-2 / Qwen / Llama-3 style) with <|im_start|> and <|im_end|> as special
tokens and <|endoftext|> as eos (a Qwen-style base model), and transformers'
apply_chat_template with ChatML's Jinja template on the same folder. And a scripted generate:
a model that says exactly what a test plans (what a perfectly trained model would say)."""
from __future__ import annotations

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["hello there, how are you?", "I am fine. What is 2+2?", "It is 4.", "be brief", "Shout: cat CAT",
          "line one\nline two"] * 20


def chatml_folder(path, *, default_specials: str = "") -> str:
    """A ChatML tokenizer folder at `path`. default_specials: what encoding adds by default
    (tokenizers' post-processor): "" nothing (Qwen), "bos" a leading <s> (Llama; its chat
    template then opens with {{ bos_token }}, as Llama's do), "eos" a trailing eos (T5-style)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if default_specials == "bos":
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    elif default_specials == "eos":
        core.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                            special_tokens=[("<|endoftext|>", 0)])
    bos = {"bos_token": "<s>"} if default_specials == "bos" else {}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>", **bos,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = ("{{ bos_token }}" if bos else "") + CHATML
    tokenizer.save_pretrained(str(path))
    return str(path)


def metaspace_folder(path) -> str:
    """A Llama-style SentencePiece folder (tokenizers' Metaspace, a word-start "▁" prepended to an
    encoding's first text only, byte fallback, <s> first by default) with ChatML as plain text."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    core.decoder = decoders.Sequence([decoders.Metaspace(replacement="\u2581", prepend_scheme="first"),
                                      decoders.ByteFallback()])
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>", pad_token="</s>")
    tokenizer.chat_template = "{{ bos_token }}" + CHATML
    tokenizer.save_pretrained(str(path))
    return str(path)


def oracle_ids(folder: str, messages: list[dict], **options) -> list[int]:
    """transformers' apply_chat_template ids of `messages` (options: add_generation_prompt)."""
    import transformers
    oracle = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = oracle.apply_chat_template(messages, tokenize=True, return_dict=False, **options)
    return [int(i) for i in (ids["input_ids"] if hasattr(ids, "keys") else ids)]


def scripted_generate(plans: dict[tuple[int, ...], list[int]]):
    """A stand-in for research.decoding.generate whose model says plans[prompt]: the row stops
    after its first id in stop_tokens (as generate does) or at max_new_tokens."""
    import types

    import numpy as np

    def generate(model, params, prompts, *, max_new_tokens, stop_tokens=(), **unused):
        stops = {int(s) for s in ([stop_tokens] if isinstance(stop_tokens, int) else stop_tokens)}
        rows = []
        for prompt in prompts:
            plan = plans[tuple(int(t) for t in prompt)][:max_new_tokens]
            end = next((k + 1 for k, t in enumerate(plan) if t in stops), len(plan))
            rows.append(plan[:end])
        tokens = np.zeros((len(rows), max_new_tokens), np.int32)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = row
        return types.SimpleNamespace(tokens_BN=tokens, lengths_B=np.asarray([len(r) for r in rows], np.int32))
    return generate
