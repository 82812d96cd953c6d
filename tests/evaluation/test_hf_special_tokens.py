"""HarnessLM.from_hf scores Hugging Face folders as lm-eval's own `hf` model (HFLM) does:
contexts get the tokenizer's special tokens (a Llama-style leading <s>, a T5-style trailing
</s>), continuations none, and add_bos_token=False turns them off on both sides. The oracle
is lm-eval 0.4.13's HFLM on the same random-weight transformers folders, built here."""
from __future__ import annotations

import logging

import pytest
import torch
import transformers

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from research.evaluation.lm_eval_adapter import HarnessLM  # noqa: E402
from research.evaluation.tokenizer_loading import load_tokenizer  # noqa: E402
from research.models.config import ConfigError  # noqa: E402

CORPUS = ["The cat sat on the mat. The dog sat on the log.", "Question: what is 2+2? Answer: 4",
          "Once upon a time there was a princess.", "hello world, hello there"] * 10
# "<s>The dog" already spells Llama's bos (lm-eval adds no second one); "<s>hello" with no context
# opens with the prefix token, which then becomes the context (lm-eval's empty-context rule).
PAIRS = [("The cat sat", " on the mat"), ("Question: what is 2+2? Answer:", " 4"), ("", "hello world"),
         ("<s>The dog", " sat"), ("", "<s>hello world")]
ROLLING = "The cat sat on the mat. The dog sat on the log."
PROMPT = "Once upon a"


def _folder(path, *, special: list[str], template: str, model_config) -> str:
    """A byte-level BPE tokenizer whose default encode adds `template`'s special tokens, and a
    random model with weights scaled so that log-probs are far from uniform."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, special_tokens=special,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    marker = "<s>" if "<s>" in template else "</s>"
    core.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(marker, special.index(marker))])
    names = {"<s>": "bos_token", "</s>": "eos_token", "<pad>": "pad_token", "<unk>": "unk_token"}
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, **{names[s]: s for s in special})
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    model = model_config(len(tokenizer)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    config = lambda v: transformers.LlamaForCausalLM(transformers.LlamaConfig(  # noqa: E731
        vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False))
    return _folder(tmp_path_factory.mktemp("llama"), special=["<unk>", "<s>", "</s>"], template="<s> $A",
                   model_config=config)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    config = lambda v: transformers.T5ForConditionalGeneration(transformers.T5Config(  # noqa: E731
        vocab_size=v, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, dropout_rate=0.0, pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0, feed_forward_proj="relu", tie_word_embeddings=True))
    return _folder(tmp_path_factory.mktemp("t5"), special=["<pad>", "</s>", "<unk>"], template="$A </s>",
                   model_config=config)


def _requests(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(arguments)]


def _answers(lm, *, rolling: bool, max_gen_toks: int = 6) -> dict[str, list]:
    logging.disable(logging.WARNING)  # HFLM's per-call progress and truncation notes
    try:
        out = {"loglikelihood": [ll for ll, _ in lm.loglikelihood(_requests("loglikelihood", PAIRS))],
               "generate_until": lm.generate_until(_requests("generate_until", [
                   (PROMPT, {"until": ["\n\n"], "max_gen_toks": max_gen_toks, "do_sample": False})]))}
        if rolling:
            out["rolling"] = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(ROLLING,)]))
    finally:
        logging.disable(logging.NOTSET)
    return out


def _assert_same(ours: dict[str, list], reference: dict[str, list]) -> None:
    for kind in ("loglikelihood", "rolling"):
        if kind in reference:
            assert ours[kind] == pytest.approx(reference[kind], abs=2e-3), kind
    assert ours["generate_until"] == reference["generate_until"]


@pytest.mark.parametrize("add_bos_token", [None, False])
def test_llama_style_folder_scores_as_lm_evals_hf_model(llama_dir, add_bos_token):
    reference = HFLM(pretrained=llama_dir, device="cpu", batch_size=1, dtype="float32", add_bos_token=add_bos_token)
    ours = HarnessLM.from_hf(llama_dir, batch_size=4, add_bos_token=add_bos_token)
    assert len(ours.harness.tokenizer.encode_context("The cat")) == len(reference.tok_encode("The cat"))
    _assert_same(_answers(ours, rolling=True), _answers(reference, rolling=True))


def test_t5_style_folder_scores_as_lm_evals_hf_model(t5_dir):
    reference = HFLM(pretrained=t5_dir, backend="seq2seq", device="cpu", batch_size=1, dtype="float32")
    ours = HarnessLM.create_from_arg_string(f"hf_dir={t5_dir},batch_size=4")
    # lm-eval's seq2seq generate_until passes transformers max_length = context tokens +
    # max_gen_toks, which counts the decoder's start token: it generates one fewer than that.
    # Ours honours max_gen_toks, so it gets the same budget here; the context's trailing </s>
    # counts in it, and the output checks the encoder input too.
    budget = len(ours.harness.tokenizer.encode_context(PROMPT)) + 6 - 1
    _assert_same(_answers(ours, rolling=False, max_gen_toks=budget), _answers(reference, rolling=False))


def test_encode_stays_without_special_tokens(llama_dir, t5_dir):
    # Fine-tuning, generation and scored continuations use encode: only contexts changed.
    llama, t5 = load_tokenizer(llama_dir), load_tokenizer(t5_dir)
    assert llama.encode_context("hello") == [llama.bos_id, *llama.encode("hello")]
    assert llama.bos_id not in llama.encode("hello")
    assert t5.encode_context("hello") == [*t5.encode("hello"), t5.eos_id]
    assert t5.eos_id not in t5.encode("hello")
    assert load_tokenizer(llama_dir, add_bos_token=False).encode_context("hello") == llama.encode("hello")


def test_add_bos_token_bad_input(llama_dir):
    with pytest.raises(ConfigError, match=r"add_bos_token=False applies to Hugging Face tokenizer folders only"):
        load_tokenizer("char", add_bos_token=False)
    with pytest.raises(ConfigError, match=r"add_bos_token='maybe' must be True or False"):
        HarnessLM.create_from_arg_string(f"hf_dir={llama_dir},add_bos_token=maybe")
    with pytest.raises(ConfigError, match=r"add_bos_token= applies to hf_dir="):
        HarnessLM.create_from_arg_string("checkpoint=/nowhere,add_bos_token=False")


def test_model_args_as_a_dict_load_as_the_string_form(llama_dir):
    # simple_evaluate(model_args={...}) calls create_from_arg_obj; lm-eval's default passed the
    # dict to HarnessLM(harness, ...), a TypeError.
    import lm_eval
    from_dict = HarnessLM.create_from_arg_obj({"hf_dir": llama_dir, "batch_size": 4, "add_bos_token": False})
    from_string = HarnessLM.create_from_arg_string(f"hf_dir={llama_dir},batch_size=4,add_bos_token=False")
    assert _answers(from_dict, rolling=True) == _answers(from_string, rolling=True)
    with pytest.raises(ConfigError, match=r"model_args=\{'hf_dir': '/nowhere', 'steps': 3\}: unknown key\(s\) \['steps'\]"):
        lm_eval.simple_evaluate(model="research", model_args={"hf_dir": "/nowhere", "steps": 3}, tasks=["none"])
    with pytest.raises(ConfigError, match=r"model_args=\['hf_dir'\] must be a dict"):
        HarnessLM.create_from_arg_obj(["hf_dir"])
