"""Objectives and packing on handmade token ids: schema, shifts, rates, T5 span statistics."""
import grain
import numpy as np
import pytest

from research.data import CausalLM, DataError, MaskedLM, PrefixLM, SpanCorruption, get_objective, objective_for_family
from research.data.objectives import (causal_lm_examples, corrupt_spans, mask_tokens, random_spans_noise_mask,
                                      span_corruption_lengths)
from research.data.pipeline import batches_from_token_documents
from tests.data.handmade import HANDMADE, random_documents

EOS = HANDMADE.eos_id


def _batches(documents, objective, *, seq_len, batch_size=4, seed=0):
    ds = batches_from_token_documents(grain.MapDataset.source(documents), objective=get_objective(objective),
                                      special=HANDMADE, batch_size=batch_size, seq_len=seq_len, seed=seed,
                                      num_epochs=1)
    return list(ds)


def _rows(batches):
    for batch in batches:
        for r in range(len(next(iter(batch.values())))):
            yield {k: v[r] for k, v in batch.items()}


def test_causal_lm_examples_shift_within_document_and_across_windows():
    tokens = np.array([10, 11, 12, 13, 14, EOS], np.int32)
    first, second = causal_lm_examples(tokens, seq_len=4)
    np.testing.assert_array_equal(first["inputs"], [10, 11, 12, 13])
    np.testing.assert_array_equal(first["targets"], [11, 12, 13, 14])  # crosses the window edge
    np.testing.assert_array_equal(first["loss_weights"], [1, 1, 1, 1])
    np.testing.assert_array_equal(second["inputs"], [14, EOS])
    np.testing.assert_array_equal(second["targets"], [EOS, 0])
    np.testing.assert_array_equal(second["loss_weights"], [1, 0])  # the document's last token


def test_packed_causal_lm_rows_keep_documents_apart():
    documents = random_documents(40, max_len=15)  # + eos fits one row: no windowing here
    seq_len = 16
    batches = _batches(documents, "causal_lm", seq_len=seq_len)
    assert {k: (v.shape, v.dtype.name) for k, v in batches[0].items()} == {
        "inputs": ((4, 16), "int32"), "targets": ((4, 16), "int32"), "segment_ids": ((4, 16), "int32"),
        "positions": ((4, 16), "int32"), "loss_weights": ((4, 16), "float32")}
    recovered = []
    for row in _rows(batches):
        seg = row["segment_ids"]
        padding = seg == 0
        assert not (row["inputs"][padding].any() or row["targets"][padding].any() or row["loss_weights"][padding].any())
        ids = np.unique(seg[~padding])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # 1, 2, 3.. in order
        for s in ids:
            where = np.flatnonzero(seg == s)
            assert np.all(np.diff(where) == 1)  # contiguous
            np.testing.assert_array_equal(row["positions"][where], np.arange(len(where)))
            recovered.append((row["inputs"][where], row["targets"][where], row["loss_weights"][where]))
    # Every document (eos appended) comes back whole, once; targets shift within it.
    expected = sorted(tuple(np.append(d, EOS)) for d in documents)
    assert sorted(tuple(inputs) for inputs, _, _ in recovered) == expected
    for inputs, targets, weights in recovered:
        np.testing.assert_array_equal(targets[:-1], inputs[1:])
        assert targets[-1] == 0 and weights[-1] == 0 and weights[:-1].all()


def test_long_documents_are_windowed_into_full_rows():
    # 40 tokens + eos at seq_len 16: windows of 16, 16 and 9 tokens, each its own row here.
    rows = sorted(_rows(_batches([np.arange(5, 45, dtype=np.int32)], "causal_lm", seq_len=16, batch_size=8)),
                  key=lambda row: -row["segment_ids"].sum() or 1e9 + row["inputs"][0])
    full = sorted(rows[:2], key=lambda row: row["inputs"][0])
    for row, start in zip(full, (5, 21)):
        np.testing.assert_array_equal(row["segment_ids"], np.ones(16))
        np.testing.assert_array_equal(row["inputs"], np.arange(start, start + 16))
        np.testing.assert_array_equal(row["targets"], np.arange(start + 1, start + 17))
    np.testing.assert_array_equal(rows[2]["inputs"][:9], [*range(37, 45), EOS])
    assert not rows[3:] or not any(r["segment_ids"].any() for r in rows[3:])


def test_a_finite_run_pads_its_last_batch_with_empty_rows():
    # Five documents that fill one row each (15 tokens + eos), batches of 4: 4 rows, then 1 + 3 empty.
    batches = _batches(random_documents(5, min_len=15, max_len=15), "causal_lm", seq_len=16)
    assert len(batches) == 2 and batches[0]["segment_ids"].all()
    np.testing.assert_array_equal(batches[1]["segment_ids"].any(axis=1), [True, False, False, False])
    for key, value in batches[1].items():
        assert not value[1:].any(), key


def test_prefix_lm_has_no_loss_on_a_random_prefix():
    rng = np.random.default_rng(0)
    tokens = np.arange(5, 25, dtype=np.int32)
    prefixes = set()
    for _ in range(50):
        (example,) = PrefixLM().examples(tokens, rng, 32, HANDMADE)
        weights = example["loss_weights"]
        first_scored = int(np.argmax(weights))
        assert weights[first_scored:-1].all() and weights[-1] == 0 and not weights[:first_scored].any()
        prefixes.add(first_scored)
    assert len(prefixes) > 5  # the prefix length varies per document


def test_prefix_lm_encoder_decoder_splits_each_document():
    rng = np.random.default_rng(1)
    tokens = np.arange(5, 25, dtype=np.int32)
    (ex,) = PrefixLM(encoder_decoder=True).examples(tokens, rng, 32, HANDMADE)
    assert ex["encoder_inputs"][-1] == EOS and ex["decoder_targets"][-1] == EOS
    np.testing.assert_array_equal(np.concatenate([ex["encoder_inputs"][:-1], ex["decoder_targets"][:-1]]), tokens)
    np.testing.assert_array_equal(ex["decoder_inputs"], np.concatenate([[0], ex["decoder_targets"][:-1]]))


def test_masked_lm_rates_on_100k_tokens():
    objective, rng = MaskedLM(), np.random.default_rng(0)
    examples = [ex for doc in random_documents(400, seed=1, min_len=100, max_len=400)
                for ex in objective.examples(doc, rng, 128, HANDMADE)]
    inputs, targets, weights = (np.concatenate([ex[k] for ex in examples])
                                for k in ("inputs", "targets", "loss_weights"))
    special = np.isin(targets, HANDMADE.special_ids)
    assert (~special).sum() > 100_000
    chosen = weights == 1.0
    assert set(np.unique(weights)) == {0.0, 1.0}
    assert not (chosen & special).any()  # bos / eos never chosen
    assert not (inputs != targets)[~chosen].any()  # only chosen tokens change
    assert abs(chosen.sum() / (~special).sum() - 0.15) < 0.01
    masked = (inputs == HANDMADE.mask_id)[chosen].mean()
    kept = (inputs == targets)[chosen].mean()
    random = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(random - 0.1) < 0.02 and abs(kept - 0.1) < 0.02
    replaced = inputs[chosen & (inputs != targets) & (inputs != HANDMADE.mask_id)]
    assert not np.isin(replaced, HANDMADE.special_ids).any()


@pytest.mark.parametrize("fractions, expected", [((0.8, 0.1), (0.8, 0.1, 0.1)), ((0.5, 0.25), (0.5, 0.25, 0.25))])
def test_masked_lm_split_holds_for_short_windows(fractions, expected):
    """BERT's rule per chosen token (transformers' DataCollatorForLanguageModeling: 80% [MASK],
    10% random, 10% unchanged) in expectation even when a window has 1-8 ordinary tokens and so
    0-2 chosen ones; rounding the random count apart from the mask count gave 2-6% random there."""
    mask_token_fraction, random_token_fraction = fractions
    rng, counts = np.random.default_rng(0), np.zeros(3)
    for length in range(1, 9):
        tokens = np.concatenate([[HANDMADE.bos_id], rng.integers(5, 900, length), [EOS]]).astype(np.int32)
        for _ in range(2500):
            inputs, weights = mask_tokens(tokens, rng, HANDMADE, mask_token_fraction=mask_token_fraction,
                                          random_token_fraction=random_token_fraction)
            chosen, original = inputs[weights > 0], tokens[weights > 0]
            masked = chosen == HANDMADE.mask_id
            counts += [masked.sum(), (~masked & (chosen != original)).sum(), (chosen == original).sum()]
    assert counts.sum() > 12_000  # about 0.15 * 36 * 2500 chosen tokens: standard errors 0.003-0.004
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.015)


def test_masked_lm_windows_are_bos_tokens_eos():
    (ex,) = MaskedLM().examples(np.arange(5, 15, dtype=np.int32), np.random.default_rng(0), 16, HANDMADE)
    np.testing.assert_array_equal(ex["targets"], np.concatenate([[3], np.arange(5, 15), [EOS]]))


def test_span_corruption_lengths_match_t5():
    assert span_corruption_lengths(512) == (568, 114)
    assert SpanCorruption().packed_lengths(512)["decoder_targets"] == 114


def _reconstruct(encoder_inputs, decoder_targets):
    """Undo span corruption: put each sentinel's span from the targets back into the inputs."""
    spans, current = {}, None
    for token in decoder_targets[:-1]:
        if token >= 900:
            current = spans.setdefault(int(token), [])
        else:
            current.append(int(token))
    out = []
    for token in encoder_inputs[:-1]:
        out.extend(spans[int(token)] if token >= 900 else [int(token)])
    return out


def test_span_corruption_statistics_sentinels_and_reconstruction():
    rng = np.random.default_rng(0)
    tokens = np.arange(5, 5 + 568, dtype=np.int32)
    noise_total = span_total = 0
    for _ in range(200):
        noise = random_spans_noise_mask(len(tokens), rng)
        assert not noise[0]  # spans alternate, starting with a kept span
        starts = noise & ~np.pad(noise[:-1], (1, 0))
        noise_total, span_total = noise_total + noise.sum(), span_total + starts.sum()
        encoder_inputs, decoder_targets = corrupt_spans(tokens, noise, HANDMADE)
        assert (len(encoder_inputs), len(decoder_targets)) == (512, 114)  # full windows fill both rows
        sentinels = encoder_inputs[encoder_inputs >= 900]
        np.testing.assert_array_equal(sentinels, 999 - np.arange(len(sentinels)))  # counting down
        np.testing.assert_array_equal(decoder_targets[decoder_targets >= 900], sentinels)
        assert decoder_targets[0] == 999 and encoder_inputs[-1] == EOS and decoder_targets[-1] == EOS
        assert _reconstruct(encoder_inputs, decoder_targets) == tokens.tolist()
    assert abs(noise_total / (200 * len(tokens)) - 0.15) < 0.005
    assert abs(noise_total / span_total - 3.0) < 0.1


def test_span_corruption_refuses_more_noise_spans_than_kept_tokens_to_separate_them():
    """T5's spans alternate with kept spans; asking for more spans than kept tokens used to merge
    spans and drop noise silently (31-token window at 0.6 / 1.0: 15 noise tokens, not 19)."""
    # seq_len 32: windows of 31 tokens, round(31 * 0.6) = 19 noise tokens in 19 spans, 12 kept.
    with pytest.raises(DataError, match=r"^span_corruption: at seq_len=32, noise_density=0.6 with mean_span_length=1.0 "
                                        r"makes 19 noise spans in a 31-token window but leaves only 12 kept tokens .*; "
                                        r"lower noise_density or raise mean_span_length\.$"):
        SpanCorruption(noise_density=0.6, mean_span_length=1.0).validate(HANDMADE, 32)
    # Just over the edge: 52 tokens -> 42 noise in 21 spans, 10 kept; 31 -> 16 noise spans, 15 kept.
    with pytest.raises(DataError, match="makes 21 noise spans in a 52-token window but leaves only 10 kept"):
        SpanCorruption(noise_density=0.8, mean_span_length=2.0).validate(HANDMADE, 32)
    with pytest.raises(DataError, match="makes 16 noise spans in a 31-token window but leaves only 15 kept"):
        SpanCorruption(noise_density=0.51, mean_span_length=1.0).validate(HANDMADE, 32)
    # At 0.5, T5's helper takes one raw token fewer (30: 15 noise spans, 15 kept), so it fits.
    SpanCorruption(noise_density=0.5, mean_span_length=1.0).validate(HANDMADE, 32)
    with pytest.raises(DataError, match="leaves only 12 kept tokens"):  # the mask itself, called directly
        random_spans_noise_mask(31, np.random.default_rng(0), noise_density=0.6, mean_span_length=1.0)


def test_a_short_last_window_keeps_t5s_noise_count_in_as_many_spans_as_fit():
    """0.71 / 2.5 fits a full 54-token window at seq_len 32 (38 noise tokens in 15 spans), but rounding
    asks a 5-token last window for round(3.55) = 4 noise tokens in round(1.6) = 2 spans with only 1
    kept token: all 4 make one span after it."""
    objective, rng = SpanCorruption(noise_density=0.71, mean_span_length=2.5), np.random.default_rng(0)
    objective.validate(HANDMADE, 32)
    tokens = np.arange(5, 5 + 54 + 5, dtype=np.int32)
    for _ in range(20):
        full, last = objective.examples(tokens, rng, 32, HANDMADE)
        assert (full["decoder_targets"] >= 900).sum() == 15 and (full["decoder_targets"][:-1] < 900).sum() == 38
        np.testing.assert_array_equal(last["encoder_inputs"], [59, 999, EOS])
        np.testing.assert_array_equal(last["decoder_targets"], [999, 60, 61, 62, 63, EOS])
    # A 12-token last window: round(8.52) = 9 noise tokens, 3 kept, so 3 spans (not round(3.6) = 4).
    for _ in range(50):
        noise = random_spans_noise_mask(12, rng, noise_density=0.71, mean_span_length=2.5, cap_spans=True)
        assert noise.sum() == 9 and (noise & ~np.pad(noise[:-1], (1, 0))).sum() == 3 and not noise[0]


def test_packed_span_corruption_batches():
    batches = _batches(random_documents(30, min_len=2, max_len=60), "span_corruption", seq_len=32)
    assert batches[0]["decoder_targets"].shape == (4, SpanCorruption().packed_lengths(32)["decoder_targets"])
    for row in _rows(batches):
        seg, tgt = row["decoder_segment_ids"], row["decoder_targets"]
        np.testing.assert_array_equal(row["loss_weights"], (seg > 0).astype(np.float32))
        starts = (row["decoder_positions"] == 0) & (seg > 0)
        np.testing.assert_array_equal(row["decoder_inputs"][starts], 0)  # decoder_start_token_id per segment
        follow = np.flatnonzero((seg > 0) & ~starts)
        np.testing.assert_array_equal(row["decoder_inputs"][follow], tgt[follow - 1])
        assert set(np.unique(row["encoder_segment_ids"])) - {0} == set(np.unique(seg)) - {0}
        for s in np.unique(seg[seg > 0]):
            enc, dec = row["encoder_inputs"][row["encoder_segment_ids"] == s], tgt[seg == s]
            assert enc[-1] == EOS and dec[-1] == EOS and dec[0] == 999


def test_objective_errors_are_one_line():
    with pytest.raises(DataError, match="num_extra_ids"):
        SpanCorruption().validate(HANDMADE.__class__(**{**HANDMADE.__dict__, "num_extra_ids": 0}), 512)
    with pytest.raises(DataError, match="<mask>"):
        MaskedLM().validate(HANDMADE.__class__(**{**HANDMADE.__dict__, "mask_id": None}), 128)
    with pytest.raises(DataError, match="not one of"):
        get_objective("mlm")
    with pytest.raises(DataError, match="seq_len=1"):
        CausalLM().validate(HANDMADE, 1)


@pytest.mark.parametrize("options, message", [
    # Only the sum was checked: -0.5 masked half the chosen tokens, (1.2, -0.3) masked all of them.
    (dict(mask_token_fraction=-0.5), r"^masked_lm: mask_token_fraction=-0.5 must be in \[0, 1\], "),
    (dict(mask_token_fraction=1.2, random_token_fraction=-0.3), r"^masked_lm: mask_token_fraction=1.2 must be in "),
    (dict(random_token_fraction=-0.1), r"^masked_lm: random_token_fraction=-0.1 must be in \[0, 1\]"),
    (dict(random_token_fraction=float("nan")), r"^masked_lm: random_token_fraction=nan must be in"),
    (dict(mask_rate=0.0), r"^masked_lm: mask_rate=0.0 must be in \(0, 1\)"),
    (dict(mask_token_fraction=0.8, random_token_fraction=0.3), r"mask_token_fraction=0.8 \+ random_token_fraction=0.3 "
                                                              r"must be at most 1"),
])
def test_masked_lm_refuses_rates_outside_their_ranges_in_one_line_naming_the_value(options, message):
    with pytest.raises(DataError, match=message) as raised:
        MaskedLM(**options).validate(HANDMADE, 128)
    assert "\n" not in str(raised.value)
    with pytest.raises(DataError, match=message):  # mask_tokens itself, called directly
        mask_tokens(np.arange(5, 25, dtype=np.int32), np.random.default_rng(0), HANDMADE, **options)


def test_objective_for_family_makes_encoder_decoder_examples_for_t5_unless_the_options_say_otherwise():
    """The train loop's objective: prefix_lm for T5 splits into encoder / decoder features; a
    decoder keeps the decoder-only layout; objective_options win over the family's default."""
    assert objective_for_family("prefix_lm", "encoder_decoder") == PrefixLM(encoder_decoder=True)
    assert objective_for_family("prefix_lm", "decoder") == PrefixLM()
    assert objective_for_family("prefix_lm", "encoder_decoder", {"encoder_decoder": False}) == PrefixLM()
    assert objective_for_family("masked_lm", "encoder", {"mask_rate": 0.3}) == MaskedLM(mask_rate=0.3)
    assert objective_for_family("span_corruption", "encoder_decoder") == SpanCorruption()


def test_an_unknown_objective_option_is_one_line_naming_it_and_the_options():
    with pytest.raises(DataError, match=r"\['mask_rat'\] are not options of objective='masked_lm'; it takes "
                                        r"\['mask_rate', "):
        objective_for_family("masked_lm", "encoder", {"mask_rat": 0.3})
    with pytest.raises(DataError, match="it takes none; drop objective_options"):
        objective_for_family("causal_lm", "decoder", {"mask_rate": 0.3})
