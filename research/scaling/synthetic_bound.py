"""The lowest loss a language model can reach on the synthetic corpus, given the context it sees.

The entropy rate H of a k-th order Markov source (synthetic_corpus.py) is the bound for a
model that always sees the last k characters. A causal LM trained on packed windows does
not: a window starts without the characters before it, so its first k predictions pay
H_j = H(X_t | the j previous characters) with j < k, and H_0 > H_1 > ... > H_k = H.
`window_bound_nats` averages those over the targets of a document cut into windows exactly
as research/data/objectives.py cuts it (its characters and its eos, as the loss does), so a
sweep can set its fitted irreducible loss E beside the loss that is actually reachable.
`oracle_loss_nats` scores the source's own predictor, seeing what a model sees, on real packed
batches: on the sweep's eval batches it is the floor of every eval loss the sweep records, and
it checks the bound's account of the windows against the data pipeline's (tests/scaling).
"""
from __future__ import annotations

import itertools

import numpy as np

from research.scaling.synthetic_corpus import MarkovSource


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def _stationary_joint(source: MarkovSource) -> np.ndarray:
    """The stationary (order+1)-gram distribution, one axis per symbol, oldest first: the context
    index has the oldest symbol most significant, so a C-order reshape lays them out so."""
    V = len(source.alphabet)
    return (source.stationary_S()[:, None] * source.transitions_SV).reshape((V,) * (source.order + 1))


def context_entropies_nats(source: MarkovSource) -> np.ndarray:
    """[order + 1] nats per character: H_j = H(X_t | X_{t-j}, ..., X_{t-1}) under the stationary
    process, for j = 0 (the unigram entropy) .. order (the entropy rate)."""
    k, joint = source.order, _stationary_joint(source)
    # H_j = H(last j+1 symbols) - H(last j symbols): marginalise the oldest axes away.
    gram_entropy = [0.0] + [_entropy(joint.sum(axis=tuple(range(k - j))).ravel()) for j in range(k + 1)]
    return np.diff(np.asarray(gram_entropy))


def _eos_position(doc_chars: int, seq_len: int) -> tuple[int, int]:
    """(p, m): the eos is predicted from the input at window position p, where m inputs of windows
    like its own sit (window_bound_nats says why); m = 1 when its window holds "▁" and is known."""
    position = doc_chars % seq_len
    if doc_chars < seq_len:  # the first window, the only one that holds "▁": its place is known
        return position, 1
    return position, int(np.sum((np.arange(seq_len, doc_chars + 1) % seq_len) == position))


def window_bound_nats(source: MarkovSource, doc_chars: int, seq_len: int) -> float:
    """Mean best-possible loss over a document's targets (nats per target), the targets the
    training loss averages: its `doc_chars` characters and its eos.

    The tokens of a document are "▁" (SentencePiece's word-start mark), its characters and
    eos, cut into windows of `seq_len` inputs; the target at token i is predicted from the
    tokens of its window before it. A character costs H_j with j the characters it sees.
    The eos costs what a model that knows its place in the window (and whether the window
    opens the document, by its "▁") but nothing else can do: the eos follows the input at
    window position p, and of the m inputs at position p in windows like its own, one is
    followed by eos and m - 1 by characters (the source is stationary, so nothing in them
    tells them apart). Predicting eos there with probability 1/m costs m h(1/m) nats per
    document in all (h the binary entropy), eos and the m - 1 characters' share together.
    """
    if doc_chars < 1 or seq_len < 2:
        raise ValueError(f"doc_chars={doc_chars} must be >= 1 and seq_len={seq_len} >= 2.")
    entropies = context_entropies_nats(source)
    token = np.arange(1, doc_chars + 1)  # token index of each character ("▁" is token 0)
    window_start = (token - 1) // seq_len * seq_len  # the input at token - 1 predicts it
    context = token - window_start - (window_start == 0)  # characters seen; "▁" is not one
    characters = float(entropies[np.minimum(context, source.order)].sum())
    # The eos (token doc_chars + 1) is predicted from the input at token doc_chars.
    position, like_it = _eos_position(doc_chars, seq_len)
    q = 1.0 / like_it
    eos = like_it * (-q * np.log(q) - (1 - q) * np.log1p(-q)) if like_it > 1 else 0.0
    return (characters + eos) / (doc_chars + 1)


def conditional_tables(source: MarkovSource) -> list[np.ndarray]:
    """[order + 1] tables: table j is [V**j, V], P(next | the j previous characters) under the
    stationary process, rows indexed by the context with its oldest character most significant."""
    V, k, joint = len(source.alphabet), source.order, _stationary_joint(source)
    tables = []
    for j in range(k + 1):
        gram = joint.sum(axis=tuple(range(k - j))).reshape(V ** j, V)
        tables.append(gram / gram.sum(axis=1, keepdims=True))
    return tables


def oracle_loss_nats(source: MarkovSource, batches, *, symbol_of_id: np.ndarray, eos_id: int, prefix_id: int,
                     doc_chars: int, seq_len: int) -> tuple[float, int]:
    """(mean nats per target, targets): the loss of the source's own Bayes predictor on `batches`
    (dicts of [B, T] inputs, targets, positions, loss_weights, as research/data's pipeline packs
    them), given what a model sees: the inputs of its segment up to the target. It is what
    `window_bound_nats` expects on average, measured on these very batches, so it checks the
    bound against the pipeline's real windows and gives the floor of losses scored on them.

    symbol_of_id maps a token id to its character's index in source.alphabet (-1: not a
    character, such as the prefix "▁" and eos). A character costs -log P(it | the last j <= order
    characters of its segment); eos and the characters it competes with are priced as
    window_bound_nats prices them (eos with probability 1/m at its window position)."""
    V, k = len(source.alphabet), source.order
    tables = conditional_tables(source)
    position, like_it = _eos_position(doc_chars, seq_len)
    q = 1.0 / like_it
    total, count = 0.0, 0
    for batch in batches:
        inputs, targets = np.asarray(batch["inputs"]), np.asarray(batch["targets"])
        positions, weights = np.asarray(batch["positions"]), np.asarray(batch["loss_weights"]) > 0
        B, T = inputs.shape
        symbols = symbol_of_id[inputs]
        start = np.arange(T)[None, :] - positions  # index of the segment's first input
        is_char = np.cumsum(symbols >= 0, axis=1)
        before_start = np.take_along_axis(np.pad(is_char, ((0, 0), (1, 0))), start, axis=1)
        seen = np.minimum(is_char - before_start, k)  # characters of the segment up to t, capped
        # Characters of a segment are contiguous (the prefix opens it, eos ends it), so the
        # context is the last `seen` inputs; index it oldest-first in base V.
        context = np.zeros((B, T), np.int64)
        for lag in range(k):
            shifted = np.take_along_axis(symbols, np.maximum(np.arange(T)[None, :] - lag, 0), axis=1)
            context += np.where(lag < seen, shifted * V ** lag, 0)
        opens_document = np.take_along_axis(inputs, start, axis=1) == prefix_id
        target_symbols = symbol_of_id[targets]
        is_eos = targets == eos_id
        if np.any(weights & ~is_eos & (target_symbols < 0)):
            raise ValueError("oracle_loss_nats: a weighted target is neither a character of the alphabet nor eos.")
        logp = np.zeros((B, T))
        for j in range(k + 1):
            at = weights & ~is_eos & (seen == j)
            logp[at] = np.log(tables[j][context[at], target_symbols[at]])
        if like_it > 1:  # else the eos's place is known: it and the characters cost nothing more
            logp[weights & ~is_eos & (positions == position) & ~opens_document] += np.log1p(-q)
            logp[weights & is_eos] = np.log(q)
        total -= float(logp[weights].sum())
        count += int(weights.sum())
    if not count:
        raise ValueError("oracle_loss_nats: the batches hold no weighted target.")
    return total / count, count


def eval_set_oracle_nats(data_config, tokenizer, *, batch_size: int, seq_len: int, num_batches: int) -> dict:
    """oracle_loss_nats on the first `num_batches` validation batches of the synthetic corpus, as the
    train loop evaluates them in one process (research/training/loop.py: split "validation", seed
    0): the floor of every eval loss a sweep scores there, beside window_bound_nats, its expected
    value. (Runs scored by several processes saw each process's shard at its share of the batch.)"""
    from research import data as data_lib  # research.data imports research.scaling's corpus
    from research.scaling.synthetic_corpus import source_of

    s = data_config.synthetic
    if " " in s.alphabet:  # SentencePiece writes a space as "▁", the piece that opens every document
        raise ValueError(f"eval_set_oracle_nats: the alphabet {s.alphabet!r} holds a space, which the tokenizer "
                         "writes as '\u2581', the piece that opens each document, so a window's start is ambiguous; "
                         "use an alphabet without a space for an exact floor.")
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    symbol_of_id = np.array([s.alphabet.index(p) if len(p) == 1 and p in s.alphabet else -1 for p in pieces])
    if "\u2581" not in pieces or int((symbol_of_id >= 0).sum()) != len(s.alphabet):
        raise ValueError("eval_set_oracle_nats needs a character-level tokenizer: one piece per letter of "
                         f"{s.alphabet!r} and the word-start piece '\u2581'.")
    # One epoch at most, as the loop reads it (research/training/evaluation.make_evaluation).
    iterator = data_lib.make_batch_iterator(data_config, tokenizer=tokenizer, objective="causal_lm",
                                            batch_size=batch_size, seq_len=seq_len, split="validation", seed=0,
                                            num_epochs=1)
    batches = list(itertools.islice(iterator, num_batches))
    loss, targets = oracle_loss_nats(source_of(s), batches, symbol_of_id=symbol_of_id, eos_id=tokenizer.eos_id,
                                     prefix_id=pieces.index("\u2581"), doc_chars=s.doc_chars, seq_len=seq_len)
    return {"loss": loss, "targets": targets, "batches": len(batches)}
