"""experiments.generate from a run's checkpoint decodes as the run trained its model: a chat
fine-tuning run stops at its template's turn end (the ids its export's generation_config.json
lists), and a prefix-LM pretraining run reads its prompt bidirectionally."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.generate import generate_text
from research.training.checkpoint_loading import load_checkpoint


@pytest.mark.parametrize("preset", ["sft_tiny", "sft_lora_tiny"])
def test_a_chatml_run_checkpoint_stops_where_its_export_does(tmp_path, preset):
    """chatml trains a turn to end with <|im_end|>, never eos: loaded from the checkpoint, the model
    had no stop id but eos and generated past its turn's end to max_new_tokens (the export stopped)."""
    from research.finetune import finetune_and_evaluate
    from research.models.hf.checkpoint_files import read_generation_stop_ids
    from tests.finetune.chat_oracles import chatml_folder
    from tests.finetune.conftest import tiny_config

    folder = chatml_folder(tmp_path / "tok")
    config = tiny_config(preset, num_steps=1)
    config.opt.warmup_steps = 0
    config.train.update(dict(seq_len=64, eval_batches=1))
    config.update(dict(tokenizer=folder, export_dir=str(tmp_path / "hf")))
    config.data.chat_template = "chatml"
    finetune_and_evaluate(config, str(tmp_path / "run"))

    loaded = load_checkpoint(str(tmp_path / "run"))
    im_end = loaded.tokenizer.encode("<|im_end|>")
    exported = read_generation_stop_ids(str(tmp_path / "hf"))
    assert loaded.stop_ids == exported == (loaded.tokenizer.eos_id, *im_end) and len(im_end) == 1

    # A model whose every next token is <|im_end|> (the final norm's output is that id's tied
    # embedding, scaled past every other): its turn is empty and ends at once.
    params = dict(loaded.params)
    embed = np.array(params["token_embed"]["embedding"])
    embed[im_end[0]] = 100.0 * embed[im_end[0]] / np.linalg.norm(embed[im_end[0]])
    params["token_embed"] = {"embedding": embed}
    norm = params["final_norm"]
    params["final_norm"] = {"scale": np.zeros_like(norm["scale"]), "bias": embed[im_end[0]].copy()}
    (completion,), = generate_text(loaded._replace(params=params),
                                   ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"],
                                   max_new_tokens=6)
    assert completion.token_ids == () and completion.text == ""
    assert completion.log_prob == pytest.approx(0.0, abs=1e-4)  # the one id generated, the stop


def test_a_prefix_lm_run_is_generated_from_with_a_bidirectional_prompt(tmp_path):
    """A decoder pretrained with objective=prefix_lm attends its prefix both ways; generate_text read
    the prompt causally, as it never was in training."""
    from experiments.configs import pretrain
    from research.decoding import beam_search, generate, vocab_limit_for
    from research.training import train_and_evaluate

    config = pretrain.get_config("gpt_tiny")
    config.model.update(num_layers=2, dtype="float32")
    config.objective = "prefix_lm"
    config.data.max_documents = 20
    config.data.tokenizer.update(vocab_size=400, max_training_chars=60_000)
    config.train.update(num_steps=2, batch_size=8, seq_len=32, log_every_steps=1, eval_every_steps=2,
                        eval_batches=1, progress_bar=False, peak_flops=1e9)
    config.opt.warmup_steps = 1
    config.checkpoint.every_steps = 2
    train_and_evaluate(config, str(tmp_path / "run"))

    loaded = load_checkpoint(str(tmp_path / "run"))
    assert loaded.bidirectional_prompt
    prompts = ["The history of the city", "In the beginning the"]
    tokenizer = loaded.tokenizer
    ids = [list(getattr(tokenizer, "encode_context", tokenizer.encode)(p)) for p in prompts]
    decoding = dict(stop_tokens=[tokenizer.eos_id],
                    vocab_limit=vocab_limit_for(tokenizer, loaded.model.config.vocab_size))
    got = [c.log_prob for (c,) in generate_text(loaded, prompts, max_new_tokens=4)]
    for bidirectional in (True, False):
        out = generate(loaded.model, loaded.params, ids, max_new_tokens=4, bidirectional_prompt=bidirectional,
                       **decoding)
        expected = np.asarray(out.log_probs_BN).sum(axis=1)
        assert np.allclose(got, expected, rtol=0, atol=1e-5) == bidirectional, (bidirectional, got, expected)
    # Beam search reads the prompt the same way.
    (beam, _), _ = generate_text(loaded, prompts, max_new_tokens=4, num_beams=2)
    out = beam_search(loaded.model, loaded.params, ids, num_beams=2, max_new_tokens=4, bidirectional_prompt=True,
                      **decoding)
    assert beam.log_prob == pytest.approx(float(np.asarray(out.log_probs_BW)[0, 0]), abs=1e-5)
