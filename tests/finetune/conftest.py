"""Tiny fine-tuning configs: the experiment presets with a one-layer model and few steps."""
import os

from experiments.configs.finetune import get_config
from tests.training.conftest import compilation_cache  # noqa: F401  (a fixture: the kill test's XLA cache)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A one-layer model and short rows compile in seconds; batch 8 divides the 8 test devices.
TINY_MODEL = dict(num_layers=1, d_model=32)


def tiny_config(preset, num_steps=8, **train):
    config = get_config(preset)
    config.model.update(TINY_MODEL)
    # eval_batches and generation_prompts only where the preset reads them (None: GRPO's
    # eval_batches, the classifiers' generation_*; a value there is warned about).
    train = dict(dict(eval_batches=2) if config.train.eval_batches is not None else {}, **train)
    config.train.update(dict(num_steps=num_steps, batch_size=8, seq_len=48, log_every_steps=1,
                             eval_every_steps=num_steps, **train))
    config.checkpoint.every_steps = num_steps
    # The presets' warmup within the few steps: check_config refuses a warmup past num_steps.
    config.opt.warmup_steps = min(config.opt.warmup_steps, num_steps)
    config.data.update(dict(num_train=256, num_eval=32))
    if config.generation_prompts is not None:
        config.generation_prompts = 0
    return config
