"""README.md's ```python blocks run as written: each block is executed in a fresh namespace with
only its placeholder paths swapped for real local fixtures (a tiny trained run, a random tiny
GPT-2 saved by transformers, a local lm-eval task YAML), then its results are checked.

A README edit that changes an example's API use fails here; one that renames a placeholder
fails in _substitute; a new python block fails test_readme_python_blocks_are_all_covered
until a test for it is added below."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.generate import DecodingOptions
from tests.evaluation.conftest import capitals_task_yaml

README = Path(__file__).resolve().parent.parent / "README.md"

# The "## " section each python block sits under, in README order; a test below covers each.
COVERED = ["Generating text from a trained model", "lm-evaluation-harness", "Using the library"]

# The lm-eval task the README block names; its data are these multiple-choice questions.
QUESTIONS = [("France", ["Paris", "Rome", "Lima"], 0), ("Peru", ["Oslo", "Lima", "Quito"], 1),
             ("Italy", ["Madrid", "Bern", "Rome"], 2), ("Spain", ["Porto", "Madrid", "Seville"], 1)]


def _python_blocks() -> list[tuple[str, str]]:
    """(section heading, code) of every ```python block in README.md, in order."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        headings = re.findall(r"^## (.+)$", text[:match.start()], re.MULTILINE)
        blocks.append((headings[-1].strip() if headings else "(top)", match.group(1)))
    return blocks


def _block(section: str) -> str:
    found = [code for heading, code in _python_blocks() if heading == section]
    assert len(found) == 1, f"README.md has {len(found)} python blocks under '## {section}', expected 1."
    return found[0]


def _substitute(code: str, replacements: dict[str, str]) -> str:
    """`code` with each placeholder replaced; a placeholder missing from the block fails, so
    a README edit that renames it is noticed rather than silently running something else."""
    for placeholder, replacement in replacements.items():
        assert placeholder in code, (f"README placeholder {placeholder!r} is gone from the block:\n{code}\n"
                                     "update tests/test_readme_snippets.py to match the README.")
        code = code.replace(placeholder, replacement)
    return code


def _run(section: str, code: str) -> dict[str, Any]:
    """Execute `code` in a fresh namespace (as a reader's script would); returns the namespace."""
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, f"README.md[{section}]", "exec"), namespace)
    return namespace


def test_readme_python_blocks_are_all_covered():
    sections = [heading for heading, _ in _python_blocks()]
    assert sections == COVERED, (
        f"README.md has {len(sections)} python blocks, under {sections}; tests/test_readme_snippets.py "
        f"covers {len(COVERED)}, under {COVERED}: add a test that runs each new block (and list its "
        "section in COVERED), or drop a removed block's test.")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The README's /tmp/gpt_tiny: a 1-layer GPT trained 1 step by the project's pretrain code
    (with its own SentencePiece tokenizer), shared by the generation and lm-eval blocks."""
    from tests.tiny_run import train_tiny_gpt
    return train_tiny_gpt(str(tmp_path_factory.mktemp("gpt_tiny")), num_steps=1)


def test_generating_text_block(run_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]):
    monkeypatch.chdir(tmp_path)
    code = _substitute(_block("Generating text from a trained model"), {'"/tmp/gpt_tiny"': repr(run_dir)})
    ns = _run("Generating text from a trained model", code)
    greedy, samples, loaded = ns["greedy"], ns["samples"], ns["loaded"]
    assert loaded.step == 1
    assert greedy.prompt == "def main(" and 1 <= len(greedy.token_ids) <= 48 and isinstance(greedy.text, str)
    # The sampling call sets no max_new_tokens, so the default bounds each sample.
    limit = DecodingOptions().max_new_tokens
    assert len(samples) == 3 and all(s.prompt == "import" and 1 <= len(s.token_ids) <= limit for s in samples)
    # Never a padded id the tokenizer lacks (the model embeds 512 ids for its 400 pieces).
    assert all(max(c.token_ids) < loaded.tokenizer.vocab_size < loaded.model.config.vocab_size
               for c in (greedy, *samples))
    # The text is the continuation of the prompt's tokens (decoded with the prompt, so a leading
    # space survives), and what the block printed is that text.
    prompt_ids = list(loaded.tokenizer.encode("def main("))
    assert (loaded.tokenizer.decode(prompt_ids + list(greedy.token_ids))
            == loaded.tokenizer.decode(prompt_ids) + greedy.text)
    assert capsys.readouterr().out == f"{greedy.text} {[s.text for s in samples]}\n"
    # Greedy decoding is deterministic: running the block's call again gives the same tokens.
    (again,), = ns["generate_text"](loaded, ["def main("], max_new_tokens=48)
    assert again.token_ids == greedy.token_ids


def _write_task(folder: Path) -> None:
    """The README's my_tasks/my_task: a multiple-choice lm-eval task over local JSONL (offline)."""
    folder.mkdir()
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps({"country": c, "options": o, "label": g}) + "\n" for c, o, g in QUESTIONS))
    (folder / "my_task.yaml").write_text(capitals_task_yaml("my_task", data))


def test_lm_evaluation_harness_block(run_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]):
    # "my_tasks/" stays relative, as a reader would write it: it resolves under tmp_path. The task
    # names are kept (identity replacements) but still checked, since _write_task must match them.
    monkeypatch.chdir(tmp_path)
    _write_task(tmp_path / "my_tasks")
    code = _substitute(_block("lm-evaluation-harness"), {
        '"/tmp/gpt_tiny"': repr(run_dir), '["my_task"]': '["my_task"]', '"my_tasks/"': '"my_tasks/"'})
    ns = _run("lm-evaluation-harness", code)
    result = ns["out"]["results"]["my_task"]
    assert f"{result}" in capsys.readouterr().out
    # lm-eval's accuracy is what our own harness's log-likelihoods give on the same questions.
    harness = ns["lm"].harness
    scores = harness.multiple_choice([(f"Q: What is the capital of {c}?\nA:", [" " + o for o in options])
                                      for c, options, _ in QUESTIONS])
    expected = np.mean([int(np.argmax(s)) == label for s, (_, _, label) in zip(scores, QUESTIONS)])
    assert result["acc,none"] == pytest.approx(expected, abs=1e-12)


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The README's /path/to/local/hf_checkpoint: a random tiny GPT-2 saved by transformers
    (config built here, nothing downloaded)."""
    import torch
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    folder = tmp_path_factory.mktemp("hf_gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def test_using_the_library_block(hf_gpt2_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import torch
    import transformers
    monkeypatch.chdir(tmp_path)
    exported = tmp_path / "exported"
    code = _substitute(_block("Using the library"), {
        '"/path/to/local/hf_checkpoint"': repr(hf_gpt2_dir), '"/tmp/exported"': repr(str(exported))})
    ns = _run("Using the library", code)
    # generate(): two prompts of different lengths, each continued by 16 sampled tokens.
    out = ns["out"]
    assert out.tokens_BN.shape == (2, 16) and np.asarray(out.lengths_B).tolist() == [16, 16]
    assert ns["config"].name == "llama-tiny" and ns["config"].scan_layers
    assert np.all((np.asarray(out.tokens_BN) >= 0) & (np.asarray(out.tokens_BN) < ns["config"].vocab_size))
    # from_hf / to_hf: the exported folder loads in transformers and gives the zoo model's logits.
    model, params = ns["model"], ns["params"]
    assert model.config.vocab_size == 64
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    tokens = np.array([[5, 17, 3, 42, 8, 60]])
    with torch.no_grad():
        theirs = hf_model(torch.tensor(tokens)).logits.numpy()
    ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
