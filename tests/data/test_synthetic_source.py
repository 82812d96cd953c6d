"""source="synthetic": Markov-source documents as a corpus, character-level tokens, errors."""
import numpy as np
import pytest

from research.data import DataConfig, DataError, TokenizerConfig, build_tokenizer, document_source, make_batch_iterator
from research.scaling.synthetic_corpus import entropy_rate_nats, markov_source, synthetic_documents

SYNTHETIC = dict(alphabet="abcdefgh", order=2, concentration=0.3, doc_chars=200, num_documents=40, source_seed=3)


def synthetic_config(**overrides) -> DataConfig:
    # vocab_size = 6 special pieces + 8 letters + "▁", every letter covered (a rare one would be
    # <unk>): SentencePiece learns no merges, so each character is one token.
    return DataConfig(source="synthetic", validation_fraction=0.1, synthetic={**SYNTHETIC, **overrides},
                      tokenizer=TokenizerConfig(vocab_size=15, byte_fallback=False, character_coverage=1.0))


def test_documents_are_the_markov_sources_draws_split_by_seed():
    config = synthetic_config()
    train, validation = document_source(config, "train"), document_source(config, "validation")
    assert (len(train), len(validation)) == (40, 4)
    options = {k: SYNTHETIC[k] for k in ("alphabet", "order", "concentration", "source_seed")}
    assert [train[i] for i in (0, 7)] == [next(synthetic_documents(0, 1, 200, start=i, **options)) for i in (0, 7)]
    assert validation[0] == next(synthetic_documents(1, 1, 200, **options))
    assert validation[0] not in {train[i] for i in range(len(train))}
    assert document_source(config, "train")[5] == train[5]  # random access, deterministic
    other = document_source(synthetic_config(source_seed=4), "train")[0]
    assert other != train[0] and set(other) <= set("abcdefgh")
    assert len(document_source(DataConfig(source="synthetic", max_documents=3), "train")) == 3
    assert DataConfig(source="synthetic").describe() == "synthetic:markov(order=2, V=27)"
    assert (config.synthetic.char_vocab_size, DataConfig().synthetic.char_vocab_size) == (15, 33)


def test_char_tokenizer_and_batches_match_the_entropy_rate(tmp_path):
    """Every character is one token, and the true model's loss on the tokens is the entropy rate."""
    config = synthetic_config(doc_chars=2000, num_documents=20)
    tokenizer = build_tokenizer(config, str(tmp_path))
    text = document_source(config, "validation")[0]
    ids = tokenizer.encode(text)
    assert len(ids) == len(text) + 1 and tokenizer.decode(ids) == text  # "▁" prefix + one id per character
    source = markov_source(3, alphabet="abcdefgh", order=2, concentration=0.3)
    assert source.entropy_rate_nats() == pytest.approx(entropy_rate_nats(
        source_seed=3, alphabet="abcdefgh", order=2, concentration=0.3))
    # -mean log p of the text under the true source, after its first `order` characters.
    context = source.next_context(source.next_context(0, "abcdefgh".index(text[0])), "abcdefgh".index(text[1]))
    logp = source.log_probs(np.array(["abcdefgh".index(c) for c in text[2:]]), context)
    assert -logp.mean() == pytest.approx(source.entropy_rate_nats(), rel=0.05)

    batches = make_batch_iterator(config, tokenizer=tokenizer, objective="causal_lm", batch_size=4, seq_len=64,
                                  shard_index=0, shard_count=1)
    batch = next(batches)
    assert batch["inputs"].shape == (4, 64) and batch["inputs"].max() < tokenizer.vocab_size


@pytest.mark.parametrize("field, value, message", [
    ("alphabet", "aab", "distinct"), ("order", 0, "order=0"), ("concentration", 0.0, "concentration=0.0"),
    ("doc_chars", 0, "doc_chars=0"), ("alphabet", "abcdefghij", "10\\*\\*7 contexts")])
def test_bad_synthetic_config_is_one_line(field, value, message):
    overrides = {field: value, **({"order": 7} if field == "alphabet" and value == "abcdefghij" else {})}
    with pytest.raises(DataError, match=message) as error:
        synthetic_config(**overrides)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="split='test'"):
        document_source(synthetic_config(), "test")
