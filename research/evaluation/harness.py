"""Harness: one model + params + tokenizer answering lm-eval style requests in batches.

    harness = Harness(model, params, tokenizer, batch_size=16)
    harness.loglikelihood([LoglikelihoodRequest("2+2=", "4")])      # [LoglikelihoodResult]
    harness.loglikelihood_rolling([RollingRequest(text)])          # [RollingResult]
    harness.generate_until([GenerateRequest("2+2=", until=("\\n",), max_new_tokens=4)])
    harness.multiple_choice([("Q: sky? A:", [" blue", " green"])])  # [log-likelihood per choice]

Families: decoder-only models serve every request. Encoder-decoder models score a
continuation conditionally (context -> encoder, continuation -> decoder) and generate;
they have no rolling (unconditional) likelihood. Encoder-only models answer
multiple-choice questions, by the pseudo-log-likelihood of each choice (Salazar et al.
2020: each continuation token masked in turn and scored by the MLM head;
encoder_scoring="pll") or by a sequence classifier whose class i is choice i
(encoder_scoring="classifier").

Contexts longer than the model are truncated from the left (keeping the text nearest the
continuation), with a warning that counts the truncated requests; a continuation (or
max_new_tokens) that alone does not fit is an error.

Contexts, prompts and rolling texts of decoder and encoder-decoder models are encoded with
the tokenizer's encode_context when it has one (HFTokenizer: the special tokens its default
adds, Llama's <s>, T5's </s>, as lm-eval's `hf` model does), continuations with encode
(none). Encoder-only models, which lm-eval does not evaluate, read each input between the special
tokens they were trained with (tokenizer_loading.special_tokens_around: BERT's [CLS] ... [SEP]).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from research.evaluation import scoring
from research.evaluation.requests import (GenerateRequest, GenerateResult, LoglikelihoodRequest, LoglikelihoodResult,
                                          RollingRequest, RollingResult, ScoredRow, as_ids, conditional_row,
                                          cut_at_stop, encode_pair, rolling_windows)
from research.evaluation.tokenizer import check_tokenizer
from research.evaluation.tokenizer_loading import context_encoder, prefix_token, special_tokens_around
from research.models.config import ConfigError
from research.models.layout import unbox

EncoderScoring = Literal["pll", "classifier"]


class Harness:
    """Answers loglikelihood / rolling / generate_until / multiple-choice requests for one model.

    batch_size rows are scored per call of a jitted kernel; rows are padded to power-of-two
    lengths >= min_bucket. max_length: longest input the model may see (default
    config.max_len). rolling_context_len: see requests.rolling_windows. stop_ids: ids besides the
    tokenizer's eos that end a generation (a model's generation_config eos ids, such as a chat
    template's turn end: LoadedModel.stop_ids), as transformers' and lm-eval's generate stop there.
    bidirectional_prompt: a prefix-LM decoder (LoadedModel.bidirectional_prompt) reads each context
    and prompt as the prefix it was trained with, attended both ways.
    """

    def __init__(self, model: nn.Module, params: Any, tokenizer: Any, *, batch_size: int = 8,
                 max_length: int | None = None, min_bucket: int = 16, encoder_scoring: EncoderScoring = "pll",
                 rolling_context_len: int = 1, stop_ids: Sequence[int] = (), bidirectional_prompt: bool = False):
        config = model.config
        check_tokenizer(tokenizer)
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1.")
        max_length = config.max_len if max_length is None else max_length
        if max_length < 1 or (config.position == "learned" and max_length > config.max_len):
            raise ConfigError(f"max_length={max_length} must be in [1, {config.max_len}] (the learned position "
                              f"table of {config.name}).")
        if min_bucket < 1:
            raise ConfigError(f"min_bucket={min_bucket} must be >= 1.")
        if encoder_scoring not in ("pll", "classifier"):
            raise ConfigError(f"encoder_scoring={encoder_scoring!r} must be 'pll' or 'classifier'.")
        bad = [i for i in stop_ids if not (isinstance(i, (int, np.integer)) and 0 <= i < config.vocab_size)]
        if bad:
            raise ConfigError(f"stop_ids={tuple(stop_ids)}: {bad[0]!r} is not a token id of {config.name} "
                              f"(0 .. {config.vocab_size - 1}).")
        from research.decoding import vocab_limit_for
        from research.decoding.adapters import adapter_for
        if bidirectional_prompt:
            adapter_for(model, True)  # refuses a model that is not a decoder
        self.bidirectional_prompt = bool(bidirectional_prompt)
        self.model, self.params, self.tokenizer = model, unbox(params), tokenizer
        # Every id that ends a generation: eos first, then the model's own (e.g. a turn end).
        self.end_ids = tuple(dict.fromkeys([int(tokenizer.eos_id), *(int(i) for i in stop_ids)]))
        self.config = config
        self.batch_size, self.max_length, self.min_bucket = batch_size, max_length, min_bucket
        self.encoder_scoring = encoder_scoring
        self.rolling_context_len = rolling_context_len
        self.prefix_token = prefix_token(tokenizer)
        self._encode_context = context_encoder(tokenizer, config.family)
        # An encoder reads every input inside its template; encode_context covers the other families.
        self._around = special_tokens_around(tokenizer, "encoder") if config.family == "encoder" else ((), ())
        self._room = max_length - sum(map(len, self._around))  # the text tokens of one encoder row
        if self._room < 1:
            raise ConfigError(f"max_length={max_length} leaves no room for text inside the special tokens "
                              f"{self._around} of every {config.name} input; raise it.")
        self._sizes = dict(batch_size=batch_size, max_len=max_length, min_bucket=min_bucket)
        # Generation never picks an id the tokenizer cannot decode (the model's vocabulary is
        # padded above it). Log-likelihoods deliberately ignore this limit: one is the model's own
        # softmax over its full vocabulary, as lm-eval and HF compute it. is_greedy keeps to it.
        self.vocab_limit = vocab_limit_for(tokenizer, config.vocab_size)
        self._end_masks: dict[tuple[str, ...], np.ndarray] = {}
        self._pieces: list[tuple[int, str]] | None = None
        self._special_pieces: dict[int, str] = {}  # id -> text of a special token decode() drops
        self._stop_sets: dict[tuple[str, ...], tuple[int, ...]] = {}

    def unsupported(self, output_type: str) -> str | None:
        """Why this model cannot answer a task of `output_type` (one line), or None: checked for
        every task of a suite before the first runs (a rolling task after a generation task on
        T5 failed once the first had run, and its rows were lost)."""
        family, name = self.config.family, self.config.name
        if output_type == "loglikelihood_rolling" and family != "decoder":
            return f"{name} is an {family!r} model; rolling (unconditional) loglikelihood needs a decoder-only model."
        if output_type == "generate_until" and family == "encoder":
            return f"{name} is an encoder-only model; generation needs a decoder or encoder_decoder model."
        return None

    # --- requests ------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        """log p(continuation | context) and is_greedy of each request.

        log p over the model's full (padded) vocabulary, not self.vocab_limit: renormalizing over
        the tokenizer's ids would report scores no other harness reproduces, and a padded id's
        share of the mass is part of how good the model is. is_greedy (each token the argmax)
        among the ids below self.vocab_limit, the ones generate_until may write: teacher-forced
        accuracy then counts a token right exactly when greedy generation, given the same
        prefix, writes it. lm-eval takes the argmax over every id; the two differ only where a
        padded id, which no tokenizer piece owns, outscores every real one.
        """
        family = self.config.family
        if family == "encoder":
            return self._pseudo_loglikelihood(requests)
        for request in requests:
            if isinstance(request.end_until, str):
                raise ConfigError(f"end_until={request.end_until!r} must be a tuple of stop strings, e.g. "
                                  f"({request.end_until!r},).")
        pairs = self._encode_pairs(requests)
        for context_ids, continuation_ids in pairs:
            self._check_ids(context_ids + continuation_ids)
        # Every request is measured before any is scored: a too-long continuation in a later
        # group (end_until or not) failed once the groups before it had been scored.
        over = self._overflow(requests, pairs)
        if over is not None:
            index, count, most = over
            if requests[index].end_until is not None:
                raise ConfigError(f"continuation of {count} tokens and the decision to end after it exceed "
                                  f"max_length={self.max_length}; shorten it, or score it without end_until.")
            raise ConfigError(f"continuation of {count} tokens exceeds the model context of {most}; shorten it "
                              "or use a model with a longer max_length.")
        if family == "decoder":
            def build(context_ids, continuation_ids):
                return conditional_row(context_ids, continuation_ids, self.max_length)
            score_rows = functools.partial(scoring.score_decoder_rows_and_ends,
                                           bidirectional_prefix=self.bidirectional_prompt)
        else:
            def build(context_ids, continuation_ids):  # continuations fit: measured by _overflow above
                return ((np.asarray(context_ids[-self.max_length:], np.int32), np.asarray(continuation_ids, np.int32)),
                        len(context_ids) > self.max_length)
            score_rows = scoring.score_seq2seq_rows_and_ends

        def score(rows, end_mask):
            return score_rows(self.model, self.params, rows, end_mask, vocab_limit=self.vocab_limit, **self._sizes)
        stats, truncated, ends = self._score_with_ends(requests, pairs, build, score)
        self._warn_truncated(sum(truncated), len(requests), "loglikelihood")
        return [_result(s, cut, t, end) for s, cut, (_, t), end in zip(stats, truncated, pairs, ends)]

    def _score_with_ends(self, requests: Sequence[LoglikelihoodRequest], pairs: Sequence[tuple[list[int], list[int]]],
                         build, score) -> tuple[list, list[bool], list[tuple[float, bool] | None]]:
        """(TokenStats, whether the context was cut, end or None) of each request. build(context
        ids, continuation ids) -> (row, cut) and score(rows, end_mask or None) -> [(TokenStats,
        end or None)] are the family's.

        A request with end_until is scored as continuation + one placeholder token: the forward
        pass that scores the continuation then also gives the distribution after it, the end
        decision (end_mask), at no extra row; a decoder's context is cut for that one more input.
        """
        stats: list = [None] * len(requests)
        truncated: list[bool] = [False] * len(requests)
        ends: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(None if request.end_until is None else tuple(request.end_until), []).append(i)
        for until, indices in groups.items():
            placeholder = [] if until is None else [0]  # loglikelihood checked that it fits (_overflow)
            built = [build(pairs[i][0], pairs[i][1] + placeholder) for i in indices]
            scored = score([row for row, _ in built], None if until is None else self.end_mask(until))
            for i, (_, cut), (s, end) in zip(indices, built, scored):
                stats[i], truncated[i], ends[i] = s, cut, end
        return stats, truncated, ends

    def continuation_overflow(self, requests: Sequence[LoglikelihoodRequest]) -> tuple[int, int, int] | None:
        """(index, tokens, most) of the first request whose continuation, tokenized exactly as
        loglikelihood tokenizes it, holds more tokens than one pass can score, or None when every
        one fits. Only the tokenizer runs: a task can be checked before any model call."""
        pairs = ([self._encoder_pair(r) for r in requests] if self.config.family == "encoder"
                 else self._encode_pairs(requests))
        return self._overflow(requests, pairs)

    def _encode_pairs(self, requests: Sequence[LoglikelihoodRequest]) -> list[tuple[list[int], list[int]]]:
        joint = self.config.family == "decoder"  # seq2seq tokenizes context and continuation separately (lm-eval)
        return [encode_pair(self.tokenizer, r.context, r.continuation, self.prefix_token, joint=joint,
                            encode_context=self._encode_context) for r in requests]

    def _overflow(self, requests: Sequence[LoglikelihoodRequest],
                  pairs: Sequence[tuple[list[int], list[int]]]) -> tuple[int, int, int] | None:
        # The most continuation tokens of one row: max_length, less the placeholder input an
        # end_until decision takes (_score_with_ends); an encoder-only row also holds its special
        # tokens and a context token beside the masked continuation (_pseudo_loglikelihood, no end_until).
        for index, (request, (_, continuation_ids)) in enumerate(zip(requests, pairs)):
            extra = self.config.family == "encoder" or request.end_until is not None
            spare = self.max_length - self._room + 1 if extra else 0
            if len(continuation_ids) > self.max_length - spare:
                return index, len(continuation_ids), self.max_length - spare
        return None

    def end_mask(self, until: Sequence[str]) -> np.ndarray:
        """[vocab_size] bool: the end_ids (eos first) and every id below vocab_limit whose text,
        decoded alone (a special token's spelled out), begins with a non-empty stop string of
        `until`: a SentencePiece newline piece counts for "\\n" although encode("\\n") alone gives
        two ids (word-start piece, newline), and so does a BPE piece holding two newlines. Cached
        per `until`."""
        key = tuple(until)
        if key not in self._end_masks:
            mask = np.zeros((self.config.vocab_size,), bool)
            mask[list(self.end_ids)] = True
            stops = tuple(text for text in key if text)
            if stops:
                for i, piece in self._piece_texts():
                    if piece.startswith(stops) or self._special_pieces.get(i, "").startswith(stops):
                        mask[i] = True
            self._end_masks[key] = mask
        return self._end_masks[key]

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest]) -> list[RollingResult]:
        """log p(text) of each whole text, in windows of at most max_length tokens (decoder only).

        The text is encoded with encode_context, so a tokenizer that opens every input with
        bos scores that bos too (after the prefix token), as lm-eval's hf model does."""
        reason = self.unsupported("loglikelihood_rolling")
        if reason:
            raise ConfigError(reason)
        windows: list[list[ScoredRow]] = []
        for request in requests:
            ids = as_ids(self._encode_context(request.text))
            self._check_ids(ids)
            windows.append(rolling_windows(ids, self.max_length, self.prefix_token, self.rolling_context_len))
        flat = [row for rows in windows for row in rows]
        # The same vocab_limit as loglikelihood's, so both share one compiled kernel per shape.
        # Causal even for a prefix-LM decoder: a whole text has no context to read as a prefix.
        stats = scoring.score_decoder_rows(self.model, self.params, flat, vocab_limit=self.vocab_limit,
                                           **self._sizes) if flat else []
        results, start = [], 0
        for rows in windows:  # an empty text has no windows: log p 0 over no tokens
            token_log_probs = np.concatenate([np.zeros(0, np.float32)]
                                             + [s.log_probs for s in stats[start:start + len(rows)]])
            start += len(rows)
            results.append(RollingResult(float(token_log_probs.sum()), token_log_probs, len(rows)))
        return results

    def generate_until(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Greedy continuation of each context, cut before its first stop string or eos."""
        family = self.config.family
        reason = self.unsupported("generate_until")
        if reason:
            raise ConfigError(reason)
        from research.decoding.prompts import check_request, is_integer

        # Every request, then every group, is checked before the first group is generated:
        # lm-eval sends all its tasks' requests in one call, and a bad group reached after the
        # others had been generated threw their work away.
        for request in requests:
            if isinstance(request.until, str):
                raise ConfigError(f"until={request.until!r} must be a tuple of stop strings, e.g. ({request.until!r},).")
            max_new_tokens = request.max_new_tokens
            if not is_integer(max_new_tokens) or max_new_tokens < 1:
                raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be a positive integer.")
            if family == "decoder" and max_new_tokens >= self.max_length:
                raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in max_length="
                                  f"{self.max_length}; lower max_new_tokens to at most {self.max_length - 1}.")
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault((request.max_new_tokens, self._stop_tokens(request.until)), []).append(i)
        planned, num_truncated = [], 0  # (max_new_tokens, stop_tokens, budget, indices, prompts, cut) per group
        for (max_new_tokens, stop_tokens), indices in groups.items():
            budget = self.max_length - (max_new_tokens if family == "decoder" else 0)
            prompts, cut = [], []
            for i in indices:
                ids = as_ids(self._encode_context(requests[i].context)) or [self.prefix_token]
                self._check_ids(ids)
                cut.append(len(ids) > budget)
                prompts.append(ids[-budget:])
            check_request(self.config, prompts, max_new_tokens, stop_tokens)
            planned.append((max_new_tokens, stop_tokens, budget, indices, prompts, cut))
            num_truncated += sum(cut)
        results: list[GenerateResult | None] = [None] * len(requests)
        for max_new_tokens, stop_tokens, budget, indices, prompts, cut in planned:
            for start in range(0, len(indices), self.batch_size):
                chunk = slice(start, start + self.batch_size)
                outputs = self._generate(prompts[chunk], max_new_tokens, stop_tokens, budget)
                for i, ids, truncated in zip(indices[chunk], outputs, cut[chunk]):
                    results[i] = self._finish(ids, requests[i].until, truncated)
        self._warn_truncated(num_truncated, len(requests), "generate_until")
        return results

    def multiple_choice(self, questions: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        """Score of each choice of each (context, choices) question: its log-likelihood as a
        continuation (decoder, encoder_decoder, encoder with "pll"), or the log-probability
        of class i for choice i (encoder with "classifier")."""
        if self.config.family == "encoder" and self.encoder_scoring == "classifier":
            return self._classify(questions)
        flat = [LoglikelihoodRequest(context, choice) for context, choices in questions for choice in choices]
        scores = np.asarray([r.log_prob for r in self.loglikelihood(flat)], np.float64)
        out, start = [], 0
        for _, choices in questions:
            out.append(scores[start:start + len(choices)])
            start += len(choices)
        return out

    # --- family-specific pieces ------------------------------------------------------------

    def _pseudo_loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[LoglikelihoodResult]:
        mask_id = getattr(self.tokenizer, "mask_id", None)
        if mask_id is None:
            raise ConfigError(f"tokenizer {type(self.tokenizer).__name__} has no mask_id; pseudo-log-likelihood "
                              "scoring of an encoder-only model masks each continuation token.")
        rows, owners, truncated, continuations = [], [], [], []
        before, after = self._around
        for index, request in enumerate(requests):
            context_ids, continuation_ids = self._encoder_pair(request)
            self._check_ids([*before, *after, *context_ids, *continuation_ids])
            row, cut = conditional_row(context_ids, continuation_ids, self._room - 1)  # at most _room tokens
            sequence = np.asarray([*before, *row.tokens, *after], np.int32)
            end = len(before) + len(row.tokens)
            truncated.append(cut)
            continuations.append(continuation_ids)
            for j in range(end - row.num_scored, end):
                masked = sequence.copy()
                masked[j] = mask_id
                rows.append((masked, j, int(sequence[j])))
                owners.append(index)
        stats = scoring.score_masked_rows(self.model, self.params, rows, vocab_limit=self.vocab_limit, **self._sizes)
        per_request: list[list[scoring.TokenStats]] = [[] for _ in requests]
        for owner, s in zip(owners, stats):
            per_request[owner].append(s)
        self._warn_truncated(sum(truncated), len(requests), "loglikelihood")
        return [_result(scoring.TokenStats(*(np.concatenate(parts) for parts in zip(*pieces))), cut, ids)
                for pieces, cut, ids in zip(per_request, truncated, continuations)]

    def _encoder_pair(self, request: LoglikelihoodRequest) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of an encoder-only row, inside its special tokens: an empty
        context is none where those give a masked token something to read, else the prefix token."""
        context_ids, continuation_ids = encode_pair(self.tokenizer, request.context, request.continuation,
                                                    self.prefix_token, joint=True)
        if not request.context.rstrip() and any(self._around) and context_ids == [self.prefix_token]:
            return [], continuation_ids
        return context_ids, continuation_ids

    def _classify(self, questions: Sequence[tuple[str, Sequence[str]]]) -> list[np.ndarray]:
        num_labels = self.config.num_labels
        rows, truncated = [], 0
        before, after = self._around
        for context, choices in questions:
            if len(choices) != num_labels:
                raise ConfigError(f"{len(choices)} choices for a classifier with num_labels={num_labels}; "
                                  "classifier scoring maps class i to choice i, so they must match.")
            ids = as_ids(self.tokenizer.encode(context)) or ([] if any(self._around) else [self.prefix_token])
            self._check_ids([*before, *after, *ids])
            truncated += len(ids) > self._room  # a context that just fits was once counted as cut
            # The text is cut from the left, never the template: the pooler reads the first token.
            rows.append(np.asarray([*before, *ids[-self._room:], *after], np.int32))
        self._warn_truncated(truncated, len(rows), "multiple_choice")
        return [np.asarray(lp, np.float64) for lp in
                scoring.classify_rows(self.model, self.params, rows, **self._sizes)]

    def _stop_tokens(self, until: Sequence[str]) -> tuple[int, ...]:
        """eos plus every id whose text, decoded alone, holds a stop string: the decoding loop stops
        on those. The text is cut at the stop's first occurrence either way (_finish), which then
        lies in the text up to that id, so stopping there changes no output; it saves the steps
        after it (a SentencePiece newline piece is such an id although encode("\\n") gives two;
        one-token stop strings alone missed it and every row ran to max_new_tokens). An id's
        text alone lacks only the leading space its piece may have in context, so it holds a stop
        string only where the text in context does. Cached per `until` (one pass over the
        vocabulary, not one per request)."""
        key = tuple(until)
        if key not in self._stop_sets:
            stops = [text for text in key if text]
            self._stop_sets[key] = tuple(sorted(set(self.end_ids) | {
                i for i, piece in self._piece_texts() if any(stop in piece for stop in stops)} | set(
                self._special_stops(key))))
        return self._stop_sets[key]

    def _special_stops(self, until: Sequence[str]) -> list[int]:
        """Special tokens whose own text holds a stop string (until=("<|im_end|>",)): decode()
        drops their text, so the string never appeared in the output and generation ran on to
        max_new_tokens, keeping the text after the turn end. lm-eval cuts there."""
        stops = [text for text in until if text]
        self._piece_texts()
        return [i for i, text in self._special_pieces.items() if any(stop in text for stop in stops)]

    def _piece_texts(self) -> list[tuple[int, str]]:
        """(id, its text decoded alone) of every id generation may write, computed once."""
        if self._pieces is None:
            self._pieces = [(i, self.tokenizer.decode([i])) for i in range(self.vocab_limit or self.config.vocab_size)]
            keeping = getattr(self.tokenizer, "decode_keeping_special", None)
            if keeping is not None:
                self._special_pieces = {i: text for i, piece in self._pieces if not piece
                                        for text in [keeping([i])] if text}
        return self._pieces

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, stop_tokens: tuple[int, ...],
                  budget: int) -> list[list[int]]:
        """Greedy ids of each prompt (len(prompts) <= batch_size), stop token included; the request
        was checked (check_request) by generate_until before any group was generated."""
        # research.decoding.generate pads to the longest prompt of each call, compiling once per
        # width; padding here to a bucket width instead bounds the compiles. The private
        # _generate is the same loop minus that padding.
        from research.decoding import pad_prompts
        from research.decoding.adapters import adapter_for
        from research.decoding.sampling import _generate

        width = scoring.bucket_length(max(len(p) for p in prompts), budget, self.min_bucket)
        # Spare rows repeat the first prompt, so they stop when it does and never hold the loop open.
        rows = list(prompts) + [prompts[0]] * (self.batch_size - len(prompts))
        side = adapter_for(self.model).pad_side
        padded = pad_prompts(rows, self.config.pad_token_id, side)
        extra = width - padded.tokens_BP.shape[1]
        columns = ((0, 0), (extra, 0)) if side == "left" else ((0, 0), (0, extra))
        padded = padded._replace(tokens_BP=np.pad(padded.tokens_BP, columns, constant_values=self.config.pad_token_id),
                                 segment_ids_BP=np.pad(padded.segment_ids_BP, columns),
                                 positions_BP=np.pad(padded.positions_BP, columns))
        out = _generate(self.params, padded, jnp.asarray(stop_tokens, jnp.int32), jax.random.key(0), jnp.float32(1.0),
                        jnp.float32(1.0), model=self.model, max_new_tokens=int(max_new_tokens), greedy=True, top_k=0,
                        nucleus=False, bidirectional_prompt=self.bidirectional_prompt,
                        vocab_limit=self.vocab_limit)
        tokens_BN, lengths_B = jax.device_get((out.tokens_BN, out.lengths_B))
        return [as_ids(tokens_BN[b, :lengths_B[b]]) for b in range(len(prompts))]

    def _finish(self, ids: list[int], until: Sequence[str], truncated: bool) -> GenerateResult:
        ends = set(self.end_ids) | set(self._special_stops(until))
        ids = next((ids[:k] for k, i in enumerate(ids) if i in ends), ids)
        text = cut_at_stop(self.tokenizer.decode(ids), until)
        return GenerateResult(text, tuple(ids), truncated)

    def _check_ids(self, ids: Sequence[int]) -> None:
        vocab = self.config.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"token id {bad[0]} is outside the vocabulary [0, {vocab}) of {self.config.name}; "
                              "the tokenizer does not match the model.")

    def _warn_truncated(self, count: int, total: int, what: str) -> None:
        if count:
            warnings.warn(f"{what}: {count} of {total} contexts exceed max_length={self.max_length} and were "
                          "truncated from the left.", stacklevel=3)


def _result(stats: scoring.TokenStats, truncated: bool, continuation_ids: Sequence[int],
            end: tuple[float, bool] | None = None) -> LoglikelihoodResult:
    end_log_prob, end_is_greedy = end if end is not None else (None, None)
    return LoglikelihoodResult(float(np.sum(stats.log_probs, dtype=np.float64)), bool(np.all(stats.is_greedy)),
                               stats.log_probs, stats.is_greedy, stats.brier, truncated, tuple(continuation_ids),
                               end_log_prob, end_is_greedy)
