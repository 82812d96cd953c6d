"""Pretraining objectives as data transforms: one tokenized document -> unpacked examples.

An objective turns a document's token ids (int32 [N], no bos/eos) into one or more
examples of 1-D features, each short enough to fit a packed row, using a numpy Generator
seeded from the document's index in the epoch (grain's `random_map`), so a resumed run
builds exactly the same examples. The pipeline (pipeline.py) then packs examples into
rows, adding segment ids and positions, and renames them into the batch schema:

  decoder / encoder objectives (causal_lm, prefix_lm, masked_lm), all [B, T]:
    inputs, targets, segment_ids, positions (int32), loss_weights (float32)
  encoder-decoder objectives (span_corruption, prefix_lm with encoder_decoder=True):
    encoder_inputs, encoder_segment_ids, encoder_positions               [B, S] int32
    decoder_inputs, decoder_targets, decoder_segment_ids, decoder_positions [B, T] int32
    loss_weights                                                         [B, T] float32

Long documents are cut into windows; each window is its own packed segment.
`check_settings(seq_len)`: what the config alone makes impossible (run by check_batch_shape, before
any tokenizer is trained); `validate(special, seq_len)` adds what needs the tokenizer (sentinels, mask).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, ClassVar, Literal, Mapping, Union

import numpy as np

from research.data.config import DataError
from research.data.tokenizer import SpecialTokens

ObjectiveName = Literal["causal_lm", "prefix_lm", "masked_lm", "span_corruption"]
Example = dict[str, np.ndarray]


def _i32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int32)


def _stochastic_round(x: float, rng: np.random.Generator) -> int:
    """floor(x) or ceil(x), unbiased: short sequences keep the expected rates exactly."""
    low = int(np.floor(x))
    return low + int(rng.random() < x - low)


# ---------------------------------------------------------------------------- causal / prefix LM

def causal_lm_examples(tokens: np.ndarray, seq_len: int) -> list[Example]:
    """Windows of `seq_len` tokens of one document (eos included) with next-token targets.

    targets[t] = tokens[t + 1], also across a window boundary; the document's last token
    has no target (target 0, loss weight 0).
    """
    out = []
    for start in range(0, len(tokens), seq_len):
        inputs = tokens[start:start + seq_len]
        targets = tokens[start + 1:start + seq_len + 1]
        weights = np.zeros(len(inputs), np.float32)
        weights[:len(targets)] = 1.0
        out.append({"inputs": _i32(inputs), "targets": _i32(np.pad(targets, (0, len(inputs) - len(targets)))),
                    "loss_weights": weights})
    return out


def prefix_lm_example(example: Example, rng: np.random.Generator) -> Example:
    """Split one causal-LM window into a random prefix of p ~ U[1, n-1] tokens and the rest.

    `prefix` (int32, 1 on the first p inputs) marks the tokens a decoder attends to
    bidirectionally (Raffel et al. 2020, "prefix LM"); the loss counts only predictions of
    tokens after the prefix (positions t >= p-1), so no target is visible to its query.
    """
    weights = example["loss_weights"]
    n = len(weights)
    prefix_len = int(rng.integers(1, n)) if n >= 2 else n
    weights = weights.copy()
    weights[:prefix_len - 1] = 0.0
    prefix = np.zeros(n, np.int32)
    prefix[:prefix_len] = 1
    return dict(example, loss_weights=weights, prefix=prefix)


# ---------------------------------------------------------------------------- masked LM (BERT)

def _check_mask_rates(mask_rate: float, mask_token_fraction: float, random_token_fraction: float) -> None:
    """One-line DataError unless the rates are BERT-style fractions: a negative fraction would
    slice the chosen tokens from the end and corrupt a share nobody asked for."""
    if not 0 < mask_rate < 1:  # 0 would choose nothing: no loss at all
        raise DataError(f"masked_lm: mask_rate={mask_rate} must be in (0, 1), the share of tokens chosen for "
                        "the loss (BERT: 0.15).")
    for name, value in (("mask_token_fraction", mask_token_fraction), ("random_token_fraction", random_token_fraction)):
        if not 0 <= value <= 1:
            raise DataError(f"masked_lm: {name}={value} must be in [0, 1], a share of the chosen tokens "
                            "(BERT: mask_token_fraction 0.8, random_token_fraction 0.1).")
    if not mask_token_fraction + random_token_fraction <= 1:
        raise DataError(f"masked_lm: mask_token_fraction={mask_token_fraction} + random_token_fraction="
                        f"{random_token_fraction} must be at most 1 (the rest of the chosen tokens stay unchanged).")


def mask_tokens(tokens: np.ndarray, rng: np.random.Generator, special: SpecialTokens, *,
                mask_rate: float = 0.15, mask_token_fraction: float = 0.8,
                random_token_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """BERT corruption of one sequence -> (corrupted inputs int32 [N], loss weights float32 [N]).

    Chooses mask_rate of the non-special tokens; of those, mask_token_fraction become the
    mask id, random_token_fraction a random non-special id, the rest stay unchanged. Counts
    are rounded stochastically so the rates hold in expectation for any length: the random
    count is drawn from the tokens left unmasked, at the rate that keeps its expectation
    (rounding it from num_chosen and clipping it to the rest would lose random tokens when few
    are chosen: one chosen token was random 2% of the time, not 10%). Rates outside their
    ranges raise a DataError (MaskedLM.check_settings checks them before any tokenizer is trained).
    """
    _check_mask_rates(mask_rate, mask_token_fraction, random_token_fraction)
    candidates = np.flatnonzero(~np.isin(tokens, special.special_ids))
    num_chosen = min(len(candidates), _stochastic_round(mask_rate * len(candidates), rng))
    chosen = rng.choice(candidates, size=num_chosen, replace=False)
    num_mask = _stochastic_round(mask_token_fraction * num_chosen, rng)
    # E[num_random] = share * (1 - mask_token_fraction) * num_chosen = random_token_fraction * num_chosen;
    # min(1, ...): share is at most 1 (_check_mask_rates), but 0.1 / (1 - 0.9) is 1 + 2e-16 in floats.
    share = min(1.0, random_token_fraction / (1 - mask_token_fraction)) if mask_token_fraction < 1 else 0.0
    num_random = _stochastic_round(share * (num_chosen - num_mask), rng)
    inputs = _i32(tokens).copy()
    inputs[chosen[:num_mask]] = special.mask_id
    inputs[chosen[num_mask:num_mask + num_random]] = _random_ordinary_ids(num_random, rng, special)
    weights = np.zeros(len(tokens), np.float32)
    weights[chosen] = 1.0
    return inputs, weights


def _random_ordinary_ids(count: int, rng: np.random.Generator, special: SpecialTokens) -> np.ndarray:
    """`count` ids drawn uniformly from the vocabulary minus the special ids."""
    drawn = np.empty(0, np.int32)
    while len(drawn) < count:
        more = rng.integers(0, special.vocab_size, size=2 * count + 8, dtype=np.int32)
        drawn = np.concatenate([drawn, more[~np.isin(more, special.special_ids)]])
    return drawn[:count]


# ---------------------------------------------------------------------------- T5 span corruption

def _span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a `length`-token window, at least one of each, rounded half to
    even in float64 as Hugging Face's numpy port of T5's random_spans_noise_mask does (run_t5_mlm_flax.py).
    Not t5.data.preprocessors exactly: it rounds in float32, the other way for about 1% of lengths
    (0.15 / 3.0, a 190-token window: 28 noise tokens in 9 spans here, 29 in 10 in T5). Kept, as a
    change would change existing runs' data."""
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    return num_noise, max(int(round(num_noise / mean_span_length)), 1)


def span_corruption_lengths(inputs_length: int, noise_density: float = 0.15,
                            mean_span_length: float = 3.0) -> tuple[int, int]:
    """(raw tokens per window, decoder length) such that a full window's encoder inputs fill
    `inputs_length` (t5.data.preprocessors.random_spans_helper; e.g. 512 -> (568, 114), and at
    noise_density 0.5, 512 -> (766, 512)).

    T5's helper exactly (which rounds in float64, as _span_counts does), but with at least one noise
    token and one span, as T5's random_spans_noise_mask makes: the two differ only where a window
    rounds to no noise token or no span, and there the helper's counts undersize the rows T5's mask
    then makes.
    """
    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise, num_spans = _span_counts(tokens_length, noise_density, mean_span_length)
        # Inputs: kept tokens, one sentinel per span, eos. Targets: noise, sentinels, eos.
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = max(inputs_length - 1, 2)
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    full_inputs, targets_length = lengths(tokens_length)
    # T5's special case: at density 0.5 the targets come out one longer than the inputs (512 ->
    # 513), past a model whose max_len is the round seq_len; one raw token fewer makes them equal.
    # Shorter windows never make longer targets (noise and span counts grow with the length).
    if noise_density == 0.5 and targets_length > full_inputs:
        tokens_length, targets_length = tokens_length - 1, targets_length - 1
    return tokens_length, targets_length


def _too_many_spans(length: int, noise_density: float, mean_span_length: float) -> str | None:
    """Why a `length`-token window cannot take T5's noise spans (None if it can): the spans
    alternate with kept spans, so each needs a kept token before it (t5's _random_segmentation
    takes num_segments in [1, num_items] for both)."""
    num_noise, num_spans = _span_counts(length, noise_density, mean_span_length)
    if num_spans <= length - num_noise:
        return None
    return (f"noise_density={noise_density} with mean_span_length={mean_span_length} makes {num_spans} noise "
            f"spans in a {length}-token window but leaves only {length - num_noise} kept tokens to separate "
            "them; lower noise_density or raise mean_span_length")


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_span_length: float = 3.0, *, cap_spans: bool = False) -> np.ndarray:
    """bool [length]: which tokens are noise, in alternating kept / noise spans starting with
    a kept span; span lengths are uniformly random compositions (t5 random_spans_noise_mask).

    Always exactly _span_counts' noise tokens, in its number of spans. Settings that make more
    spans than there are kept tokens raise a DataError, as T5 fails on them (letting spans merge
    would quietly drop noise). cap_spans=True makes at most one span per kept token instead,
    keeping the noise count: for a document's short last window, where rounding can ask for a
    span too many although a full window (checked by SpanCorruption.check_settings) has room.
    """
    orig_length, length = length, max(length, 2)
    if mean_span_length < 1:  # more spans than noise tokens (SpanCorruption.check_settings refuses it too)
        raise DataError(f"span_corruption: mean_span_length={mean_span_length} must be at least 1.")
    if not cap_spans and (problem := _too_many_spans(length, noise_density, mean_span_length)):
        raise DataError(f"span_corruption: {problem}.")
    num_noise, num_spans = _span_counts(length, noise_density, mean_span_length)
    num_spans = min(num_spans, length - num_noise)  # changes nothing unless cap_spans

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        """Lengths of `num_segments` non-empty segments of `num_items` (1 <= segments <= items)."""
        first_in_segment = np.zeros(num_items, np.int32)
        first_in_segment[1 + rng.permutation(num_items - 1)[:num_segments - 1]] = 1
        return np.bincount(np.cumsum(first_in_segment))

    noise_lengths = random_segmentation(num_noise, num_spans)
    kept_lengths = random_segmentation(length - num_noise, num_spans)
    span_starts = np.cumsum(np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1))[:-1]
    span_start_indicator = np.zeros(length, np.int32)
    span_start_indicator[span_starts] = 1
    return (np.cumsum(span_start_indicator) % 2 == 1)[:orig_length]


def _spans_to_sentinels(tokens: np.ndarray, drop: np.ndarray, special: SpecialTokens) -> np.ndarray:
    """Replace each run of `drop` tokens with one sentinel, numbered in order from the top id."""
    previous = np.pad(drop[:-1], (1, 0))
    first = drop & ~previous
    sentinels = special.vocab_size - np.cumsum(first)  # sentinel i = vocab_size - 1 - i
    return _i32(np.where(first, sentinels, tokens)[~(drop & previous)])


def corrupt_spans(tokens: np.ndarray, noise_mask: np.ndarray, special: SpecialTokens) -> tuple[np.ndarray, np.ndarray]:
    """(encoder inputs, decoder targets), both ending in eos: noise spans -> sentinels in the
    inputs; the targets are each sentinel followed by the span it replaced."""
    inputs = _spans_to_sentinels(tokens, noise_mask, special)
    targets = _spans_to_sentinels(tokens, ~noise_mask, special)
    return np.append(inputs, special.eos_id).astype(np.int32), np.append(targets, special.eos_id).astype(np.int32)


def _encoder_decoder_example(encoder_inputs: np.ndarray, decoder_targets: np.ndarray, start_id: int) -> Example:
    return {
        "encoder_inputs": encoder_inputs,
        "decoder_inputs": _i32(np.concatenate([[start_id], decoder_targets[:-1]])),  # shifted right
        "decoder_targets": decoder_targets,
        "loss_weights": np.ones(len(decoder_targets), np.float32),
    }


# ---------------------------------------------------------------------------- objectives

def _windows(tokens: np.ndarray, size: int) -> list[np.ndarray]:
    return [tokens[i:i + size] for i in range(0, len(tokens), size)]


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Next-token prediction for decoders; every document ends with eos."""

    name: ClassVar[str] = "causal_lm"
    encoder_decoder: ClassVar[bool] = False

    def packed_lengths(self, seq_len: int) -> dict[str, int]:
        return {"inputs": seq_len, "targets": seq_len, "loss_weights": seq_len}

    def check_settings(self, seq_len: int) -> None:
        if seq_len < 2:
            raise DataError(f"{self.name}: seq_len={seq_len} must be at least 2.")

    def validate(self, special: SpecialTokens, seq_len: int) -> None:
        self.check_settings(seq_len)

    def examples(self, tokens: np.ndarray, rng: np.random.Generator, seq_len: int,
                 special: SpecialTokens) -> list[Example]:
        del rng  # deterministic
        return causal_lm_examples(np.append(tokens, special.eos_id), seq_len) if len(tokens) else []


@dataclasses.dataclass(frozen=True)
class PrefixLM:
    """Causal LM over a random prefix of each window that is attended bidirectionally and
    carries no loss (decoder; batch key `prefix`), or, with
    encoder_decoder=True, the prefix as encoder input and the rest as decoder targets (T5)."""

    name: ClassVar[str] = "prefix_lm"
    encoder_decoder: bool = False

    def packed_lengths(self, seq_len: int) -> dict[str, int]:
        if not self.encoder_decoder:
            return {**CausalLM().packed_lengths(seq_len), "prefix": seq_len}
        return {"encoder_inputs": seq_len, "decoder_inputs": seq_len, "decoder_targets": seq_len,
                "loss_weights": seq_len}

    def check_settings(self, seq_len: int) -> None:
        if seq_len < 2:
            raise DataError(f"{self.name}: seq_len={seq_len} must be at least 2.")

    def validate(self, special: SpecialTokens, seq_len: int) -> None:
        self.check_settings(seq_len)

    def examples(self, tokens, rng, seq_len, special):
        if not len(tokens):
            return []
        if not self.encoder_decoder:
            return [prefix_lm_example(ex, rng) for ex in causal_lm_examples(np.append(tokens, special.eos_id), seq_len)]
        out = []
        for window in _windows(tokens, seq_len - 1):  # room for the eos on either side
            split = int(rng.integers(1, len(window))) if len(window) > 1 else 1
            out.append(_encoder_decoder_example(_i32(np.append(window[:split], special.eos_id)),
                                                _i32(np.append(window[split:], special.eos_id)), special.pad_id))
        return out


@dataclasses.dataclass(frozen=True)
class MaskedLM:
    """BERT masked LM: windows are [bos] tokens [eos]; targets are the original ids."""

    name: ClassVar[str] = "masked_lm"
    encoder_decoder: ClassVar[bool] = False
    mask_rate: float = 0.15
    mask_token_fraction: float = 0.8
    random_token_fraction: float = 0.1

    def packed_lengths(self, seq_len: int) -> dict[str, int]:
        return {"inputs": seq_len, "targets": seq_len, "loss_weights": seq_len}

    def check_settings(self, seq_len: int) -> None:
        if seq_len < 3:
            raise DataError(f"masked_lm: seq_len={seq_len} must be at least 3 ([bos] token [eos]).")
        _check_mask_rates(self.mask_rate, self.mask_token_fraction, self.random_token_fraction)

    def validate(self, special: SpecialTokens, seq_len: int) -> None:
        self.check_settings(seq_len)
        if special.mask_id is None:
            raise DataError("masked_lm: the tokenizer has no <mask> or [MASK] piece; train one with "
                            "research.data.tokenizer (it reserves <mask>) or use a BERT-style model.")

    def examples(self, tokens, rng, seq_len, special):
        bos = [] if special.bos_id is None else [special.bos_id]
        out = []
        for window in _windows(tokens, seq_len - 1 - len(bos)):
            original = _i32(np.concatenate([bos, window, [special.eos_id]]))
            inputs, weights = mask_tokens(original, rng, special, mask_rate=self.mask_rate,
                                          mask_token_fraction=self.mask_token_fraction,
                                          random_token_fraction=self.random_token_fraction)
            out.append({"inputs": inputs, "targets": original, "loss_weights": weights})
        return out


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
    """T5 span corruption: the encoder length is seq_len; the decoder length follows from it
    (span_corruption_lengths) so that a full window fills both packed rows exactly. Each noise
    span needs a kept token before it, so check_settings refuses settings whose full window would
    need more spans than it keeps tokens (e.g. noise_density 0.6 with mean_span_length 1)."""

    name: ClassVar[str] = "span_corruption"
    encoder_decoder: ClassVar[bool] = True
    noise_density: float = 0.15
    mean_span_length: float = 3.0

    def window_lengths(self, seq_len: int) -> tuple[int, int]:
        # Checked here too: packed_lengths may run before check_settings, and a
        # mean_span_length of 0 would be a ZeroDivisionError traceback.
        if not (0 < self.noise_density < 1 and self.mean_span_length >= 1):
            raise DataError(f"span_corruption: noise_density={self.noise_density} must be in (0, 1) and "
                            f"mean_span_length={self.mean_span_length} at least 1.")
        return span_corruption_lengths(seq_len, self.noise_density, self.mean_span_length)

    def packed_lengths(self, seq_len: int) -> dict[str, int]:
        targets_length = self.window_lengths(seq_len)[1]
        return {"encoder_inputs": seq_len, "decoder_inputs": targets_length,
                "decoder_targets": targets_length, "loss_weights": targets_length}

    def check_settings(self, seq_len: int) -> None:
        window = self.window_lengths(seq_len)[0]  # refuses a bad noise_density / mean_span_length
        if seq_len < 4:
            raise DataError(f"span_corruption: seq_len={seq_len} must be at least 4.")
        # Short last windows are capped (random_spans_noise_mask); a full one must fit as asked.
        if problem := _too_many_spans(window, self.noise_density, self.mean_span_length):
            raise DataError(f"span_corruption: at seq_len={seq_len}, {problem}.")

    def validate(self, special: SpecialTokens, seq_len: int) -> None:
        self.check_settings(seq_len)
        window = self.window_lengths(seq_len)[0]
        spans = _span_counts(window, self.noise_density, self.mean_span_length)[1]
        if special.num_extra_ids < spans:
            raise DataError(
                f"span_corruption: seq_len={seq_len} makes up to {spans} noise spans but the tokenizer has "
                f"num_extra_ids={special.num_extra_ids} sentinels; set tokenizer num_extra_ids >= {spans} (T5: 100)."
            )

    def examples(self, tokens, rng, seq_len, special):
        window_length = self.window_lengths(seq_len)[0]
        out = []
        for window in _windows(tokens, window_length):
            noise = random_spans_noise_mask(len(window), rng, self.noise_density, self.mean_span_length,
                                            cap_spans=len(window) < window_length)
            encoder_inputs, decoder_targets = corrupt_spans(window, noise, special)
            out.append(_encoder_decoder_example(encoder_inputs, decoder_targets, special.pad_id))
        return out


Objective = Union[CausalLM, PrefixLM, MaskedLM, SpanCorruption]
_BY_NAME = {"causal_lm": CausalLM, "prefix_lm": PrefixLM, "masked_lm": MaskedLM, "span_corruption": SpanCorruption}


def get_objective(objective: ObjectiveName | Objective) -> Objective:
    """An objective instance from its name (default settings) or as given."""
    if isinstance(objective, str):
        if objective not in _BY_NAME:
            raise DataError(f"objective={objective!r} is not one of {tuple(_BY_NAME)}.")
        return _BY_NAME[objective]()
    return objective


def _check_option_type(objective: str, option: str, value: Any, default: Any) -> None:
    """One line unless `value` has the type of the option's default: a string number ('0.3', as a
    command line may pass it) failed later as a TypeError traceback, after the workdir was claimed,
    and any non-empty string (even 'no') was a true encoder_decoder."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, (bool, np.bool_)), "a bool (True or False)"
    else:  # the numeric options: any real number, but not a bool (True is no rate)
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        expected = f"a number (default {default})"
    if not ok:
        raise DataError(f"objective_options: {option}={value!r} ({type(value).__name__}) of objective={objective!r} "
                        f"must be {expected}; give it unquoted, e.g. {{'{option}': {default}}}.")


def objective_for_family(name: ObjectiveName, family: str, options: Mapping[str, Any] | None = None) -> Objective:
    """Objective `name` with `options` (a run's objective_options) for a model of `family`
    (research.models): an encoder-decoder model (T5) gets encoder-decoder examples from an
    objective that makes both (prefix_lm), unless the options say otherwise."""
    objective = get_objective(name)
    options = dict(options or {})
    known = sorted(f.name for f in dataclasses.fields(objective) if f.init)
    unknown = sorted(set(options) - set(known))
    if unknown:  # dataclasses.replace would raise a TypeError traceback naming __init__, not the option
        takes = f"it takes {known}" if known else "it takes none; drop objective_options"
        raise DataError(f"objective_options {unknown} are not options of objective={name!r}; {takes}.")
    for field in dataclasses.fields(objective):
        if field.init and field.name in options:
            _check_option_type(name, field.name, options[field.name], field.default)
    if family == "encoder_decoder" and "encoder_decoder" in {f.name for f in dataclasses.fields(objective)}:
        options = {"encoder_decoder": True, **options}
    return dataclasses.replace(objective, **options) if options else objective
