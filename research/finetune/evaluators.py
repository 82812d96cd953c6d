"""Evaluation of fine-tuned models: mean loss aux over eval batches, generation, task metrics.

Task metrics come from well-kept libraries: accuracy and macro-F1 from scikit-learn,
ROUGE-L from rouge-score (Google's reference implementation), corpus BLEU from sacrebleu;
exact match is research.evaluation.metrics.exact_match.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from research.data.chat_templates import ChatTemplate, cut_turn, turn_end_ids
from research.decoding import generate, vocab_limit_for
from research.evaluation.metrics import exact_match
from research.training.partitioning import shard_global_batch, to_host


def mean_aux(loss_fn: Callable, model: Any) -> Callable[[Any, Iterable[Mapping[str, np.ndarray]], NamedSharding],
                                                        dict[str, float]]:
    """(params, batches, sharding) -> eval_<name> for every per-unit mean in the loss's aux,
    weighted by aux["num_tokens"] (tokens, pairs or rows); eval_loss is the objective's mean."""
    @jax.jit
    def aux_of(params, batch):
        return loss_fn(model, params, batch, None)[1]

    def evaluate(params: Any, batches: Iterable[Mapping[str, np.ndarray]], sharding: NamedSharding) -> dict[str, float]:
        sums: dict[str, float] = {}
        total = 0.0
        for batch in batches:
            if not all(isinstance(v, jax.Array) for v in batch.values()):
                batch = shard_global_batch(batch, sharding)
            aux = {k: float(v) for k, v in jax.device_get(aux_of(params, batch)).items()}
            n = aux.pop("num_tokens")
            aux.pop("z_loss", None)
            total += n
            for k, v in aux.items():
                sums[k] = sums.get(k, 0.0) + v * n
        metrics = {("eval_loss" if k == "cross_entropy" else f"eval_{k}"): v / max(total, 1.0) for k, v in sums.items()}
        metrics["eval_count"] = total
        return metrics

    return evaluate


def greedy_completions(model: Any, params: Any, prompts: Sequence[Sequence[int]], tokenizer: Any, *,
                       max_new_tokens: int, template: ChatTemplate) -> list[str]:
    """Greedy replies to token-id prompts (render_prompt's): generation stops at the template's
    turn-end ids and each reply is cut where its turn ends (chat_templates.cut_turn)."""
    # vocab_limit: the model's vocabulary may be padded above the tokenizer's, whose decode rejects those ids.
    out = generate(model, params, prompts, max_new_tokens=max_new_tokens,
                   stop_tokens=turn_end_ids(template, tokenizer),
                   vocab_limit=vocab_limit_for(tokenizer, model.config.vocab_size))
    return [cut_turn(row[:int(length)], template, tokenizer)[1]
            for row, length in zip(to_host(out.tokens_BN), to_host(out.lengths_B))]


def classification_metrics(predictions: Sequence[int], labels: Sequence[int], prefix: str = "eval_") -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn)."""
    from sklearn.metrics import accuracy_score, f1_score
    return {f"{prefix}accuracy": float(accuracy_score(labels, predictions)),
            f"{prefix}f1": float(f1_score(labels, predictions, average="macro", zero_division=0))}


def text_metrics(predictions: Sequence[str], targets: Sequence[str], prefix: str = "eval_") -> dict[str, float]:
    """Exact match, ROUGE-L F-measure (rouge-score) and corpus BLEU (sacrebleu, 0-100)."""
    import sacrebleu
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(t, p)["rougeL"].fmeasure for p, t in zip(predictions, targets)]
    return {f"{prefix}exact_match": float(np.mean([exact_match(p, t) for p, t in zip(predictions, targets)])),
            f"{prefix}rouge_l": float(np.mean(rouge)),
            f"{prefix}bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score)}
