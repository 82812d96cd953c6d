"""Generation from the model zoo: greedy, sampled (temperature, top-k, top-p) and beam search.

    out = generate(model, params, [[5, 6, 7], [8, 9]], max_new_tokens=32)             # greedy
    out = generate(model, params, prompts, max_new_tokens=32, temperature=0.8, top_p=0.95,
                   stop_tokens=[eos_id], rng=jax.random.key(0))
    beams = beam_search(model, params, prompts, num_beams=4, max_new_tokens=32, alpha=0.6)
    out = generate(model, params, prompts, max_new_tokens=32,
                   vocab_limit=vocab_limit_for(tokenizer, model.config.vocab_size))  # no padded ids

Prompts are lists of token ids of any lengths; both searches prefill once and then run a
jitted `lax.while_loop` of single-token steps over the KV cache, for decoder-only and
encoder-decoder models alike (research/decoding/adapters.py). Model vocabularies are often
padded above the tokenizer's; vocab_limit keeps those ids (which no piece decodes) from ever
being chosen.
"""
from research.decoding.beam_search import BeamSearchOutput, beam_search, length_penalty
from research.decoding.prompts import PaddedPrompts, pad_prompts, vocab_limit_for
from research.decoding.sampling import GenerateOutput, filter_logits, generate

__all__ = ["BeamSearchOutput", "GenerateOutput", "PaddedPrompts", "beam_search", "filter_logits", "generate",
           "length_penalty", "pad_prompts", "vocab_limit_for"]
