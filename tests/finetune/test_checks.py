"""Bad values a user can give are one line before any work, and leave no workdir behind."""
import time

import pytest

from research.finetune import finetune_and_evaluate
from research.models.config import ConfigError

from tests.finetune.conftest import tiny_config

CASES = {
    "seq_len past max_len": ("dpo_tiny", {"train.seq_len": 256},
                             r"^train.seq_len=256 must lie in \[1, 128\], the max_len of gpt2-tiny; set "
                             r"--config.train.seq_len=128 or less\.$"),
    "huge seq_len": ("sft_tiny", {"train.seq_len": 100000}, r"^train.seq_len=100000 must lie in \[1, 128\]"),
    "export of a head model": ("reward_tiny", {"export_dir": "/tmp/x"},
                               r"^export_dir='/tmp/x': path='reward' trains a model with a task head, .*unset export_dir"),
    "export of a tagger": ("tag_tiny", {"export_dir": "/tmp/x"}, r"^export_dir='/tmp/x': path='token_classification'"),
    "no eval set": ("sft_tiny", {"data.num_eval": 0}, r"^data.num_eval=0 must be positive: .*--config.data.num_eval=128"),
    "no train set": ("classify_tiny", {"data.num_train": 0}, r"^data.num_train=0 must be positive"),
    "SimPO reference": ("simpo_tiny", {"preference.reference": "checkpoint:/nonexistent"},
                        r"^preference.reference='checkpoint:/nonexistent' is unused: SimPO needs no reference model; "
                        r"unset --config.preference.reference"),
    "no generation tokens": ("sft_tiny", {"generation_tokens": 0},
                             r"^generation_tokens=0 must be positive: .*--config.generation_tokens=16"),
    "negative generation prompts": ("sft_tiny", {"generation_prompts": -1}, r"^generation_prompts=-1 must be >= 0"),
    "GRPO temperature 0": ("grpo_tiny", {"grpo.temperature": 0.0},
                           r"^grpo.temperature=0.0 must be positive: .*--config.grpo.temperature=1.0"),
    "GRPO negative KL weight": ("grpo_tiny", {"grpo.kl_coef": -1.0},
                                r"^grpo.kl_coef=-1.0 must be >= 0: .*--config.grpo.kl_coef=0.05"),
    "GRPO no new tokens": ("grpo_tiny", {"grpo.max_new_tokens": 0},
                           r"^grpo.max_new_tokens=0 must be positive: .*--config.grpo.max_new_tokens=8"),
    "LoRA dropout without adapters": ("sft_tiny", {"lora.dropout": 0.1},
                                      r"^lora.dropout=0.1 needs lora.rank > 0: rank 0 is full fine-tuning, .*"
                                      r"--config.lora.rank=8, or lora.dropout=0\.$"),
    # Adapters that change nothing: merge_lora adapts the frozen base's kernels only (not an
    # embedding; not a fresh head, which trains in full).
    "LoRA on the embedding": ("sft_lora_tiny", {"lora.targets": ("token_embed",)},
                              r"^lora.targets pattern 'token_embed' matches 'token_embed/embedding', which is not a "
                              r"projection kernel .*e\.g\. 'attention/query/kernel\$'\.$"),
    "LoRA on a fresh reward head": ("reward_tiny", {"lora.rank": 8, "lora.targets": ("head/kernel$",)},
                                    r"^lora.targets pattern 'head/kernel\$' matches no parameter"),
    "LoRA on a fresh classifier": ("classify_tiny", {"lora.rank": 8, "lora.targets": ("classifier",)},
                                   r"^lora.targets pattern 'classifier' matches no parameter"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_value_is_one_line_up_front(case, tmp_path):
    preset, overrides, message = CASES[case]
    config = tiny_config(preset)
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message) as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)
    assert time.perf_counter() - start < 20  # before any compilation or training
    assert not (tmp_path / "run").exists()
