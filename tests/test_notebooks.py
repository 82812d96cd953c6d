"""Notebooks are first-class: each one runs top to bottom in a fresh kernel and shows what it promises."""
import ast
import os
import pathlib
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
def _estimate_text(preset: str) -> str:
    from experiments.configs import scaling_laws
    estimate = scaling_laws.get_config(preset).estimate
    return f"at {estimate.mfu:.0%} MFU of {estimate.peak_flops:.3g} FLOP/s"


_CPU_TINY_ESTIMATE = _estimate_text("cpu_tiny")
# What each notebook must print (regular expressions over its text output) and how many images it shows.
EXPECTED = {
    "quickstart.ipynb": ([r"gpt2-small", r"eval_loss"], 0),
    "zoo_tour.ipynb": ([r"max \|logit difference\| vs transformers: \d\.\d+e-0[5-9]", r"same tokens: True",
                        r"greedy:  +'the cat", r"beam \(log p"], 0),
    "pretraining.ipynb": ([r"train loss \d+\.\d+ -> \d+\.\d+ over 40 steps", r"checkpoint .* step 40"], 1),
    # The plan's estimate from the preset's own config.estimate, which its note credits (it was 5e10 at 30%).
    "scaling_laws.ipynb": ([r"\d+ runs, ", r"plots: \['law_contours.png', 'loss_vs_compute.png', 'isoflop.png'\]",
                            r"fitted \(approach 3\)", re.escape(_CPU_TINY_ESTIMATE)], 3),
    # Metric names whole: cut to 10 characters, teacher_forced_accuracy and _prob read alike.
    "emergence.ipynb": ([r"'vs_params.png'", r"breakthroughness", r"'teacher_forced_accuracy'"], 2),
    "finetuning.ipynb": ([r"eval_loss: before \d+\.\d+ -> after \d+\.\d+", r"config\.json"], 0),
}


def test_every_notebook_has_a_badge_an_install_cell_and_expectations():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}  # a notebook without an entry still must run cleanly
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        intro, install = notebook.cells[0].source, notebook.cells[1].source
        assert f"https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/{path.name}" in intro
        assert 'REPOSITORY_URL = ""  # <-- SET ME' in install
        # No repository address is invented anywhere: only the placeholders.
        text = "".join(cell.source for cell in notebook.cells)
        assert not re.findall(r"github\.com/(?!OWNER/REPO)[\w-]+/[\w-]+", text)


def test_install_cell_finds_a_local_clone_and_says_what_to_do_elsewhere(tmp_path):
    install = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", install], cwd=ROOT / "notebooks", env=env, capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 0 and found.stdout.strip() == f"research from {ROOT / 'research'}", found.stderr
    # -S: no site-packages, so an installed `research` (tests/run.sh installs the checkout) is not found either.
    elsewhere = subprocess.run([sys.executable, "-S", "-c", install], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=120)
    assert elsewhere.returncode == 1 and "set REPOSITORY_URL above (Colab)" in elsewhere.stderr


def _defined_and_used(source: str) -> tuple[set[str], set[str]]:
    """The names a cell binds (imports, assignments, defs) and the names it reads."""
    from IPython.core.inputtransformer2 import TransformerManager
    tree = ast.parse(TransformerManager().transform_cell(source))  # %magics and !commands as Python
    defined, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else defined).add(node.id)
    return defined, used


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_after_the_install_cell_run_without_it(path):
    """After a runtime restart (Colab) a reader skips the install cell, the package being installed:
    a name only it bound (os) was a NameError in every later cell that used it."""
    cells = list(enumerate(nbformat.read(path, as_version=4).cells))
    only_install, _ = _defined_and_used(cells[1][1].source)
    defined, missing = set(), []
    for index, cell in cells[2:]:
        if cell.cell_type != "code":
            continue
        binds, reads = _defined_and_used(cell.source)
        defined |= binds  # a cell may use what the cells above it bound: those are rerun too
        missing += [f"cell {index}: {name}" for name in sorted(reads & only_install - defined)]
    assert not missing, f"{path.name}: names only the install cell binds: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, tmp_path_factory, monkeypatch):
    # The kernel imports this checkout (as an installed package would be found), and runs in an
    # empty directory, so a notebook that wrote next to itself would be noticed.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    # The notebooks' tempfile.mkdtemp() workdirs (kept for a reader to open) land in pytest's
    # own temporary tree, which pytest prunes, not in the machine's /tmp run after run.
    monkeypatch.setenv("TMPDIR", str(tmp_path_factory.mktemp("notebook_tmp")))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    patterns, images = EXPECTED.get(path.name, ([], None))
    for pattern in patterns:
        assert re.search(pattern, text), (pattern, text[-3000:])
    if images is not None:
        assert sum("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data") == images
    assert list(tmp_path.iterdir()) == []
