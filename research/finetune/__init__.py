"""Fine-tuning on the pretraining loop: SFT, LoRA, reward models, DPO / IPO / SimPO, GRPO,
classification and text-to-text tasks.

    records.py            JSONL records (file:line errors), grain batching and packing
    sft_data.py           chat records -> causal-LM examples, loss on response tokens only
    preference_data.py    preference pairs (JSONL or synthetic with a checkable rule)
    preference_losses.py  DPO / IPO / SimPO and Bradley-Terry as pure losses
    lora.py               LoRA as a parameter transform + optimizer mask; merge for export
    heads.py              zoo model + scalar (reward) head / token classifier
    base_model.py         start from a seed, a training checkpoint or a Hugging Face folder
    trainer.py            the loop around research.training's train step
    paths.py, task_paths.py, grpo.py   one FinetuneJob builder per path
    run.py                finetune_and_evaluate(config, workdir)
"""
from research.finetune.lora import LoraConfig, init_lora, merge_lora
from research.finetune.run import PATHS, build_job, finetune_and_evaluate

__all__ = ["PATHS", "LoraConfig", "build_job", "finetune_and_evaluate", "init_lora", "merge_lora"]
