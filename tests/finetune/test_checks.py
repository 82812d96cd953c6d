"""Bad values a user can give are one line before any work, and leave no workdir behind."""
import time

import pytest

from experiments.configs.finetune import get_config
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
    # A typo in a path: on a workdir holding a finished run these were refused as "another run" (delete it).
    "mistyped train file": ("sft_tiny", {"data.train_file": "/nonexistent/train.jsonl"},
                            r"^data.train_file='/nonexistent/train.jsonl': no such JSONL file; check the path\.$"),
    "missing base": ("sft_tiny", {"init": "checkpoint:/nonexistent"},
                     r"^init='checkpoint:/nonexistent': '/nonexistent' is not a folder"),
    "missing reward model": ("grpo_tiny", {"grpo.reward": "reward_model:/nonexistent"},
                             r"^grpo.reward='reward_model:/nonexistent': '/nonexistent' is not a folder"),
    "missing domain folder": ("domain_tiny", {"data.folder": "/nonexistent"},
                              r"^data.folder='/nonexistent' is not a folder; give a folder of .txt / .md files\.$"),
    "missing reference": ("dpo_tiny", {"preference.reference": "checkpoint:/nonexistent"},
                          r"^preference.reference='checkpoint:/nonexistent': '/nonexistent' is not a folder"),
    "no generation tokens": ("sft_tiny", {"generation_tokens": 0},
                             r"^generation_tokens=0 must be positive: .*--config.generation_tokens=16"),
    "negative generation prompts": ("sft_tiny", {"generation_prompts": -1}, r"^generation_prompts=-1 must be >= 0"),
    "GRPO temperature 0": ("grpo_tiny", {"grpo.temperature": 0.0},
                           r"^grpo.temperature=0.0 must be positive: .*--config.grpo.temperature=1.0"),
    "GRPO negative KL weight": ("grpo_tiny", {"grpo.kl_coef": -1.0},
                                r"^grpo.kl_coef=-1.0 must be finite and >= 0: .*--config.grpo.kl_coef=0.05"),
    # nan and inf passed the comparisons: the run was claimed and stopped at step 1 on a NaN loss,
    # advising a lower learning rate.
    "GRPO nan KL weight": ("grpo_tiny", {"grpo.kl_coef": float("nan")}, r"^grpo.kl_coef=nan must be finite and >= 0"),
    "GRPO nan temperature": ("grpo_tiny", {"grpo.temperature": float("nan")},
                             r"^grpo.temperature=nan must be positive"),
    "GRPO inf temperature": ("grpo_tiny", {"grpo.temperature": float("inf")},
                             r"^grpo.temperature=inf must be positive"),
    "DPO nan beta": ("dpo_tiny", {"preference.beta": float("nan")}, r"^preference.beta=nan must be positive and finite"),
    "DPO inf beta": ("dpo_tiny", {"preference.beta": float("inf")}, r"^preference.beta=inf must be positive and finite"),
    "SimPO nan gamma": ("simpo_tiny", {"preference.simpo_gamma": float("nan")},
                        r"^preference.simpo_gamma=nan must be a finite number"),
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
    "float16 master weights": ("dpo_tiny", {"model.param_dtype": "float16", "opt.warmup_steps": 0},
                               r"^model.param_dtype=float16: training keeps float32 master weights"),
    # train.z_loss was accepted and ignored where the loss has no LM softmax (PaLM's log Z regulariser).
    "z_loss on a reward head": ("reward_tiny", {"train.z_loss": 1e-4, "opt.warmup_steps": 0},
                                r"^train.z_loss=0.0001 has no effect on path='reward': its loss \(a scalar reward "
                                r"head's Bradley-Terry loss\) has no LM softmax to regularise; set "
                                r"--config.train.z_loss=0\.$"),
    "z_loss on a classifier": ("classify_tiny", {"train.z_loss": 1e-4, "opt.warmup_steps": 0},
                               r"^train.z_loss=0.0001 has no effect on path='classification'"),
    "z_loss on a tagger": ("tag_tiny", {"train.z_loss": 1e-4, "opt.warmup_steps": 0},
                           r"^train.z_loss=0.0001 has no effect on path='token_classification'"),
    "negative z_loss": ("dpo_tiny", {"train.z_loss": -1.0, "opt.warmup_steps": 0},
                        r"^train.z_loss=-1.0 must be a finite number >= 0"),
    # nan passed "< 0" and was told it "has no effect" on a reward head.
    "nan z_loss": ("reward_tiny", {"train.z_loss": float("nan"), "opt.warmup_steps": 0},
                   r"^train.z_loss=nan must be a finite number >= 0"),
    # A classifier or tagger ignored data.synthetic: any value, a typo included, trained on its own set.
    "another path's synthetic set": ("classify_tiny", {"data.synthetic": "capitals", "opt.warmup_steps": 0},
                                     r"^data.synthetic='capitals' is not a synthetic set of path='classification'; "
                                     r"choose one of \('sentiment',\) \(e.g. --config.data.synthetic=sentiment\), "
                                     r"or give data.train_file and data.eval_file\.$"),
    "mistyped synthetic set": ("tag_tiny", {"data.synthetic": "sentimnet", "opt.warmup_steps": 0},
                               r"^data.synthetic='sentimnet' is not a synthetic set of path='token_classification'"),
    "mistyped preference rule": ("sft_tiny", {"data.synthetic": "arithmetc", "opt.warmup_steps": 0},
                                 r"^data.synthetic='arithmetc' is not a synthetic set of path='sft'"),
    # 2,500 arithmetic prompts, 311 held out from training: more eval prompts would repeat some.
    "more eval prompts than held out": ("sft_tiny", {"data.num_eval": 400, "opt.warmup_steps": 0},
                                        r"^data.num_eval=400: the synthetic 'arithmetic' set holds 311 prompts apart "
                                        r"from its training prompts; set --config.data.num_eval=311 or less"),
    "LoRA dropout with dropout disabled": ("dpo_lora_tiny", {"lora.dropout": 0.1, "opt.warmup_steps": 0},
                                           r"^lora.dropout=0.1 has no effect: disable_dropout is on for "
                                           r"path='preference' .*--config.disable_dropout=False\.$"),
    "GRPO no room for prompts": ("grpo_tiny", {"train.seq_len": 8, "opt.warmup_steps": 0},
                                 r"^train.seq_len=8 leaves no room for prompts after grpo.max_new_tokens=8; raise "
                                 r"--config.train.seq_len above 9\.$"),
    "no beams": ("t5_tiny", {"num_beams": 0, "opt.warmup_steps": 0}, r"^num_beams=0 must be >= 1: "),
    # JAX's IndivisibleError from placing the params, after compiling the initializer:
    "tensor split past the heads": ("sft_tiny", {"mesh.shape": (1, 1, 8), "opt.warmup_steps": 0},
                                    r"^model gpt2-tiny: num_heads=4 does not split over mesh axis tensor of size 8"),
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


def _jsonl(path, records):
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("preset, files, message", [
    # The eval set was the preset's synthetic one, silently (keep-best ranked checkpoints on it).
    ("sft_tiny", {"train_file": [{"instruction": "2+2=", "response": "4"}]},
     r"^data.train_file is given but data.eval_file is not: the eval set would be the preset's synthetic "
     r"'arithmetic' data"),
    # The arithmetic rule failed on these at the first evaluation, after training.
    ("grpo_tiny", {"train_file": [{"prompt": "Capital of France?"}], "eval_file": [{"prompt": "1+2="}],
                   "synthetic": "arithmetic"},
     r"train.jsonl:1: grpo.reward='rule' \(data.synthetic='arithmetic'\) cannot read this prompt"),
    # 9 tags: no setting could raise the count, read with a default of 3.
    ("tag_tiny", {"train_file": [{"words": ["a", "1"], "labels": [5, 0]}], "eval_file": [{"words": ["b"], "labels": [0]}]},
     r"train.jsonl:1: label 5 must be an int in \[0, 3\) \(--config.num_token_labels=3; raise it"),
    # Nulls and numbers were turned into the text 'None' / '7' by str(), trained on and scored against.
    ("t5_tiny", {"train_file": [{"input": "review: good day", "target": "positive"}],
                 "eval_file": [{"input": "review: bad day", "target": None}]},
     r"eval.jsonl:1: field 'target' must be a string, got NoneType None\.$"),
    ("classify_tiny", {"train_file": [{"text": None, "label": 1}], "eval_file": [{"text": "a", "label": 0}]},
     r"train.jsonl:1: field 'text' must be a string, got NoneType None\.$"),
    ("tag_tiny", {"train_file": [{"words": ["a", 7], "labels": [1, 0]}],
                  "eval_file": [{"words": ["b"], "labels": [0]}]},
     r"train.jsonl:1: field 'words\[1\]' must be a string, got int 7\.$"),
])
def test_data_files_that_do_not_fit_the_preset_are_one_line(preset, files, message, tmp_path):
    config = tiny_config(preset)
    for key, value in files.items():
        config.data[key] = value if isinstance(value, str) else _jsonl(tmp_path / f"{key.split('_')[0]}.jsonl", value)
    with pytest.raises(ConfigError, match=message) as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_a_tag_set_of_its_own_size_trains_with_num_token_labels(tmp_path):
    """A key of the preset, so --config.num_token_labels=9 can set it (no key existed: the count was
    read with a default of 3, and the command line refused the flag)."""
    from research.finetune.run import build_job
    config = tiny_config("tag_tiny")
    assert config.num_token_labels == 3
    config.num_token_labels = 9
    path = _jsonl(tmp_path / "ner.jsonl", [{"words": ["a", "1"], "labels": [8, 0]}])
    config.data.update(dict(train_file=path, eval_file=path))
    job = build_job(config)
    assert next(job.train_batches(0))["labels"][0][0] == 8
    assert job.initial_params()["head"]["kernel"].shape[-1] == 9


# (preset, model preset or None): every path kind, and the head models on each body family
# (a head model's body holds only what its forward pass uses: no LM head, pooler or MLM head).
PATH_MODELS = [("sft_tiny", None), ("sft_tiny", "llama-tiny"), ("t5_tiny", None), ("classify_tiny", None),
               ("tag_tiny", None), ("reward_tiny", None), ("reward_tiny", "llama-tiny"),
               ("reward_tiny", "bert-test"), ("dpo_tiny", None), ("grpo_tiny", None), ("domain_tiny", None),
               ("domain_tiny", "bert-test")]


@pytest.mark.parametrize("preset, model", PATH_MODELS)
def test_the_pre_claim_lora_check_sees_the_tree_training_adapts(preset, model, tmp_path):
    # check_lora_targets matched patterns against the zoo model wrapped under "body", with the
    # LM head, pooler and MLM head a head model's body lacks: a pattern matching only those
    # passed the check and failed after the claim (on a workdir holding a run: "another run").
    import jax

    from research.finetune.checks import lora_check_tree
    from research.finetune.lora import _is_leaf, _path, split_trained
    from research.finetune.run import build_job

    config = tiny_config(preset)
    if model:
        config.model.preset = model
    if preset == "domain_tiny":
        from tests.finetune.test_domain import domain_folder
        config.tokenizer = "char"
        config.data.update(dict(folder=str(domain_folder(tmp_path / "notes")), data_dir=str(tmp_path / "data"),
                                validation_fraction=0.25))
    job = build_job(config)
    adapted, _ = split_trained(job.abstract_params, job.new_modules)  # as trainer.run_job splits it

    def shapes(tree):
        return {_path(p): getattr(v, "value", v).shape
                for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)[0]}
    assert shapes(lora_check_tree(config)) == shapes(adapted)


@pytest.mark.parametrize("preset, model, pattern", [("reward_tiny", "llama-tiny", "lm_head/kernel$"),
                                                    ("tag_tiny", None, "pooler/kernel$"),
                                                    ("tag_tiny", None, "mlm_head/transform/kernel$")])
def test_a_target_only_the_zoo_model_has_is_refused_before_the_claim(preset, model, pattern):
    from research.finetune.checks import check_config

    config = tiny_config(preset)
    config.lora.rank = 8
    config.lora.targets = (pattern,)
    if model:
        config.model.preset = model
    with pytest.raises(ConfigError, match=rf"^lora.targets pattern '{pattern.replace('$', chr(92) + '$')}' matches "
                                          r"no parameter; parameter paths look like \['body/"):
        check_config(config)


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_export_dir_that_is_or_lies_under_a_file_is_one_line_before_the_claim(where, tmp_path):
    """It was found after the last step, as a raw FileExistsError / NotADirectoryError."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    config = tiny_config("sft_tiny", num_steps=2)
    config.opt.warmup_steps = 0
    config.export_dir = str(afile) if where == "file" else str(afile / "hf" / "model")
    message = rf"^export_dir='{config.export_dir}': {afile} is a file, not a directory;"
    with pytest.raises(ConfigError, match=message + " give a writable folder, or a new path in one") as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_an_export_dir_in_a_writable_folder_passes():
    import tempfile

    from research.finetune.checks import check_export_dir
    with tempfile.TemporaryDirectory() as folder:
        check_export_dir(folder)  # an existing folder
        check_export_dir(f"{folder}/new/hf")  # created under one


@pytest.mark.parametrize("key, value, message", [
    ("opt.warmup_steps", 10, r"^opt.warmup_steps=10 must lie in \[0, total_steps=8\]\.$"),
    ("opt.learning_rate", -1.0, r"^opt.learning_rate=-1.0 must be a positive finite number"),
    ("checkpoint.every_steps", 0, r"^checkpoint.every_steps=0 must be positive\.$"),
    ("train.batch_size", 0, r"^train.batch_size=0 must be positive\.$"),
])
def test_the_loops_own_settings_are_refused_before_the_claim_and_any_loading(key, value, message, tmp_path,
                                                                            monkeypatch):
    """They were refused in run_job, after the workdir was claimed and the job had loaded its base
    model, data and reward models."""
    from research.finetune import base_model, run, run_identity

    def never(*args, **kwargs):
        raise AssertionError("reached past check_config")
    for module, name in ((run_identity, "claim_workdir"), (run, "build_job"), (base_model, "load_base_model")):
        monkeypatch.setattr(module, name, never)
    config = tiny_config("dpo_tiny")
    section, field = key.split(".")
    config[section][field] = value
    with pytest.raises(ConfigError, match=message) as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


@pytest.mark.parametrize("preset, path", [("classify_tiny", "classification"), ("tag_tiny", "token_classification"),
                                          ("t5_tiny", "text_to_text")])
def test_a_chat_template_on_a_path_that_reads_plain_text_is_one_warning(preset, path, caplog):
    """The classifiers and text-to-text read plain text: chatml was accepted and ignored without a
    word. Warned, not refused: the value is in the run's identity, so a run started with it resumes."""
    import logging

    from research.finetune.checks import check_config
    config = tiny_config(preset)
    config.data.chat_template = "chatml"
    with caplog.at_level(logging.WARNING, logger="research.finetune.checks"):
        check_config(config)
        config.data.chat_template = "plain"
        check_config(config)
    assert [r.getMessage() for r in caplog.records] == [
        f"data.chat_template='chatml' has no effect on path='{path}': only sft, preference, reward, grpo render chat "
        "records; the records are read as plain text."]


@pytest.mark.parametrize("preset, setting, value, message", [
    ("classify_tiny", "generation_tokens", 16,
     "generation_tokens=16 has no effect on path='classification': its evaluation generates no text (it scores a "
     "classifier's predicted labels); ignored (this path's presets leave --config.generation_tokens unset)."),
    ("tag_tiny", "generation_prompts", 4,
     "generation_prompts=4 has no effect on path='token_classification': its evaluation generates no text (it "
     "scores a tagger's predicted tags); ignored (this path's presets leave --config.generation_prompts unset)."),
    ("reward_tiny", "generation_prompts", 0,
     "generation_prompts=0 has no effect on path='reward': its evaluation generates no text (it scores a reward "
     "head's loss and accuracy on pairs); ignored (this path's presets leave --config.generation_prompts "
     "unset)."),
    ("grpo_tiny", "train.eval_batches", 4,
     "train.eval_batches=4 has no effect on path='grpo': its evaluation scores the greedy completions of the first "
     "1 eval prompts (generation_prompts, at least 1) and has no loss batches; ignored (the grpo presets leave it "
     "unset; --config.generation_prompts sets the prompts)."),
])
def test_a_setting_the_path_never_reads_is_one_warning(preset, setting, value, message, caplog):
    """These were accepted and ignored without a word: nothing in a classifier's, tagger's or reward
    model's evaluation generates, and GRPO's evaluation counts prompts, not batches. The presets
    leave them None (no warning); a value is warned about, not refused, so a script that sets them
    for every preset still runs."""
    import logging

    from research.finetune.checks import check_config
    from research.finetune.trainer import loop_configs
    config = tiny_config(preset)
    section, _, field = setting.rpartition(".")
    owner = config[section] if section else config
    assert owner[field] is None
    with caplog.at_level(logging.WARNING, logger="research.finetune.checks"):
        check_config(config)  # the preset as it is: no warning
        assert caplog.records == []
        owner[field] = value
        check_config(config)
    assert [r.getMessage() for r in caplog.records] == [message]
    assert loop_configs(config)[0].eval_batches == (value if setting == "train.eval_batches" else 2)


@pytest.mark.parametrize("hf_config, message", [
    # A BERT folder of the policy's vocabulary: its log-probs see the next token; DPO trained on them.
    (dict(model_type="bert", vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
          intermediate_size=64),
     r"holds 'reference', an encoder-only model; a reference scores replies token by token"),
    # Positions up to 40 under rows of 48: a ValueError traceback at the step-0 scoring, after the claim.
    (dict(model_type="gpt2", vocab_size=512, n_embd=32, n_layer=1, n_head=2, n_positions=40),
     r"holds 'reference' with max_len=40 < train.seq_len=48; set --config.train.seq_len=40 or less"),
])
def test_a_reference_that_cannot_score_the_policys_rows_is_one_line_before_the_claim(hf_config, message, tmp_path):
    import transformers
    folder = tmp_path / "reference"
    hf = transformers.AutoConfig.for_model(**hf_config)
    kind = transformers.BertForMaskedLM if hf.model_type == "bert" else transformers.GPT2LMHeadModel
    kind(hf).save_pretrained(folder)  # random weights; the check reads config.json alone
    config = tiny_config("dpo_tiny")
    config.preference.reference = f"hf:{folder}"
    with pytest.raises(ConfigError, match=rf"^preference.reference='hf:{folder}' {message}") as error:
        finetune_and_evaluate(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_an_export_no_hugging_face_decoder_computes_is_refused_before_training(tmp_path):
    """export_dir on a model to_hf cannot write (an emergence size: rope with layernorm, biases, an
    ungated MLP) failed after all its training; on a decoder trained with prefix_lm (its prompt read
    both ways) it wrote a causal GPT-2 that transformers reads otherwise, without a word. Both are
    refused by check_config, before the claim; an exportable run still passes."""
    import json

    from research.finetune.checks import check_config
    run = tmp_path / "pretrained"
    (run / "checkpoints" / "4" / "state").mkdir(parents=True)
    (run / "checkpoints" / "4" / "config").mkdir()
    (run / "checkpoints" / "4" / "config" / "metadata").write_text(
        json.dumps({"model": {"preset": "scale-1e4", "position": "rope"}}))
    config = get_config("sft_tiny")
    config.init, config.tokenizer, config.export_dir = f"checkpoint:{run}", "", str(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"^export_dir=.*: scale-1e4: cannot be expressed as LLaMA: norm='layernorm'"):
        check_config(config.to_dict())
    domain = get_config("domain_tiny")
    domain.export_dir = str(tmp_path / "hf")
    check_config(domain.to_dict())  # its own objective, causal: exportable
    domain.data.objective = "prefix_lm"
    with pytest.raises(ConfigError, match=r"^export_dir=.*: data.objective='prefix_lm' trains a decoder that reads"):
        check_config(domain.to_dict())
