"""Optional packages (torch, transformers) fail in one line naming what to install, only when used."""
import sys

import pytest

from research.evaluation.tokenizer_loading import load_tokenizer
from research.models.config import ConfigError
from research.optional_imports import MissingDependencyError, import_optional


def test_absent_package_is_one_line_config_and_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(MissingDependencyError) as info:
        import_optional("transformers", "the tokenizer folder 'x'")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("the tokenizer folder 'x' needs") and "pip install transformers" in message
    assert "pip install -e '.[hf]'" in message
    # Mains print ConfigErrors as one line; library callers may catch ImportError.
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ImportError)
    assert info.value.name == "transformers"


def test_broken_install_keeps_its_own_error(monkeypatch, tmp_path):
    # A package that is present but whose own import fails is not reported as "not installed".
    (tmp_path / "half_installed.py").write_text("import a_dependency_that_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_missing") as info:
        import_optional("half_installed", "a feature")
    assert not isinstance(info.value, MissingDependencyError)


def test_present_package_is_returned():
    assert import_optional("json", "a feature") is sys.modules["json"]


def test_hf_tokenizer_folder_without_transformers(monkeypatch, tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"tokenizer folder '.*' needs .*\(pip install transformers\)"):
        load_tokenizer(str(tmp_path))
    assert load_tokenizer("char").decode(load_tokenizer("char").encode("ok")) == "ok"  # others need nothing


def test_every_extra_a_hint_names_is_in_setup_py_as_pip_writes_it():
    # pip writes extras into the metadata with "-" for "_"; pip before 24 then did not match
    # "[lm_eval]" to it and installed nothing, so a hint must name the extra in that spelling.
    import ast
    import os
    import re

    from research.optional_imports import EXTRAS
    setup_py = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")).read()
    call = next(node for node in ast.walk(ast.parse(setup_py)) if isinstance(node, ast.Call)
                and "setup" in (getattr(node.func, "id", ""), getattr(node.func, "attr", "")))
    extras = next(k.value for k in call.keywords if k.arg == "extras_require")
    names = {key.value for key in extras.keys}
    for hint in EXTRAS.values():
        (extra,) = re.findall(r"\.\[([^\]]+)\]", hint)
        assert extra in names and extra == re.sub(r"[-_.]+", "-", extra).lower(), (hint, sorted(names))
