"""Where a chat turn begins: a Hugging Face tokenizer's default leading special tokens open
every rendered row (oracle: transformers' apply_chat_template on folders built here)."""
import pytest

from research.data.chat_templates import get_chat_template, render_chat, render_prompt
from research.evaluation.tokenizer import CharTokenizer
from research.evaluation.tokenizer_loading import load_tokenizer
from research.finetune.preference_data import preference_row
from research.finetune.sft_data import sft_example
from tests.finetune.chat_oracles import chatml_folder, oracle_ids

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}]


@pytest.mark.parametrize("default_specials", ["", "bos", "eos"])
def test_chatml_rows_equal_apply_chat_template_with_the_tokenizers_leading_specials(tmp_path, default_specials):
    # A Llama-style folder opens every encoding with <s> and its chat template with {{ bos_token }};
    # fine-tuning rows left it out while the evaluation harness (and lm-eval) put it first. A
    # Qwen-style folder adds nothing, and a trailing default (T5-style eos) is no leading token.
    folder = chatml_folder(tmp_path, default_specials=default_specials)
    tokenizer = load_tokenizer(folder)
    chatml = get_chat_template("chatml")
    ids, mask = render_chat(CHAT, chatml, tokenizer)
    assert ids == oracle_ids(folder, CHAT)
    assert render_prompt(CHAT, chatml, tokenizer) == oracle_ids(folder, CHAT[:2], add_generation_prompt=True)
    leading = [tokenizer.bos_id] if default_specials == "bos" else []
    assert ids[:len(leading)] == leading and mask[:len(leading)] == [0] * len(leading)
    assert tokenizer.decode([i for i, m in zip(ids, mask) if m]) == "It is 4.\n"  # <|im_end|> is special
    # The rows built on render_chat keep it as context: SFT inputs open with it, a preference
    # row's prompt stays a prefix of both replies with nothing before the reply scored.
    example = sft_example("x:1", {"messages": CHAT}, template=chatml, tokenizer=tokenizer, seq_len=64)
    assert list(example["inputs"][:len(leading)]) == leading
    row = preference_row("p:1", {"prompt": CHAT[:2], "chosen": "It is 4.", "rejected": "5"}, template=chatml,
                         tokenizer=tokenizer, seq_len=64)
    chosen = row["chosen_tokens"][:int(row["chosen_length"])]
    assert list(chosen) == ids
    assert tokenizer.decode([t for t, m in zip(chosen, row["chosen_mask"]) if m]) == "It is 4.\n"


def test_research_tokenizers_get_no_leading_token():
    # research's own tokenizers (no encode_context) pretrain without bos: their rows stay as they were.
    tokenizer = CharTokenizer()
    ids, _ = render_chat(CHAT, get_chat_template("plain"), tokenizer)
    assert ids == tokenizer.encode("System: be brief\nUser: What is 2+2?\nAssistant: It is 4.\n") + [tokenizer.eos_id]

