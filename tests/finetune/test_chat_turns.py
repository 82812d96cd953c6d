"""Where a chat turn begins and ends: a Hugging Face tokenizer's default leading special
tokens open every rendered row (oracle: transformers' apply_chat_template on folders built
here), and a generated reply ends at the template's turn end, neither earlier (plain's "\\n"
inside a multi-line reply) nor later (chatml's <|im_end|>, a special token a decode drops), also in
transformers' generate() on an exported folder."""
import json

import pytest

from research.data.chat_templates import get_chat_template, render_chat, render_prompt
from research.evaluation.tokenizer import CharTokenizer
from research.evaluation.tokenizer_loading import load_tokenizer
from research.finetune.preference_data import preference_row
from research.finetune.sft_data import sft_example
from tests.finetune.chat_oracles import chatml_folder, oracle_ids, scripted_generate
from tests.finetune.conftest import tiny_config

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


def test_sentencepiece_rows_spell_the_template_text_with_no_space_before_each_piece(tmp_path):
    """A SentencePiece tokenizer marks an encoding's start as a word start: each piece encoded
    on its own got a "▁" of its own, so rows read 'User: What is 2+2?\\n Assistant:  It is 4.'
    (research's tokenizer) and differed from apply_chat_template after every piece (a Llama-style
    folder); the model was tuned on spaces its pretraining never put there."""
    from research import data
    from tests.finetune.chat_oracles import metaspace_folder
    config = data.DataConfig(source="stdlib", max_documents=40,
                             tokenizer=data.TokenizerConfig(vocab_size=400, max_training_chars=60_000))
    tokenizer = data.build_tokenizer(config, str(tmp_path / "sp"))
    texts = {"plain": "System: be brief\nUser: What is 2+2?\nAssistant: It is 4.\n",
             "chatml": "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                       "<|im_start|>assistant\nIt is 4.<|im_end|>\n"}
    for name, text in texts.items():
        template = get_chat_template(name)
        ids, mask = render_chat(CHAT, template, tokenizer)
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]).startswith("It is 4.")
        assert render_prompt(CHAT, template, tokenizer) == ids[:mask.index(1)]
    # A Llama-style folder: every piece after the first as apply_chat_template encodes it (the
    # first keeps the word start that encode_context, lm-eval's rule, gives a text after <s>).
    folder = metaspace_folder(tmp_path / "llama")
    tokenizer = load_tokenizer(folder)
    chatml = get_chat_template("chatml")
    ids, _ = render_chat(CHAT, chatml, tokenizer)
    first, oracle_first = render_chat(CHAT[:1], chatml, tokenizer)[0], oracle_ids(folder, CHAT[:1])
    assert ids[len(first):] == oracle_ids(folder, CHAT)[len(oracle_first):]


REPLIES = ["line one\nline two", "def f():\n    return 1", "It is 4."]


@pytest.mark.parametrize("tokenizer_kind,template_name", [("char", "plain"), ("char", "chatml"), ("hf", "plain"),
                                                          ("hf", "chatml")])
def test_a_model_that_says_its_training_target_scores_exact_match_1(tmp_path, monkeypatch, tokenizer_kind,
                                                                    template_name):
    # The scripted model says the reply's trained tokens (render_chat's mask), then, where nothing
    # stopped it, goes on with an invented next user turn. plain: cutting at its closing "\n" kept
    # only a reply's first line. chatml with a special <|im_end|> (Qwen-style): the decode dropped
    # it, nothing stopped generation (chatml trains no eos) and the invented turn was scored too.
    from research.finetune import evaluators
    from research.finetune.run import build_job

    spec = "char" if tokenizer_kind == "char" else chatml_folder(tmp_path / "tok")
    tokenizer, template = load_tokenizer(spec), get_chat_template(template_name)
    records = [{"instruction": f"Write it {i}", "response": reply} for i, reply in enumerate(REPLIES)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plans = {}
    for record in records:
        messages = [{"role": "user", "content": record["instruction"]},
                    {"role": "assistant", "content": record["response"]}]
        ids, mask = render_chat(messages, template, tokenizer)
        invented = tokenizer.encode(f"{template.user_open}And 3+3?{template.user_close}")
        plans[tuple(render_prompt(messages, template, tokenizer))] = [i for i, m in zip(ids, mask) if m] + invented
    monkeypatch.setattr(evaluators, "generate", scripted_generate(plans))
    config = tiny_config("sft_tiny")
    config.train.update(dict(eval_batches=0, seq_len=128))  # no eval loss: only the completions matter here
    config.update(dict(tokenizer=spec, generation_prompts=len(records), generation_tokens=64))
    config.data.update(dict(train_file=str(tmp_path / "data.jsonl"), eval_file=str(tmp_path / "data.jsonl"),
                            chat_template=template_name))
    job = build_job(config)
    assert job.evaluate(None, None, None)["eval_exact_match"] == 1.0


def test_cut_turn_by_hand():
    from research.data.chat_templates import cut_turn, turn_end_ids

    char, plain, chatml = CharTokenizer(), get_chat_template("plain"), get_chat_template("chatml")
    eos = char.eos_id
    # plain: eos ends the turn; a trailing closing "\n" is dropped, the reply's own newlines stay.
    assert cut_turn(char.encode("a\nb\n") + [eos] + char.encode("xy"), plain, char) == (5, "a\nb")
    assert cut_turn(char.encode("a\nb\nUser: c"), plain, char) == (11, "a\nb\nUser: c")  # no end yet: all of it
    # chatml in characters: no id ends the turn (turn_end_ids is eos alone); the <|im_end|> text
    # does, its ids included (13 = "a\nb" + 10 marker characters), also without the "\n" after it.
    assert turn_end_ids(chatml, char) == (eos,)
    for tail in ("\n<|im_start|>user\nc", ""):
        assert cut_turn(char.encode("a\nb<|im_end|>" + tail), chatml, char) == (13, "a\nb")


def test_generate_on_a_chatml_export_stops_at_im_end(tmp_path):
    """A chatml-tuned model ends its turn with <|im_end|> and no eos: the export recorded only the
    tokenizer's eos, so transformers' generate() ran on past the turn's end into an invented next
    turn. A logits processor makes the exported model say a planned turn and what would follow it."""
    import torch
    import transformers

    from research.finetune import finetune_and_evaluate

    folder = chatml_folder(tmp_path / "tok")
    config = tiny_config("sft_tiny", num_steps=1)
    config.opt.warmup_steps = 0
    config.train.update(dict(seq_len=64, eval_batches=1))
    config.update(dict(tokenizer=folder, export_dir=str(tmp_path / "hf")))
    config.data.chat_template = "chatml"
    finetune_and_evaluate(config, str(tmp_path / "run"))

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    eos, im_end = hf_tokenizer.eos_token_id, hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), local_files_only=True)
    assert model.generation_config.eos_token_id == [eos, im_end] and model.config.eos_token_id == eos
    # The rest of generation_config.json is what transformers derives from config.json without it.
    exported_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    derived = transformers.GenerationConfig.from_model_config(exported_config).to_diff_dict()
    written = model.generation_config.to_diff_dict()
    assert {k: v for k, v in written.items() if k not in ("eos_token_id", "transformers_version")} == \
        {k: v for k, v in derived.items() if k not in ("eos_token_id", "transformers_version", "_from_model_config")}

    prompt = oracle_ids(folder, CHAT[:2], add_generation_prompt=True)
    turn = hf_tokenizer.encode("It is 4.", add_special_tokens=False) + [im_end]
    plan = turn + hf_tokenizer.encode("\n<|im_start|>user\nAnd 3+3?", add_special_tokens=False)

    class SaysThePlan(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, -float("inf"))
            forced[:, plan[input_ids.shape[1] - len(prompt)]] = 0.0
            return forced

    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=len(plan), do_sample=False,
                         logits_processor=transformers.LogitsProcessorList([SaysThePlan()]))
    assert out[0, len(prompt):].tolist() == turn


@pytest.mark.parametrize("preset", ["dpo_tiny", "grpo_tiny"])
def test_every_chat_path_hands_its_turn_ends_to_the_export(tmp_path, preset):
    """Preference tuning and GRPO render chatml turns too: their exports stop where SFT's do."""
    from research.data.chat_templates import turn_end_ids
    from research.finetune.run import build_job

    folder = chatml_folder(tmp_path / "tok")
    config = tiny_config(preset)
    config.train.seq_len = 64
    config.tokenizer = folder
    config.data.chat_template = "chatml"
    job = build_job(config)
    assert job.stop_ids == turn_end_ids(get_chat_template("chatml"), load_tokenizer(folder)) and len(job.stop_ids) == 2
