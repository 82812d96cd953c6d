"""The end of the answer in teacher-forced p and L: exact match needs greedy decoding to stop
after the target, so p and L cover the stop string's tokens too (metrics.py, evaluator.answer_end)."""
from __future__ import annotations

import numpy as np
import pytest

from research.evaluation.evaluator import answer_start, evaluate
from research.evaluation.requests import GenerateResult, LoglikelihoodResult, encode_pair
from research.evaluation.study_report import mirage_table
from research.evaluation.task_catalog import catalog_task
from research.evaluation.task_spec import TaskSpec, gold_text, make_task, render
from research.evaluation.tokenizer import CharTokenizer

RIGHT, WRONG = np.log(0.9), np.log(0.05)


class CarryAlwaysHarness:
    """A scripted model of base-26 addition, least-significant digit first: it gets every digit
    of the sum right, and after the second digit always writes a carry "1" (then stops). So its
    greedy answer is right only where the sum has a carry-out, and under teacher forcing every
    digit is its argmax, while after a carry-free sum's 2 digits "1" beats the gold "\\n"."""

    def __init__(self, task):
        self.tokenizer = CharTokenizer("0123456789abcdefghijklmnopqrstuvwxyz+=\n ")
        self.gold = {render(task.spec.prompt, d, "prompt"): gold_text(task.spec, d)
                     for d in task.docs(task.spec.eval_split)}

    def _argmax(self, written: str) -> str:
        """The scripted model's next character after `written` answer characters of its own sum."""
        return "1" if len(written) == 2 else "\n"

    def generate_until(self, requests):
        out = []
        for r in requests:
            gold = self.gold[r.context]
            text = gold + ("1" if len(gold) == 2 else "")
            out.append(GenerateResult(text, tuple(self.tokenizer.encode(text))))
        return out

    def loglikelihood(self, requests):
        out = []
        for r in requests:
            gold = self.gold[r.context]
            _, ids = encode_pair(self.tokenizer, r.context, r.continuation, self.tokenizer.eos_id)
            chars = self.tokenizer.decode(ids)
            greedy = np.array([i < len(gold) or self._argmax(chars[:i]) == c for i, c in enumerate(chars)])
            log_probs = np.where(greedy, RIGHT, WRONG).astype(np.float32)
            out.append(LoglikelihoodResult(float(log_probs.sum()), bool(greedy.all()), log_probs, greedy,
                                           np.full(len(ids), 0.02, np.float32), tokens=tuple(ids)))
        return out


def test_a_model_that_never_stops_right_gets_p_to_the_L_of_its_exact_match_not_1():
    # The audit's reproducer: p and L over the target alone gave p = p^L = 1.0 beside exact
    # match 0.55, though every answer has 3 decisions the model must get right (2 digits, then
    # the carry-out "1" or the end "\\n"): the carry-free answers' end was never scored.
    task = catalog_task("addition_2digit_base26_lsb_first_pad6", num_test=400, num_train=8, seed=0)
    assert task.spec.until[0] == "\n" and task.spec.target_delimiter == ""
    examples = evaluate(CarryAlwaysHarness(task), task, num_fewshot=0).examples
    carry = np.array([len(e["target"]) == 3 for e in examples])
    assert 0.45 < carry.mean() < 0.65  # the share of sums with a carry-out
    items = {k: [e[k] for e in examples] for k in ("exact_match", "teacher_forced_accuracy", "teacher_forced_prob",
                                                   "target_log_prob", "token_edit_distance", "answer_tokens")}
    (row,) = mirage_table([{"task": task.spec.name, "num_shots": 0, "size": "s", "params_non_embedding": 1,
                            "items": items}])
    assert row["exact_match"] == pytest.approx(carry.mean())
    # p^L follows exact match (the small gap: (mean p)^(mean L), not the mean of each item's p^L).
    assert row["p_to_the_L"] == pytest.approx(row["exact_match"], abs=0.02)
    p = 1.0 - (1.0 - carry.mean()) / 3
    assert row["p"] == pytest.approx(p) and row["answer_tokens"] == pytest.approx(3 + carry.mean())
    # Per item: a carry answer's 4 tokens are all right; a carry-free one's end is wrong (2 of 3).
    for e, c in zip(examples, carry):
        assert (e["answer_tokens"], e["stop_tokens"]) == ((4.0, 1.0) if c else (3.0, 1.0))
        assert e["teacher_forced_accuracy"] == pytest.approx(1.0 if c else 2 / 3)
        assert e["target_log_prob"] == pytest.approx(len(e["target"]) * RIGHT, rel=1e-6)  # the target's alone
        assert e["target_and_stop_log_prob"] == pytest.approx(len(e["target"]) * RIGHT + (RIGHT if c else WRONG),
                                                              rel=1e-6)


class Pieces:
    """Decodes pieces as SentencePiece does: "_" is a space, and a decoded text drops its leading one."""

    def __init__(self, *pieces):
        self.pieces = list(pieces)

    def ids(self, *pieces):
        return [self.pieces.index(p) for p in pieces]

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids).replace("_", " ").removeprefix(" ")


@pytest.mark.parametrize("pieces, delimiter, target, span", [
    (["_", "4", "2", "\n"], " ", "42", (1, 3)),  # delimiter, target, stop: one token each
    (["_", "4", "2", "\n", "\n"], " ", "42", (1, 3)),  # a stop of two tokens ("\n\n")
    (["_42", "\n"], " ", "42", (0, 1)),  # the delimiter merged into the target's piece
    (["_", "42\n"], " ", "42", (1, 2)),  # the stop merged into the target's last piece: no stop token
    (["_Answer", ":", "_5", "_Q", ":"], " Answer:", "5", (2, 3)),  # a stop with characters of its own ("Q:")
    (["_4", "_2", "_"], " ", "4 2", (0, 2)),  # whitespace inside the target is the target's
])
def test_answer_span_splits_delimiter_target_and_stop_by_hand(pieces, delimiter, target, span):
    from research.evaluation.evaluator import answer_end

    tok = Pieces(*dict.fromkeys(pieces))
    ids = tok.ids(*pieces)
    end = answer_end(tok, ids, delimiter, target)
    assert (answer_start(tok, ids[:end], delimiter), end) == span


def test_per_token_metrics_split_a_hand_scored_answer_into_target_and_stop():
    # Scored " " + "42" + "\n\n" (5 tokens) with hand-set log-probabilities and argmax flags:
    # the delimiter's token is dropped, target_log_prob is the 2 target tokens' sum, and p, its
    # probability, the Brier score and L cover the target's 2 tokens and the stop's 2.
    spec = TaskSpec(name="hand", output_type="generate_until", prompt="{q}=", target="{a}", until=("\n\n", "Q:"),
                    fewshot_split=None)
    task = make_task(spec, {"test": [{"q": "6*7", "a": "42"}]})
    log_probs = np.log([0.5, 0.8, 0.4, 0.1, 0.9]).astype(np.float32)
    greedy = np.array([True, True, False, False, True])
    brier = np.array([0.7, 0.1, 0.3, 0.9, 0.2], np.float32)

    class Scripted:
        tokenizer = CharTokenizer()

        def generate_until(self, requests):
            return [GenerateResult("42", ())]

        def loglikelihood(self, requests):
            (r,) = requests
            assert r.continuation == " 42\n\n"
            ids = tuple(self.tokenizer.encode(r.continuation))
            return [LoglikelihoodResult(float(log_probs.sum()), False, log_probs, greedy, brier, tokens=ids)]

    (e,) = evaluate(Scripted(), task).examples
    assert e["target_log_prob"] == pytest.approx(np.log(0.8) + np.log(0.4), rel=1e-6)
    assert e["target_and_stop_log_prob"] == pytest.approx(np.log(0.8 * 0.4 * 0.1 * 0.9), rel=1e-6)
    assert e["teacher_forced_accuracy"] == pytest.approx(2 / 4)
    assert e["teacher_forced_prob"] == pytest.approx((0.8 + 0.4 + 0.1 + 0.9) / 4, rel=1e-6)
    assert e["brier_score"] == pytest.approx((0.1 + 0.3 + 0.9 + 0.2) / 4, rel=1e-6)
    assert (e["answer_tokens"], e["stop_tokens"]) == (4.0, 2.0)


def test_a_task_without_a_stop_string_scores_the_target_alone():
    spec = TaskSpec(name="hand", output_type="generate_until", prompt="{q}=", target="{a}", until=(),
                    fewshot_split=None)
    task = make_task(spec, {"test": [{"q": "6*7", "a": "42"}]})

    class Scripted:
        tokenizer = CharTokenizer()

        def generate_until(self, requests):
            return [GenerateResult("42", ())]

        def loglikelihood(self, requests):
            (r,) = requests
            assert r.continuation == " 42"
            ids = tuple(self.tokenizer.encode(r.continuation))
            lp = np.log([0.5, 0.8, 0.4]).astype(np.float32)
            return [LoglikelihoodResult(float(lp.sum()), True, lp, np.ones(3, bool), np.zeros(3, np.float32),
                                        tokens=ids)]

    (e,) = evaluate(Scripted(), task).examples
    assert e["answer_tokens"] == 2.0 and e["teacher_forced_accuracy"] == 1.0
    assert e["target_log_prob"] == pytest.approx(np.log(0.8 * 0.4), rel=1e-6)
    assert e["stop_tokens"] == 0.0 and e["target_and_stop_log_prob"] == e["target_log_prob"]
