"""What a model reads in the harness: an encoder-only model its inputs inside the special tokens it
was trained with, and a decoder pretrained here an empty context after the eos its documents end
with. Oracles: transformers on random tiny BERT folders built here, and this codebase's own
pretraining objectives (research/data/objectives.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.data.config import TokenizerConfig
from research.data.objectives import get_objective
from research.data.tokenizer import train_tokenizer
from research.evaluation.harness import Harness
from research.evaluation.requests import LoglikelihoodRequest
from tests.evaluation.conftest import tiny_model

TEXTS = ["the film was very good, the food was bad and the day was fine " * 3,
         "def hello world: a text about words, 47 sg 242 ; 89 hello there world"] * 20


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    """A SentencePiece model trained as pretraining trains one (bos 3, eos 1, <mask> 4), of the
    tiny models' 96 ids (no byte pieces)."""
    config = TokenizerConfig(vocab_size=96, byte_fallback=False, character_coverage=1.0, max_training_chars=100_000)
    return train_tokenizer(TEXTS, config, str(tmp_path_factory.mktemp("spm") / "tiny.model"))


def _window(tokenizer, ids):
    """The masked-LM objective's window of a document of `ids`, uncorrupted."""
    rng = np.random.default_rng(0)
    return get_objective("masked_lm").examples(np.asarray(ids, np.int32), rng, 64, tokenizer.special_tokens())[0][
        "targets"].tolist()


def _masked_log_prob(model, params, row, position):
    masked = list(row)
    masked[position] = 4  # <mask>
    return float(jax.nn.log_softmax(model.apply({"params": params}, jnp.asarray([masked]))[0, position])[row[position]])


def test_an_encoder_pretrained_here_is_scored_inside_its_masked_lm_window(sentencepiece):
    """Pseudo-log-likelihood (Salazar et al.) masks each continuation token of the window the model
    was pretrained on, <s> ... </s>; the harness read the bare text (the first word where <s> was)."""
    model, params = tiny_model("bert-test")
    harness = Harness(model, params, sentencepiece, batch_size=4)
    joint = sentencepiece.encode("the film was good").tolist()
    context = sentencepiece.encode("the film was").tolist()
    window = _window(sentencepiece, joint)
    assert window == [sentencepiece.bos_id, *joint, sentencepiece.eos_id]
    result = harness.loglikelihood([LoglikelihoodRequest("the film was", " good")])[0]
    positions = range(1 + len(context), 1 + len(joint))
    np.testing.assert_allclose(result.token_log_probs, [_masked_log_prob(model, params, window, p) for p in positions],
                               atol=1e-5)


def test_an_encoder_classifier_pretrained_here_reads_its_window_and_a_long_context_keeps_it(sentencepiece):
    """Classifier scoring reads <s> text </s>; a context cut to max_length loses its oldest text,
    never the <s> the pooler reads."""
    model, params = tiny_model("bert-test", num_labels=3)
    text = "the food was bad and the day was fine"
    ids = sentencepiece.encode(text).tolist()
    harness = Harness(model, params, sentencepiece, batch_size=2, max_length=8, encoder_scoring="classifier")
    with pytest.warns(UserWarning, match="1 of 1 contexts exceed max_length=8"):
        scores = harness.multiple_choice([(text, ["a", "b", "c"])])[0]
    row = [sentencepiece.bos_id, *ids[-6:], sentencepiece.eos_id]
    logits = model.apply({"params": params}, jnp.asarray([row]), method="classify")[0]
    np.testing.assert_allclose(scores, np.asarray(jax.nn.log_softmax(logits)), atol=1e-5)


@pytest.fixture(scope="module")
def bert_folders(tmp_path_factory):
    """(masked-LM folder, sequence-classifier folder): random 1-layer BERTs with a WordPiece vocab."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("bert")
    words = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat dog log is good bad movie".split()
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=2)
    folders = []
    for name, cls in (("mlm", transformers.BertForMaskedLM), ("cls", transformers.BertForSequenceClassification)):
        (root / name).mkdir()
        (root / name / "vocab.txt").write_text("\n".join(words) + "\n")
        transformers.BertTokenizerFast(str(root / name / "vocab.txt")).save_pretrained(root / name)
        torch.manual_seed(0)
        model = cls(config).eval()
        with torch.no_grad():  # sharper than the init, so inputs with and without [CLS]/[SEP] differ clearly
            for p in model.parameters():
                p.mul_(4.0) if p.ndim == 2 else None
        model.save_pretrained(root / name)
        folders.append(root / name)
    return folders


def test_a_hugging_face_bert_is_scored_as_transformers_encodes_it(bert_folders):
    """[CLS] text [SEP], as transformers' tokenizer encodes by default and fine-tuning reads: the
    harness read the text alone (its classifier matched transformers with add_special_tokens=False)."""
    import torch
    import transformers

    from research.training.checkpoint_loading import load_hf
    mlm_folder, cls_folder = bert_folders
    tokenizer = transformers.AutoTokenizer.from_pretrained(cls_folder)
    loaded = load_hf(str(cls_folder))
    harness = Harness(loaded.model, loaded.params, loaded.tokenizer, batch_size=2, encoder_scoring="classifier")
    text = "the movie is good"
    with torch.no_grad():
        logits = transformers.BertForSequenceClassification.from_pretrained(cls_folder)(
            **tokenizer(text, return_tensors="pt")).logits[0]
    np.testing.assert_allclose(harness.multiple_choice([(text, ["no", "yes"])])[0],
                               torch.log_softmax(logits.double(), -1).numpy(), atol=1e-4)

    # Pseudo-log-likelihood of " mat": masked in [CLS] the cat sat on the mat [SEP] (Salazar et al.).
    loaded = load_hf(str(mlm_folder))
    harness = Harness(loaded.model, loaded.params, loaded.tokenizer, batch_size=2)
    ids = tokenizer("the cat sat on the mat")["input_ids"]
    masked = torch.tensor([ids])
    masked[0, -2] = tokenizer.mask_token_id
    with torch.no_grad():
        expected = torch.log_softmax(transformers.BertForMaskedLM.from_pretrained(mlm_folder)(masked).logits[
            0, -2].double(), -1)[ids[-2]].item()
    result = harness.loglikelihood([LoglikelihoodRequest("the cat sat on the", " mat")])[0]
    assert result.log_prob == pytest.approx(expected, abs=1e-4)


class _LmEvalStyleTokenizer:
    """A tokenizer with encode_context (as HFTokenizer): lm-eval's prefix rule applies."""

    eos_id, pad_id, bos_id = 1, 0, 3

    def encode(self, text):
        return [5 + ord(c) % 50 for c in text]

    encode_context = encode

    def decode(self, ids):
        return ""


def test_a_decoder_pretrained_here_is_conditioned_on_the_eos_its_documents_end_with(sentencepiece):
    """A decoder pretrained here reads documents packed as tokens + eos, never bos: an empty
    context, an empty prompt and a text's first rolling window start from eos (they started from
    bos, an input no decoder here was trained on). A Hugging Face tokenizer keeps lm-eval's bos."""
    tokens = sentencepiece.encode("hello world").tolist()
    document = get_objective("causal_lm").examples(np.asarray(tokens, np.int32), np.random.default_rng(0), 64,
                                                   sentencepiece.special_tokens())[0]["inputs"].tolist()
    assert document == [*tokens, sentencepiece.eos_id] and sentencepiece.bos_id not in document
    model, params = tiny_model("gpt2-tiny")
    assert Harness(model, params, sentencepiece).prefix_token == sentencepiece.eos_id
    assert Harness(model, params, _LmEvalStyleTokenizer()).prefix_token == _LmEvalStyleTokenizer.bos_id
