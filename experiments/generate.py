"""Generate text from a training run's checkpoint or a Hugging Face folder.

    python -m experiments.generate --checkpoint=/tmp/gpt_tiny --prompt="Once upon a time"
    python -m experiments.generate --checkpoint=/tmp/gpt_tiny --prompt="The" --temperature=0.8 --top_p=0.95 \\
        --num_samples=3 --seed=1
    python -m experiments.generate --hf_dir=/path/to/gpt2 --prompt="Hello" --num_beams=4 --max_new_tokens=20

Greedy by default; --temperature > 0 samples (with --top_k / --top_p filtering, reproducible
by --seed); --num_beams > 1 runs beam search (--alpha is its length penalty) and prints every
beam, best first. Several --prompt flags, or --prompt_file (one prompt per line), decode as
one batch. --checkpoint is a run's workdir (experiments.pretrain); its latest step (or --step)
and its own tokenizer are used, as in experiments.evaluate. Generation stops at the
tokenizer's eos (and, from --hf_dir, at every eos_token_id of the folder's
generation_config.json, as transformers' generate does; from a chat fine-tuning run's
--checkpoint, at the turn end its export lists there) and never picks an id past the
tokenizer's vocabulary (model vocabularies are padded above it). A decoder trained with
objective=prefix_lm reads its prompt bidirectionally, as the prefix it was trained on.
Every option is checked before the model is loaded or compiled.

In Python, the same:
    from research.training.checkpoint_loading import load_checkpoint
    from experiments.generate import generate_text
    texts = generate_text(load_checkpoint("/tmp/gpt_tiny"), ["Once upon a time"], max_new_tokens=32)
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Sequence

from absl import app, flags, logging

from research.compile_interrupts import ctrl_c_after_compiles
from research.evaluation.tokenizer_loading import context_encoder, prefix_token
from research.models.config import ConfigError

if TYPE_CHECKING:
    from research.training.checkpoint_loading import Step


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodingOptions:
    """How to continue each prompt: greedy (temperature 0), sampled, or beam search."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 1
    alpha: float = 0.6  # beam search length-penalty exponent
    num_samples: int = 1  # sampled continuations per prompt
    seed: int = 0

    def check(self) -> None:
        """One line per mistake, naming the flag and the fix (before any model is loaded)."""
        from research.decoding.prompts import is_integer, is_real
        # Types first: generate_text(..., top_p=None) compared None with 0 in a bare TypeError.
        for field in dataclasses.fields(self):
            value, integer = getattr(self, field.name), field.type in (int, "int")
            if not (is_integer(value) if integer else is_real(value)):
                raise ConfigError(f"--{field.name}={value!r} must be {'a whole number' if integer else 'a number'}, "
                                  f"e.g. --{field.name}={field.default}.")
        if not 1 <= self.max_new_tokens < 2**31:  # positions are int32 on the device
            raise ConfigError(f"--max_new_tokens={self.max_new_tokens} must be between 1 and {2**31 - 1}.")
        if not -2**63 <= self.seed < 2**63:  # jax.random.key's range
            raise ConfigError(f"--seed={self.seed} must fit in 64 bits (between {-2**63} and {2**63 - 1}).")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"--temperature={self.temperature} must be >= 0 (0 = greedy).")
        if self.top_k < 0:
            raise ConfigError(f"--top_k={self.top_k} must be >= 0 (0 disables it).")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top_p={self.top_p} must be in (0, 1] (1 disables nucleus filtering).")
        if self.num_beams < 1:
            raise ConfigError(f"--num_beams={self.num_beams} must be >= 1 (1 = no beam search).")
        if self.num_samples < 1:
            raise ConfigError(f"--num_samples={self.num_samples} must be >= 1.")
        if not math.isfinite(self.alpha):  # beam search checked it only after the model had loaded
            raise ConfigError(f"--alpha={self.alpha} (beam search's length-penalty exponent) must be a finite "
                              "number, e.g. --alpha=0.6.")
        sampling = self.temperature > 0
        if self.num_beams > 1 and (self.top_k or self.top_p < 1 or self.num_samples > 1
                                   or self.seed != DecodingOptions.seed):
            # Named first: the sampling messages below asked for --temperature, which beams refuse.
            raise ConfigError(f"--top_k / --top_p / --num_samples / --seed do not apply to beam search (--num_beams="
                              f"{self.num_beams}); drop them, or set --num_beams=1 and --temperature>0 to sample.")
        if not sampling and (self.top_k or self.top_p < 1 or self.num_samples > 1):
            raise ConfigError("--top_k / --top_p / --num_samples only apply when sampling; add --temperature>0 "
                              "(e.g. --temperature=0.8).")
        # Greedy and beam search draw nothing: a seed sweep without --temperature gave identical runs.
        if not sampling and self.seed != DecodingOptions.seed:
            raise ConfigError(f"--seed={self.seed} only applies when sampling; add --temperature>0 (e.g. "
                              "--temperature=0.8) or drop --seed.")
        if self.num_beams == 1 and self.alpha != DecodingOptions.alpha:  # it was silently ignored
            raise ConfigError(f"--alpha={self.alpha} is beam search's length penalty; add --num_beams>1 (e.g. "
                              "--num_beams=4) or drop --alpha.")
        if self.num_beams > 1 and sampling:
            raise ConfigError(f"--num_beams={self.num_beams} is beam search, which does not sample; drop "
                              "--temperature (or set --num_beams=1).")


@dataclasses.dataclass(frozen=True)
class Completion:
    prompt: str
    text: str  # the continuation alone, cut at the first stop id (eos)
    token_ids: tuple[int, ...]
    log_prob: float  # log p(continuation | prompt) under the model (temperature 1)
    # A decoder's text goes on from the prompt; an encoder-decoder's (T5) is a sequence of its own,
    # decoded without a leading space, which printed straight after the prompt read "Hello.Hallo.".
    continues_prompt: bool = True


def generate_text(loaded, prompts: Sequence[str], options: DecodingOptions | None = None,
                  **option_overrides) -> list[list[Completion]]:
    """Completions of each prompt: one for greedy decoding, num_samples when sampling, num_beams
    (best first) for beam search. `loaded`: research.training.checkpoint_loading.LoadedModel."""
    import jax
    import numpy as np

    from research.decoding import beam_search, generate, vocab_limit_for

    options = dataclasses.replace(options or DecodingOptions(), **option_overrides)
    options.check()
    if isinstance(prompts, str) or not prompts:
        raise ConfigError("give at least one prompt (a list of strings), e.g. --prompt='Once upon a time'.")
    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.config
    if config.family == "encoder":
        raise ConfigError(f"{config.name} is an encoder-only model; generation needs a decoder or encoder_decoder.")
    _check_top_k(options.top_k, config.vocab_size, config.name)
    # An empty prompt starts where the evaluation harness starts one: a Hugging Face tokenizer's bos
    # (else eos), and for this codebase's own tokenizers the eos every pretraining document ends with.
    start = prefix_token(tokenizer)
    # A prompt is a model input: encoded with the special tokens the tokenizer adds by default (Llama's
    # <s>, T5's </s>), as transformers' generate gets them and the evaluation harness encodes contexts.
    encode_prompt = context_encoder(tokenizer, config.family)  # a T5 of this codebase's: + eos, as pretrained
    prompt_ids = [list(encode_prompt(p)) or [start] for p in prompts]
    eos = int(tokenizer.eos_id)
    # Where transformers' generate() stops too: the folder's generation_config.json ids beside eos
    # (a chat fine-tuning run's checkpoint: the same turn ends its export writes there).
    stops = list(dict.fromkeys([eos, *getattr(loaded, "stop_ids", ())]))
    # The model's vocabulary is padded above the tokenizer's (512 ids for 400 pieces in a tiny
    # run); a barely trained head can rank a padded id first, which no piece decodes.
    vocab_limit = vocab_limit_for(tokenizer, config.vocab_size)
    repeats = options.num_samples if options.temperature > 0 else 1
    batch = [ids for ids in prompt_ids for _ in range(repeats)]
    # A prefix-LM decoder was trained with its prefix attended both ways; read causally, the
    # prompt is one it never saw (LoadedModel.bidirectional_prompt, from the run's objective).
    bidirectional = bool(getattr(loaded, "bidirectional_prompt", False))
    if options.num_beams > 1:
        out = beam_search(model, loaded.params, batch, num_beams=options.num_beams,
                          max_new_tokens=options.max_new_tokens, alpha=options.alpha, stop_tokens=stops,
                          vocab_limit=vocab_limit, bidirectional_prompt=bidirectional)
        tokens, lengths, log_probs = jax.device_get((out.tokens_BWN, out.lengths_BW, out.log_probs_BW))
        rows = [[(tokens[b, w, :lengths[b, w]], float(log_probs[b, w])) for w in range(options.num_beams)
                 if np.isfinite(log_probs[b, w])] for b in range(len(batch))]
    else:
        out = generate(model, loaded.params, batch, max_new_tokens=options.max_new_tokens,
                       temperature=options.temperature, top_k=options.top_k, top_p=options.top_p, stop_tokens=stops,
                       rng=seed_key(options.seed), vocab_limit=vocab_limit, bidirectional_prompt=bidirectional)
        tokens, lengths, log_probs = jax.device_get((out.tokens_BN, out.lengths_B, out.log_probs_BN))
        rows = [[(tokens[b, :lengths[b]], float(log_probs[b].sum()))] for b in range(len(batch))]
    completions: list[list[Completion]] = [[] for _ in prompts]
    for b, candidates in enumerate(rows):
        index = b // repeats
        for ids, log_prob in candidates:
            ids = [int(i) for i in ids]
            ids = ids[:next((i for i, token in enumerate(ids) if token in stops), len(ids))]
            text = _continuation_text(tokenizer, prompt_ids[index], ids, config.family)
            completions[index].append(Completion(prompts[index], text, tuple(ids), log_prob,
                                                 continues_prompt=config.family == "decoder"))
    return completions


def seed_key(seed: int):
    """A PRNG key for any 64-bit --seed. jax.random.key keeps only a seed's low 32 bits without
    jax_enable_x64 (--seed=0 and --seed=2**32 sampled the same text): the high half is folded in;
    seeds in [0, 2**32) keep their keys (and samples) as before."""
    import jax
    key = jax.random.key(seed & 0xFFFFFFFF)
    high = (seed >> 32) & 0xFFFFFFFF
    return jax.random.fold_in(key, high) if high else key


def _continuation_text(tokenizer, prompt_ids: list[int], new_ids: list[int], family: str) -> str:
    """The continuation as text. A decoder's continuation is decoded together with its prompt and
    the prompt's text removed, so a word-initial space (SentencePiece's ▁) is not lost."""
    if family != "decoder":
        return tokenizer.decode(new_ids)
    prompt_text, full = tokenizer.decode(prompt_ids), tokenizer.decode(prompt_ids + new_ids)
    return full[len(prompt_text):] if full.startswith(prompt_text) else tokenizer.decode(new_ids)


def format_completions(completions: Sequence[Sequence[Completion]], options: DecodingOptions) -> str:
    """Each prompt followed by its continuation(s) (an encoder-decoder's output after " => "); several
    are numbered with their log-probability."""
    def shown(c: Completion) -> str:
        return c.prompt + c.text if c.continues_prompt else f"{c.prompt} => {c.text}"

    blocks = []
    for candidates in completions:
        if len(candidates) == 1:
            blocks.append(shown(candidates[0]))
            continue
        kind = "beam" if options.num_beams > 1 else "sample"
        blocks.append("\n".join(f"[{kind} {i} log p={c.log_prob:.2f}] {shown(c)}" for i, c in enumerate(candidates)))
    return "\n\n".join(blocks)


def _read_prompts(prompt_flags: Sequence[str], prompt_file: str | None) -> list[str]:
    if prompt_flags and prompt_file:
        raise ConfigError("give --prompt or --prompt_file, not both.")
    if prompt_file:
        try:
            with open(prompt_file, encoding="utf-8-sig") as f:  # a Windows editor's byte-order mark is no prompt text
                prompts = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as error:
            raise ConfigError(f"--prompt_file={prompt_file!r}: {error.strerror}.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--prompt_file={prompt_file!r} is not UTF-8 text.") from None
        if not prompts:
            raise ConfigError(f"--prompt_file={prompt_file!r} holds no prompt (one per non-empty line).")
        return prompts
    if not prompt_flags:
        raise ConfigError("give a prompt: --prompt='Once upon a time' (repeatable) or --prompt_file=FILE.")
    return list(prompt_flags)


def _define_flags() -> None:
    # Defined only when run as a program (as experiments.evaluate), so importing adds no flags.
    flags.DEFINE_string("checkpoint", None, "A training run's workdir (or its checkpoints/ folder).")
    flags.DEFINE_string("step", None, "Checkpoint step (default: the latest; 'best': the kept step with the "
                        "lowest eval loss).")
    flags.DEFINE_string("hf_dir", None, "A Hugging Face checkpoint folder, instead of --checkpoint.")
    flags.DEFINE_string("tokenizer", None, "'char', a SentencePiece .model, or a HF tokenizer folder.")
    flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for a batch).")
    flags.DEFINE_string("prompt_file", None, "A UTF-8 file of prompts, one per line.")
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt at most.")
    flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples.")
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
    flags.DEFINE_integer("num_samples", 1, "Sampled continuations per prompt.")
    flags.DEFINE_integer("num_beams", 1, "Beam search width (1 = off).")
    flags.DEFINE_float("alpha", 0.6, "Beam search length-penalty exponent.")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: as trained).")


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag (quote the prompt).")
    ctrl_c_after_compiles()  # a Ctrl-C mid-compile must not end in a segfault at exit
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from research.data import DataError

    try:
        options = DecodingOptions(max_new_tokens=f.max_new_tokens, temperature=f.temperature, top_k=f.top_k,
                                  top_p=f.top_p, num_beams=f.num_beams, alpha=f.alpha, num_samples=f.num_samples,
                                  seed=f.seed)
        options.check()
        prompts = _read_prompts(f.prompt, f.prompt_file)
        check_top_k_before_loading(options.top_k, checkpoint=f.checkpoint, hf_dir=f.hf_dir)
        from research.training.checkpoint_loading import parse_step
        loaded = load_model(checkpoint=f.checkpoint, step=parse_step(f.step), hf_dir=f.hf_dir, tokenizer=f.tokenizer,
                            dtype=f.dtype)
        print(format_completions(generate_text(loaded, prompts, options), options))
    except (ConfigError, DataError) as error:
        sys.exit(f"error: {error}")


def check_top_k_before_loading(top_k: int, *, checkpoint: str | None = None, hf_dir: str | None = None) -> None:
    """--top_k against the model's vocabulary, read from its config alone: checked after the weights
    loaded (minutes for a large checkpoint), where the module docstring promised before. A source
    this cannot read is left to load_model, which says why."""
    if not top_k or (checkpoint is None) == (hf_dir is None):
        return
    try:
        if hf_dir is not None:  # config.json's vocab_size (hf_model_config may read weights to check a tied head)
            from research.models.hf.checkpoint_files import read_hf_config
            vocab_size, name = int(read_hf_config(hf_dir)["vocab_size"]), hf_dir
        else:
            from research.training.checkpoint_loading import model_config_from_run, run_config
            config = model_config_from_run(run_config(checkpoint))
            vocab_size, name = config.vocab_size, config.name
    except (ConfigError, OSError, ValueError, KeyError, TypeError):
        return
    _check_top_k(top_k, vocab_size, name)


def _check_top_k(top_k: int, vocab_size: int, name: str) -> None:
    if top_k > vocab_size:
        raise ConfigError(f"--top_k={top_k} exceeds the vocabulary ({vocab_size}) of {name}.")


def load_model(*, checkpoint: str | None = None, step: Step = None, hf_dir: str | None = None,
               tokenizer: str | None = None, dtype: str | None = None):
    """A run's checkpoint or a Hugging Face folder (exactly one), as a LoadedModel."""
    from research.training.checkpoint_loading import load_checkpoint, load_hf

    if (checkpoint is None) == (hf_dir is None):
        raise ConfigError("give exactly one of --checkpoint=RUN_DIR and --hf_dir=HF_FOLDER.")
    overrides = {"dtype": dtype} if dtype else {}
    if checkpoint is not None:
        return load_checkpoint(checkpoint, step=step, tokenizer=tokenizer, **overrides)
    if step is not None:
        raise ConfigError("--step selects a checkpoint step; it does not apply to --hf_dir.")
    return load_hf(hf_dir, tokenizer=tokenizer, **overrides)


if __name__ == "__main__":
    from experiments.cli import parse_flags
    _define_flags()
    app.run(main, flags_parser=parse_flags)
