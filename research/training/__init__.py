"""Training: one sharded train loop for every model family.

    state.py          TrainState, created already sharded
    optimizers.py     AdamW / Adafactor / Lion, warmup+cosine or warmup-stable-decay, decay mask
    losses.py         objectives: pure (model, params, batch, rng) -> (loss, aux)
    train_step.py     the pure, jitted train / eval steps with gradient accumulation
    partitioning.py   mesh, state and batch shardings
    checkpointing.py  orbax: async saves, keep-last / keep-best, data-iterator state, config
    checkpoint_loading.py  a run's checkpoint or a Hugging Face folder -> model, params, tokenizer (inference)
    metrics.py        JSONL + TensorBoard, model size, tokens/s, MFU
    loop.py           train_and_evaluate(config, workdir); train_together(configs, workdirs): K models, one program
    train_config.py   TrainConfig: the loop's own settings (config.train)
    programs.py       the compiled programs a run calls: a block of steps, evaluation, the finite check
    blocks.py         several steps per compiled call (lax.scan of the train step)
    evaluation.py     the loop's evaluation: fixed validation batches, several per compiled call
    model_batch.py    K same-shape models: stacked states, vmapped step, per-model optimizer numbers
    workdir.py        a workdir checked and bound to one run (run.json); schedule change on resume
    preemption.py     Ctrl-C / SIGTERM: save at the end of the current block and stop
"""
from research.training.loop import TrainingDivergedError, train_and_evaluate, train_together
from research.training.train_config import TrainConfig

__all__ = ["TrainConfig", "TrainingDivergedError", "train_and_evaluate", "train_together"]
