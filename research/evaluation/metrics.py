"""Per-example metrics and their aggregation.

Generation tasks get discontinuous and continuous metrics side by side (Schaeffer et al.
2023 argue that "emergence" often lives in the metric, not the model):

    exact_match          1 if the (answer of the) output equals the target, else 0
    token_accuracy       fraction of target token positions the output matches
    token_edit_distance  Levenshtein distance between output and target token sequences
    target_log_prob      log p(target | prompt + target_delimiter), teacher-forced, nats
    brier_score          mean over target tokens of the multi-class Brier score of the
                         next-token distribution (1 - 2 p_target + sum_v p_v^2), in [0, 2]
    teacher_forced_accuracy  fraction of target tokens that are the argmax given the prompt and
                         the *gold* tokens before them: Schaeffer et al. 2023's per-token
                         accuracy p, which one wrong early digit does not zero (unlike
                         token_accuracy, which compares a free-running generation position
                         by position)
    teacher_forced_prob  mean over target tokens of p(gold token | prompt, gold prefix)
    answer_tokens        L, the target's token count (exact match ~ p^L for independent tokens)

Per example only (harnesses that score the end; research.evaluation.harness does): exact match
also needs greedy decoding to stop right after the target, a decision p^L leaves out (in
least-significant-first addition, whether a carry-out digit follows). end_prob is the next-token
probability of the ids that end the answer there (eos, pieces whose text begins with a stop
string: harness.Harness.end_mask), end_is_greedy whether the argmax is one of them; exact match
~ p^L q for independent decisions, q the items' mean end_is_greedy.

"Target tokens" are the target's own: the harness scores target_delimiter + target (as a
few-shot example writes it), and the evaluator drops the scored tokens that hold only the
delimiter (evaluator.answer_start), so the " " before an answer is neither counted in L nor
averaged into p. A tokenizer that merges the delimiter into the target's first token (a
SentencePiece "▁w") leaves that token to the target.

Multiple choice (lm-eval): acc (argmax log-likelihood is gold), acc_norm (argmax of
log-likelihood / length of the choice in characters), brier_score (sum over choices of
(p_i - [i = gold])^2 with p = softmax of the choices' log-likelihoods), target_log_prob.
Multiple-choice and loglikelihood tasks score, as lm-eval does, the whole continuation
target_delimiter + choice / target, delimiter included.
Rolling likelihood: perplexities are corpus-level, exp(-sum log p / sum units) (inf past a float's
range). An empty text scores as lm-eval's hf model scores it: no tokens, log p 0, 0 bytes and, by
lm-eval's count_words, 1 word.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

GENERATION_METRICS = ("exact_match", "token_accuracy", "token_edit_distance", "target_log_prob", "brier_score",
                      "teacher_forced_accuracy", "teacher_forced_prob", "answer_tokens")
MULTIPLE_CHOICE_METRICS = ("acc", "acc_norm", "brier_score", "target_log_prob")
LOGLIKELIHOOD_METRICS = ("target_log_prob", "is_greedy", "brier_score")
ROLLING_METRICS = ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
METRICS_BY_OUTPUT_TYPE = {
    "generate_until": GENERATION_METRICS,
    "multiple_choice": MULTIPLE_CHOICE_METRICS,
    "loglikelihood": LOGLIKELIHOOD_METRICS,
    "loglikelihood_rolling": ROLLING_METRICS,
}

_PERPLEXITY_UNITS = {"token_perplexity": "num_tokens", "word_perplexity": "num_words",
                     "byte_perplexity": "num_bytes"}


def extract_answer(text: str, answer_prefix: str | None) -> str:
    """The text after the last `answer_prefix` (all of it when the prefix is None or absent), stripped."""
    if answer_prefix and answer_prefix in text:
        text = text[text.rindex(answer_prefix) + len(answer_prefix):]
    return text.strip()


def exact_match(prediction: str, target: str) -> float:
    """1.0 if the strings agree after stripping surrounding whitespace."""
    return float(prediction.strip() == target.strip())


def token_accuracy(predicted: Sequence[int], target: Sequence[int]) -> float:
    """Fraction of target positions i with predicted[i] == target[i] (missing positions miss)."""
    if not len(target):
        return float(not len(predicted))
    return sum(p == t for p, t in zip(predicted, target)) / len(target)


def token_edit_distance(predicted: Sequence[int], target: Sequence[int]) -> int:
    """Levenshtein distance: fewest token insertions, deletions and substitutions turning one into the other."""
    previous = list(range(len(target) + 1))
    for i, p in enumerate(predicted, start=1):
        current = [i]
        for j, t in enumerate(target, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (p != t)))
        previous = current
    return previous[-1]


def teacher_forced(token_log_probs: np.ndarray, token_is_greedy: np.ndarray) -> dict[str, float]:
    """Per-token accuracy and probability of the gold target under teacher forcing (module docstring)."""
    if not len(token_log_probs):
        return {"teacher_forced_accuracy": 1.0, "teacher_forced_prob": 1.0, "answer_tokens": 0.0}
    return {"teacher_forced_accuracy": float(np.mean(token_is_greedy)),
            "teacher_forced_prob": float(np.mean(np.exp(np.asarray(token_log_probs, np.float64)))),
            "answer_tokens": float(len(token_log_probs))}


def end_decision(end_log_prob: float, end_is_greedy: bool) -> dict[str, float]:
    """The decision to stop right after the gold target, which exact match also needs (module
    docstring): its probability and whether greedy decoding takes it."""
    return {"end_prob": float(np.exp(end_log_prob)), "end_is_greedy": float(end_is_greedy)}


def mean_brier(token_brier: np.ndarray) -> float:
    """Mean per-token Brier score over the target's tokens (0.0, a perfect score, for none, as
    teacher_forced gives an empty target p = 1)."""
    if not len(token_brier):
        return 0.0
    return float(np.mean(token_brier))


def multiple_choice_metrics(log_likelihoods: Sequence[float], gold: int, choices: Sequence[str]) -> dict[str, float]:
    """acc, acc_norm, brier_score, target_log_prob of one question. acc_norm divides each
    log-likelihood by its choice's length in characters, as lm-eval does: an empty choice
    (-inf) never wins it (dividing by 1 made it win whenever its delimiter alone scored best)."""
    ll = np.asarray(log_likelihoods, np.float64)
    lengths = np.asarray([len(c) for c in choices], np.float64)
    probs = np.exp(ll - ll.max())
    probs /= probs.sum()
    one_hot = np.zeros_like(probs)
    one_hot[gold] = 1.0
    normalized = np.where(lengths > 0, ll / np.maximum(lengths, 1), -np.inf)
    return {"acc": float(np.argmax(ll) == gold), "acc_norm": float(np.argmax(normalized) == gold),
            "brier_score": float(np.sum((probs - one_hot) ** 2)), "target_log_prob": float(ll[gold])}


def rolling_units(text: str, num_tokens: int) -> dict[str, int]:
    """Counts the perplexities are normalised by: tokens, words and UTF-8 bytes, the last two
    exactly as lm-eval 0.4.13's count_words / count_bytes count them."""
    # lm-eval splits the unstripped text, so leading or trailing whitespace adds an empty
    # "word" each ("hello world\n" is 3): stripping first gave word perplexities that no
    # lm-eval run of the same documents reproduces.
    return {"num_tokens": num_tokens, "num_words": len(re.split(r"\s+", text)),
            "num_bytes": len(text.encode("utf-8"))}


def perplexity(nats_per_unit: float) -> float:
    """exp(nats_per_unit), inf where that overflows a float: a text without spaces (CJK,
    minified code) can cost over 709 nats a "word", and math.exp raised OverflowError there,
    losing every row already computed."""
    try:
        return math.exp(nats_per_unit)
    except OverflowError:
        return math.inf


def aggregate(per_example: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    """Task-level value of each metric: the mean over examples, or a corpus-level perplexity.
    A token or byte metric whose unit count is 0 over every example (every text empty) is nan:
    nothing was measured (word_perplexity counts an empty text as one word, as lm-eval does)."""
    out = {}
    for name in names:
        if name in ROLLING_METRICS:
            log_prob = sum(e["log_prob"] for e in per_example)
            unit = "num_bytes" if name == "bits_per_byte" else _PERPLEXITY_UNITS[name]
            units = sum(e[unit] for e in per_example)
            if not units:
                out[name] = math.nan
            elif name == "bits_per_byte":
                out[name] = -log_prob / (units * math.log(2))
            else:
                out[name] = perplexity(-log_prob / units)
        else:
            out[name] = float(np.mean([e[name] for e in per_example]))
    return out
