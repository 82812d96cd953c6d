"""Chat templates and fine-tuning records: the response-only mask, packing, bad rows as one line."""
import json

import numpy as np
import pytest

from research.data.chat_templates import get_chat_template, render_chat, render_prompt
from research.evaluation.tokenizer import CharTokenizer
from research.finetune.preference_data import PREFERENCE_FIELDS, preference_row, rule_reward, synthetic_preferences
from research.finetune.records import RecordError, packed_batches, read_jsonl, row_batches
from research.finetune.sft_data import SFT_FIELDS, sft_example

TOKENIZER = CharTokenizer()
PLAIN = get_chat_template("plain")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
        {"role": "assistant", "content": "6"}]


def test_loss_mask_covers_exactly_the_assistant_replies():
    ids, mask = render_chat(CHAT, PLAIN, TOKENIZER)
    # Rebuild the conversation by hand: what the model must say is "4\n<eos>" and "6\n<eos>".
    pieces = [("System: Be brief.\nUser: 2+2?\nAssistant: ", 0), ("4\n", 1), (None, 1),
              ("User: 3+3?\nAssistant: ", 0), ("6\n", 1), (None, 1)]
    expected_ids, expected_mask = [], []
    for text, trained in pieces:
        piece = [TOKENIZER.eos_id] if text is None else TOKENIZER.encode(text)
        expected_ids += piece
        expected_mask += [trained] * len(piece)
    assert ids == expected_ids and mask == expected_mask
    example = sft_example("chat:1", {"messages": CHAT}, template=PLAIN, tokenizer=TOKENIZER, seq_len=96)
    trained_text = TOKENIZER.decode([t for t, w in zip(example["targets"], example["loss_weights"]) if w])
    assert trained_text == "4\n6\n"  # eos is trained too but decodes to nothing
    assert int(example["loss_weights"].sum()) == 6
    np.testing.assert_array_equal(example["inputs"][1:], example["targets"][:-1])
    assert TOKENIZER.decode(render_prompt(CHAT[:4], PLAIN, TOKENIZER)).endswith("User: 3+3?\nAssistant: ")


def test_packed_rows_keep_examples_apart():
    examples = [sft_example(f"x:{i}", {"instruction": f"{i}+{i}=", "response": str(2 * i)}, template=PLAIN,
                            tokenizer=TOKENIZER, seq_len=80) for i in range(10)]
    batch = next(iter(packed_batches(examples, batch_size=2, seq_len=80, seed=0)))
    assert batch["inputs"].shape == (2, 80) and batch["segment_ids"].max() >= 2  # several examples per row
    for row in range(2):
        for segment in set(batch["segment_ids"][row]) - {0}:
            positions = batch["positions"][row][batch["segment_ids"][row] == segment]
            np.testing.assert_array_equal(positions, np.arange(len(positions)))  # restart per example


def write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_a_row_missing_a_field_names_file_and_line(tmp_path):
    path = write(tmp_path, [{"instruction": "a", "response": "b"}, {"messages": []}, {"instruction": "c"}])
    with pytest.raises(RecordError, match=rf"^{path}:3: row lacks field\(s\) messages or instruction\+response; "
                                          r"it has \['instruction'\]\.$"):
        read_jsonl(path, SFT_FIELDS)
    path = write(tmp_path, [{"prompt": "p", "chosen": "c", "rejected": "r"}, "{not json"])
    with pytest.raises(RecordError, match=rf"^{path}:2: not valid JSON"):
        read_jsonl(path, PREFERENCE_FIELDS)
    path = write(tmp_path, [{"prompt": "p", "chosen": "c"}])
    with pytest.raises(RecordError, match=rf"^{path}:1: row lacks field\(s\) prompt\+chosen\+rejected"):
        read_jsonl(path, PREFERENCE_FIELDS)


def test_a_response_longer_than_the_context_is_one_line(tmp_path):
    path = write(tmp_path, [{"instruction": "hi", "response": "x" * 10}, {"instruction": "hi", "response": "y" * 80}])
    (where_ok, ok), (where_long, long) = read_jsonl(path, SFT_FIELDS)
    sft_example(where_ok, ok, template=PLAIN, tokenizer=TOKENIZER, seq_len=64)
    with pytest.raises(RecordError, match=rf"^{path}:2: the conversation has 10\d tokens > seq_len=64; raise "
                                          r"train.seq_len"):
        sft_example(where_long, long, template=PLAIN, tokenizer=TOKENIZER, seq_len=64)
    with pytest.raises(RecordError, match=r"^p:1: prompt \+ chosen response has \d+ tokens > seq_len=16"):
        preference_row("p:1", {"prompt": "Shout: word", "chosen": "WORD" * 4, "rejected": "w"}, template=PLAIN,
                       tokenizer=TOKENIZER, seq_len=16)


def test_a_prompt_that_is_neither_text_nor_messages_names_the_prompt():
    """It said "'messages' must be a non-empty list", a field a preference row does not have."""
    with pytest.raises(RecordError, match=r"^p:2: field 'prompt' must be a string or a non-empty list of chat "
                                          r"messages, got int 7\.$"):
        preference_row("p:2", {"prompt": 7, "chosen": "A", "rejected": "B"}, template=PLAIN, tokenizer=TOKENIZER,
                       seq_len=40)
    with pytest.raises(RecordError, match=r"^p:3: field 'prompt' must be a string or a non-empty list of chat "
                                          r"messages, got list \[\]\.$"):  # it named 'messages' for an empty list
        preference_row("p:3", {"prompt": [], "chosen": "A", "rejected": "B"}, template=PLAIN, tokenizer=TOKENIZER,
                       seq_len=40)


def test_a_pair_of_one_response_twice_is_one_line():
    """It trained without a word: the pair's loss sits at log 2 with zero gradient and it always
    counts as wrong in the accuracy (a strict comparison)."""
    with pytest.raises(RecordError, match=r"^p:3: 'chosen' and 'rejected' are the same text \('CAT'\); a preference "
                                          r"pair needs two different responses: fix or drop the row\.$"):
        preference_row("p:3", {"prompt": "Shout: cat", "chosen": "CAT", "rejected": "CAT"}, template=PLAIN,
                       tokenizer=TOKENIZER, seq_len=40)


def test_a_chat_that_does_not_end_with_its_reply_is_one_line_in_train_and_eval_files(tmp_path):
    """It was accepted: eval prompted with the whole chat and scored the reply to "And 3+3?"
    against the earlier "4" (exact match 1.0 for answering "4")."""
    from research.finetune.run import build_job
    from tests.finetune.conftest import tiny_config
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"instruction": "2+2?", "response": "4"}) + "\n")
    bad.write_text("\n".join(json.dumps({"messages": chat}) for chat in (CHAT, CHAT[:4], CHAT[:3] + CHAT[:1])) + "\n")
    for train_file, eval_file, row in ((bad, good, 2), (good, bad, 2)):
        config = tiny_config("sft_tiny")
        config.train.seq_len = 96
        config.data.update(dict(train_file=str(train_file), eval_file=str(eval_file)))
        with pytest.raises(RecordError, match=rf"^{bad}:{row}: the conversation ends with a user message; an SFT "
                                              r"conversation ends with the assistant reply it is trained and scored "
                                              r"on: drop the trailing turn\(s\) or add the reply\.$"):
            build_job(config)
    with pytest.raises(RecordError, match=r"^c:3: the conversation ends with a system message"):
        sft_example("c:3", {"messages": CHAT[:3] + CHAT[:1]}, template=PLAIN, tokenizer=TOKENIZER, seq_len=96)


def test_a_file_not_in_utf8_names_its_line_and_leaves_no_claimed_workdir(tmp_path):
    """A Latin-1 byte raised a bare UnicodeDecodeError at a buffer offset after the base model
    loaded, and run.json and .training_lock stayed behind."""
    from research.finetune import finetune_and_evaluate
    from tests.finetune.conftest import tiny_config
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"instruction": "ok", "response": "x"}\n{"instruction": "caf\xe9", "response": "x"}\n')
    message = rf"^{path}:2: not valid UTF-8 \(invalid continuation byte: byte b'\\xe9' at column 21\); save the file"
    with pytest.raises(RecordError, match=message):
        read_jsonl(str(path), SFT_FIELDS)
    config = tiny_config("sft_tiny", num_steps=1)
    config.data.update(dict(train_file=str(path), eval_file=str(path)))
    with pytest.raises(RecordError, match=message):
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fields, row", [
    (SFT_FIELDS, '{"instruction": "smile \\ud83d", "response": "x"}'),
    (SFT_FIELDS, '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "smile \\ud83d"}]}'),
    (PREFERENCE_FIELDS, '{"prompt": "smile \\ud83d", "chosen": "a", "rejected": "b"}'),
    ((("prompt",),), '{"prompt": [{"role": "user", "content": "smile \\udE00"}]}')])
def test_a_lone_surrogate_escape_names_its_row(tmp_path, fields, row):
    """It reached the tokenizer, which failed without a row (HF: TypeError TextEncodeInput,
    SentencePiece: RuntimeError Unable to cast)."""
    path = write(tmp_path, [row.replace("smile \\ud83d", "smile \\ud83d\\ude00").replace("\\udE00", "\\ud83d\\ude00"),
                            row])  # a whole pair (an emoji) is fine
    with pytest.raises(RecordError, match=rf"^{path}:2: 'smile \\ud[8e][3d0][d0]' holds a lone UTF-16 surrogate"):
        read_jsonl(path, fields)


@pytest.mark.parametrize("role, article", [("assistant", "an"), ("system", "a")])
def test_a_preference_prompt_that_does_not_end_with_a_user_turn_is_one_line(role, article):
    """An assistant ending (a prefill) was rendered as two assistant turns, where trl continues it;
    a system ending was accepted, where trl raises."""
    prompt = [{"role": "user", "content": "Is 2+2 4?"}, {"role": role, "content": "Answer:"}]
    with pytest.raises(RecordError, match=rf"^p:4: the prompt ends with {article} {role} message; a preference "
                                          r"prompt ends with the user turn that 'chosen' and 'rejected' answer\.$"):
        preference_row("p:4", {"prompt": prompt, "chosen": " yes", "rejected": " no"}, template=PLAIN,
                       tokenizer=TOKENIZER, seq_len=96)


def test_synthetic_preferences_follow_their_rule():
    for rule in ("capitals", "arithmetic"):
        for record in synthetic_preferences(rule, 50, seed=1):
            assert rule_reward(rule, record["prompt"], record["chosen"]) == 1.0
            assert rule_reward(rule, record["prompt"], record["rejected"]) < 1.0
    row = preference_row("p:1", {"prompt": "Shout: cat", "chosen": "CAT", "rejected": "cat"}, template=PLAIN,
                         tokenizer=TOKENIZER, seq_len=40)
    chosen = [t for t, m in zip(row["chosen_tokens"], row["chosen_mask"]) if m]
    assert TOKENIZER.decode(chosen) == "CAT\n" and int(row["chosen_length"]) == len("User: Shout: cat\nAssistant: CAT\n") + 1


def test_a_multi_turn_preference_prompt_scores_only_the_reply():
    # trl's DPOTrainer / CPOTrainer score only the completion: an assistant turn inside the
    # prompt is context. The row's tokens are the whole conversation, rebuilt here by hand.
    prompt = [{"role": "user", "content": "Shout: cat"}, {"role": "assistant", "content": "CAT"},
              {"role": "user", "content": "Shout: dog"}]
    row = preference_row("p:1", {"prompt": prompt, "chosen": "DOG", "rejected": "dog"}, template=PLAIN,
                         tokenizer=TOKENIZER, seq_len=96)
    eos = [TOKENIZER.eos_id]
    context = (TOKENIZER.encode("User: Shout: cat\nAssistant: CAT\n") + eos
               + TOKENIZER.encode("User: Shout: dog\nAssistant: "))
    for side, reply in (("chosen", "DOG\n"), ("rejected", "dog\n")):
        expected = context + TOKENIZER.encode(reply) + eos
        length = int(row[f"{side}_length"])
        assert list(row[f"{side}_tokens"][:length]) == expected
        np.testing.assert_array_equal(row[f"{side}_mask"][:length],
                                      [0] * len(context) + [1] * (len(expected) - len(context)))
        assert int(row[f"{side}_mask"].sum()) == 5  # the reply, its newline and eos


NUM_ROWS, EPOCHS, BINS = 48, 3, 8  # packed_batches packs into max(batch_size, 8) bins


def _epoch_orders(seed, kind):
    """Each epoch's order of NUM_ROWS rows (row i: the single id 5 + i, or seq_len of them).
    Packed: rows fill their bins, so each group of BINS consecutive rows is emitted as a group
    in an order of the packer's own; an epoch's order is then its sequence of groups."""
    if kind == "rows":
        rows = [{"x": np.array([5 + i], np.int32)} for i in range(NUM_ROWS)]
        order = [int(b["x"][0, 0]) - 5 for b in row_batches(rows, batch_size=1, seed=seed, num_epochs=EPOCHS)]
        return [tuple(order[e * NUM_ROWS:(e + 1) * NUM_ROWS]) for e in range(EPOCHS)]
    full = lambda i: np.full(4, 5 + i, np.int32)
    examples = [{"inputs": full(i), "targets": full(i), "loss_weights": np.ones(4, np.float32)} for i in range(NUM_ROWS)]
    order = [int(b["inputs"][0, 0]) - 5 for b in packed_batches(examples, batch_size=1, seq_len=4, seed=seed,
                                                                num_epochs=EPOCHS)]
    groups = [frozenset(order[i:i + BINS]) for i in range(0, len(order), BINS)]
    per_epoch = NUM_ROWS // BINS
    return [tuple(groups[e * per_epoch:(e + 1) * per_epoch]) for e in range(EPOCHS)]


@pytest.mark.parametrize("kind", ["rows", "packed"])
def test_no_two_seeds_share_an_epoch_order(kind):
    # grain orders epoch e by seed + e: fine-tuning seeds passed to it as they were, seed 0's
    # epoch 1 was seed 1's epoch 0, so seed repeats of a fine-tuning run saw one sequence.
    orders = {(seed, epoch): order for seed in range(4) for epoch, order in enumerate(_epoch_orders(seed, kind))}
    assert len(set(orders.values())) == len(orders), "two (seed, epoch) pairs share an order"


@pytest.mark.parametrize("kind", ["rows", "packed"])
def test_seed_0_orders_its_epochs_as_it_always_did(kind):
    """Seed 0's epoch e is grain's index shuffle at seed e, as before run seeds were spread."""
    from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

    shuffled = [[index_shuffle_module.index_shuffle(i, max_index=NUM_ROWS - 1, seed=epoch, rounds=4)
                 for i in range(NUM_ROWS)] for epoch in range(EPOCHS)]
    expected = [tuple(order) if kind == "rows" else
                tuple(frozenset(order[i:i + BINS]) for i in range(0, NUM_ROWS, BINS)) for order in shuffled]
    assert _epoch_orders(0, kind) == expected


def _generator(path):
    from research.finetune import task_paths
    from research.finetune.preference_data import synthetic_prompts
    return {"sft": synthetic_preferences, "reward": synthetic_preferences, "preference": synthetic_preferences,
            "grpo": synthetic_prompts, "classification": task_paths.synthetic_sentiment,
            "token_classification": task_paths.synthetic_char_classes,
            "text_to_text": task_paths.synthetic_text_to_text}[path]


@pytest.mark.parametrize("preset, synthetic", [("sft_tiny", None), ("sft_tiny", "capitals"), ("dpo_tiny", None),
                                               ("reward_tiny", None), ("grpo_tiny", None), ("grpo_tiny", "arithmetic"),
                                               ("classify_tiny", None), ("tag_tiny", None), ("t5_tiny", None),
                                               ("t5_tiny", "arithmetic")])
def test_no_synthetic_eval_item_is_a_training_item(preset, synthetic):
    """At the presets' sizes (2,048 train, 128 eval): arithmetic has 2,500 prompts, and 72 of its 128
    eval prompts were training prompts, so eval_exact_match measured memorisation."""
    from experiments.configs.finetune import get_config
    from research.finetune.paths import load_records

    config = get_config(preset)
    data = config.data.to_dict()
    data["synthetic"] = synthetic or data["synthetic"]
    inputs = lambda split: [json.dumps([record.get(k) for k in ("prompt", "text", "words", "input")])
                            for _, record in load_records(data, split, None, _generator(config.path))]
    train, evaluation = inputs("train"), inputs("eval")
    assert (len(train), len(evaluation)) == (data["num_train"], data["num_eval"])
    assert not set(train) & set(evaluation)
    assert len(set(evaluation)) == len(evaluation)  # each eval prompt scored once


def test_a_task_set_given_another_sets_name_is_one_line():
    # The classifier's and tagger's generators ignored the name: any value, a typo included, gave their set.
    from research.finetune import task_paths
    from research.finetune.paths import load_records
    for generator, name, sets in ((task_paths.synthetic_sentiment, "capitals", r"\('sentiment',\)"),
                                  (task_paths.synthetic_char_classes, "sentimnet", r"\('char_classes',\)")):
        with pytest.raises(RecordError, match=rf"^data.synthetic='{name}' is not a synthetic set of this path; "
                                              rf"choose one of {sets}"):
            load_records({"synthetic": name, "num_train": 4}, "train", None, generator)
