"""experiments.generate: text from a Hugging Face folder (checked against transformers' own
generate) and from a checkpoint trained here, greedy / sampled / beam; bad options in one line."""
from __future__ import annotations

import os
import string
import subprocess
import sys

import pytest

from experiments import generate as cli
from research.models.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIECES = ["<pad>", "</s>"] + list(string.ascii_lowercase + " .")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random-weight GPT-2 saved by transformers, with a one-piece-per-character tokenizer."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models
    path = tmp_path_factory.mktemp("hf") / "gpt"
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(PIECES)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(PIECES), n_positions=64, n_embd=32, n_layer=2, n_head=4, initializer_range=0.5,
        eos_token_id=1, bos_token_id=1))
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(path)
    return str(path)


def test_greedy_text_matches_transformers_generate(hf_dir):
    import torch
    import transformers
    prompts = ["the cat", "a"]
    completions = cli.generate_text(cli.load_model(hf_dir=hf_dir), prompts, max_new_tokens=12)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    for prompt, (completion,) in zip(prompts, completions):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            expected = hf_model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=1, pad_token_id=0)
        new = [int(i) for i in expected[0, ids.shape[1]:]]
        new = new[:new.index(1)] if 1 in new else new
        assert list(completion.token_ids) == new
        assert completion.text == tokenizer.decode(new, skip_special_tokens=True)
        assert completion.log_prob < 0


def test_generation_stops_at_every_eos_id_of_the_folders_generation_config(hf_dir, tmp_path):
    """An instruct or chatml export lists its turn end beside eos in generation_config.json (to_hf
    writes <|im_end|> there); transformers stops at any of them, and generate ran past them."""
    import json
    import shutil

    import torch
    import transformers
    free = cli.generate_text(cli.load_model(hf_dir=hf_dir), ["the cat"], max_new_tokens=12)[0][0].token_ids
    turn_end = free[3]  # call the fourth greedy token the turn end
    folder = str(tmp_path / "gpt")
    shutil.copytree(hf_dir, folder)
    with open(os.path.join(folder, "generation_config.json")) as f:
        generation = json.load(f)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({**generation, "eos_token_id": [1, turn_end]}, f)
    loaded = cli.load_model(hf_dir=folder)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    ids = torch.tensor([transformers.AutoTokenizer.from_pretrained(folder).encode("the cat")])
    with torch.no_grad():
        expected = hf_model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)[0, ids.shape[1]:].tolist()
    assert expected[3] == turn_end and len(expected) == 4  # transformers stops there
    for options in (dict(), dict(num_beams=2, alpha=0.0)):
        (completion, *_), = cli.generate_text(loaded, ["the cat"], max_new_tokens=12, **options)
        assert list(completion.token_ids) == expected[:3], options  # cut before the stop id, as at eos
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({**generation, "eos_token_id": "x"}, f)
    with pytest.raises(ConfigError, match=r"generation_config.json: eos_token_id='x' is not a token id"):
        cli.load_model(hf_dir=folder)


def test_a_prompt_keeps_the_bos_its_tokenizer_adds_as_transformers_generate_does(tmp_path):
    """Llama's tokenizer opens every input with <s>; generate encoded prompts without it, and its
    greedy text differed from transformers' for 3 of 3 prompts (conditioned on other ids)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, processors
    pieces = ["<pad>", "</s>", "<s>"] + list(string.ascii_lowercase + " .")
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(pieces), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5, bos_token_id=2, eos_token_id=1,
        pad_token_id=0)).eval()
    hf_model.save_pretrained(tmp_path)
    hf_tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>",
                                                        pad_token="<pad>", bos_token="<s>")
    hf_tokenizer.save_pretrained(tmp_path)
    prompts = ["a", "the quick", "x y"]
    completions = cli.generate_text(cli.load_model(hf_dir=str(tmp_path)), prompts, max_new_tokens=10)
    for prompt, (completion,) in zip(prompts, completions):
        ids = torch.tensor([hf_tokenizer.encode(prompt)])
        assert int(ids[0, 0]) == 2  # the <s> the tokenizer adds
        with torch.no_grad():
            expected = hf_model.generate(ids, max_new_tokens=10, do_sample=False, eos_token_id=1, pad_token_id=0)
        new = [int(i) for i in expected[0, ids.shape[1]:]]
        assert list(completion.token_ids) == (new[:new.index(1)] if 1 in new else new), prompt


def test_sampling_is_seeded_and_beams_are_ranked(hf_dir):
    loaded = cli.load_model(hf_dir=hf_dir)
    sample = dict(max_new_tokens=10, temperature=1.5, top_k=20, top_p=0.95, num_samples=4)
    first = cli.generate_text(loaded, ["a"], seed=1, **sample)[0]
    assert len(first) == 4 and len({c.text for c in first}) > 1  # four draws of a flat distribution differ
    assert [c.text for c in cli.generate_text(loaded, ["a"], seed=1, **sample)[0]] == [c.text for c in first]
    beams = cli.generate_text(loaded, ["the"], max_new_tokens=6, num_beams=3, alpha=0.0)[0]
    assert len(beams) == 3 and len({c.token_ids for c in beams}) == 3
    assert [c.log_prob for c in beams] == sorted((c.log_prob for c in beams), reverse=True)  # alpha 0: by log p
    options = cli.DecodingOptions(num_beams=3)
    printed = cli.format_completions([beams], options).splitlines()
    assert printed[0] == f"[beam 0 log p={beams[0].log_prob:.2f}] the{beams[0].text}"


def test_seeds_past_32_bits_draw_other_samples(hf_dir):
    """jax.random.key keeps a seed's low 32 bits without x64: --seed=0 and --seed=2**32 drew the
    same text, as did -1 and 2**32-1. A seed below 2**32 keeps the key it had."""
    import jax
    loaded = cli.load_model(hf_dir=hf_dir)
    sample = dict(max_new_tokens=12, temperature=1.5, num_samples=3)
    drawn = {seed: [c.token_ids for c in cli.generate_text(loaded, ["a"], seed=seed, **sample)[0]]
             for seed in (0, 2**32, -1, 2**32 - 1)}
    assert drawn[0] != drawn[2**32] and drawn[-1] != drawn[2**32 - 1]
    assert jax.random.key_data(cli.seed_key(7)).tolist() == jax.random.key_data(jax.random.key(7)).tolist()


def test_a_prompt_files_byte_order_mark_is_not_prompt_text(tmp_path):
    (tmp_path / "prompts.txt").write_bytes("\ufeffOnce upon a time\r\nThe end\r\n".encode("utf-8"))
    assert cli._read_prompts([], str(tmp_path / "prompts.txt")) == ["Once upon a time", "The end"]


def test_an_encoder_decoders_output_is_printed_apart_from_its_input(tmp_path):
    """T5's output is a sequence of its own, decoded without a leading space: printed straight after
    its prompt it ran on into it ("w3 w5w31 w31")."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(PIECES)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    torch.manual_seed(4)  # a seed whose greedy output is letters, not the pad id (which decodes to "")
    transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(PIECES), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, eos_token_id=1,
        pad_token_id=0, decoder_start_token_id=0)).save_pretrained(tmp_path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>",
                                         pad_token="<pad>").save_pretrained(tmp_path)
    loaded = cli.load_model(hf_dir=str(tmp_path))
    greedy = cli.generate_text(loaded, ["ab"], max_new_tokens=4)
    beams = cli.generate_text(loaded, ["ab"], max_new_tokens=4, num_beams=2)[0]
    assert not greedy[0][0].continues_prompt and greedy[0][0].text
    assert cli.format_completions(greedy, cli.DecodingOptions()) == f"ab => {greedy[0][0].text}"
    printed = cli.format_completions([beams], cli.DecodingOptions(num_beams=2)).splitlines()
    assert printed[1] == f"[beam 1 log p={beams[1].log_prob:.2f}] ab => {beams[1].text}"


@pytest.mark.parametrize("options, message", [
    (dict(temperature=-1.0), r"--temperature=-1.0 must be >= 0"),
    (dict(top_p=0.0, temperature=1.0), r"--top_p=0.0 must be in \(0, 1\]"),
    (dict(top_k=5), r"only apply when sampling; add --temperature>0"),
    (dict(num_beams=2, temperature=0.7), r"--num_beams=2 is beam search, which does not sample"),
    (dict(num_beams=0), r"--num_beams=0 must be >= 1"),
    (dict(max_new_tokens=0), r"--max_new_tokens=0 must be between 1 and 2147483647"),
    # Both were tracebacks after the model had loaded (jax's OverflowError).
    (dict(max_new_tokens=2**31), r"--max_new_tokens=2147483648 must be between 1 and 2147483647"),
    (dict(temperature=0.5, seed=2**63), r"--seed=9223372036854775808 must fit in 64 bits"),
    (dict(num_beams=2, alpha=float("nan")), r"--alpha=nan \(beam search's length-penalty exponent\) must be"),
    # Without beam search --alpha was accepted and ignored.
    (dict(alpha=3.0), r"--alpha=3.0 is beam search's length penalty; add --num_beams>1"),
    # Greedy and beam search draw nothing: a seed sweep without --temperature gave identical runs.
    (dict(seed=1), r"--seed=1 only applies when sampling; add --temperature>0"),
    # Beams with a sampling option: the message asked for --temperature, which beams then refused.
    (dict(num_beams=2, top_p=0.9), r"--top_k / --top_p / --num_samples / --seed do not apply to beam search "
                                   r"\(--num_beams=2\)"),
    (dict(num_beams=2, num_samples=2), r"do not apply to beam search"),
    (dict(seed=1, num_beams=2), r"--top_k / --top_p / --num_samples / --seed do not apply to beam search"),
    # generate_text(..., top_p=None) compared None with 0: a bare TypeError.
    (dict(temperature=1.0, top_p=None), r"--top_p=None must be a number"),
    (dict(num_beams=2.5), r"--num_beams=2.5 must be a whole number"),
])
def test_bad_decoding_options_are_one_line(options, message):
    with pytest.raises(ConfigError, match=message):
        cli.DecodingOptions(**options).check()


def test_bad_sources_and_prompts_are_one_line(tmp_path, hf_dir):
    with pytest.raises(ConfigError, match="exactly one of --checkpoint"):
        cli.load_model()
    with pytest.raises(ConfigError, match="does not apply to --hf_dir"):
        cli.load_model(hf_dir=hf_dir, step=3)
    with pytest.raises(ConfigError, match="no checkpoint in"):
        cli.load_model(checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match="give a prompt"):
        cli._read_prompts([], None)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no prompt"):
        cli._read_prompts([], str(tmp_path / "empty.txt"))
    with pytest.raises(ConfigError, match="No such file"):
        cli._read_prompts([], str(tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="exceeds the vocabulary"):
        cli.generate_text(cli.load_model(hf_dir=hf_dir), ["a"], temperature=1.0, top_k=1000)


def test_a_hugging_face_folder_with_a_file_missing_or_damaged_is_one_line(tmp_path, hf_dir):
    import shutil
    for case in ("no weights", "no config", "truncated weights"):
        folder = tmp_path / case.replace(" ", "_")
        shutil.copytree(hf_dir, folder)
        weights = folder / "model.safetensors"
        if case == "no weights":
            weights.unlink()
        elif case == "no config":
            (folder / "config.json").unlink()
        else:
            weights.write_bytes(weights.read_bytes()[:5000])
        expected = {"no weights": "no weights in", "no config": "config.json' is missing",
                    "truncated weights": "is not a readable safetensors file"}[case]
        with pytest.raises(ConfigError, match=expected) as error:
            cli.load_model(hf_dir=str(folder))
        assert "\n" not in str(error.value)
    # A --top_k past the vocabulary is named from config.json alone, before the weights are read
    # (it was checked once they had loaded), and only where it is wrong.
    with pytest.raises(ConfigError, match=r"^--top_k=1000 exceeds the vocabulary \(\d+\)"):
        cli.check_top_k_before_loading(1000, hf_dir=str(tmp_path / "truncated_weights"))
    cli.check_top_k_before_loading(5, hf_dir=str(tmp_path / "truncated_weights"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 1-layer GPT trained for 1 step with its own SentencePiece tokenizer."""
    from tests.tiny_run import train_tiny_gpt
    return train_tiny_gpt(str(tmp_path_factory.mktemp("run")), num_steps=1)


def test_cli_prints_the_checkpoints_text(run_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"^--top_k=100000 exceeds the vocabulary \(\d+\) of "):
        cli.check_top_k_before_loading(100000, checkpoint=run_dir)  # from the run's saved config, no weights read
    from research.training.checkpoint_loading import load_checkpoint
    (expected,) = cli.generate_text(load_checkpoint(run_dir), ["The history of"], max_new_tokens=8)[0]
    assert len(expected.token_ids) >= 1
    command = [sys.executable, "-m", "experiments.generate", f"--checkpoint={run_dir}", "--prompt=The history of",
               "--max_new_tokens=8"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The history of" + expected.text + "\n"
    bad = subprocess.run(command + ["--top_p=0.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --top_k / --top_p / --num_samples only apply when sampling; add --temperature>0 "
        "(e.g. --temperature=0.8)."]
    assert not [name for name in os.listdir(run_dir) if name.startswith(("generat", "evaluations"))]


def test_a_damaged_latest_checkpoint_falls_back_and_an_explicit_one_is_one_line(run_dir, tmp_path, caplog,
                                                                               young_gc_after_failed_reads):
    import shutil

    from research.training.checkpoint_loading import DamagedCheckpointError, load_checkpoint
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    # A second step whose state files were truncated (a save killed mid-write).
    shutil.copytree(run / "checkpoints" / "1", run / "checkpoints" / "2")
    for path in (run / "checkpoints" / "2" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    with caplog.at_level("WARNING"):
        loaded = load_checkpoint(str(run))
    assert loaded.step == 1 and "cannot be read" in caplog.text
    with pytest.raises(DamagedCheckpointError, match=r"checkpoint .*/2' cannot be read .* pick another step") as error:
        load_checkpoint(str(run), step=2)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["truncated config", "no config item"])
def test_a_latest_checkpoint_whose_config_is_damaged_falls_back_too(run_dir, tmp_path, caplog, damage):
    """The newest step's config was read before the fallback: a truncated one raised a bare
    JSONDecodeError, a missing one a ConfigError, where training's resume takes the step before."""
    import shutil

    from research.training.checkpoint_loading import DamagedCheckpointError, load_checkpoint
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.copytree(run / "checkpoints" / "1", run / "checkpoints" / "2")
    config = run / "checkpoints" / "2" / "config"
    if damage == "truncated config":
        (config / "metadata").write_bytes((config / "metadata").read_bytes()[:100])
    else:
        shutil.rmtree(config)
    with caplog.at_level("WARNING"):
        loaded = load_checkpoint(str(run))
    assert loaded.step == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "checkpoints/2'" in warnings[0] and "Falling back" in warnings[0], warnings
    expected = "cannot be read \\(its config: JSONDecodeError" if damage == "truncated config" else "holds no config"
    with pytest.raises(DamagedCheckpointError, match=rf"checkpoint .*/2' {expected}.* pick another step") as error:
        load_checkpoint(str(run), step=2)
    assert "\n" not in str(error.value)



@pytest.fixture(scope="module")
def rigged_run(run_dir):
    """The tiny run (400 tokenizer ids, 512 embedded) with its padded ids winning every step, as
    a barely trained head's untrained rows can."""
    from research.training.checkpoint_loading import load_checkpoint
    from tests.test_decoding_vocab_limit import padded_ids_win
    loaded = load_checkpoint(run_dir)
    assert loaded.tokenizer.vocab_size == 400 and loaded.model.config.vocab_size == 512
    return loaded._replace(params=padded_ids_win(loaded.params, loaded.tokenizer.vocab_size))


def test_the_rigged_run_emits_padded_ids_when_decoding_is_not_limited(rigged_run):
    import numpy as np

    from research.decoding import generate
    tokens = generate(rigged_run.model, rigged_run.params, [[5, 6]], max_new_tokens=4).tokens_BN
    assert np.all(np.asarray(tokens) >= rigged_run.tokenizer.vocab_size)


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.8, top_k=40, num_samples=3, seed=0),
                                     dict(num_beams=3)], ids=["greedy", "readme_sampling", "beams"])
def test_generate_text_never_yields_an_id_the_tokenizer_lacks(rigged_run, options):
    size = rigged_run.tokenizer.vocab_size
    completions = [c for candidates in cli.generate_text(rigged_run, ["import", "The history of"], max_new_tokens=6,
                                                         **options) for c in candidates]
    assert all(max(c.token_ids, default=0) < size and "<extra_id" not in c.text for c in completions)
    assert any(c.token_ids for c in completions)


def test_an_empty_prompt_starts_from_the_eos_that_ends_every_pretraining_document(run_dir):
    # A decoder pretrained here reads documents packed as tokens + eos and never reads bos: an empty
    # prompt starts where the evaluation harness starts an empty context (tokenizer_loading.prefix_token).
    import numpy as np

    from research.decoding import generate
    from research.training.checkpoint_loading import load_checkpoint
    loaded = load_checkpoint(run_dir)
    tokenizer = loaded.tokenizer
    (completion,) = cli.generate_text(loaded, [""], max_new_tokens=6)[0]
    log_probs = {start: float(np.asarray(generate(loaded.model, loaded.params, [[start]], max_new_tokens=6,
                                                  stop_tokens=[tokenizer.eos_id],
                                                  vocab_limit=tokenizer.vocab_size).log_probs_BN)[0].sum())
                 for start in (tokenizer.eos_id, tokenizer.bos_id)}
    assert completion.log_prob == pytest.approx(log_probs[tokenizer.eos_id], abs=1e-6)
    assert completion.log_prob != pytest.approx(log_probs[tokenizer.bos_id], abs=1e-3)  # the start matters
