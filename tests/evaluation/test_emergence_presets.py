"""The emergence study's presets (experiments/configs/emergence.py): what each plans, how they
differ from one another, the dry run's estimate, and the cpu_tiny tokenizer."""
from __future__ import annotations

import json
import re

import pytest

from experiments import emergence, emergence_plan
from experiments.configs import emergence as configs
from research.evaluation.task_spec import TaskError
from research.models.config import ConfigError
from research.models import sizing


def test_cpu_tiny_config_plans_a_ladder_with_a_learning_rate_per_width():
    config = configs.get_config("cpu_tiny")
    plan = emergence.plan_study(config)
    params = [sizing.param_counts(m).non_embedding for m in plan.sizes.values()]
    assert len(params) >= 5 and params == sorted(params) and params[-1] > 10 * params[0]
    # The ladder's own widths: preset scale-1e5 (2 layers) at d_model 24, 32, 48, 64, every head of
    # 8 dimensions (scale-1e5 itself has 4 heads of 16 at d_model 64).
    assert [(m.d_model, m.num_layers) for m in plan.sizes.values()] == [(28, 1), (24, 2), (32, 2), (48, 2), (64, 2)]
    assert {m.d_model // m.num_heads for m in list(plan.sizes.values())[1:]} == {8}
    assert {m.init_scheme for m in plan.sizes.values()} == {"t5"}  # config.model reaches the ladder's own widths
    # The width rule, floored: learning_rate x max(lr_reference_width / d_model, lr_scale_floor), so
    # rates fall with width down to the reference rate (scale-1e5 failed at the unfloored 3e-3).
    rates = [emergence.size_learning_rate(config, s) for s in config.sizes]
    assert rates == pytest.approx([config.opt.learning_rate * max(config.lr_reference_width / m.d_model, 1.0)
                                   for m in plan.sizes.values()])
    assert rates[1:] == sorted(rates[1:], reverse=True)
    assert rates[-1] == rates[-2] == config.opt.learning_rate  # d48 and d64 at the floor
    unfloored = config.copy_and_resolve_references()
    unfloored.lr_scale_floor = 0.0
    assert emergence.size_learning_rate(unfloored, config.sizes[-1]) == pytest.approx(config.opt.learning_rate * 48 / 64)
    gpu = configs.get_config("gpu_host")
    assert emergence.size_learning_rate(gpu, gpu.sizes[-1]) == gpu.opt.learning_rate  # rule off there
    # The accelerator preset's addition is cpu_tiny's (base 26, padded), trained and evaluated.
    assert gpu.eval.final_tasks == config.eval.final_tasks
    assert [t for t in gpu.mixture.tasks if t.startswith("addition")] == list(config.eval.final_tasks)
    assert {(e.name, e.num_fewshot) for e in plan.eval_entries} == {
        (t, k) for t in config.eval.tasks for k in config.eval.shots}
    # The mirage: addition of 2..6 digits, >= 1000 held-out items each, at the final checkpoint.
    assert [e.name for e in plan.final_entries] == [f"addition_{k}digit_base26_lsb_first_pad6" for k in range(2, 7)]
    assert all(len(e.task.docs(e.task.spec.eval_split)) >= 1000 for e in plan.final_entries)
    # The transition: copying at every checkpoint, across the 1- to 2-layer boundary of the ladder.
    assert set(config.report.transition_task) <= set(config.eval.tasks)
    layers = [m.num_layers for m in plan.sizes.values()]
    assert layers[0] == 1 and layers[-1] >= 2
    train = emergence.train_config(config, config.sizes[-1], {"source": "files", "file_patterns": ["x.jsonl"]})
    assert (train.model.preset, train.model.d_model, train.model.num_heads) == ("scale-1e5", 64, 8)
    assert train.opt.learning_rate == rates[-1]
    custom = emergence.train_config(config, "d32-l2", {"source": "files", "file_patterns": ["x.jsonl"]})
    assert (custom.model.preset, custom.model.d_model, custom.model.position) == ("scale-1e5", 32, "rope")
    # The grid of checkpoints the curves along training are read on is kept, whatever a stop adds.
    assert train.checkpoint.keep_every_steps == config.checkpoint.every_steps and train.checkpoint.keep_last == 2
    with pytest.raises(ValueError, match="unknown emergence preset 'cpu_huge'"):
        configs.get_config("cpu_huge")


def test_dry_run_estimate_counts_every_size_and_divides_by_peak_times_mfu():
    from research.models import sizing
    config = configs.get_config("cpu_tiny")
    estimate = emergence.estimated_training(config)
    assert list(estimate["flops"]) == list(config.sizes)
    tokens = config.train.num_steps * config.train.batch_size * config.train.seq_len
    for size, model in emergence.plan_study(config).sizes.items():
        # Independent of sizing's per-token count: 6 FLOPs per parameter per token, plus attention.
        six_n_d = 6 * sizing.param_counts(model).total * tokens
        assert six_n_d < estimate["flops"][size] < 2 * six_n_d
    assert estimate["seconds"] == pytest.approx(
        sum(estimate["flops"].values()) / (config.estimate.peak_flops * config.estimate.mfu))
    faster = config.copy_and_resolve_references()
    faster.estimate.mfu *= 2
    assert emergence.estimated_training(faster)["seconds"] == pytest.approx(estimate["seconds"] / 2)


@pytest.mark.parametrize("field, value", [("mfu", 0.0), ("mfu", -0.3), ("mfu", 5.0), ("peak_flops", 0.0)])
def test_an_estimate_at_an_impossible_mfu_or_peak_is_refused_in_one_line(field, value):
    """mfu=0 or peak_flops=0 was a ZeroDivisionError; mfu=-0.3 printed a negative time, mfu=5 "500% MFU"."""
    config = configs.get_config("micro")
    config.estimate[field] = value
    with pytest.raises(ConfigError, match=rf"config.estimate: .*{field}={re.escape(repr(value))}") as error:
        emergence.estimated_training(config)
    assert "\n" not in str(error.value)
    # Only --dry_run reads it: a study's workers order their sizes by FLOPs alone (each worker
    # stopped on the bad value, after the data was prepared, and every rerun did the same).
    assert emergence.training_flops(config) == emergence.estimated_training(configs.get_config("micro"))["flops"]


def test_cpu_tiny_mirage_is_cpu_tiny_base10_with_the_previous_init_and_packed_copy_documents():
    mirage, tiny = configs.get_config("cpu_tiny_mirage"), configs.get_config("cpu_tiny_base10")
    plan = emergence.plan_study(mirage)
    assert {m.init_scheme for m in plan.sizes.values()} == {"normal"}
    assert emergence.examples_per_document(mirage.mixture, "copying_varied") == tuple(mirage.mixture.examples_per_document)
    assert emergence.examples_per_document(tiny.mixture, "copying_varied") == (1, 1)
    # Nothing else differs: the two presets are one design with two settings changed.
    for config in (mirage, tiny):
        config.model.init_scheme = "normal"
        config.mixture.examples_per_document_by_task = {}
    assert mirage.to_dict() == tiny.to_dict()


def test_tracking_more_items_or_lengths_along_training_keeps_the_training_mixture():
    # cpu_tiny tracks every addition length at every checkpoint with the final evaluation's 1000
    # items (400 items are the first 400 of the same 1000), so the held-out additions, hence the
    # training mixture and the trained runs, are those of the designs that tracked 400 items, or
    # 2, 4 and 6 digits only.
    from research.evaluation.task_corpus import held_out_prompts, render
    every, some = configs.get_config("cpu_tiny"), configs.get_config("cpu_tiny")
    some.eval.tasks = tuple(t for t in every.eval.tasks if not t.startswith(("addition_3", "addition_5")))
    some.report.transition_task = tuple(t for t in every.report.transition_task if t in some.eval.tasks)
    assert len(some.eval.tasks) < len(every.eval.tasks)

    def held_out(plan):
        return set().union(*(held_out_prompts(e.task) for e in plan.eval_entries + plan.final_entries))

    fewer_items = configs.get_config("cpu_tiny")
    fewer_items.eval.num_test = 400
    fewer = configs.get_config("cpu_tiny")
    for field in ("tasks", "final_tasks"):
        fewer.eval[field] = tuple(t for t in fewer.eval[field] if not t.startswith("addition_3"))
    fewer.report.transition_task = tuple(t for t in fewer.report.transition_task if t in fewer.eval.tasks)
    # Each config planned once (plan_study is deterministic; ~1 s a plan).
    plans = {name: emergence.plan_study(config) for name, config in
             dict(every=every, some=some, fewer_items=fewer_items, fewer=fewer).items()}
    assert held_out(plans["every"]) == held_out(plans["some"])
    # 1000 copy items along training in place of 400 hold out 600 more copy prompts, none of
    # which the training stream draws: every training problem is kept as before, and so is the
    # mixture's fingerprint (its older form, of every held-out prompt, changed).
    extra = held_out(plans["every"]) - held_out(plans["fewer_items"])
    assert len(extra) == 600 and held_out(plans["fewer_items"]) <= held_out(plans["every"])
    trained = {render(t.spec.prompt, d, "prompt") for t in plans["every"].train_tasks.values()
               for d in t.docs("train")}
    assert not extra & trained
    new, uncut, old = emergence_plan.mixture_fingerprints(every, plans["every"])
    assert (new, uncut, old) != emergence_plan.mixture_fingerprints(fewer_items, plans["fewer_items"])
    assert (new, uncut) == emergence_plan.mixture_fingerprints(fewer_items, plans["fewer_items"])[:2]
    assert held_out(plans["fewer"]) != held_out(plans["every"])  # the check can tell a changed held-out set


def test_a_change_of_the_metrics_evaluates_again_and_keeps_the_training_mixture(monkeypatch):
    # Cached evaluations (runs/<size>/evals) are reused while the plan's fingerprint matches: a
    # change of what the metrics compute (evaluator.METRICS_VERSION) must not leave a curve of
    # old and new definitions mixed, and must not touch the trained runs' mixture.
    from research.evaluation import evaluator
    config = configs.get_config("micro")
    plan = emergence.plan_study(config)
    monkeypatch.setattr(evaluator, "METRICS_VERSION", evaluator.METRICS_VERSION + 1)
    again = emergence.plan_study(config)
    assert again.fingerprint != plan.fingerprint
    assert emergence_plan.mixture_fingerprints(config, again) == emergence_plan.mixture_fingerprints(config, plan)


def test_cpu_tiny_padded_is_cpu_tiny_base10_with_every_addition_task_padded():
    padded, tiny = configs.get_config("cpu_tiny_padded"), configs.get_config("cpu_tiny_base10")
    plan = emergence.plan_study(padded)
    names = [e.name for e in plan.final_entries]
    assert names == [f"addition_{k}digit_lsb_first_pad6" for k in range(2, 7)]
    # One operand width for every length: the prompts of 2- and 6-digit problems are equally long.
    prompt_lengths = {len(e.task.docs(e.task.spec.eval_split)[0].fields["a"]) for e in plan.final_entries}
    assert prompt_lengths == {configs.PADDED_WIDTH}
    trained = [t for t in padded.mixture.tasks if t.startswith("addition")]
    assert trained == names and set(padded.report.transition_task) <= set(padded.eval.tasks)
    # Nothing else differs (the copy task and its counts, the ladder, training): names only.
    strip = lambda d: {k.replace("_pad6", ""): v for k, v in d.items()}
    assert strip(dict(padded.mixture.tasks)) == dict(tiny.mixture.tasks)
    for field in ("tasks", "final_tasks"):
        assert tuple(t.replace("_pad6", "") for t in padded.eval[field]) == tuple(tiny.eval[field])
    for config in (padded, tiny):
        config.mixture.tasks, config.eval.tasks, config.eval.final_tasks, config.report.transition_task = {}, (), (), ()
    assert padded.to_dict() == tiny.to_dict()


def test_cpu_tiny_is_the_padded_study_in_base_26_with_the_mirage_read_across_its_2_layer_sizes():
    tiny, padded = configs.get_config("cpu_tiny"), configs.get_config("cpu_tiny_padded")
    plan = emergence.plan_study(tiny)
    # Every addition task, trained and evaluated, in base 26 (digits and letters a-p), padded to 6.
    for entry in plan.final_entries:
        doc = entry.task.docs(entry.task.spec.eval_split)[0].fields
        assert len(doc["a"]) == configs.PADDED_WIDTH
        assert int(doc["answer"][::-1], 26) == int(doc["a"][::-1], 26) + int(doc["b"][::-1], 26)
    letters = {c for e in plan.final_entries for d in e.task.docs(e.task.spec.eval_split)[:50]
               for c in d.fields["a"] + d.fields["b"]}
    assert letters - set("0123456789") and letters <= set("0123456789abcdefghijklmnop")
    # The mirage's sizes: the 2-layer ones (the 1-layer control is another architecture).
    assert tiny.report.mirage_sizes == tuple(s for s, m in plan.sizes.items() if m.num_layers == 2)
    assert len(tiny.report.mirage_sizes) >= 4
    # Its curves along training have as many items as the final evaluation (training is unchanged
    # by it: test_tracking_more_items_or_lengths_along_training_keeps_the_training_mixture).
    assert tiny.eval.num_test == tiny.eval.final_num_test == 1000
    # Nothing else differs from the base-10 padded study: the base, the mirage's sizes, the items
    # along training and the top size (d64-l2, heads of 8 dimensions as below it, for scale-1e5's
    # 4 heads of 16) only.
    assert tiny.sizes[-1] == "d64-l2" and padded.sizes[-1] == "scale-1e5"
    tiny.report.mirage_sizes, tiny.eval.num_test, tiny.sizes = (), padded.eval.num_test, padded.sizes
    assert json.loads(tiny.to_json().replace("_base26", "")) == json.loads(padded.to_json())


def test_cpu_tiny_widths_is_the_padded_study_at_five_one_head_widths():
    widths, padded = configs.get_config("cpu_tiny_widths"), configs.get_config("cpu_tiny_padded")
    models = list(emergence.plan_study(widths).sizes.values())
    assert [(m.d_model, m.num_layers, m.num_heads) for m in models] == [(d, 2, 1) for d in (8, 10, 12, 14, 16)]
    widths.sizes = padded.sizes
    assert widths.to_dict() == padded.to_dict()  # the same tasks, training and evaluation


def test_cpu_tiny_tokenizer_gives_every_copied_letter_its_own_token(tmp_path):
    # The copy must align token by token with its source (an induction head then finds it one
    # token back): every letter of the copying task is one piece ("\u2581q"), on both sides.
    from research.data.config import TokenizerConfig
    from research.data.tokenizer import train_tokenizer
    from research.evaluation.task_catalog import catalog_task
    from research.evaluation.task_corpus import task_documents

    config = configs.get_config("cpu_tiny")
    docs = {name: task_documents(catalog_task(name, num_test=0, num_train=300, seed=0),
                                 examples_per_document=emergence.examples_per_document(config.mixture, name), seed=0)
            for name in config.mixture.tasks}
    texts = [text for name_docs in docs.values() for text in name_docs]
    tokenizer = train_tokenizer(texts, TokenizerConfig(**config.tokenizer.to_dict()), str(tmp_path / "t.model"))
    assert tokenizer.vocab_size == config.tokenizer.vocab_size <= config.model.vocab_size
    line = "b g q m x u j | b g q m x u j"
    ids = tokenizer.encode(line)
    assert len(ids) == len(line.split())  # one piece per letter and one for "|"
    assert list(ids[:7]) == list(ids[8:])
    assert tokenizer.decode(tokenizer.encode("754+68=345")) == "754+68=345"
    # A training document of the copy task is one problem, so its first letter is tokenized as in
    # an evaluation prompt and as in its copy (after a newline it would be "q", not "\u2581q").
    for doc in docs[configs.COPY_TASK][:50]:
        ids = list(tokenizer.encode(doc))
        bar = ids.index(tokenizer.encode("|")[-1])
        assert ids[:bar] == ids[bar + 1:]


def test_a_misspelt_training_task_is_named_even_where_the_packing_names_tasks():
    """cpu_tiny packs some tasks per document (mixture.examples_per_document_by_task): a
    misspelt mixture task was reported as the packing naming a task the mixture lacks."""
    config = configs.get_config("cpu_tiny")
    config.mixture.tasks = {"additon_2digit_lsb_first": 5}
    with pytest.raises(TaskError, match=r"unknown task 'additon_2digit_lsb_first'; did you mean "
                                        r"addition_2digit_lsb_first") as error:
        emergence.plan_study(config)
    assert "\n" not in str(error.value)


def test_a_study_prompting_unscramble_with_shots_is_keyed_apart_and_others_keep_their_key(monkeypatch):
    # Shots that leave out other scrambles of the query's word (456cf7b) changed those prompts:
    # a study that prompts such a task with shots must evaluate again, while a study without one
    # (every preset) keeps its cached evaluations.
    digested = []
    digest = emergence_plan._digest
    monkeypatch.setattr(emergence_plan, "_digest", lambda value: digested.append(value) or digest(value))
    config = configs.get_config("micro")
    emergence.plan_study(config)
    assert "answer_filtered_shots" not in digested[-1]
    config.eval.tasks = (*config.eval.tasks, "unscramble_cycle")
    with_shots = emergence.plan_study(config).fingerprint
    assert digested[-1]["answer_filtered_shots"] == ["unscramble_cycle"]
    config.eval.shots = (0,)
    emergence.plan_study(config)
    assert "answer_filtered_shots" not in digested[-1]  # zero-shot prompts hold no other scramble
    config.eval.shots = (0, 1)
    assert emergence.plan_study(config).fingerprint == with_shots


def test_the_tokenizers_model_type_is_a_key_and_at_its_default_keeps_a_studys_fingerprints():
    """--config.tokenizer.model_type=unigram was "not a config key" (pretraining had it): every preset
    now has model_type and normalization at TokenizerConfig's defaults, which the plan and mixture
    fingerprints leave out, so studies recorded before keep theirs; another value is another study."""
    from research.data.config import TokenizerConfig
    config = configs.get_config("micro")
    assert (config.tokenizer.model_type, config.tokenizer.normalization) == (
        TokenizerConfig().model_type, TokenizerConfig().normalization)
    plan = emergence.plan_study(config)
    fingerprints = (plan.fingerprint, emergence_plan.mixture_fingerprints(config, plan))
    recorded_before = configs.get_config("micro")
    del recorded_before.tokenizer["model_type"], recorded_before.tokenizer["normalization"]
    before = emergence.plan_study(recorded_before)
    assert (before.fingerprint, emergence_plan.mixture_fingerprints(recorded_before, before)) == fingerprints
    config.tokenizer.model_type = "unigram"
    other = emergence.plan_study(config)
    assert other.fingerprint != plan.fingerprint
    assert emergence_plan.mixture_fingerprints(config, other)[0] != fingerprints[1][0]


def test_a_chain_of_thought_final_task_is_prompted_with_the_cue_its_training_had(monkeypatch):
    """eval.final_tasks prompted a chain-of-thought task without cot_description, the line opening
    its training documents and its every-checkpoint prompts: its 1000-item final rows were biased
    against it. Such studies evaluate again (their key changes); every preset keeps its key."""
    config = configs.get_config("micro")
    plain = emergence.plan_study(config)
    config.eval.final_tasks = (*config.eval.final_tasks, "addition_3digit_cot")
    config.eval.final_num_test = 1000
    cue = config.eval.cot_description
    digested = []
    digest = emergence_plan._digest
    monkeypatch.setattr(emergence_plan, "_digest", lambda value: digested.append(value) or digest(value))
    plan = emergence.plan_study(config)
    (cot,) = [e for e in plan.final_entries if e.name.startswith("addition_3digit_cot")]
    tracked = [e for e in plain.eval_entries if e.name.startswith("addition_1digit_cot")][0]
    assert cot.task.spec.description == cue == tracked.task.spec.description
    assert all(e.task.spec.description != cue for e in plan.final_entries if e is not cot)  # direct tasks: none
    assert digested[-1]["final_prompts_cued"] == [cot.name]
    emergence.plan_study(configs.get_config("micro"))
    assert "final_prompts_cued" not in digested[-1]


def test_a_mixture_recorded_before_unscramble_left_out_its_evaluation_words_keeps_its_older_form(monkeypatch):
    """The fingerprint of a mixture written before 2026-12-07 (documents not cut to the window, training
    problems held out by prompt only) is what that code wrote: with unscramble's evaluation words now
    left out too, it changed, and such a study with runs was refused instead of going on with a warning."""
    from research.evaluation import task_corpus
    config = configs.get_config("micro")
    config.mixture.tasks = {"unscramble_anagram1": 300, "addition_1digit": 100}
    config.mixture.examples_per_document_by_task = {}
    config.eval.update(dict(tasks=(*config.eval.tasks, "unscramble_anagram1"), num_test=18))
    plan = emergence.plan_study(config)
    evaluated = [e.task for e in plan.eval_entries + plan.final_entries]
    assert len(task_corpus.training_docs(plan.train_tasks["unscramble_anagram1"], "train", evaluated)) < 300
    now = emergence_plan.mixture_fingerprints(config, plan)
    monkeypatch.setattr(task_corpus, "held_out_answers", lambda task: set())  # by prompt alone, as before
    by_prompt = emergence_plan.mixture_fingerprints(config, plan)
    assert now[0] != by_prompt[0] and now[1:] == by_prompt[1:]
