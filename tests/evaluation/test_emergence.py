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
from research.models.config import ConfigError

# One xdist worker runs the module: its module-scoped micro_study (a 47 s study in the suite's
# profile) ran once on each worker that got one of the tests using it (both, under -n 2).
pytestmark = pytest.mark.xdist_group("emergence")


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
        # Answers of k or k + 1 tokens (a carry), a share f = L - k of them k + 1 long: the mean of p^(L_i).
        k = int(m["answer_tokens"])
        f = m["answer_tokens"] - k
        assert low <= m["p_to_the_L"] <= high
        assert m["p_to_the_L"] == pytest.approx((1 - f) * m["p"] ** k + f * m["p"] ** (k + 1))
        # Agreement is read from the paired difference's interval, not from two overlapping ones.
        low, high = m["exact_match_minus_p_to_the_L_interval"]
        assert m["exact_match_minus_p_to_the_L"] == pytest.approx(m["exact_match"] - m["p_to_the_L"])
        assert m["exact_match_agrees_with_p_to_the_L"] == (low - 1 / m["items"] <= 0 <= high + 1 / m["items"])
        # L counts the target's tokens (the stop after it is not scored): micro's sums are 2 or 3 digits.
        assert 2 <= m["answer_tokens"] <= 3
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
    assert "em_minus_pL" in report.split("## The mirage")[1] and "agrees" in report.split("## The mirage")[1]


def test_training_data_holds_out_the_evaluation_problems(micro_study):
    workdir, _, _ = micro_study
    plan = emergence.plan_study(configs.get_config("micro"))
    held_out = {e.task.spec.prompt.format_map(d.fields) for e in plan.eval_entries for d in e.task.docs("test")}
    lines, sources, problems_per_document, texts = [], set(), {}, {}
    with open(os.path.join(workdir, "data", "mixture.jsonl")) as f:
        for record in map(json.loads, f):
            sources.add(record["source"])
            marker = "Answer:" if record["source"].endswith("_cot") else "="  # once per problem
            problems_per_document.setdefault(record["source"], set()).add(record["text"].count(marker))
            texts.setdefault(record["source"], []).append(record["text"])
            if record["source"] != "stdlib":
                lines.extend(record["text"].splitlines())
    assert sources == {"stdlib", "addition_1digit", "addition_1digit_cot"}
    # mixture.examples_per_document_by_task: one problem per addition_1digit document (each then its
    # own packed segment), while the other task keeps mixture.examples_per_document's (1, 8) as far as
    # a 64-token training window holds them: here one chain-of-thought problem and its cue line.
    assert problems_per_document["addition_1digit"] == {1}
    assert problems_per_document["addition_1digit_cot"] == {1}
    assert len(texts["addition_1digit_cot"]) > 90 and max(map(len, texts["addition_1digit_cot"])) < 100
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
    # A manifest of a mixture whose documents were not cut to the training window (before
    # 2026-12-07; in the fingerprint's older form too, before 2026-12-05), runs trained on it: the
    # study goes on with that mixture (its sizes stay comparable), one warning each time; the older
    # form is brought up to the newer.
    manifest = os.path.join(workdir, "data", "manifest.json")
    current = emergence_plan.read_json(manifest)["fingerprint"]
    _, uncut, legacy = emergence_plan.mixture_fingerprints(tracked, emergence.plan_study(tracked))
    for stored in (legacy, uncut):
        emergence_plan.write_json(manifest, {**emergence_plan.read_json(manifest), "fingerprint": stored})
        logs.clear()
        emergence.prepare_data(tracked, emergence.plan_study(tracked), workdir, logs.append)
        assert os.path.getmtime(mixture) == written and emergence_plan.read_json(manifest)["fingerprint"] == uncut
        assert [line for line in logs if "was written before 2026-12-07" in line] == [logs[0]]
    emergence_plan.write_json(manifest, {**emergence_plan.read_json(manifest), "fingerprint": current})
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
                            (lambda c: c.train.update(num_steps=6), r"train.num_steps: 4 there, 6 now"),
                            # Weights trained otherwise (z_loss, dropout), or evaluated in another dtype.
                            (lambda c: c.train.update(z_loss=0.5), r"train.z_loss: 0.0001 there, 0.5 now"),
                            (lambda c: c.model.update(dropout_rate=0.3), r"model.dropout_rate: 0.0 there, 0.3 now"),
                            (lambda c: c.model.update(dtype="bfloat16"),
                             r"model.dtype: 'float32' there, 'bfloat16' now"),
                            # Another curve grid: the points off it left every table without a word.
                            (lambda c: c.checkpoint.update(every_steps=4), r"checkpoint.every_steps: 2 there, 4 now")]:
        with pytest.raises(ConfigError, match=message) as error:
            emergence.run_study(_bad(change), workdir, log=logs.append)
        assert small in str(error.value) and "\n" not in str(error.value)
    assert open(paths["results"]).read() == before


def test_curves_along_training_keep_each_shots_setting_its_own_line(micro_study, monkeypatch):
    """micro evaluates 0 and 1 shots: transition.png and mirage_along_training.png drew one line
    per size through both settings' points, zig-zagging between them."""
    workdir, _, _ = micro_study
    drawn = {}

    def record(rows, *, series, path, **kwargs):
        lines = {}
        for row in rows:
            lines.setdefault(series(row), set()).add(row["num_shots"])
        drawn[os.path.basename(path)] = lines
        return path
    monkeypatch.setattr("research.evaluation.plots.plot_grid", record)
    emergence.run_study(configs.get_config("micro"), workdir, log=lambda _: None)
    for name in ("transition.png", "mirage_along_training.png"):
        assert drawn[name] and all(len(shots) == 1 for shots in drawn[name].values()), drawn[name]
        assert {"scale-1e4 0-shot", "scale-1e4 1-shot"} <= set(drawn[name])
    # The whole study config rides with the results: experiments.emergence_seeds compares it.
    recorded = json.load(open(os.path.join(workdir, "report", "results.json")))["metadata"]["config"]
    assert recorded["opt"]["learning_rate"] == configs.get_config("micro").opt.learning_rate


def _bad(change):
    config = configs.get_config("micro")
    change(config)
    return config


@pytest.mark.parametrize("change, message", [
    (lambda c: c.eval.update(tasks=("addition_1digit", "copyng")), "unknown task 'copyng'; did you mean copying"),
    (lambda c: c.eval.update(shots=(0, 9)),
     "num_shots=9 but its few-shot split 'train' holds 7 examples usable for every query"),
    (lambda c: setattr(c, "sizes", ("scale-1e4", "scale-9e9")), r"sizes names 'scale-9e9', neither a config.ladder "
                                                                 r"entry \(d10-l2h1, .*did you mean scale-1e9"),
    # Two sizes at one parameter count: once found by the report, after both trained.
    (lambda c: setattr(c, "sizes", ("d8-l2", "d8-l2h1")), r"sizes 'd8-l2' and 'd8-l2h1' have the same 1,760 "
                                                           r"non-embedding parameters"),
    (lambda c: c.eval.update(num_train=-1), r"eval.num_train=-1 must be >= 0"),
    # 1000 items of 1-digit addition are 100 problems repeated: the item bootstrap would be too narrow.
    (lambda c: c.eval.update(final_tasks=("addition_1digit",), final_num_test=1000),
     r"eval.final_num_test=1000: task 'addition_1digit' has only 100 distinct problems among its 1000 test items.*"
     r"from about 100 problems, so lower eval.final_num_test to about 10 "),
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
    # A one-number pair passed the plan and the dry run, then was a traceback in the data's preparation.
    (lambda c: setattr(c.mixture, "examples_per_document", (3,)),
     r"mixture.examples_per_document=3 must be \(fewest, most\) with 1 <= fewest <= most"),
    (lambda c: setattr(c.mixture, "examples_per_document", (1.5, 4)), r"mixture.examples_per_document=\(1.5, 4\)"),
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
    (lambda c: c.eval.update(num_test=0), r"eval.num_test=0 must be >= 2"),
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


def test_the_item_count_the_repeats_error_suggests_is_accepted():
    config = _bad(lambda c: c.eval.update(final_tasks=("addition_1digit",), final_num_test=10))
    assert len(emergence.plan_study(config).final_entries) == 1


def test_a_stop_during_one_size_starts_no_other_size(tmp_path, monkeypatch):
    """Interrupted (Ctrl-C / SIGTERM inside a size's training) propagates; a signal a size's
    Guard took during its last steps, which let its training end normally, stops the study before
    that size's evaluation and the next size."""
    from research.training import preemption
    from tests.signals import stop_request_during_training
    started = []

    def interrupted(config, run_dir):
        started.append(os.path.basename(run_dir))
        raise preemption.Interrupted("SIGINT", 3, os.path.join(run_dir, "checkpoints"))

    def signalled_at_its_end(config, run_dir):
        started.append(os.path.basename(run_dir))
        stop_request_during_training()
        return {}

    evaluated = []
    monkeypatch.setattr(emergence, "evaluate_run", lambda config, plan, size, *args: evaluated.append(size) or [])
    monkeypatch.setattr("research.training.metrics.measure_peak_flops", lambda: 1e9)
    for train, message in ((interrupted, "stopped by SIGINT at step 3"),
                           (signalled_at_its_end, "stopped by SIGTERM after scale-1e4's training ended")):
        started.clear()
        monkeypatch.setattr("research.training.train_and_evaluate", train)
        with pytest.raises(preemption.Interrupted, match=message):
            emergence.run_study(configs.get_config("micro"), str(tmp_path / train.__name__), log=lambda _: None)
        assert started == [configs.get_config("micro").sizes[0]] and evaluated == []


def test_command_line_refuses_a_bad_config_in_a_dry_run_and_a_file_as_workdir(tmp_path):
    import subprocess
    import sys
    command = [sys.executable, "-m", "experiments.emergence", "--config=experiments/configs/emergence.py:micro"]
    dry = subprocess.run([*command, "--dry_run", "--config.eval.num_test=0"], capture_output=True, text=True)
    assert dry.returncode == 1
    assert dry.stderr.strip().splitlines()[-1].startswith("error: eval.num_test=0 must be >= 2: ")
    assert "training FLOPs" not in dry.stdout
    afile = tmp_path / "afile"
    afile.write_text("kept")
    run = subprocess.run([*command, f"--workdir={afile}"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1] == (
        f"error: --workdir={afile}: {afile} is a file, not a directory; pass a folder the study can write to.")
    assert afile.read_text() == "kept"


def test_a_ctrl_c_during_a_dry_run_is_one_line_and_exit_130():
    """The dry run lay outside the handler of the study's stops: a Ctrl-C ended in a traceback.
    The Ctrl-C is real, raised as the dry run plans the study."""
    from tests.signals import run_with_signal_during
    result = run_with_signal_during("experiments.emergence_plan", "plan_study", "SIGINT", [
        "experiments.emergence", "--config=experiments/configs/emergence.py:micro", "--dry_run"])
    assert result.returncode == 130, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        "stopped by SIGINT during the dry run (it writes nothing); rerun it to print the estimate."]
    assert "training FLOPs" not in result.stdout


def test_a_task_tracked_and_scored_at_the_end_gives_one_row_per_summary():
    # eval.tasks at every checkpoint (400 items) and final_tasks (1000) both hold the task: the
    # summaries across sizes take the final 1000, the curves along training the 400 every checkpoint has.
    rows = [{"size": "a", "step": 8, "task": "t", "num_shots": 0, "num_examples": n} for n in (400, 1000)]
    rows.append({"size": "a", "step": 4, "task": "t", "num_shots": 0, "num_examples": 400})
    assert [r["num_examples"] for r in emergence_report.one_row_per_setting(rows, most_items=True)] == [1000, 400]
    assert [r["num_examples"] for r in emergence_report.one_row_per_setting(rows, most_items=False)] == [400, 400]
    # As many items both times (a study evaluated before the final duplicate was skipped): both
    # summaries take the first row, the one evaluated at every checkpoint.
    tie = [{"size": "a", "step": 8, "task": "t", "num_shots": 0, "num_examples": 1000, "which": w}
           for w in ("tracked", "final")]
    for most_items in (True, False):
        assert [r["which"] for r in emergence_report.one_row_per_setting(tie, most_items=most_items)] == ["tracked"]


def test_a_final_task_tracked_on_the_same_items_is_evaluated_once():
    plan = emergence.plan_study(configs.get_config("cpu_tiny"))
    assert len(plan.final_entries) == 5 and emergence.final_entries_not_tracked(plan) == []
    fewer = configs.get_config("cpu_tiny")
    fewer.eval.num_test = 400  # the tracked items are then the first 400 of the final 1000
    assert len(emergence.final_entries_not_tracked(emergence.plan_study(fewer))) == 5


def test_a_session_stopped_by_stop_after_steps_writes_no_report_and_says_why(tmp_path, monkeypatch):
    """Every size stopped at step 2 of 4 (train.stop_after_steps): no final rows, and the report
    died on 'nothing to plot' after all the training, overwriting report/ with partial tables."""
    config = configs.get_config("micro")
    config.train.stop_after_steps = 2

    def stopped_at_step_2(train_config, run_dir):
        os.makedirs(os.path.join(run_dir, "checkpoints", "2", "state"))
        return {}

    monkeypatch.setattr("research.training.train_and_evaluate", stopped_at_step_2)
    monkeypatch.setattr("research.training.metrics.measure_peak_flops", lambda: 1e9)
    monkeypatch.setattr(emergence, "evaluate_run", lambda *args: [])
    logs = []
    assert emergence.run_study(config, str(tmp_path), log=logs.append) == {}
    sizes = ", ".join(f"{size} (step 2)" for size in config.sizes)
    assert logs[-1] == (f"no report yet: {sizes} stopped before train.num_steps={config.train.num_steps} "
                        "(train.stop_after_steps=2); their checkpoints and evaluations are kept: rerun without "
                        "train.stop_after_steps (or with a later step) to finish them and write the report.")
    assert not os.path.exists(os.path.join(tmp_path, "report"))


def test_curves_along_training_are_read_on_the_checkpoint_grid_and_the_grid_is_kept(tmp_path):
    """A stop (Ctrl-C, SIGTERM, stop_after_steps) saves off the every_steps grid: those saves were
    evaluated as points of the curves along training, and with keep_last = the grid's length they
    pushed grid steps out (stops at 1, 3, 5 of 8 left [3, 4, 5, 6, 8]; the jump ratio, onsets and
    breakthroughness along training moved with them)."""
    from research.evaluation.results_table import write_rows
    config = configs.get_config("micro")
    every, num_steps = config.checkpoint.every_steps, config.train.num_steps
    size = config.sizes[0]
    checkpoint = emergence.train_config(config, size, {}).checkpoint
    assert checkpoint.keep_every_steps == every and checkpoint.keep_last == 2
    plan = emergence.plan_study(config)
    run_dir = tmp_path / "run"
    for step in range(1, num_steps + 1):  # every step saved (stops at each odd one); evaluations cached
        (run_dir / "checkpoints" / str(step) / "state").mkdir(parents=True)
        write_rows([{"task": "t", "num_shots": 0}], str(run_dir / "evals" / f"step_{step}"),
                   metadata={"fingerprint": plan.fingerprint})
    rows = emergence.evaluate_run(config, plan, size, str(run_dir), tokenizer=None, log=lambda _: None)
    assert [r["step"] for r in rows] == list(range(every, num_steps + 1, every))
