"""A pretraining run and its tokenizer: a file swapped at data.tokenizer.model_path is another run,
and a T5's pad / decoder start ids follow a given tokenizer whose pad is not 0."""
import io
import json
import os

import pytest

from experiments.configs import pretrain
from research.data.config import DataError, TokenizerConfig
from research.training import workdir as workdir_lib
from research.training.workdir import WorkdirError


def _claimed(workdir: str, model_path, *, checkpoint: bool = False) -> None:
    config = pretrain.get_config("gpt_tiny")
    config.data.tokenizer.model_path = str(model_path)
    workdir_lib.claim(workdir, config.to_dict())
    if checkpoint:
        saved = os.path.join(workdir, "checkpoints", "4", "config")
        os.makedirs(saved, exist_ok=True)
        with open(os.path.join(saved, "metadata"), "w") as f:
            json.dump(config.to_dict(), f)


def test_a_tokenizer_file_replaced_at_its_path_is_another_run(tmp_path):
    """Another model of the same vocab_size copied over the file resumed at step 4 on the old
    one's checkpoints (eval_loss 5.887 -> 5.939), with only a learning-rate warning."""
    model = tmp_path / "shared.model"
    model.write_bytes(b"tokenizer A")
    workdir = str(tmp_path / "run")
    _claimed(workdir, model)
    model.write_bytes(b"tokenizer A")  # copied again, same contents: the same run
    _claimed(workdir, model, checkpoint=True)
    model.write_bytes(b"tokenizer B")
    with pytest.raises(WorkdirError, match=r"holds another run \(data.tokenizer.model_file_sha256: '[0-9a-f]{64}' there, "
                                           rf"'[0-9a-f]{{64}}' now\); .*; the tokenizer file {model} holds another "
                                           r"model than the run trained with: restore that file to resume\.$") as error:
        _claimed(workdir, model)
    assert "\n" not in str(error.value)
    # A run.json recorded before the digest was: its file is whatever it is now (workdir.ADDED_LATER).
    run_file = tmp_path / "run" / workdir_lib.RUN_FILE
    old = json.loads(run_file.read_text())
    del old["fingerprint"]["data.tokenizer.model_file_sha256"]
    run_file.write_text(json.dumps(old))
    _claimed(workdir, model)


def _sentencepiece_model(path, **ids) -> str:
    import sentencepiece as spm
    model = io.BytesIO()
    text = [f"line {i} of a small corpus, with words and more words {i * 7}" for i in range(200)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=60,
                                   minloglevel=2, **ids)
    path.write_bytes(model.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def pad3(tmp_path_factory) -> str:
    """A common NMT layout (spm_train --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3): pad is id 3."""
    return _sentencepiece_model(tmp_path_factory.mktemp("pad3") / "pad3.model", unk_id=0, bos_id=1, eos_id=2, pad_id=3)


def test_a_t5_takes_its_pad_and_decoder_start_from_a_tokenizer_whose_pad_is_not_0(pad3, tmp_path, monkeypatch):
    """Its decoder inputs start with the tokenizer's pad (3) in training, while generation, scoring
    and to_hf started from decoder_start_token_id 0 (<unk> there): the run's saved config says 3."""
    from research.training import train_and_evaluate

    class Claimed(Exception):
        pass

    def claim_all(runs, **_):
        raise Claimed([config for _, config in runs])
    monkeypatch.setattr(workdir_lib, "claim_all", claim_all)
    config = pretrain.get_config("t5_tiny")
    config.model.num_layers = 1
    config.data.tokenizer.model_path = pad3
    with pytest.raises(Claimed) as claimed:
        train_and_evaluate(config, str(tmp_path / "t5"))
    (recorded,) = claimed.value.args[0]
    assert (recorded["model"].get("pad_token_id"), recorded["model"].get("decoder_start_token_id")) == (3, 3)
    assert "pad_token_id" not in config.model  # the caller's config is left as it was
    from research.data.tokenizer import encoder_decoder_ids
    tokenizer = TokenizerConfig(model_path=pad3, num_extra_ids=100)
    # A given id other than the pad: one line, before any work.
    with pytest.raises(DataError, match=r"^model.decoder_start_token_id=0 is not the pad id 3 of the tokenizer "
                                        rf"\({pad3}\), .*; leave model.decoder_start_token_id unset or give 3\.$"):
        encoder_decoder_ids(tokenizer, "encoder_decoder", {"decoder_start_token_id": 0})
    # Runs whose ids already agree keep their configs: pad-0 tokenizers (one trained here), other families.
    assert encoder_decoder_ids(tokenizer, "encoder_decoder", {"pad_token_id": 3, "decoder_start_token_id": 3}) == {}
    assert encoder_decoder_ids(TokenizerConfig(vocab_size=412, num_extra_ids=100), "encoder_decoder", {}) == {}
    assert encoder_decoder_ids(tokenizer, "decoder", {}) == {}
