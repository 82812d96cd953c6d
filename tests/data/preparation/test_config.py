"""Every prepare_data preset resolves to a PreparationConfig; mistakes are one line."""
import os
import subprocess
import sys

import pytest

from experiments.configs import prepare_data as presets
from research.data.config import DataError
from research.data.preparation import PreparationConfig
from research.data.preparation.config import DecontaminationConfig, ExecutionConfig, OutputConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.parametrize("preset", presets.PRESETS)
def test_presets_resolve(preset):
    config = PreparationConfig.from_dict(presets.get_config(preset).to_dict())
    assert config.c4_quality.enabled == (preset == "c4")
    assert config.gopher_quality.enabled == (preset != "code")
    assert config.gopher_repetition.top_n_grams == ((2, 0.2), (3, 0.18), (4, 0.16))  # lists back to tuples


def test_config_mistakes_are_one_line():
    with pytest.raises(DataError, match="unknown field 'dedupe'"):
        PreparationConfig.from_dict({"dedupe": {}})
    with pytest.raises(DataError, match=r"dedup has no field\(s\) \['threshold'\]"):
        PreparationConfig.from_dict({"dedup": {"threshold": 0.5}})
    with pytest.raises(DataError, match="jaccard_threshold=1.5 must be in"):
        PreparationConfig.from_dict({"dedup": {"jaccard_threshold": 1.5}})
    with pytest.raises(DataError, match="validation_fraction=0.0"):
        OutputConfig(validation_fraction=0.0)
    with pytest.raises(DataError, match="slurm_partition"):
        ExecutionConfig(executor="slurm")
    with pytest.raises(DataError, match="min_ngram=9 <= max_ngram=8"):
        DecontaminationConfig(min_ngram=9, max_ngram=8)
    # Published as <name>/abc, which tfds.builder could not find; -1 crashed inside a datatrove task.
    with pytest.raises(DataError, match=r"output: version='abc' must be a TFDS version x.y.z"):
        OutputConfig(version="abc")
    with pytest.raises(DataError, match=r"max_examples=-1 \(dropped documents shown per rule in the report\)"):
        PreparationConfig.from_dict({"max_examples": -1})


def test_a_report_of_no_examples_counts_every_drop():
    """max_examples=0 (show none) compared each drop with the last of an empty list: IndexError."""
    from research.data.preparation.counters import StageCounters
    for keep in (0, 2):
        counters = StageCounters(keep)
        for origin in ("c.txt", "a.txt", "b.txt"):
            counters.dropped("gopher_quality", "gopher_short_doc", origin, "short")
        stage = counters.stage("gopher_quality")
        assert stage["dropped"] == {"gopher_short_doc": 3}
        assert [e["origin"] for e in stage["examples"]["gopher_short_doc"]] == ["a.txt", "b.txt"][:keep]


def test_slurm_executors_are_built_as_a_dependency_chain(tmp_path):
    # The cluster path is datatrove's SlurmPipelineExecutor; building it submits nothing.
    from research.data.preparation import prepare, resolve_inputs
    (tmp_path / "a.txt").write_text("some text")
    config = PreparationConfig.from_dict({"execution": {"executor": "slurm", "slurm_partition": "cpu"},
                                          "decontamination": {"all_catalog_tasks": False}})
    spec = resolve_inputs(str(tmp_path))
    layout = prepare.Layout(str(tmp_path / "out"), "x", "1.0.0", prepare.fingerprint(spec, config))
    pipelines = prepare._pipelines(spec, layout, config, None, {})
    executors = prepare._executors(pipelines, layout, config)
    assert [type(e).__name__ for e in executors] == ["SlurmPipelineExecutor"] * 6
    assert [e.tasks for e in executors] == [4, 4, 13, 1, 4, 1]  # read, partitions, LSH bands, cluster, ...
    assert all(b.depends is a for a, b in zip(executors, executors[1:]))


def test_ray_without_ray_installed_is_one_line(tmp_path):
    import importlib.util
    from research.data.preparation import prepare, resolve_inputs
    (tmp_path / "a.txt").write_text("some text")
    config = PreparationConfig.from_dict({"execution": {"executor": "ray"}})
    spec = resolve_inputs(str(tmp_path))
    layout = prepare.Layout(str(tmp_path / "out"), "x", "1.0.0", prepare.fingerprint(spec, config))
    if importlib.util.find_spec("ray") is None:
        with pytest.raises(DataError, match=r"needs Ray; pip install 'ray\[default\]'"):
            prepare._executors(prepare._pipelines(spec, layout, config, None, {}), layout, config)
    else:
        executors = prepare._executors(prepare._pipelines(spec, layout, config, None, {}), layout, config)
        assert [type(e).__name__ for e in executors] == ["RayPipelineExecutor"] * 6


@pytest.mark.parametrize("override, message", [
    ("--config.dedup.jacard=0.7", "error: --config.dedup.jacard is not a config key"),
    ("--config.dedup.jaccard_threshold=1.5", "error: dedup: jaccard_threshold=1.5 must be in (0, 1)."),  # default preset
])
def test_cli_overrides_without_config_flag_are_one_line(tmp_path, override, message):
    (tmp_path / "a.txt").write_text("some text")
    result = subprocess.run([sys.executable, "-m", "experiments.prepare_data", f"--input={tmp_path}/a.txt",
                             f"--output_dir={tmp_path}/out", "--name=x", override],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("section, values, message", [
    ("gopher_quality", {"min_doc_words": 50, "max_doc_words": 10},
     r"min_doc_words=50 is above max_doc_words=10; every document would be dropped\. Lower"),
    ("gopher_quality", {"min_doc_words": -1}, r"gopher_quality: min_doc_words=-1 must be >= 0 or None"),
    ("gopher_quality", {"min_doc_words": 2.5}, r"min_doc_words=2\.5 must be an integer or None"),
    ("gopher_quality", {"min_avg_word_length": 12}, r"min_avg_word_length=12 is above max_avg_word_length=10"),
    ("gopher_quality", {"max_bullet_lines_ratio": 1.5}, r"max_bullet_lines_ratio=1\.5 must be in \[0, 1\]"),
    ("gopher_quality", {"enabled": "yes"}, r"gopher_quality: enabled='yes' must be True or False"),
    ("gopher_repetition", {"top_n_grams": ((2, "x"),)}, r"top_n_grams entry \(2, 'x'\) must be \(n, fraction\)"),
    ("gopher_repetition", {"dup_n_grams": (5, 0.15)}, r"dup_n_grams entry 5 must be \(n, fraction\)"),
    ("gopher_repetition", {"top_n_grams": ((0, 0.2),)}, r"top_n_grams entry \(0, 0\.2\) must be"),
    ("gopher_repetition", {"dup_line_frac": -0.1}, r"dup_line_frac=-0\.1 must be in \[0, 1\]"),
    ("c4_quality", {"min_num_sentences": -2}, r"c4_quality: min_num_sentences=-2 must be >= -1\."),
    ("c4_quality", {"max_word_length": 0}, r"max_word_length=0 would drop every line"),
    # datatrove reads a 0 threshold as unset: the rule was silently off.
    ("gopher_quality", {"max_symbol_word_ratio": 0}, r"max_symbol_word_ratio=0 would turn the rule off"),
    ("gopher_repetition", {"dup_line_frac": 0}, r"dup_line_frac=0 would turn the rule off"),
    # numpy's seed range: it failed after the whole reading stage.
    ("dedup", {"seed": -1}, r"dedup: seed=-1 must be a whole number in \[0, 4294967295\]"),
    ("dedup", {"seed": 2**32}, r"dedup: seed=4294967296 must be"),
    ("dedup", {"shingle_size": 10_000}, r"dedup: shingle_size=10000 must be in \[1, 100\] words"),
    ("dedup", {"normalize_numbers": "no"}, r"dedup: normalize_numbers='no' must be True or False"),
])
def test_quality_thresholds_are_checked_up_front(section, values, message):
    with pytest.raises(DataError, match=message):
        PreparationConfig.from_dict({section: values})


def test_a_field_whose_default_is_none_can_be_set_on_the_command_line(tmp_path):
    """--config.decontamination.num_test=5 failed in flag parsing: ml_collections cannot override a
    None-typed field. Here parsing passes, and the (bad) name is what stops the run."""
    (tmp_path / "a.txt").write_text("some text")
    result = subprocess.run([sys.executable, "-m", "experiments.prepare_data", f"--input={tmp_path}/a.txt",
                             f"--output_dir={tmp_path}/out", "--name=Bad", "--config.decontamination.num_test=5"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().startswith("error: --name='Bad'"), result.stderr[-2000:]


def test_quality_thresholds_accept_none_and_lists():
    config = PreparationConfig.from_dict({"gopher_quality": {"min_doc_words": None, "max_doc_words": 5},
                                          "gopher_repetition": {"top_n_grams": [[2, 0.2]], "dup_line_frac": None},
                                          "c4_quality": {"min_num_sentences": -1}})
    assert config.gopher_repetition.top_n_grams == ((2, 0.2),)


@pytest.mark.parametrize("words", [("badword", ""), ("badword", "   "), ("badword", 3)])
def test_blank_blocklist_entry_is_refused(words):
    with pytest.raises(DataError, match=r"blocklist: words entry .* must be a non-blank word or phrase .*; remove it"):
        PreparationConfig.from_dict({"blocklist": {"words": words}})
