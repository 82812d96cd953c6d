"""The emergence study end to end (the `micro` preset: 2 sizes, 4 steps), its rerun, and its
bad-input checks; plus the configs resolving."""
from __future__ import annotations

import json
import os
import time

import pytest

from experiments import emergence, emergence_plan, emergence_report
from experiments.configs import emergence as configs
from research.evaluation import harness as harness_lib
from research.evaluation.results_table import read_rows
from research.evaluation.task_spec import TaskError
from research.models import sizing
from research.models.config import ConfigError


@pytest.fixture(scope="module")
def micro_study(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("emergence"))
    start = time.process_time()  # CPU seconds of every thread: a machine shared with other jobs slows the wall
    paths = emergence.run_study(configs.get_config("micro"), workdir, log=lambda _: None)
    return workdir, paths, time.process_time() - start


def test_micro_study_writes_table_summary_and_plots(micro_study):
    workdir, paths, cpu_seconds = micro_study
    assert cpu_seconds < 60  # about 30 s: the whole study, compiles included, fits in a minute on 2 cores
    config = configs.get_config("micro")
    rows = read_rows(os.path.join(workdir, "report", "results.json"))
    # 2 sizes x 2 checkpoints (steps 2, 4) x 2 tasks x 2 shot counts, and the final task at step 4
    assert len(rows) == 16 + 2
    assert {(r["size"], r["step"]) for r in rows} == {(s, n) for s in config.sizes for n in (2, 4)}
    final_task = config.eval.final_tasks[0]
    assert {r["task"] for r in rows} == {*config.eval.tasks, final_task} and {r["num_shots"] for r in rows} == {0, 1}
    for row in rows:
        if row["task"] == final_task:
            assert row["step"] == 4 and row["num_examples"] == config.eval.final_num_test and row["num_shots"] == 0
        else:
            assert row["num_examples"] == config.eval.num_test
        assert row["final"] == (row["step"] == 4)
        assert row["chain_of_thought"] == row["task"].endswith("_cot")
        assert row["tokens"] == row["step"] * 8 * 64 and row["compute_flops"] > 6 * row["params_non_embedding"]
        assert 0.0 <= row["teacher_forced_accuracy"] <= 1.0 and row["answer_tokens"] >= 1
    by_key = {(r["size"], r["step"], r["task"], r["num_shots"]): r for r in rows}
    small, large = config.sizes
    assert by_key[(large, 4, "addition_1digit", 0)]["compute_flops"] > by_key[(small, 4, "addition_1digit", 0)][
        "compute_flops"] > by_key[(small, 2, "addition_1digit", 0)]["compute_flops"]

    summary = read_rows(os.path.join(workdir, "report", "summary.json"))
    assert len(summary) == (2 * 2 + 1) * len(config.report.metrics)  # (task, shots) x metric
    exact = next(s for s in summary if (s["task"], s["num_shots"], s["metric"]) == ("addition_1digit", 0,
                                                                                     "exact_match"))
    assert exact["num_models"] == 2 and len(exact["values"]) == 2
    assert exact["values"] == [by_key[(s, 4, "addition_1digit", 0)]["exact_match"] for s in config.sizes]
    assert "breakthroughness" in exact and "linearity" in exact
    # Per-item metrics carry item-bootstrap intervals and the noise rule's verdict.
    assert len(exact["value_intervals"]) == 2 and exact["items"] == config.eval.num_test
    assert isinstance(exact["above_noise"], bool) and (exact["breakthroughness"] is None) == (not exact["above_noise"])
    # Every reported metric has per-item values, so none gets a shape without the noise rule.
    assert all(s["linearity"] is None or s["above_noise"] for s in summary)
    assert all("value_intervals" in s for s in summary)
    mirage = read_rows(os.path.join(workdir, "report", "mirage.json"))
    assert {m["size"] for m in mirage} == set(config.sizes) and all(m["task"] == final_task for m in mirage)
    for m in mirage:
        low, high = m["p_to_the_L_interval"]
        assert low <= m["p_to_the_L"] <= high and m["p_to_the_L"] == pytest.approx(m["p"] ** m["answer_tokens"])
    # The mirage's shapes across report.mirage_sizes (micro: empty, so every size): per final task and metric.
    shapes = read_rows(os.path.join(workdir, "report", "mirage_shapes.json"))
    # One answer length (micro's final task): no sharpening with length to judge, no verdict rows.
    assert paths["mirage_verdicts"].endswith("mirage_verdicts.csv")
    assert read_rows(paths["mirage_verdicts"].replace(".csv", ".json")) == []
    assert {(s["task"], s["metric"]) for s in shapes} == {(final_task, m) for m in emergence_report.MIRAGE_SHAPE_METRICS}
    assert all(s["num_models"] == len(config.sizes) for s in shapes)
    transition = read_rows(os.path.join(workdir, "report", "transition.json"))
    assert [(t["size"], t["step"]) for t in transition if t["num_shots"] == 0] == [
        (s, n) for s in config.sizes for n in (2, 4)]
    for name in ("vs_params", "vs_compute", "direct_vs_cot", "zero_vs_few_shot", "mirage_plot", "transition_plot"):
        assert os.path.getsize(paths[name]) > 10_000 and paths[name].endswith(".png")
    report = open(paths["report"]).read()
    assert "breakthroughness" in report and "scale-3e4" in report
    assert "paper_breakthroughness" in report.split("## Across sizes")[1]  # the unfloored values beside


def test_training_data_holds_out_the_evaluation_problems(micro_study):
    workdir, _, _ = micro_study
    plan = emergence.plan_study(configs.get_config("micro"))
    held_out = {e.task.spec.prompt.format_map(d.fields) for e in plan.eval_entries for d in e.task.docs("test")}
    lines, sources, problems_per_document = [], set(), {}
    with open(os.path.join(workdir, "data", "mixture.jsonl")) as f:
        for record in map(json.loads, f):
            sources.add(record["source"])
            marker = "Answer:" if record["source"].endswith("_cot") else "="  # once per problem
            problems_per_document.setdefault(record["source"], set()).add(record["text"].count(marker))
            if record["source"] != "stdlib":
                lines.extend(record["text"].splitlines())
    assert sources == {"stdlib", "addition_1digit", "addition_1digit_cot"}
    # mixture.examples_per_document_by_task: one problem per addition_1digit document (each then its
    # own packed segment), while the other task keeps mixture.examples_per_document's (1, 8).
    assert problems_per_document["addition_1digit"] == {1}
    assert max(problems_per_document["addition_1digit_cot"]) > 1
    problems = [line for line in lines if "+" in line and "=" in line]
    assert len(problems) > 300
    assert not any(line.startswith(prompt) for line in problems for prompt in held_out)
    # Chain-of-thought documents open with the cue line, which zero-shot CoT prompts also start with.
    assert "Work it out step by step." in lines


def test_rerun_skips_training_and_evaluation(micro_study, monkeypatch):
    workdir, paths, _ = micro_study
    before = open(paths["results"]).read()

    def not_again(*args, **kwargs):
        raise AssertionError("finished work was redone")
    monkeypatch.setattr("research.training.train_and_evaluate", not_again)
    monkeypatch.setattr(harness_lib.Harness, "__init__", not_again)
    logs = []
    emergence.run_study(configs.get_config("micro"), workdir, log=logs.append)
    assert open(paths["results"]).read() == before
    assert sum("skipping training" in line for line in logs) == 2
    changed = configs.get_config("micro")
    changed.mixture.corpus_fraction = 0.5  # other training data: the finished runs no longer match it
    with pytest.raises(ConfigError, match="holds runs trained on another mixture"):
        emergence.run_study(changed, workdir, log=logs.append)
    # The mixture depends on evaluation only through the prompts it holds out: tracking the final
    # task's first items at every checkpoint (already held out) keeps the data; another seed does not.
    mixture = os.path.join(workdir, "data", "mixture.jsonl")
    written = os.path.getmtime(mixture)
    tracked = configs.get_config("micro")
    tracked.eval.tasks = (*tracked.eval.tasks, "addition_2digit")
    emergence.prepare_data(tracked, emergence.plan_study(tracked), workdir, logs.append)
    assert os.path.getmtime(mixture) == written
    # A manifest written before the fingerprint's present form, by these settings: accepted and
    # brought up to date, the mixture kept.
    manifest = os.path.join(workdir, "data", "manifest.json")
    current = emergence_plan.read_json(manifest)["fingerprint"]
    legacy = emergence_plan.mixture_fingerprints(tracked, emergence.plan_study(tracked))[1]
    emergence_plan.write_json(manifest, {**emergence_plan.read_json(manifest), "fingerprint": legacy})
    emergence.prepare_data(tracked, emergence.plan_study(tracked), workdir, logs.append)
    assert emergence_plan.read_json(manifest)["fingerprint"] == current and os.path.getmtime(mixture) == written
    reseeded = configs.get_config("micro")
    reseeded.eval.seed = 1
    with pytest.raises(ConfigError, match="holds runs trained on another mixture"):
        emergence.prepare_data(reseeded, emergence.plan_study(reseeded), workdir, logs.append)
    # Finished sizes trained otherwise than asked (a learning rate, a seed) were once reported under
    # the new settings without retraining; a shorter run would lose the final many-item evaluation,
    # a longer one would continue past its schedule's end under a new, stretched schedule.
    small = configs.get_config("micro").sizes[0]
    for change, message in [(lambda c: c.opt.update(learning_rate=c.opt.learning_rate / 2),
                             r"was trained with other settings \(opt.learning_rate: "),
                            (lambda c: c.train.update(seed=7), r"train.seed: 0 there, 7 now"),
                            (lambda c: c.train.update(num_steps=2), r"train.num_steps: 4 there, 2 now"),
                            # Longer: the finished runs would continue on a stretched schedule.
                            (lambda c: c.train.update(num_steps=6), r"train.num_steps: 4 there, 6 now")]:
        with pytest.raises(ConfigError, match=message) as error:
            emergence.run_study(_bad(change), workdir, log=logs.append)
        assert small in str(error.value) and "\n" not in str(error.value)
    assert open(paths["results"]).read() == before


def _bad(change):
    config = configs.get_config("micro")
    change(config)
    return config


@pytest.mark.parametrize("change, message", [
    (lambda c: c.eval.update(tasks=("addition_1digit", "copyng")), "unknown task 'copyng'; did you mean copying"),
    (lambda c: c.eval.update(shots=(0, 9)), "num_shots=9 but its few-shot split 'train' holds 8 examples"),
    (lambda c: setattr(c, "sizes", ("scale-1e4", "scale-9e9")), r"sizes names 'scale-9e9', neither a config.ladder "
                                                                 r"entry \(d10-l2h1, .*did you mean scale-1e9"),
    # Two sizes at one parameter count: once found by the report, after both trained.
    (lambda c: setattr(c, "sizes", ("d8-l2", "d8-l2h1")), r"sizes 'd8-l2' and 'd8-l2h1' have the same 1,760 "
                                                           r"non-embedding parameters"),
    (lambda c: c.eval.update(num_train=-1), r"eval.num_train=-1 must be >= 0"),
    # 1000 items of 1-digit addition are 100 problems repeated: the item bootstrap would be too narrow.
    (lambda c: c.eval.update(final_tasks=("addition_1digit",), final_num_test=1000),
     r"eval.final_num_test=1000: task 'addition_1digit' has only 100 distinct problems among its 1000 test items"),
    (lambda c: c.eval.update(tasks=("nosuch_task",), final_tasks=()), r"unknown task 'nosuch_task'; known families: "
                                                                       r"addition, .*copying.*; or give a .json"),
    (lambda c: setattr(c, "sizes", ("scale-1e4",)), r"must name at least 2 distinct presets"),
    (lambda c: c.mixture.update(corpus_fraction=1.0), r"corpus_fraction=1.0 must be in \[0, 1\)"),
    (lambda c: setattr(c, "lr_reference_width", -48), r"lr_reference_width=-48 must be >= 0"),
    (lambda c: setattr(c, "lr_scale_floor", -1.0), r"lr_scale_floor=-1.0 must be >= 0"),
    (lambda c: setattr(c, "ladder", {"d8": {"d_model": 8}}), r"ladder\['d8'\]=.* must name the preset it changes"),
    (lambda c: c.mixture.update(tasks={"addition_1digt": 10}), "unknown task 'addition_1digt'"),
    (lambda c: setattr(c.mixture, "examples_per_document_by_task", {"copying": (1, 1)}),
     r"examples_per_document_by_task names 'copying', which mixture.tasks lacks"),
    (lambda c: setattr(c.mixture, "examples_per_document_by_task", {"addition_1digit": (2, 1)}),
     r"examples_per_document_by_task\['addition_1digit'\]=\(2, 1\) must be \(fewest, most\)"),
    # Once read only when the report was written, after the whole study: an empty table.
    (lambda c: c.report.update(metrics=("exact_matchh",)), r"report.metrics names unknown metric\(s\) "
                                                            r"\['exact_matchh'\]; did you mean 'exact_match'"),
    (lambda c: c.report.update(plot_metrics=("acc_norn",)), r"report.plot_metrics names unknown metric"),
    (lambda c: c.report.update(mirage_sizes=("scale-1e4", "scale-3e5")), r"report.mirage_sizes names "
                                                                         r"\['scale-3e5'\], which sizes="),
    (lambda c: c.report.update(mirage_sizes=("scale-1e4",)), r"report.mirage_sizes=\('scale-1e4',\) names one "
                                                               r"size; a shape across sizes needs at least 2"),
    (lambda c: c.report.update(transition_task=("nope",)), r"report.transition_task names \['nope'\], which "
                                                            r"eval.tasks="),
    # Once read only inside a worker: after the data was written, or after a whole size trained.
    (lambda c: c.eval.update(batch_size=0), r"eval.batch_size=0 must be >= 1"),
    (lambda c: c.eval.update(num_test=0), r"eval.num_test=0 must be >= 1"),
    (lambda c: c.eval.update(tasks=()), r"eval.tasks is empty"),
    (lambda c: c.checkpoint.update(every_steps=0), r"checkpoint.every_steps=0 must be positive"),
    (lambda c: c.train.update(num_steps=0), r"train.num_steps=0 must be positive"),
    (lambda c: c.train.update(seq_len=100_000), r"train.seq_len=100000 exceeds size 'scale-1e4''s max_len"),
])
def test_bad_config_fails_before_any_work(change, message, tmp_path, monkeypatch):
    monkeypatch.setattr("research.training.train_and_evaluate", lambda *a: pytest.fail("trained"))
    with pytest.raises((ConfigError, TaskError), match=message) as error:
        emergence.run_study(_bad(change), str(tmp_path), log=lambda _: None)
    assert "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []


def test_cpu_tiny_config_plans_a_ladder_with_a_learning_rate_per_width():
    config = configs.get_config("cpu_tiny")
    plan = emergence.plan_study(config)
    params = [sizing.param_counts(m).non_embedding for m in plan.sizes.values()]
    assert len(params) >= 5 and params == sorted(params) and params[-1] > 10 * params[0]
    # The ladder's own widths: preset scale-1e5 (2 layers) at d_model 24, 32, 48.
    assert [(m.d_model, m.num_layers) for m in plan.sizes.values()] == [(28, 1), (24, 2), (32, 2), (48, 2), (64, 2)]
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
    assert train.model.preset == config.sizes[-1] and train.opt.learning_rate == rates[-1]
    custom = emergence.train_config(config, "d32-l2", {"source": "files", "file_patterns": ["x.jsonl"]})
    assert (custom.model.preset, custom.model.d_model, custom.model.position) == ("scale-1e5", 32, "rope")
    assert train.checkpoint.keep_last == config.train.num_steps // config.checkpoint.every_steps + 1
    with pytest.raises(ValueError, match="unknown emergence preset 'cpu_huge'"):
        configs.get_config("cpu_huge")


def test_a_stop_during_one_size_starts_no_other_size(tmp_path, monkeypatch):
    """Interrupted (Ctrl-C / SIGTERM inside a size's training) propagates; a signal a size's
    Guard took during its last steps, which let that size end normally, stops the study before
    the next size starts."""
    import signal
    from research.training import preemption
    started = []

    def interrupted(config, run_dir):
        started.append(os.path.basename(run_dir))
        raise preemption.Interrupted("SIGINT", 3, os.path.join(run_dir, "checkpoints"))

    def signalled_at_its_end(config, run_dir):
        started.append(os.path.basename(run_dir))
        guard = preemption.Guard().install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.requested
        finally:
            guard.uninstall()
        return {}

    monkeypatch.setattr(emergence, "evaluate_run", lambda *args: [])
    monkeypatch.setattr("research.training.metrics.measure_peak_flops", lambda: 1e9)
    for train, message in ((interrupted, "stopped by SIGINT at step 3"),
                           (signalled_at_its_end, "stopped by SIGTERM after the size it came during ended")):
        started.clear()
        monkeypatch.setattr("research.training.train_and_evaluate", train)
        with pytest.raises(preemption.Interrupted, match=message):
            emergence.run_study(configs.get_config("micro"), str(tmp_path / train.__name__), log=lambda _: None)
        assert started == [configs.get_config("micro").sizes[0]]


def test_command_line_refuses_a_bad_config_in_a_dry_run_and_a_file_as_workdir(tmp_path):
    import subprocess
    import sys
    command = [sys.executable, "-m", "experiments.emergence", "--config=experiments/configs/emergence.py:micro"]
    dry = subprocess.run([*command, "--dry_run", "--config.eval.num_test=0"], capture_output=True, text=True)
    assert dry.returncode == 1 and dry.stderr.strip().splitlines()[-1] == "error: eval.num_test=0 must be >= 1."
    assert "training FLOPs" not in dry.stdout
    afile = tmp_path / "afile"
    afile.write_text("kept")
    run = subprocess.run([*command, f"--workdir={afile}"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        f"error: --workdir={afile}: {afile} is a file, not a directory; pass a folder the study can write to.")
    assert afile.read_text() == "kept"


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

    def held_out(config):
        plan = emergence.plan_study(config)
        return set().union(*(held_out_prompts(e.task) for e in plan.eval_entries + plan.final_entries))

    assert held_out(every) == held_out(some)
    # 1000 copy items along training in place of 400 hold out 600 more copy prompts, none of
    # which the training stream draws: every training problem is kept as before, and so is the
    # mixture's fingerprint (its older form, of every held-out prompt, changed).
    fewer_items = configs.get_config("cpu_tiny")
    fewer_items.eval.num_test = 400
    extra = held_out(every) - held_out(fewer_items)
    assert len(extra) == 600 and held_out(fewer_items) <= held_out(every)
    trained = {render(t.spec.prompt, d, "prompt") for t in emergence.plan_study(every).train_tasks.values()
               for d in t.docs("train")}
    assert not extra & trained
    new, old = emergence_plan.mixture_fingerprints(every, emergence.plan_study(every))
    assert (new, old) != emergence_plan.mixture_fingerprints(fewer_items, emergence.plan_study(fewer_items))
    assert new == emergence_plan.mixture_fingerprints(fewer_items, emergence.plan_study(fewer_items))[0]
    fewer = configs.get_config("cpu_tiny")
    for field in ("tasks", "final_tasks"):
        fewer.eval[field] = tuple(t for t in fewer.eval[field] if not t.startswith("addition_3"))
    fewer.report.transition_task = tuple(t for t in fewer.report.transition_task if t in fewer.eval.tasks)
    assert held_out(fewer) != held_out(every)  # the check can tell a changed held-out set


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
    # Nothing else differs from the base-10 padded study: the base, the mirage's sizes and the
    # items along training only.
    tiny.report.mirage_sizes, tiny.eval.num_test = (), padded.eval.num_test
    assert json.loads(tiny.to_json().replace("_base26", "")) == json.loads(padded.to_json())


def test_cpu_tiny_widths_is_the_padded_study_at_five_one_head_widths():
    widths, padded = configs.get_config("cpu_tiny_widths"), configs.get_config("cpu_tiny_padded")
    models = list(emergence.plan_study(widths).sizes.values())
    assert [(m.d_model, m.num_layers, m.num_heads) for m in models] == [(d, 2, 1) for d in (8, 10, 12, 14, 16)]
    widths.sizes = padded.sizes
    assert widths.to_dict() == padded.to_dict()  # the same tasks, training and evaluation


def test_a_task_tracked_and_scored_at_the_end_gives_one_row_per_summary():
    # eval.tasks at every checkpoint (400 items) and final_tasks (1000) both hold the task: the
    # summaries across sizes take the final 1000, the curves along training the 400 every checkpoint has.
    rows = [{"size": "a", "step": 8, "task": "t", "num_shots": 0, "num_examples": n} for n in (400, 1000)]
    rows.append({"size": "a", "step": 4, "task": "t", "num_shots": 0, "num_examples": 400})
    assert [r["num_examples"] for r in emergence_report._one_row_per_setting(rows, most_items=True)] == [1000, 400]
    assert [r["num_examples"] for r in emergence_report._one_row_per_setting(rows, most_items=False)] == [400, 400]


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
