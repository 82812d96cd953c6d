"""A tiny trained run shared by the tests that load checkpoints (evaluation, generation)."""
from __future__ import annotations


def train_tiny_gpt(workdir: str, num_steps: int) -> str:
    """A 1-layer GPT trained for `num_steps` steps (a checkpoint at every step) with its own
    SentencePiece tokenizer, in `workdir`; returns `workdir`."""
    from experiments.configs import pretrain
    from research.training import train_and_evaluate
    config = pretrain.get_config("gpt_tiny")
    config.model.update(num_layers=1, dtype="float32")
    config.data.max_documents = 20
    config.data.tokenizer.update(vocab_size=400, max_training_chars=60_000)
    config.train.update(num_steps=num_steps, batch_size=8, seq_len=32, log_every_steps=1, eval_every_steps=1,
                        eval_batches=1, progress_bar=False, peak_flops=1e9)
    config.opt.warmup_steps = 1
    config.checkpoint.every_steps = 1
    train_and_evaluate(config, workdir)
    return workdir
