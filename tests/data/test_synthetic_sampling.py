"""The synthetic source's fast per-document sampler draws exactly MarkovSource.sample's characters."""
from research.data.config import SyntheticConfig
from research.data.sources import SyntheticDocuments
from research.scaling.synthetic_corpus import synthetic_documents


def test_fast_sampler_gives_the_reference_documents():
    config = SyntheticConfig(alphabet="abcdefgh", order=2, concentration=0.05, doc_chars=300)
    documents = SyntheticDocuments(config, seed=5, num_documents=40)
    reference = list(synthetic_documents(5, 12, 300, source_seed=config.source_seed, alphabet=config.alphabet,
                                         order=2, concentration=0.05, start=20))
    assert [documents[i] for i in range(20, 32)] == reference
