"""HFTokenizer's vocab_size covers every id the tokenizer has, so decoding's vocab_limit keeps them."""
from research.decoding import vocab_limit_for
from research.evaluation.tokenizer_loading import HFTokenizer


def _tokenizer_with_a_gap():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Ids 3-6 are unused: len() is 4, while "c" is id 7.
    core = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<eos>": 2, "c": 7}, unk_token="<eos>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")


def test_vocab_size_reaches_the_highest_id_past_a_gap():
    hf = _tokenizer_with_a_gap()
    assert len(hf) == 4  # what vocab_size was: it left "c" (id 7) out
    tokenizer = HFTokenizer(hf)
    assert tokenizer.encode("a c") == [0, 7]
    assert tokenizer.vocab_size == 8
    assert vocab_limit_for(tokenizer, model_vocab_size=16) == 8  # generation may still choose "c"
    assert tokenizer.decode([7]) == "c"


def test_vocab_size_of_a_gapless_tokenizer_is_its_length():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<eos>": 2}, unk_token="<eos>"))
    hf = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    hf.add_tokens(["<new>"])  # added tokens continue the numbering: id 3
    assert HFTokenizer(hf).vocab_size == len(hf) == 4
