"""Tokenizer files and settings: a gs:// workdir's model reaches the bucket, every TokenizerConfig
field is a config key of the presets, and the command examples in docstrings keep their lines."""
import ast
import glob
import dataclasses
import os
import pathlib
import re


from research.data import DataConfig, Tokenizer, TokenizerConfig, build_tokenizer
from research.data import tokenizer as tokenizer_lib
from research.data.tokenizer import cached_model_path, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_cloud_workdir_gets_its_tokenizer_not_a_local_gs_folder(tmp_path, monkeypatch):
    """os.path.abspath('gs://b/run/...') is <cwd>/gs:/b/run/...: the trained model was written
    there, never to the bucket, and each run on another VM trained it again."""
    bucket = tmp_path / "bucket"  # what the storage library would hold, by URL

    def cloud_path(url: str) -> pathlib.Path:
        assert url.startswith("gs://"), url  # local paths never go through the storage library
        return bucket / url[len("gs://"):]
    monkeypatch.setattr(tokenizer_lib, "_cloud_path", cloud_path, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data_config = DataConfig(tokenizer=TokenizerConfig(vocab_size=40, byte_fallback=False, max_training_chars=20_000))
    path = cached_model_path(data_config, "gs://b/run")
    assert path.startswith("gs://b/run/tokenizers/")
    texts = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]
    trained = train_tokenizer(texts, data_config.tokenizer, path)
    assert os.listdir(cwd) == []
    assert (bucket / path[len("gs://"):]).read_bytes() == trained.model_proto
    # Read back through the same means: a rerun (another VM) finds it instead of training again.
    loaded = build_tokenizer(data_config, "gs://b/run")
    assert loaded.path == path and loaded.model_proto == trained.model_proto
    assert Tokenizer.load(path).encode("return x").tolist() == trained.encode("return x").tolist()


def test_every_tokenizer_setting_is_a_config_key_and_spelling_out_its_default_changes_no_run():
    """--config.data.tokenizer.model_type=unigram was 'not a config key' though the docstring says any
    field can be overridden; the added keys hold TokenizerConfig's defaults, so a run recorded
    without them keeps its fingerprint and its cached tokenizer's name."""
    from experiments.configs import pretrain, scaling_laws
    from experiments.scaling_laws import run_dirs
    from research.training.workdir import run_fingerprint

    every = {field.name for field in dataclasses.fields(TokenizerConfig)}
    presets = pretrain.PRESETS + pretrain.BATCHED_PRESETS + pretrain.ACCELERATOR_PRESETS
    cases = [(pretrain.get_config(p), tuple(pretrain.TOKENIZER_DEFAULTS)) for p in presets]
    # The sweep presets spelled out byte_fallback and character_coverage already.
    cases += [(scaling_laws.get_config(p), ("model_type", "normalization")) for p in scaling_laws.PRESETS]
    for config, added in cases:
        assert set(config.data.tokenizer) == every
        new, old = config.to_dict(), config.to_dict()
        for field in added:
            assert new["data"]["tokenizer"][field] == getattr(TokenizerConfig(), field)
            del old["data"]["tokenizer"][field]
        assert run_fingerprint(old) == run_fingerprint(new)
        assert cached_model_path(DataConfig(**old["data"]), "w") == cached_model_path(DataConfig(**new["data"]), "w")
        if "sweep" in new:
            assert run_dirs._fingerprint(old) == run_dirs._fingerprint(new)


def test_command_examples_in_docstrings_keep_their_line_breaks():
    """A backslash ending a line of a non-raw module docstring joins it with the next: --help showed
    '--vocab_size=8192         --model_type=bpe' on one line."""
    joined = []
    for folder in ("experiments", "research", "launch"):
        for path in sorted(glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True)):
            source = open(path, encoding="utf-8").read()
            body = ast.parse(source).body
            if not body or not isinstance(body[0], ast.Expr) or not isinstance(body[0].value, ast.Constant):
                continue
            segment = ast.get_source_segment(source, body[0].value)
            if not segment.lower().startswith(("r", "br")) and re.search(r"(?<!\\)\\\n", segment):
                joined.append(os.path.relpath(path, REPO))
    assert joined == []
