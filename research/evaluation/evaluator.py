"""Run one task on one model: build every prompt, send batched requests, score, aggregate.

    result = evaluate(harness, make_task("addition", digits=3), num_fewshot=4, limit=200)
    result.metrics    # {"exact_match": 0.31, "token_accuracy": 0.74, ...}
    result.examples   # one dict per document: prompt, prediction, target and each metric

All prompts are built (and all user errors raised) before the model is called.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from research.evaluation import metrics as M
from research.evaluation.fewshot import fewshot_context
from research.evaluation.harness import Harness
from research.evaluation.requests import GenerateRequest, LoglikelihoodRequest, RollingRequest, as_ids
from research.evaluation.task_spec import Task, TaskError, choices_of, gold_index, gold_text, render

# Bumped when a change of this module's metrics or prompts changes what an evaluation of the
# same model gives, so studies that cache results (experiments/emergence.py) evaluate again.
# 2: teacher-forced metrics over the target's own tokens, not its delimiter's; few-shot
# examples never pose the query's own problem (2026-12-05).
# 3 (withdrawn): p and L also covered the stop string; 4: they cover the target's tokens only
# again (a task whose documents end an answer with eos, as copying_varied's, never predicts the
# stop string, so 3 scored every right copy's end as wrong: p 0.8 at exact match 1.0), and
# is_greedy is the argmax among the ids generation may write, not the model's padded vocabulary
# (2026-12-05). 5: each generation item also scores the end decision after its target (the next
# token being eos or a piece whose text begins with a stop string, where generate_until's text
# ends): end_is_greedy and end_prob (2026-12-06); p and L themselves are unchanged. 6: each
# generation item keeps whether each answer token is the argmax (answer_token_greedy), for the
# product of per-position accuracies beside p^L (study_report.mirage_table); nothing else changes.
# 7: chain-of-thought and reversed-answer arithmetic variants draw their task's problems
# (tasks/generated.py: problem_set), so their items changed (lsb-first tasks and plain padded ones did not); a
# task file's until defaults to its fewshot_delimiter (lm-eval's rule); an empty rolling text scores
# log p 0 (2026-12-06). (Unscramble's few-shot prompts leaving out the query's word, 2026-12-07, are
# in the fingerprint of a study that prompts such a task with shots, experiments/emergence_plan.py:
# a bump here would have re-evaluated every study for a change of none of the presets' tasks.)
METRICS_VERSION = 7


@dataclasses.dataclass(frozen=True)
class TaskResult:
    task: str
    num_fewshot: int
    metrics: dict[str, float]
    examples: list[dict[str, Any]]


def no_documents(spec) -> TaskError:
    return TaskError(f"task {spec.name!r}: split {spec.eval_split!r} holds no documents; give it some "
                     "(num_test >= 1 for a generated task).")


def evaluate(harness: Harness, task: Task, *, num_fewshot: int | None = None, limit: int | None = None) -> TaskResult:
    """Every metric of `task.spec.metrics` over the first `limit` evaluation documents."""
    spec = task.spec
    k, docs, contexts = _prepare(task, num_fewshot, limit)
    reason = _misfit(harness, spec, docs, contexts)
    if reason:  # before generating: a target too long to score failed only after generation
        raise TaskError(f"task {spec.name!r}: {reason}")
    run = {"generate_until": _generation, "multiple_choice": _multiple_choice, "loglikelihood": _loglikelihood,
           "loglikelihood_rolling": _rolling}[spec.output_type]
    examples = run(harness, task, docs, contexts)
    return TaskResult(spec.name, k, M.aggregate(examples, spec.metrics), examples)


def misfit(harness: Harness, task: Task, *, num_fewshot: int | None = None, limit: int | None = None) -> str | None:
    """Why `harness` cannot score `task` as evaluate would (one line, without the task's name), or
    None: every target (or choice) is tokenized exactly as scoring tokenizes it, delimiter and
    end decision included, and measured against harness.max_length. No model is called, so a
    suite checks every task before the first runs."""
    _, docs, contexts = _prepare(task, num_fewshot, limit)
    return _misfit(harness, task.spec, docs, contexts)


def _prepare(task: Task, num_fewshot: int | None, limit: int | None) -> tuple[int, list, list[str]]:
    """(shot count, documents, prompt of each), or a one-line TaskError."""
    spec = task.spec
    k = spec.num_fewshot if num_fewshot is None else num_fewshot
    if spec.output_type == "loglikelihood_rolling" and k:
        raise TaskError(f"task {spec.name!r}: loglikelihood_rolling takes no few-shot examples, got num_fewshot={k}.")
    docs = task.docs(spec.eval_split)
    if limit is not None:
        if limit < 1:
            raise TaskError(f"limit={limit} must be >= 1 (or None for every document).")
        docs = docs[:limit]
    if not docs:
        raise no_documents(spec)
    contexts = [fewshot_context(task, i, k) if spec.output_type != "loglikelihood_rolling" else ""
                for i in range(len(docs))]
    return k, list(docs), contexts


def _misfit(harness: Harness, spec, docs, contexts) -> str | None:
    if spec.output_type == "loglikelihood_rolling":
        # Scored in windows of max_length: any length fits. An empty text scores log p 0 over no
        # bytes or tokens, as lm-eval's hf model scores it; only a task of nothing but those
        # measures nothing (its per-byte and per-token perplexities are 0 / 0).
        if all(not render(spec.prompt, d, "prompt") for d in docs):
            return (f"every one of its {len(docs)} documents renders to an empty text, so there is nothing to "
                    "score; give documents with text (or check the prompt template's field).")
        return None
    if spec.output_type == "multiple_choice":
        if harness.config.family == "encoder" and harness.encoder_scoring == "classifier":
            return None  # a classifier scores the context alone, not the choices as continuations
        flat = [(i, j, choice) for i, d in enumerate(docs) for j, choice in enumerate(choices_of(spec, d))]
        owners = [(i, j) for i, j, _ in flat]
        requests = [LoglikelihoodRequest(contexts[i], spec.target_delimiter + choice) for i, _, choice in flat]
    else:
        owners = [(i, None) for i in range(len(docs))]
        requests = _target_requests(spec, docs, contexts)
    over = harness.continuation_overflow(requests)
    if over is None:
        return None
    index, count, most = over
    doc, choice = owners[index]
    what = f"document {doc}'s target" if choice is None else f"choice {choice} of document {doc}"
    end = " with the decision to end after it" if requests[index].end_until is not None else ""
    return (f"{what} is {count} tokens as scored (its delimiter included), more than the {most} that "
            f"max_length={harness.max_length} of {harness.config.name} can score{end}; shorten it, or evaluate "
            "a model with a longer max_len.")


def _target_requests(spec, docs, contexts) -> list[LoglikelihoodRequest]:
    """The request scoring each document's target after its prompt, as _generation and _loglikelihood send it."""
    end_until = spec.until if spec.output_type == "generate_until" else None
    return [LoglikelihoodRequest(c, spec.target_delimiter + gold_text(spec, d), end_until=end_until)
            for c, d in zip(contexts, docs)]


def _generation(harness, task, docs, contexts):
    spec, tokenizer = task.spec, harness.tokenizer
    targets = [gold_text(spec, d) for d in docs]
    generations = harness.generate_until([GenerateRequest(c, spec.until, spec.max_new_tokens) for c in contexts])
    scores = harness.loglikelihood(_target_requests(spec, docs, contexts))
    examples = []
    for context, target, generation, score in zip(contexts, targets, generations, scores):
        predicted_ids = answer_ids(tokenizer, generation.text)
        target_ids = answer_ids(tokenizer, target)
        # The request scores delimiter + target (as a few-shot example shows them), but every
        # per-token metric is over the target's own tokens (metrics.py: p and L of the target):
        # counting the delimiter's " " made p ~ (L p + 1) / (L + 1) and L one too many.
        start = answer_start(tokenizer, _scored_ids(score), spec.target_delimiter)
        log_probs, greedy = score.token_log_probs[start:], score.token_is_greedy[start:]
        examples.append({
            "prompt": context, "prediction": generation.text, "target": target,
            "exact_match": M.exact_match(M.extract_answer(generation.text, spec.answer_prefix),
                                         M.extract_answer(target, spec.answer_prefix)),
            "token_accuracy": M.token_accuracy(predicted_ids, target_ids),
            "token_edit_distance": float(M.token_edit_distance(predicted_ids, target_ids)),
            "target_log_prob": float(np.sum(log_probs, dtype=np.float64)),
            "brier_score": M.mean_brier(score.token_brier[start:]),
            **M.teacher_forced(log_probs, greedy),
            "answer_token_greedy": [float(g) for g in greedy],  # per answer token, in order
            **({} if score.end_log_prob is None else M.end_decision(score.end_log_prob, score.end_is_greedy))})
    return examples


def _scored_ids(score) -> tuple[int, ...]:
    if len(score.tokens) != len(score.token_log_probs):
        raise TaskError(f"a loglikelihood result holds {len(score.tokens)} token ids for "
                        f"{len(score.token_log_probs)} scored tokens; give LoglikelihoodResult.tokens, the "
                        "continuation's scored ids, so the target's own tokens can be told from the delimiter's.")
    return tuple(score.tokens)


def answer_start(tokenizer, scored_ids, delimiter: str) -> int:
    """Index of the first answer token among the scored ids of `delimiter + target`: the
    leading tokens that hold only the delimiter (and whitespace) are skipped, the first
    token holding a character of the target is the answer's first.

    Answer characters are counted as the non-whitespace characters of the decoded prefix
    beyond those of the delimiter: decoding a prefix alone drops SentencePiece's leading
    space ("▁w" decodes to "w"), so character offsets would not line up, counts of
    non-whitespace do. The rule matches answer_ids, which drops leading whitespace-only
    tokens of the stripped target: a bare word-start "▁" before "3" is skipped, while a
    token merging the delimiter into the target ("▁w" for " w") holds an answer
    character and is the answer's (with a character tokenizer both give the same L tokens).
    """
    delimiter_chars = sum(not c.isspace() for c in delimiter)
    start = 0
    while start < len(scored_ids):
        prefix = tokenizer.decode(list(scored_ids[:start + 1]))
        if sum(not c.isspace() for c in prefix) > delimiter_chars:
            break
        start += 1
    return start


def answer_ids(tokenizer, text: str) -> list[int]:
    """The token ids of an answer for token_accuracy and token_edit_distance, encoded alone
    without its leading whitespace-only tokens: SentencePiece opens every non-empty text with
    a bare word-start piece ("▁" before "345"), which an empty prediction lacks; counted, it
    made an empty answer's distance L + 1 and gave every prediction a free first match."""
    ids = as_ids(tokenizer.encode(text.strip()))
    start = 0
    while start < len(ids) and not tokenizer.decode([ids[start]]).strip():
        start += 1
    return ids[start:]


def _multiple_choice(harness, task, docs, contexts):
    spec = task.spec
    choices = [choices_of(spec, d) for d in docs]
    golds = [gold_index(spec, d) for d in docs]
    scores = harness.multiple_choice([(c, [spec.target_delimiter + x for x in cs]) for c, cs in zip(contexts, choices)])
    return [{"prompt": c, "choices": cs, "gold": g, "scores": s.tolist(), **M.multiple_choice_metrics(s, g, cs)}
            for c, cs, g, s in zip(contexts, choices, golds, scores)]


def _loglikelihood(harness, task, docs, contexts):
    spec = task.spec
    targets = [gold_text(spec, d) for d in docs]
    scores = harness.loglikelihood(_target_requests(spec, docs, contexts))
    return [{"prompt": c, "target": t, "target_log_prob": s.log_prob, "is_greedy": float(s.is_greedy),
             "brier_score": M.mean_brier(s.token_brier)} for c, t, s in zip(contexts, targets, scores)]


def _rolling(harness, task, docs, contexts):
    texts = [render(task.spec.prompt, d, "prompt") for d in docs]
    results = harness.loglikelihood_rolling([RollingRequest(t) for t in texts])
    return [{"log_prob": r.log_prob, **M.rolling_units(t, len(r.token_log_probs)),
             "num_windows": r.num_windows} for t, r in zip(texts, results)]


def token_losses(harness: Harness, texts: list[str]) -> list[np.ndarray]:
    """Per-token loss (-log p, nats) of each text, for in-context-learning scores."""
    return [-r.token_log_probs for r in harness.loglikelihood_rolling([RollingRequest(t) for t in texts])]
