"""experiments/emergence_seeds.py on study workdirs written here: per-item final evaluations
drawn digit by digit from a known per-digit accuracy p, so exact match is p^L in expectation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from experiments import emergence_seeds
from research.models.config import ConfigError

SIZES = {"a": 10_000, "b": 20_000, "c": 40_000, "d": 80_000}
LENGTHS = {"add2": 2, "add6": 6}
ITEMS = 1000


def _items(p: float, length: int, rng: np.random.Generator) -> dict[str, list[float]]:
    correct = rng.random((ITEMS, length)) < p
    accuracy = correct.mean(axis=1)
    return {"teacher_forced_accuracy": accuracy.tolist(), "exact_match": correct.all(axis=1).tolist(),
            "teacher_forced_prob": accuracy.tolist(), "target_log_prob": (length * np.log(p)).repeat(ITEMS).tolist(),
            "token_edit_distance": (~correct).sum(axis=1).tolist(), "answer_tokens": [float(length)] * ITEMS}


# Steps at which each size's 2-digit p leaves its plateau along training (None: never).
ONSETS = {"a": 3000, "b": 2250, "c": 1500, "d": None}
CHECKPOINTS = range(250, 4001, 250)


def _along_training(p_by_size: dict[str, float], onsets: dict[str, int | None],
                    track_longest: bool = True) -> list[dict]:
    """report/mirage_along_training.json rows of add2 (and of the copy task, ignored): p at the
    plateau's 0.2 (a first checkpoint at 0.15), rising at the onset and 0.05 per checkpoint
    after it up to the final p. With track_longest, add6 too: 0.1 before the onset, then
    0.3 + 0.1 per checkpoint up to the final p."""
    rows = []
    for size, p in p_by_size.items():
        for step in CHECKPOINTS:
            onset = onsets.get(size)
            before = onset is None or step < onset
            value = 0.15 if step == 250 else 0.2 if before else min(p, 0.35 + 0.05 * (step - onset) / 250)
            rows += [{"task": "add2", "num_shots": 0, "size": size, "step": step, "p": value},
                     {"task": "copy", "num_shots": 0, "size": size, "step": step, "p": 0.9}]
            if track_longest:
                rows.append({"task": "add6", "num_shots": 0, "size": size, "step": step,
                             "p": 0.1 if before else min(p, 0.3 + 0.1 * (step - onset) / 250)})
    return rows


def _config(seed: int, **changes: dict) -> dict:
    """The study config a report records: the seed's own, a peak FLOP/s measured on each machine
    (free to differ), and `changes` ({section: {field: value}})."""
    config = {"train": {"seed": seed, "peak_flops": 1e9 * (seed + 1), "num_steps": 4000},
              "opt": {"learning_rate": 4e-3}, "mixture": {"seed": 1}, "eval": {"seed": 0, "num_test": 400}}
    for section, fields in changes.items():
        config.setdefault(section, {}).update(fields)
    return config


def _study(root: str, seed: int, p_by_size: dict[str, float], *, d_model: int = 32,
           along_mirage: tuple[str, ...] = (), onsets: dict[str, int | None] = ONSETS,
           track_longest: bool = True, config: dict | None = None) -> str:
    """A finished emergence workdir: report files (results.json recording the study config,
    _config(seed) unless given), and per size a run.json and its last evaluation (answer-length
    tasks with items, plus a tracked copy task the seed report must leave out)."""
    workdir = os.path.join(root, f"seed{seed}")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(workdir, "report"))
    dump = lambda path, obj: open(path, "w").write(json.dumps(obj))
    dump(os.path.join(workdir, "report", "results.json"),
         {"metadata": {"config": config or _config(seed)},
          "rows": [{"size": s, "params_non_embedding": n} for s, n in SIZES.items()]})
    dump(os.path.join(workdir, "report", "mirage.json"), {"metadata": {}, "rows": [{"task": t} for t in LENGTHS]})
    # The study report's verdicts along training, one per size (what emergence_report writes).
    dump(os.path.join(workdir, "report", "mirage_verdicts.json"), {"metadata": {}, "rows": [
        {"axis": "along training", "size": size, "num_shots": 0, "mirage": size in along_mirage} for size in SIZES]})
    dump(os.path.join(workdir, "report", "mirage_along_training.json"),
         {"metadata": {}, "rows": _along_training(p_by_size, onsets, track_longest)})
    for size, p in p_by_size.items():
        run_dir = os.path.join(workdir, "runs", size)
        os.makedirs(os.path.join(run_dir, "evals"))
        fingerprint = {"train.seed": seed, "model.d_model": d_model, "model.name": size,
                       "data.file_patterns": [os.path.join(workdir, "data", "mixture.jsonl")]}
        dump(os.path.join(run_dir, "run.json"), {"fingerprint": fingerprint})
        rows = [{"task": t, "num_shots": 0, "num_examples": ITEMS, "items": _items(p, L, rng)}
                for t, L in LENGTHS.items()]
        rows.append({"task": "copy", "num_shots": 0, "num_examples": ITEMS, "items": _items(0.99, 8, rng)})
        rows.append({"task": "add2", "num_shots": 0, "num_examples": 400, "items": _items(p, 2, rng)})  # fewer items
        dump(os.path.join(run_dir, "evals", "step_4000.json"), {"metadata": {}, "rows": rows})
        dump(os.path.join(run_dir, "evals", "step_2000.json"), {"metadata": {}, "rows": []})
    return workdir


# p rises with size by steps of 0.10-0.20: exact match at 6 digits (p^6) 0.016, 0.047, 0.18, 0.74,
# breakthroughness ~5.5 against ~3.2 at 2 digits (p^2) and ~3 for p itself.
SMOOTH = {"a": 0.5, "b": 0.6, "c": 0.75, "d": 0.95}
OUT_OF_ORDER = {"a": 0.6, "b": 0.9, "c": 0.7, "d": 0.8}  # a seed on which b learned the most


def test_seed_report_counts_the_seeds_that_show_the_mirage_and_the_spread_between_them(tmp_path):
    workdirs = [_study(str(tmp_path), 0, SMOOTH, along_mirage=("b", "d")), _study(str(tmp_path), 1, OUT_OF_ORDER)]
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    verdicts = json.load(open(paths["verdicts"].replace(".csv", ".json")))["rows"]
    assert [v["seed"] for v in verdicts] == [0, 1]
    smooth, out_of_order = verdicts
    # Seed 0: p^L sharpens exact match at 6 digits, p itself does not sharpen: the mirage.
    assert smooth["teacher_forced_accuracy_improves"] and smooth["exact_match_sharper"]
    assert not smooth["teacher_forced_accuracy_sharper"]
    assert smooth["mirage"] and (smooth["shortest"], smooth["longest"]) == ("add2", "add6")
    assert smooth["exact_match_breakthroughness"][1] > smooth["exact_match_breakthroughness"][0]
    assert not out_of_order["teacher_forced_accuracy_improves"] and not out_of_order["mirage"]
    # Along training: each run's own verdicts, for the sizes read.
    assert smooth["along_training_mirage_sizes"] == ["b", "d"] and out_of_order["along_training_mirage_sizes"] == []
    report = open(paths["report"]).read()
    assert "shows at 1 of 2 seeds" in report and "2 of 4: b, d" in report and "0 of 4: none" in report

    # The spread: the two seeds' item means, their mean and sample standard deviation.
    spread = json.load(open(paths["seed_spread"].replace(".csv", ".json")))["rows"]
    assert {r["task"] for r in spread} == set(LENGTHS)  # the tracked copy task is not an answer length
    row = next(r for r in spread if (r["task"], r["size"], r["metric"]) == ("add6", "b", "p"))
    assert row["values"] == pytest.approx([0.6, 0.9], abs=0.02)
    assert row["mean"] == pytest.approx(np.mean(row["values"])) and row["sd"] == pytest.approx(
        abs(row["values"][0] - row["values"][1]) / np.sqrt(2))
    # Steps between sizes: a -> b rises in both seeds, by 0.1 and 0.3 (se: the two ends' sds over
    # sqrt(2 seeds)); b -> c rises in one and falls in the other: not resolved.
    steps = {(r["task"], r["metric"], r["from"]): r
             for r in json.load(open(paths["size_steps"].replace(".csv", ".json")))["rows"]}
    ab, bc = steps[("add2", "p", "a")], steps[("add2", "p", "b")]
    means = {r["size"]: r for r in spread if (r["task"], r["metric"]) == ("add2", "p")}
    assert ab["rise"] == pytest.approx(means["b"]["mean"] - means["a"]["mean"])
    assert ab["rise"] == pytest.approx(0.2, abs=0.02)
    assert ab["se"] == pytest.approx(np.hypot(means["a"]["sd"], means["b"]["sd"]) / np.sqrt(2))
    # Welch's t test with 2 seeds a size: 1 to 2 degrees of freedom, a critical value of 4.3 to
    # 12.7 standard errors (a z rule's 2 would call a step with no true rise resolved 18% of the time).
    va, vb = means["a"]["sd"] ** 2 / 2, means["b"]["sd"] ** 2 / 2
    assert ab["dof"] == pytest.approx((va + vb) ** 2 / (va ** 2 + vb ** 2)) and 1 <= ab["dof"] <= 2
    assert ab["critical"] == pytest.approx(stats.t.ppf(0.975, ab["dof"])) and ab["critical"] > 4.3
    assert ab["resolved"] == (ab["rise"] / ab["se"] > ab["critical"])
    assert not bc["resolved"]


def test_seeds_that_agree_resolve_every_step_and_all_show_the_mirage(tmp_path):
    workdirs = [_study(str(tmp_path), s, SMOOTH) for s in (0, 1, 2)]
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    steps = json.load(open(paths["size_steps"].replace(".csv", ".json")))["rows"]
    assert all(r["resolved"] for r in steps if r["metric"] == "p")
    assert "shows at 3 of 3 seeds" in open(paths["report"]).read()


@pytest.mark.parametrize("make, sizes, shots, message", [
    (lambda root: [_study(root, 0, SMOOTH)], list(SIZES), 0, r"names 1 workdir; seed noise needs >= 2"),
    (lambda root: [_study(root, 0, SMOOTH), _study(os.path.join(root, "x"), 0, SMOOTH)], list(SIZES), 0,
     r"train.seed \[0, 0\]: two share a seed"),
    (lambda root: [_study(root, 0, SMOOTH), _study(root, 1, SMOOTH, d_model=48)], list(SIZES), 0,
     r"are not one study at two seeds: they differ in model.d_model \(model.d_model: 48 vs 32\); only train.seed "
     r"may differ\.$"),
    (lambda root: [_study(root, 0, SMOOTH), _study(root, 1, SMOOTH)], ["a", "e"], 0,
     r"--sizes names 'e', which .* has not trained and evaluated"),
    (lambda root: [_study(root, 0, SMOOTH), os.path.join(root, "missing")], list(SIZES), 0, r"is not a directory"),
    (lambda root: [_study(root, 0, SMOOTH), _study(root, 1, SMOOTH)], ["a"], 0, r"needs >= 2 sizes"),
    (lambda root: [_study(root, 0, SMOOTH), _study(root, 1, SMOOTH)], list(SIZES), 3,
     r"no per-item final evaluation of a at num_shots=3; give the shots of the study's eval.final_shots"),
])
def test_bad_input_is_one_line_before_anything_is_written(tmp_path, make, sizes, shots, message):
    workdirs = make(str(tmp_path))
    with pytest.raises(ConfigError, match=message) as error:
        emergence_seeds.write_seed_report(workdirs, sizes, str(tmp_path / "out"), num_shots=shots)
    assert "\n" not in str(error.value) and not os.path.exists(tmp_path / "out")


def test_runs_differing_in_more_than_the_seed_are_refused_naming_every_field(tmp_path):
    """Only run.json's fingerprint was compared, and it holds no learning rate, mixture or
    evaluation seed: such runs were read as seeds of one study, each its own one-seed group."""
    first = _study(str(tmp_path), 0, SMOOTH, config=_config(0, report={"plot_metrics": ["exact_match"]}))
    other = _study(str(tmp_path), 1, SMOOTH, config=_config(1, opt={"learning_rate": 0.02}, mixture={"seed": 7},
                                                            eval={"seed": 3}, report={"plot_metrics": []}))
    with pytest.raises(ConfigError) as error:
        emergence_seeds.write_seed_report([first, other], list(SIZES), str(tmp_path / "out"))
    assert str(error.value) == (f"{other!r} and {first!r} are not one study at two seeds: they differ in "
                                "opt.learning_rate, mixture.seed, eval.seed (opt.learning_rate: 0.02 vs 0.004); only "
                                "train.seed may differ.")
    assert not os.path.exists(tmp_path / "out")


def test_reports_that_record_no_config_are_compared_by_the_study_fingerprints(tmp_path):
    """A report written before the config was recorded: each size's newest checkpoint config (its
    training identity, every optimizer number), the mixture's and the evaluations' digests."""
    def old_study(seed, learning_rate, mixture, evaluation):
        workdir = _study(str(tmp_path), seed, SMOOTH)
        results = os.path.join(workdir, "report", "results.json")
        json.dump({**json.load(open(results)), "metadata": {}}, open(results, "w"))
        os.makedirs(os.path.join(workdir, "data"))
        json.dump({"fingerprint": mixture}, open(os.path.join(workdir, "data", "manifest.json"), "w"))
        for size in SIZES:
            step = os.path.join(workdir, "runs", size, "evals", "step_4000.json")
            json.dump({**json.load(open(step)), "metadata": {"fingerprint": evaluation}}, open(step, "w"))
            saved = os.path.join(workdir, "runs", size, "checkpoints", "4000", "config")
            os.makedirs(saved)
            json.dump({"model": {"preset": "scale-1e4"}, "data": {}, "opt": {"learning_rate": learning_rate},
                       "train": {"seed": seed, "seq_len": 64, "batch_size": 8, "num_steps": 4000}},
                      open(os.path.join(saved, "metadata"), "w"))
        return workdir

    first = old_study(0, 4e-3, "m0", "e0")
    with pytest.raises(ConfigError) as error:
        emergence_seeds.check_same_study([emergence_seeds.read_seed_run(w, list(SIZES))
                                          for w in (first, old_study(1, 0.02, "m7", "e3"))])
    assert ("differ in opt.learning_rate, mixture.* or tokenizer.* (data/manifest.json's fingerprint), eval.* (the "
            "fingerprint of runs/*/evals) (opt.learning_rate: 0.02 vs 0.004); only train.seed may differ.") in str(
        error.value)
    # One study at another seed, its report rewritten since (recording the config): the digests judge.
    same = old_study(2, 4e-3, "m0", "e0")
    results = os.path.join(same, "report", "results.json")
    json.dump({**json.load(open(results)), "metadata": {"config": _config(2)}}, open(results, "w"))
    emergence_seeds.check_same_study([emergence_seeds.read_seed_run(w, list(SIZES)) for w in (first, same)])


def test_an_output_dir_under_a_file_is_one_line_before_the_workdirs_are_read(tmp_path, monkeypatch):
    workdirs = [_study(str(tmp_path), 0, SMOOTH), _study(str(tmp_path), 1, SMOOTH)]
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setattr(emergence_seeds, "read_seed_run", lambda *a: pytest.fail("read the workdirs first"))
    with pytest.raises(ConfigError) as error:
        emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "a_file" / "out"))
    assert str(error.value) == (f"--output_dir={tmp_path / 'a_file' / 'out'}: {tmp_path / 'a_file'} is a file, not a "
                                "directory; pass a folder the report can be written to.")


@pytest.mark.parametrize("name", ["mirage_verdicts.json", "mirage_along_training.json"])
def test_a_report_without_curves_along_training_asks_for_a_rerun_of_the_study(tmp_path, name):
    workdirs = [_study(str(tmp_path), 0, SMOOTH), _study(str(tmp_path), 1, SMOOTH)]
    os.remove(os.path.join(workdirs[1], "report", name))
    with pytest.raises(ConfigError, match=rf"has no report/{name} .*rerun its experiments.emergence"):
        emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))


def test_onset_is_the_first_checkpoint_above_the_median_of_the_earlier_ones():
    steps = [250, 500, 750, 1000, 1250]
    # Early learning to the plateau (0.15 -> 0.2) is not an onset; the rise to 0.45 is.
    assert emergence_seeds.onset_step(steps, [0.15, 0.2, 0.21, 0.45, 0.6]) == 1000
    # Order of the checkpoints given does not matter.
    assert emergence_seeds.onset_step(steps[::-1], [0.6, 0.45, 0.21, 0.2, 0.15]) == 1000
    # A rise of exactly ONSET_RISE over the median does not count; more does.
    rise = emergence_seeds.ONSET_RISE
    assert emergence_seeds.onset_step(steps, [0.2] * 4 + [0.2 + rise]) is None
    assert emergence_seeds.onset_step(steps, [0.2] * 4 + [0.2 + rise + 0.01]) == 1250
    assert emergence_seeds.onset_step(steps, [0.2, 0.22, 0.19, 0.21, 0.2]) is None


def test_seed_report_tables_each_sizes_onset_and_what_the_final_p_follows(tmp_path):
    # Seed 0: final p rises with size while the onsets come earlier with size, except d never
    # leaves the plateau; seed 1: a later onset for c (final p follows neither cleanly).
    workdirs = [_study(str(tmp_path), 0, SMOOTH),
                _study(str(tmp_path), 1, OUT_OF_ORDER, onsets={"a": 2500, "b": 1000, "c": 2000, "d": 1750})]
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    rows = json.load(open(paths["onsets"].replace(".csv", ".json")))["rows"]
    got = {(r["seed"], r["size"]): r for r in rows}
    assert {k: r["onset_step"] for k, r in got.items() if k[0] == 0} == {(0, s): o for s, o in ONSETS.items()}
    assert got[(1, "b")]["onset_step"] == 1000 and got[(1, "c")]["onset_step"] == 2000
    assert {r["onset_task"] for r in rows} == {"add2"} and {r["final_task"] for r in rows} == {"add6"}
    assert got[(1, "b")]["final_p"] == pytest.approx(0.9, abs=0.02)  # the final evaluation's p, longest length
    # Spearman's rho by hand: Pearson's correlation of the ranks (ties averaged), a size that
    # never left the plateau ranked after every onset.
    correlations = emergence_seeds.onset_correlations(rows)
    assert correlations["pairs"] == 8 and correlations["never_left"] == 1
    onset = [r["onset_step"] if r["onset_step"] is not None else 10**9 for r in rows]
    final = [r["final_p"] for r in rows]
    size = [r["params_non_embedding"] for r in rows]
    by_hand = lambda x: np.corrcoef(stats.rankdata(x), stats.rankdata(final))[0, 1]
    assert correlations["onset_rho"] == pytest.approx(by_hand(onset))
    assert correlations["size_rho"] == pytest.approx(by_hand(size))
    assert correlations["onset_rho"] < -0.3 < 0.3 < correlations["size_rho"]
    report = open(paths["report"]).read()
    assert "When each size left its early plateau" in report and "never" in report
    assert f"{correlations['onset_rho']:+.2f}" in report and f"{correlations['size_rho']:+.2f}" in report


def test_p_after_onset_compares_the_sizes_at_the_same_time_since_their_onset(tmp_path):
    # Seed 0 left the plateau at 3000 / 2250 / 1500 / never, seed 1 at 2500 / 1000 / 2000 / 1750:
    # every pair that left reached 1000 steps past its onset (seed 0's a: 3000 -> 4000), no more.
    workdirs = [_study(str(tmp_path), 0, SMOOTH),
                _study(str(tmp_path), 1, OUT_OF_ORDER, onsets={"a": 2500, "b": 1000, "c": 2000, "d": 1750})]
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    data = json.load(open(paths["onsets"].replace(".csv", ".json")))
    got = {(r["seed"], r["size"]): r for r in data["rows"]}
    assert {r["after_onset_steps"] for r in data["rows"]} == {1000}
    assert {r["matched_task"] for r in data["rows"]} == {"add6"}
    # add6 along training is 0.3 + 0.1 per checkpoint after the onset, capped at the final p:
    # 1000 steps on, min(p, 0.7).
    expected = {(0, "a"): 0.5, (0, "b"): 0.6, (0, "c"): 0.7, (0, "d"): None,
                (1, "a"): 0.6, (1, "b"): 0.7, (1, "c"): 0.7, (1, "d"): 0.7}
    assert {k: r["p_after_onset"] for k, r in got.items()} == pytest.approx(expected)
    c = data["metadata"]["correlations"]
    matched = [r for r in data["rows"] if r["p_after_onset"] is not None]
    rho = stats.spearmanr([r["params_non_embedding"] for r in matched], [r["p_after_onset"] for r in matched])
    assert c["matched_pairs"] == 7 and c["after_onset_size_rho"] == pytest.approx(rho.statistic)
    report = open(paths["report"]).read()
    assert "1000 steps after the size's onset" in report and f"{c['after_onset_size_rho']:+.2f}" in report


def test_p_after_onset_reads_the_onset_task_when_the_longest_was_not_tracked(tmp_path):
    workdirs = [_study(str(tmp_path), s, SMOOTH, track_longest=False) for s in (0, 1)]
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    rows = json.load(open(paths["onsets"].replace(".csv", ".json")))["rows"]
    assert {r["matched_task"] for r in rows} == {"add2"}
    # add2 1000 steps after the onset: min(p, 0.35 + 0.05 * 4) = min(p, 0.55).
    assert {r["size"]: r["p_after_onset"] for r in rows if r["seed"] == 0} == pytest.approx(
        {"a": 0.5, "b": 0.55, "c": 0.55, "d": None})


def test_runs_without_the_shortest_length_along_training_get_no_onset_table(tmp_path):
    workdirs = [_study(str(tmp_path), 0, SMOOTH), _study(str(tmp_path), 1, SMOOTH)]
    path = os.path.join(workdirs[1], "report", "mirage_along_training.json")
    json.dump({"metadata": {}, "rows": []}, open(path, "w"))  # report.transition_task left the lengths out
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    assert "onsets" not in paths and "No onset table" in open(paths["report"]).read()


def test_onset_correlations_rank_never_last_and_need_three_pairs():
    row = lambda onset, size, p: {"onset_step": onset, "params_non_embedding": size, "final_p": p, "final_step": 4000}
    rows = [row(1000, 1, 0.9), row(2000, 2, 0.8)]
    c = emergence_seeds.onset_correlations(rows)
    assert c["onset_rho"] is None and c["size_rho"] is None and (c["pairs"], c["never_left"]) == (2, 0)
    rows.append(row(None, 3, 0.1))  # never left: the latest onset of all
    c = emergence_seeds.onset_correlations(rows)
    assert c["onset_rho"] == pytest.approx(-1.0) and c["size_rho"] == pytest.approx(-1.0) and c["never_left"] == 1


def test_unfinished_study_is_named_by_the_command_line(tmp_path):
    finished = _study(str(tmp_path), 0, SMOOTH)
    unfinished = _study(str(tmp_path), 1, SMOOTH)
    os.remove(os.path.join(unfinished, "report", "mirage.json"))
    result = subprocess.run([sys.executable, "-m", "experiments.emergence_seeds", f"--workdirs={finished},{unfinished}",
                             "--sizes=a,b,c,d", f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {unfinished!r} has no finished report (report/results.json and mirage.json): finish its study "
        "first (rerun the same experiments.emergence command).")


def test_runs_of_one_answer_length_get_the_spread_and_no_mirage_verdict(tmp_path, monkeypatch):
    """The micro preset scores one answer length: the seed report died on a TypeError (the verdict,
    which compares lengths, was None) and wrote nothing."""
    monkeypatch.setattr(sys.modules[__name__], "LENGTHS", {"add2": 2})
    workdirs = [_study(str(tmp_path), s, SMOOTH, track_longest=False) for s in (0, 1)]
    paths = emergence_seeds.write_seed_report(workdirs, list(SIZES), str(tmp_path / "out"))
    verdicts = json.load(open(paths["verdicts"].replace(".csv", ".json")))["rows"]
    assert [v["mirage"] for v in verdicts] == [None, None]
    assert "No mirage verdict**: the runs score 1 answer length (add2)" in open(paths["report"]).read()
    spread = json.load(open(paths["seed_spread"].replace(".csv", ".json")))["rows"]
    assert {r["task"] for r in spread} == {"add2"} and spread


def test_a_study_recorded_before_a_fingerprint_field_was_added_is_one_study_with_a_later_one(tmp_path):
    # Seed 0 ran before its runs' run.json recorded the tokenizer file's digest (workdir.ADDED_LATER),
    # seed 1 after: one study, as resuming either run accepts. Both recording it: their tokenizers'
    # contents decide, not the digest, which holds the file's name.
    workdirs = [_study(str(tmp_path), seed, SMOOTH) for seed in (0, 1)]
    for size in SIZES:
        path = os.path.join(workdirs[1], "runs", size, "run.json")
        record = json.load(open(path))
        record["fingerprint"]["data.tokenizer.model_file_sha256"] = "0d8d"
        json.dump(record, open(path, "w"))
    emergence_seeds.check_same_study([emergence_seeds.read_seed_run(w, list(SIZES)) for w in workdirs])

    def tokenizer_files(contents: list[bytes]) -> None:
        # Each study's own tokenizer, named from its workdir's mixture path (so its recorded digest,
        # of the name too, always differed between two seeds: every real pair of studies was refused).
        for workdir, data in zip(workdirs, contents):
            model = os.path.join(workdir, "tokenizers", f"files_bpe_384_{abs(hash(workdir)) % 10**6}.model")
            os.makedirs(os.path.dirname(model), exist_ok=True)
            open(model, "wb").write(data)
            for size in SIZES:
                path = os.path.join(workdir, "runs", size, "run.json")
                record = json.load(open(path))
                record["fingerprint"].update({"data.tokenizer.model_path": model,
                                              "data.tokenizer.model_file_sha256": f"{hash(model)}"})
                json.dump(record, open(path, "w"))

    tokenizer_files([b"pieces", b"pieces"])  # the same tokenizer under two names: one study
    emergence_seeds.check_same_study([emergence_seeds.read_seed_run(w, list(SIZES)) for w in workdirs])
    tokenizer_files([b"pieces", b"other pieces"])  # another tokenizer: not one study
    with pytest.raises(ConfigError, match="differ in data.tokenizer.model_file_sha256"):
        emergence_seeds.check_same_study([emergence_seeds.read_seed_run(w, list(SIZES)) for w in workdirs])
