"""Task-specific fine-tuning: sequence and token classification (BERT family) and text-to-text (T5).

Records (JSONL, or a synthetic set via data.synthetic):
    classification        {"text": str, "label": int}                 BERT pooler + classifier
    token_classification  {"words": [str], "labels": [int]}           BERT + per-token head; a
                          word's first token carries its label, the rest (and the spaces) none
    text_to_text          {"input": str, "target": str}               T5, teacher forcing;
                          evaluated by beam search: exact match, ROUGE-L, BLEU
Decoder-only classification through prompts is the "sft" path with the label as the reply
(its evaluation reports exact match of the greedy reply).
"""
from __future__ import annotations

import itertools
import random
import string
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from research.decoding import beam_search, generate, vocab_limit_for
from research.finetune import records as records_lib
from research.finetune.base_model import BaseModel, abstract_and_init, job_base_model
from research.finetune.checks import SYNTHETIC_SETS, config_section
from research.finetune.evaluators import classification_metrics, mean_aux, text_metrics
from research.finetune.heads import (path_model, with_fresh_heads, with_pretrained_body,
                                     with_pretrained_tagger)
from research.finetune.paths import load_records
from research.finetune.preference_data import Split, draw_split, synthetic_preferences
from research.evaluation.tokenizer_loading import encode_words, special_tokens_around
from research.finetune.records import RecordError, check_fits, pad_row
from research.finetune.trainer import FinetuneJob
from research.models.config import ConfigError
from research.training import losses
from research.training.partitioning import to_host

IGNORE = -1  # label of tokens that carry none (padding, continuation pieces, separators)
_POSITIVE = ("good", "great", "nice", "happy", "love", "fine")
_NEGATIVE = ("bad", "awful", "sad", "hate", "poor", "ugly")
_NEUTRAL = ("the", "a", "day", "film", "food", "it", "was", "very")
TEXT_TO_TEXT_SETS = SYNTHETIC_SETS["text_to_text"]


def _check_rule(rule: str, rules: tuple[str, ...]) -> None:
    """A generator given another set's name (or a typo) generated its own set, silently."""
    if rule not in rules:
        raise RecordError(f"data.synthetic={rule!r} is not a synthetic set of this path; choose one of {rules} "
                          f"(e.g. --config.data.synthetic={rules[0]}), or give data.train_file and data.eval_file.")


def _sentiment_item(rng: random.Random) -> dict:
    label = rng.randint(0, 1)
    words = [rng.choice(_NEUTRAL) for _ in range(3)] + [rng.choice(_POSITIVE if label else _NEGATIVE)
                                                        for _ in range(2)]
    rng.shuffle(words)
    return {"text": " ".join(words), "label": label}


def synthetic_sentiment(rule: str, count: int, seed: int, split: Split = "train") -> list[dict]:
    """Texts of neutral words plus words from one polarity list; label 1 = positive; `split`'s
    side of the space (preference_data.draw_split: no eval text is a training text)."""
    _check_rule(rule, ("sentiment",))
    return draw_split(rule, _sentiment_item, lambda r: r["text"], count, seed, split)


def _char_classes_item(rng: random.Random) -> dict:
    pools = (string.ascii_lowercase, string.digits, "!?.,;:-")
    labels = [rng.randint(0, 2) for _ in range(rng.randint(2, 5))]
    return {"words": ["".join(rng.choice(pools[c]) for _ in range(rng.randint(1, 3))) for c in labels],
            "labels": labels}


def synthetic_char_classes(rule: str, count: int, seed: int, split: Split = "train") -> list[dict]:
    """Words of letters (0), digits (1) or punctuation (2), labelled by their class (a tagging task)."""
    _check_rule(rule, ("char_classes",))
    return draw_split(rule, _char_classes_item, lambda r: " ".join(r["words"]), count, seed, split)


def synthetic_text_to_text(rule: str, count: int, seed: int, split: Split = "train") -> list[dict]:
    """sentiment: "review: <words>" -> "the review is positive|negative" (a T5-style label
    sentence: four words, so BLEU's 4-grams exist); capitals / arithmetic: the chosen reply
    of the preference sets (one-word targets, on which corpus BLEU is 0 even when right)."""
    _check_rule(rule, TEXT_TO_TEXT_SETS)
    if rule == "sentiment":
        return [{"input": f"review: {r['text']}", "target": f"the review is {'positive' if r['label'] else 'negative'}"}
                for r in synthetic_sentiment(rule, count, seed, split)]
    return [{"input": r["prompt"], "target": r["chosen"]} for r in synthetic_preferences(rule, count, seed, split)]


def _encoder_base(config: ml_collections.ConfigDict, family: str) -> BaseModel:
    base = job_base_model(config)
    if base.config.family != family:
        raise ConfigError(f"path={config.path!r} fine-tunes {family} models; {base.config.name} is "
                          f"{base.config.family}.")
    return base


def _text(where: str, value: Any, field: str) -> str:
    """A record's text field as given: a null or a number was turned into 'None' / '3' by str() and
    trained on (and scored against) silently, where SFT and preference records are refused."""
    if not isinstance(value, str):
        raise RecordError(f"{where}: field {field!r} must be a string, got {type(value).__name__} {value!r:.40}.")
    return value


def _label(where: str, value: Any, num_labels: int, setting: str = "model.num_labels") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_labels:
        raise RecordError(f"{where}: label {value!r} must be an int in [0, {num_labels}) (--config.{setting}="
                          f"{num_labels}; raise it to the number of labels of your data).")
    return value


def _row_job(name, config, model, loss_fn, boxed, initial, train_rows, eval_rows, predict_metrics, new_modules=(),
             tokenizer=None):
    batch_size = config.train.batch_size
    eval_batches = lambda: itertools.islice(iter(records_lib.row_batches(
        eval_rows, batch_size=batch_size, seed=0, num_epochs=1, shuffle=False)), config.train.eval_batches)
    eval_loss = mean_aux(loss_fn, model)

    def evaluate(params, reference, sharding):
        return {**eval_loss(params, eval_batches(), sharding), **predict_metrics(params, eval_batches())}

    return FinetuneJob(name=name, model=model, loss_fn=loss_fn, abstract_params=boxed, initial_params=initial,
                       train_batches=lambda seed: iter(records_lib.row_batches(train_rows, batch_size=batch_size,
                                                                               seed=seed)),
                       evaluate=evaluate, new_modules=new_modules, tokenizer=tokenizer)


def _softmax_cross_entropy(logits_NC: jax.Array, labels_N: jax.Array) -> tuple[jax.Array, dict]:
    """Mean cross-entropy over entries with a label (>= 0), in the train loop's aux form."""
    valid_N = (labels_N >= 0).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits_NC.astype(jnp.float32), axis=-1)
    nll_N = -jnp.take_along_axis(log_probs, jnp.maximum(labels_N, 0)[:, None], axis=-1)[:, 0]
    n = jnp.sum(valid_N)
    mean = jnp.sum(nll_N * valid_N) / jnp.maximum(n, 1.0)
    accuracy = jnp.sum((jnp.argmax(logits_NC, -1) == labels_N) * valid_N) / jnp.maximum(n, 1.0)
    return mean, {"cross_entropy": mean, "z_loss": jnp.zeros(()), "accuracy": accuracy, "num_tokens": n}


def _real(labels: Any, segment_ids: Any, xp: Any = jnp) -> Any:
    """Labels with those of padding (segment 0: the all-zero rows that fill a last short batch,
    whose labels read 0, a real class) set to IGNORE; xp: jnp in a loss, np on the host. Counted,
    they moved the eval loss with the batch size (tagging at batch 8 against 6: 206 tokens for
    110, accuracy 0.374 for 0.264)."""
    return xp.where(segment_ids > 0, labels, IGNORE)


def classification_loss(model, params, batch, rng):
    rngs = {} if rng is None else {"dropout": rng}
    logits = model.apply({"params": params}, batch["tokens"], segment_ids_BT=batch["segment_ids"],
                         deterministic=rng is None, rngs=rngs, method="classify")
    return _softmax_cross_entropy(logits, _real(batch["label"], batch["segment_ids"][:, 0]))


def token_classification_loss(model, params, batch, rng):
    rngs = {} if rng is None else {"dropout": rng}
    logits = model.apply({"params": params}, batch["tokens"], segment_ids_BT=batch["segment_ids"],
                         deterministic=rng is None, rngs=rngs)
    labels = _real(batch["labels"], batch["segment_ids"])
    return _softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def classification_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """Sequence classification with BERT's pooler + classifier (config.model.num_labels classes)."""
    base = _encoder_base(config, "encoder")
    num_labels = base.config.num_labels
    if num_labels < 2 or not base.config.pooler:
        raise ConfigError(f"path='classification' needs a BERT model with a pooler and model.num_labels >= 2; "
                          f"got num_labels={num_labels}.")
    seq_len, tokenizer = config.train.seq_len, base.tokenizer
    data = config_section(config, "data")

    before, after = special_tokens_around(tokenizer, base.config.family)

    def row(where, record):
        ids = [*before, *tokenizer.encode(_text(where, record["text"], "text")), *after]
        check_fits(where, len(ids), seq_len, "text")
        return {"tokens": pad_row(ids, seq_len), "segment_ids": pad_row([1] * len(ids), seq_len),
                "label": np.asarray(_label(where, record["label"], num_labels), np.int32)}

    train_rows, eval_rows = ([row(w, r) for w, r in load_records(data, split, (("text", "label"),),
                                                                 synthetic_sentiment)] for split in ("train", "eval"))
    model, example, new_modules = path_model(config, base.config, seq_len)
    boxed, init = abstract_and_init(model, example)

    def initial():
        params = init(int(config.train.seed))
        return params if base.params is None else with_fresh_heads(params, base.params, base.source)

    predict = jax.jit(lambda params, tokens, segments: jnp.argmax(model.apply(
        {"params": params}, tokens, segment_ids_BT=segments, method="classify"), -1))

    def predict_metrics(params, batches):
        predictions, labels = [], []
        for batch in batches:
            keep = batch["segment_ids"][:, 0] > 0
            predictions += list(to_host(predict(params, batch["tokens"], batch["segment_ids"]))[keep])
            labels += list(batch["label"][keep])
        return classification_metrics(predictions, labels)

    return _row_job(f"classification {base.config.name} ({base.source})", config, model, classification_loss, boxed,
                    initial, train_rows, eval_rows, predict_metrics, new_modules=new_modules,
                    tokenizer=tokenizer)


def token_classification_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """Per-token tagging: a BERT body + a linear head over its hidden states."""
    base = _encoder_base(config, "encoder")
    seq_len, tokenizer = config.train.seq_len, base.tokenizer
    data = config_section(config, "data")
    num_labels = int(config.get("num_token_labels", 3))
    before, after = special_tokens_around(tokenizer, base.config.family)

    def row(where, record):
        words, labels = record["words"], record["labels"]
        if not isinstance(words, list) or not isinstance(labels, list) or len(words) != len(labels):
            raise RecordError(f"{where}: 'words' and 'labels' must be lists of the same length.")
        labels = [_label(where, label, num_labels, "num_token_labels") for label in labels]
        # The words' ids as the tokenizer gives them for the text (transformers' is_split_into_words
        # for its tokenizers); a word's first token carries its label. A word of no token ('' or a
        # zero-width space) carries none: given one, every later label slid a token to the left.
        text_ids, starts = encode_words(tokenizer, [_text(where, w, f"words[{i}]") for i, w in enumerate(words)])
        text_tags = [IGNORE] * len(text_ids)
        for start, label in zip(starts, labels):
            if start is not None:
                text_tags[start] = label
        ids, tags = [*before, *text_ids, *after], [IGNORE] * len(before) + text_tags + [IGNORE] * len(after)
        check_fits(where, len(ids), seq_len, "words")
        return {"tokens": pad_row(ids, seq_len), "segment_ids": pad_row([1] * len(ids), seq_len),
                "labels": np.concatenate([np.asarray(tags, np.int32), np.full(seq_len - len(tags), IGNORE, np.int32)])}

    train_rows, eval_rows = ([row(w, r) for w, r in load_records(data, split, (("words", "labels"),),
                                                                 synthetic_char_classes)] for split in ("train", "eval"))
    model, example, new_modules = path_model(config, base.config, seq_len)  # num_token_labels classes, as num_labels
    boxed, init = abstract_and_init(model, example)
    tagger = _folder_tagger(config.init)

    def initial():
        params = init(int(config.train.seed))
        if base.params is None:
            return params
        return with_pretrained_tagger(with_pretrained_body(params, base.params, base.source), tagger, base.source)

    predict = jax.jit(lambda params, tokens, segments: jnp.argmax(model.apply(
        {"params": params}, tokens, segment_ids_BT=segments), -1))

    def predict_metrics(params, batches):
        predictions, labels = [], []
        for batch in batches:
            keep = _real(batch["labels"], batch["segment_ids"], np) >= 0
            predictions += list(to_host(predict(params, batch["tokens"], batch["segment_ids"]))[keep])
            labels += list(batch["labels"][keep])
        return classification_metrics(predictions, labels)

    return _row_job(f"token classification {base.config.name} ({base.source})", config, model,
                    token_classification_loss, boxed, initial, train_rows, eval_rows, predict_metrics,
                    new_modules=new_modules)


def _folder_tagger(init: str) -> dict | None:
    """The tagger head of a BertForTokenClassification folder init (bert.folder_tagger), read
    before anything trains; None for other inits."""
    kind, _, folder = init.partition(":")
    if kind != "hf":
        return None
    from research.models.hf import CheckpointError, bert
    try:
        return bert.folder_tagger(folder)
    except CheckpointError as error:  # a classifier unlike its config.json: one line, as load_hf says it
        raise ConfigError(str(error)) from None


def text_to_text_job(config: ml_collections.ConfigDict) -> FinetuneJob:
    """T5: the encoder reads the input, the decoder is teacher-forced on the target (+ eos)."""
    base = _encoder_base(config, "encoder_decoder")
    seq_len, tokenizer, cfg = config.train.seq_len, base.tokenizer, base.config
    data = config_section(config, "data")
    eos, start = int(tokenizer.eos_id), int(cfg.decoder_start_token_id)

    before, after = special_tokens_around(tokenizer, cfg.family)
    encode_source = lambda text: [*before, *tokenizer.encode(text), *after]  # T5's ... </s>, as pretrained

    def row(where, record):
        source = encode_source(_text(where, record["input"], "input"))
        target = list(tokenizer.encode(_text(where, record["target"], "target"))) + [eos]
        check_fits(where, len(source), seq_len, "input")
        check_fits(where, len(target), seq_len, "target")
        ones = lambda n: pad_row([1] * n, seq_len)
        arange = lambda n: pad_row(list(range(n)), seq_len)
        return {"encoder_inputs": pad_row(source, seq_len), "encoder_segment_ids": ones(len(source)),
                "encoder_positions": arange(len(source)), "decoder_inputs": pad_row([start] + target[:-1], seq_len),
                "decoder_targets": pad_row(target, seq_len), "decoder_segment_ids": ones(len(target)),
                "decoder_positions": arange(len(target)), "loss_weights": pad_row([1.0] * len(target), seq_len,
                                                                                  np.float32)}

    records = {split: load_records(data, split, (("input", "target"),), synthetic_text_to_text)
               for split in ("train", "eval")}
    train_rows, eval_rows = ([row(w, r) for w, r in records[split]] for split in ("train", "eval"))
    model, example, _ = path_model(config, cfg, seq_len)
    loss_fn = losses.make_loss_fn(losses.get_objective("prefix_lm", "encoder_decoder"), float(config.train.z_loss))
    boxed, init = abstract_and_init(model, example)
    initial = lambda: base.params if base.params is not None else init(int(config.train.seed))
    generation = records["eval"][:int(config.get("generation_prompts", 32))]
    num_beams = int(config.get("num_beams", 4))  # a key of the t5 presets; 4 where a config has none

    def predict_metrics(params, batches):
        if not generation:
            return {}
        prompts = [encode_source(r["input"]) for _, r in generation]  # strings: row() checked every record
        options = dict(stop_tokens=[eos], max_new_tokens=int(config.get("generation_tokens", 16)),
                       vocab_limit=vocab_limit_for(tokenizer, cfg.vocab_size))  # no undecodable padded ids
        if num_beams == 1:  # greedy, as num_beams=1 means in transformers: one beam keeps the best
            out = generate(model, params, prompts, **options)  # finished prefix, which can stop earlier
            best, lengths = to_host(out.tokens_BN), to_host(out.lengths_B)
        else:
            out = beam_search(model, params, prompts, num_beams=num_beams, **options)
            best, lengths = to_host(out.tokens_BWN)[:, 0], to_host(out.lengths_BW)[:, 0]
        predictions = [tokenizer.decode([int(t) for t in row[:n]]) for row, n in zip(best, lengths)]
        return text_metrics(predictions, [r["target"] for _, r in generation])

    return _row_job(f"text-to-text {cfg.name} ({base.source})", config, model, loss_fn, boxed, initial,
                    train_rows, eval_rows, predict_metrics, tokenizer=tokenizer)

