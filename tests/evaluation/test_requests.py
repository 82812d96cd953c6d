"""Token bookkeeping: lm-eval pair encoding, left truncation, rolling windows, stop strings."""
from __future__ import annotations

import numpy as np
import pytest

from research.evaluation.requests import conditional_row, cut_at_stop, encode_pair, rolling_windows
from research.evaluation.tokenizer import CharTokenizer
from research.models import ConfigError


def test_encode_pair_moves_trailing_space_to_continuation():
    tok = CharTokenizer()
    context, continuation = encode_pair(tok, "Q: 2+2= ", "4", prefix_token=1)
    assert tok.decode(context) == "Q: 2+2=" and tok.decode(continuation) == " 4"
    assert encode_pair(tok, "", "ab", prefix_token=1) == ([1], tok.encode("ab"))
    assert encode_pair(tok, "x ", "y", prefix_token=1, joint=False) == (tok.encode("x"), tok.encode(" y"))
    with pytest.raises(ConfigError, match="empty continuation"):
        encode_pair(tok, "x", "", prefix_token=1)


class _GreedyPieces:
    """Longest-match tokenization over a few pieces: "hello" is one piece, "hel" and "lo" others."""

    PIECES = {"hello": 100, "hel": 101, "lo": 102, " world": 103}

    def encode(self, text):
        ids = []
        while text:
            piece = max((p for p in self.PIECES if text.startswith(p)), key=len)
            ids.append(self.PIECES[piece])
            text = text[len(piece):]
        return ids


def test_a_merge_across_the_boundary_scores_what_follows_the_context_in_the_joint_encoding():
    """lm-eval's rule: whole[len(context ids):]; the parts encoded apart scored "lo world" as
    [lo, world], -23.42 against lm-eval HFLM's -11.35 on the audit's GPT-2."""
    tok = _GreedyPieces()
    assert encode_pair(tok, "hel", "lo world", prefix_token=1) == ([101], [103])
    # A merge that leaves nothing after the context's length scores the continuation alone.
    assert encode_pair(tok, "hel", "lo", prefix_token=1) == ([101], [102])


def test_conditional_row_truncates_context_from_the_left():
    row, cut = conditional_row([1, 2, 3, 4, 5], [6, 7], max_len=4)
    # The model sees 4 inputs [3, 4, 5, 6] and scores the targets 6, 7.
    assert row.tokens.tolist() == [3, 4, 5, 6, 7] and row.num_scored == 2 and cut
    row, cut = conditional_row([1, 2], [6, 7], max_len=4)
    assert row.tokens.tolist() == [1, 2, 6, 7] and not cut
    with pytest.raises(ConfigError, match="continuation of 5 tokens exceeds the model context of 4"):
        conditional_row([1], [2, 3, 4, 5, 6], max_len=4)


def test_rolling_windows_match_lm_eval_semantics():
    tokens = list(range(10, 20))  # t0..t9 = 10..19
    rows = rolling_windows(tokens, max_len=4, prefix_token=0)
    # Window 1: [P, t0, t1, t2] predicts t0..t3. Window 2: inputs t3..t6 predict t4..t7 (all 4 scored).
    # Window 3: inputs t5..t8 predict t6..t9; only t8, t9 are new.
    assert [(r.tokens.tolist(), r.num_scored) for r in rows] == [
        ([0, 10, 11, 12, 13], 4), ([13, 14, 15, 16, 17], 4), ([15, 16, 17, 18, 19], 2)]
    for max_len, context_len in [(4, 1), (4, 3), (7, 2), (16, 1)]:
        rows = rolling_windows(tokens, max_len=max_len, prefix_token=0, context_len=context_len)
        scored = np.concatenate([r.tokens[len(r.tokens) - r.num_scored:] for r in rows])
        assert scored.tolist() == tokens  # every token exactly once, in order
        assert all(len(r.tokens) - 1 <= max_len for r in rows)
        # After the first window, the scored tokens follow at least context_len tokens of context.
        assert all(len(r.tokens) - r.num_scored >= context_len for r in rows[1:])
    # No tokens score nothing (lm-eval: no windows, log p 0).
    assert rolling_windows([], max_len=4, prefix_token=0) == []


def test_cut_at_stop_uses_the_earliest_stop_string():
    assert cut_at_stop("12\n\nQ: 3", ["\n\n", "Q:"]) == "12"
    assert cut_at_stop("abc", ["x", ""]) == "abc"
    assert cut_at_stop("a.b!c", ["!", "."]) == "a"
