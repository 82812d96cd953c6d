"""Shared fixtures: a tiny tokenizer trained once per test session on a slice of the stdlib."""
import pytest

from research.data import DataConfig, TokenizerConfig, build_tokenizer


@pytest.fixture(scope="session")
def small_stdlib() -> DataConfig:
    return DataConfig(source="stdlib", max_documents=30, tokenizer=TokenizerConfig(
        vocab_size=400, max_training_chars=100_000, num_extra_ids=100))


@pytest.fixture(scope="session")
def tokenizer(small_stdlib, tmp_path_factory):
    return build_tokenizer(small_stdlib, str(tmp_path_factory.mktemp("tok")))
