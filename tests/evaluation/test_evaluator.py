"""evaluate(): requests, metrics and aggregation wired end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest

from research.evaluation.evaluator import evaluate, token_losses
from research.evaluation.harness import Harness
from research.evaluation.requests import GenerateResult, LoglikelihoodRequest, LoglikelihoodResult
from research.evaluation.task_spec import TaskError, TaskSpec, gold_text, make_task
from research.evaluation.tasks import get_task
from research.evaluation.tokenizer import CharTokenizer
from tests.evaluation.conftest import tiny_model


@pytest.fixture(scope="module")
def harness():
    model, params = tiny_model("gpt2-tiny", vocab_size=128)
    return Harness(model, params, CharTokenizer(), batch_size=4)


class OracleHarness:
    """Answers every generation with the gold target: exact match must then be 1."""

    def __init__(self, task):
        self.tokenizer = CharTokenizer()
        self.task = task

    def generate_until(self, requests):
        golds = [gold_text(self.task.spec, d) for d in self.task.docs("test")]
        return [GenerateResult(gold, ()) for gold in golds[:len(requests)]]

    def continuation_overflow(self, requests):
        return None  # every target fits

    def loglikelihood(self, requests):
        # One scored token, the continuation's last character: an answer token (never the delimiter).
        return [LoglikelihoodResult(-1.0, True, np.array([-1.0]), np.array([True]), np.array([0.5]),
                                    tokens=tuple(self.tokenizer.encode(r.continuation[-1:]))) for r in requests]


def test_generation_task_metrics_side_by_side(harness):
    task = get_task("addition", digits=1, num_test=4, num_train=8, num_fewshot=2)
    result = evaluate(harness, task)
    assert set(result.metrics) == {"exact_match", "token_accuracy", "token_edit_distance", "target_log_prob",
                                   "brier_score", "teacher_forced_accuracy", "teacher_forced_prob", "answer_tokens"}
    assert 0 <= result.metrics["exact_match"] <= result.metrics["token_accuracy"] + 1e-9 <= 1 + 1e-9
    assert 0 <= result.metrics["brier_score"] <= 2 and result.metrics["target_log_prob"] < 0
    example = result.examples[0]
    direct = harness.loglikelihood([LoglikelihoodRequest(example["prompt"], example["target"])])[0]
    assert example["target_log_prob"] == pytest.approx(direct.log_prob, abs=1e-5)
    # Teacher-forced p: the gold tokens' argmax flags and probabilities given the gold prefix.
    assert example["teacher_forced_accuracy"] == pytest.approx(np.mean(direct.token_is_greedy))
    assert example["teacher_forced_prob"] == pytest.approx(np.mean(np.exp(direct.token_log_probs)), rel=1e-5)
    assert example["answer_tokens"] == len(direct.token_log_probs) >= 1
    # The end decision after the target: eos or the task's one-token stop string "\n" next.
    (ended,) = harness.loglikelihood([LoglikelihoodRequest(example["prompt"], example["target"], end_until=("\n",))])
    assert example["end_prob"] == pytest.approx(math.exp(ended.end_log_prob), rel=1e-5)
    assert example["end_is_greedy"] == float(ended.end_is_greedy)
    for e in result.examples:  # every decision greedy-right <=> greedy decoding writes the target and stops
        assert (e["teacher_forced_accuracy"] == 1.0 and e["end_is_greedy"] == 1.0) == (e["exact_match"] == 1.0)
    assert example["prompt"].count("\n") == 2 and "\n" not in example["prediction"]  # 2 shots; stopped at "\n"
    assert np.mean([e["target_log_prob"] for e in result.examples]) == pytest.approx(
        result.metrics["target_log_prob"])


def test_teacher_forced_metrics_cover_the_target_not_its_delimiter(harness):
    # unscramble's delimiter is " ": the harness scores " " + target, but p, its probability,
    # log p and L are the target's (metrics.py). Checked against a forward pass of our own
    # over the target's characters alone; the old code also counted the space (L + 1 tokens).
    import jax

    from research.evaluation.evaluator import answer_ids
    from research.evaluation.fewshot import fewshot_context
    from research.evaluation.task_catalog import catalog_task

    task = catalog_task("unscramble_reversed", num_test=3, num_train=8)
    assert task.spec.target_delimiter == " "
    tok = harness.tokenizer
    result = evaluate(harness, task, num_fewshot=1)
    for i, example in enumerate(result.examples):
        context = fewshot_context(task, i, 1)
        target = example["target"]
        context_ids, target_ids = tok.encode(context + " "), tok.encode(target)
        full = np.asarray([context_ids + target_ids], np.int32)
        logits = harness.model.apply({"params": harness.params}, full[:, :-1])
        log_probs = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64), -1))
        rows = log_probs[len(context_ids) - 1:]  # the predictions of the target's characters
        gold = rows[np.arange(len(target_ids)), target_ids]
        probs = np.exp(rows)
        brier = 1 - 2 * np.exp(gold) + (probs ** 2).sum(-1)
        assert example["answer_tokens"] == len(target) == len(answer_ids(tok, target))
        # The argmax among the tokenizer's ids, the ones generation may write (the model embeds 128).
        greedy = rows[:, :tok.vocab_size].argmax(-1) == target_ids
        assert example["teacher_forced_accuracy"] == pytest.approx(np.mean(greedy))
        assert example["teacher_forced_prob"] == pytest.approx(np.mean(np.exp(gold)), rel=1e-4)
        assert example["target_log_prob"] == pytest.approx(gold.sum(), rel=1e-4)
        assert example["brier_score"] == pytest.approx(brier.mean(), rel=1e-4)


class PieceTokenizer:
    """Decodes pieces as SentencePiece does: "_" is a space, and a decoded text drops its leading one."""

    pieces = ["_", "_w", "_e", "3", "_Answer", ":", "_5", ":5"]

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids).replace("_", " ").removeprefix(" ")


@pytest.mark.parametrize("pieces, delimiter, start", [
    (["_", "3"], " ", 1),  # a bare word-start piece before the answer is the delimiter's
    (["_w", "_e"], " ", 0),  # the delimiter merged into the answer's first piece: that piece is the answer's
    (["_Answer", ":", "_5"], " Answer:", 2),
    ([":5"], ":", 0),
    (["3"], "", 0),
    (["_"], " ", 1),  # an empty target: no answer tokens
])
def test_answer_start_skips_only_the_delimiters_pieces(pieces, delimiter, start):
    from research.evaluation.evaluator import answer_start

    tok = PieceTokenizer()
    assert answer_start(tok, [tok.pieces.index(p) for p in pieces], delimiter) == start


def test_oracle_answers_score_perfectly_including_chain_of_thought():
    for task in (get_task("multiplication", digits=2, num_test=3), get_task("multiplication", digits=2, num_test=3,
                                                                            chain_of_thought=True)):
        result = evaluate(OracleHarness(task), task)
        assert result.metrics["exact_match"] == 1.0 and result.metrics["token_accuracy"] == 1.0
        assert result.metrics["token_edit_distance"] == 0.0 and result.metrics["brier_score"] == 0.5


def test_multiple_choice_and_rolling_tasks(harness):
    mc = TaskSpec(name="colours", output_type="multiple_choice", prompt="{q}:", target="{a}", choices="opts",
                  fewshot_split=None)
    task = make_task(mc, {"test": [{"q": "sky", "a": "blue", "opts": ["blue", "green", "red"]},
                                   {"q": "grass", "a": "green", "opts": ["blue", "green"]}]})
    result = evaluate(harness, task)
    for example in result.examples:
        assert example["acc"] == float(np.argmax(example["scores"]) == example["gold"])
    assert result.metrics["acc"] == np.mean([e["acc"] for e in result.examples])

    text = "def add(a, b):\n    return a + b\n" * 6  # 198 characters: two windows of the 128-token context
    rolling = make_task(TaskSpec(name="code", output_type="loglikelihood_rolling", prompt="{text}"),
                        {"test": [{"text": text}]})
    result = evaluate(harness, rolling)
    example = result.examples[0]
    assert example["num_windows"] == 2 and example["num_tokens"] == len(text)
    assert result.metrics["token_perplexity"] == pytest.approx(math.exp(-example["log_prob"] / len(text)))
    losses = token_losses(harness, [text])[0]
    assert losses.shape == (len(text),) and losses.sum() == pytest.approx(-example["log_prob"], rel=1e-5)
    with pytest.raises(TaskError, match="takes no few-shot examples"):
        evaluate(harness, rolling, num_fewshot=1)
    with pytest.raises(TaskError, match="limit=0 must be >= 1"):
        evaluate(harness, rolling, limit=0)


def test_answer_tokens_of_a_sentencepiece_tokenizer_skip_its_word_start_piece(tmp_path):
    # SentencePiece opens "345" with a bare word-start piece an empty answer lacks: counted, an
    # empty prediction was 4 edits from "345" and "34" matched 3 of 4 positions.
    import random

    from research.data.config import TokenizerConfig
    from research.data.tokenizer import train_tokenizer
    from research.evaluation import metrics as M
    from research.evaluation.evaluator import answer_ids

    rng = random.Random(0)
    lines = [f"{rng.randint(10, 9999)}+{rng.randint(10, 9999)}={rng.randint(10, 99999)}" for _ in range(3000)]
    tokenizer = train_tokenizer(["\n".join(lines)], TokenizerConfig(vocab_size=19, byte_fallback=False,
                                                                    character_coverage=1.0), str(tmp_path / "t.model"))
    assert len(tokenizer.encode("345")) == 4  # the premise: "\u2581", "3", "4", "5"
    target = answer_ids(tokenizer, "345")
    assert [tokenizer.decode([i]) for i in target] == ["3", "4", "5"]
    assert answer_ids(tokenizer, "") == [] and answer_ids(tokenizer, " 345 ") == target
    assert M.token_edit_distance(answer_ids(tokenizer, ""), target) == 3
    assert M.token_accuracy(answer_ids(tokenizer, "34"), target) == pytest.approx(2 / 3)
    assert M.token_edit_distance(answer_ids(tokenizer, "354"), target) == 2


def test_a_target_that_just_fits_is_scored_and_one_token_more_is_refused_before_the_model(monkeypatch):
    """A generation task's target longer than max_length - 1 tokens (the end decision after it
    takes one more input) failed in loglikelihood only after generate_until had run (and, in a
    suite, after the tasks before it). The check counts what scoring counts: the delimiter and
    the end decision; a loglikelihood or multiple-choice continuation may fill max_length."""
    from research.evaluation.evaluator import misfit
    from tests.evaluation.conftest import IdTokenizer, text

    harness = Harness(*tiny_model("gpt2-tiny"), IdTokenizer(), batch_size=2, max_length=16)
    prompt = text([5, 6, 7])  # IdTokenizer: one token per character, no special tokens

    def task(length, output_type="generate_until", delimiter=""):
        spec = TaskSpec(name="long", output_type=output_type, prompt="{q}", target="{a}", target_delimiter=delimiter,
                        until=("\n",), max_new_tokens=2, fewshot_split=None)
        return make_task(spec, {"test": [{"q": prompt, "a": text(range(10, 10 + length))}]})

    assert misfit(harness, task(15)) is None and misfit(harness, task(14, delimiter=text([3]))) is None
    with pytest.warns(UserWarning, match="loglikelihood: 1 of 1 contexts exceed max_length=16"):
        (example,) = evaluate(harness, task(15)).examples  # scored at the boundary: 15 tokens + the end decision
    assert example["answer_tokens"] == 15 and "end_prob" in example
    assert misfit(harness, task(16, "loglikelihood")) is None
    expected = {(16, "generate_until", ""): "document 0's target is 16 tokens as scored (its delimiter included), "
                                            "more than the 15 that max_length=16 of gpt2-tiny can score with the "
                                            "decision to end after it; shorten it",
                (15, "generate_until", text([3])): "document 0's target is 16 tokens",
                (17, "loglikelihood", ""): "document 0's target is 17 tokens as scored (its delimiter included), "
                                           "more than the 16 that max_length=16 of gpt2-tiny can score; shorten it"}
    for (length, output_type, delimiter), message in expected.items():
        reason = misfit(harness, task(length, output_type, delimiter))
        assert reason.startswith(message) and "\n" not in reason, reason
    mc = make_task(TaskSpec(name="mc", output_type="multiple_choice", prompt="{q}", target="0", choices="opts",
                            target_delimiter="", fewshot_split=None),
                   {"test": [{"q": prompt, "opts": [text([9]), text(range(10, 26))]},
                             {"q": prompt, "opts": [text([9]), text(range(10, 27))]}]})
    assert misfit(harness, mc).startswith("choice 1 of document 1 is 17 tokens as scored")
    assert misfit(harness, mc, limit=1) is None
    # evaluate() itself refuses before generating.
    monkeypatch.setattr(harness, "generate_until", lambda *a: pytest.fail("generated before the check"))
    with pytest.raises(TaskError, match=r"task 'long': document 0's target is 16 tokens .* max_length=16"):
        evaluate(harness, task(16))


def test_an_empty_rolling_text_scores_log_p_0_as_lm_eval_and_a_task_of_only_empty_texts_is_refused_first(harness):
    """lm-eval's hf model scores an empty text (no tokens, no windows) log p 0; ours raised at
    that document, naming neither task nor document, after earlier tasks had run."""
    from research.evaluation.evaluator import misfit

    spec = TaskSpec(name="wiki", output_type="loglikelihood_rolling", prompt="{text}", fewshot_split=None)
    texts = ["The cat sat on the mat.", "", "hello world"]
    result = evaluate(harness, make_task(spec, {"test": [{"text": t} for t in texts]}))
    empty = result.examples[1]
    assert (empty["log_prob"], empty["num_tokens"], empty["num_bytes"], empty["num_words"]) == (0.0, 0, 0, 1)
    alone = evaluate(harness, make_task(spec, {"test": [{"text": t} for t in texts if t]}))
    assert [e["log_prob"] for e in alone.examples] == pytest.approx([result.examples[i]["log_prob"] for i in (0, 2)])
    for metric in ("token_perplexity", "byte_perplexity", "bits_per_byte"):  # the empty text adds nothing
        assert result.metrics[metric] == pytest.approx(alone.metrics[metric], rel=1e-6)
    assert token_losses(harness, [""])[0].shape == (0,)
    # Nothing at all to score: refused by the pre-flight (misfit, which a suite runs on every task
    # before the first), naming the task, before the model is called.
    blank = make_task(spec, {"test": [{"text": ""}, {"text": ""}]})
    assert "every one of its 2 documents renders to an empty text" in misfit(harness, blank)
    with pytest.raises(TaskError, match=r"task 'wiki': every one of its 2 documents renders to an empty text"):
        evaluate(harness, blank)
