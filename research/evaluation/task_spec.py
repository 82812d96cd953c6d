"""Tasks as data: a declarative TaskSpec plus documents (JSONL files or a generator).

A document is a JSON object; the spec's templates are Python format strings over its
fields ("{a}+{b}=", literal braces doubled). A task file is JSON:

    {"name": "capitals", "output_type": "multiple_choice",
     "prompt": "Q: What is the capital of {country}?\\nA:", "target": "{answer}",
     "choices": "options", "metrics": ["acc", "acc_norm"], "num_fewshot": 2,
     "data_files": {"test": "capitals_test.jsonl", "train": "capitals_train.jsonl"}}

with data_files relative to the task file. Every template is rendered on every document
when the task is built, so a missing field fails at load time with file and line.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
import string
from typing import Any, Literal, Sequence

from research.evaluation.metrics import METRICS_BY_OUTPUT_TYPE
from research.models.config import ConfigError

OutputType = Literal["generate_until", "multiple_choice", "loglikelihood", "loglikelihood_rolling"]
_OUTPUT_TYPES = OutputType.__args__


class TaskError(ConfigError):
    """A malformed task spec or document; the message names the file / field and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """How to turn a document into requests and score them (lm-evaluation-harness semantics).

    prompt: template of the context (for loglikelihood_rolling: the whole scored text, with no
    target). target: template of the gold continuation (for
    multiple_choice: the gold choice's index or its text, see gold_index). choices: multiple_choice only,
    the document field holding the list of choice strings. A few-shot example is
    prompt + target_delimiter + target; examples and the query are joined by
    fewshot_delimiter, after `description`. answer_prefix: for chain-of-thought targets,
    exact match compares only the text after the last occurrence of this prefix.
    until: generate_until's stop strings; left out (None), the fewshot_delimiter alone, as
    lm-eval's TaskConfig defaults generation_kwargs' until (a task with fewshot_delimiter "\n"
    stopped only at "\n\n" here, so its answer ran on into the next made-up question).
    answer_identifies_problem: whether two documents with one gold answer pose one problem, so
    a few-shot example with the query's answer is left out as one with its prompt is
    (fewshot.sample_shots). True for unscramble (every scramble of a word asks for that word);
    False where equal answers are other problems: sums, recalled values, a multiple-choice
    gold index or text.
    """

    name: str
    output_type: OutputType
    prompt: str
    target: str = ""
    choices: str | None = None
    metrics: tuple[str, ...] = ()  # () = every metric of output_type
    eval_split: str = "test"
    fewshot_split: str | None = "train"
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    until: tuple[str, ...] | None = None  # generate_until stop strings; None: (fewshot_delimiter,)
    max_new_tokens: int = 32
    answer_prefix: str | None = None
    answer_identifies_problem: bool = False

    def __post_init__(self):
        where = f"task {self.name!r}"
        self._check_types(where)
        if self.output_type not in _OUTPUT_TYPES:
            raise TaskError(f"{where}: output_type={self.output_type!r} is not one of {_OUTPUT_TYPES}.")
        # JSON gives lists; keep the spec hashable and immutable.
        object.__setattr__(self, "metrics", tuple(self.metrics))
        until = (self.fewshot_delimiter,) if self.until is None else self.until
        object.__setattr__(self, "until", (until,) if isinstance(until, str) else tuple(until))
        known = METRICS_BY_OUTPUT_TYPE[self.output_type]
        unknown = [m for m in self.metrics if m not in known]
        if unknown:
            raise TaskError(f"{where}: unknown metric(s) {unknown} for output_type={self.output_type!r}; "
                            f"choose from {list(known)}.")
        if not self.metrics:
            object.__setattr__(self, "metrics", tuple(known))
        for field in ("prompt", "target", "description"):
            template_fields(getattr(self, field), f"{where}: {field} template")
        if self.output_type in ("generate_until", "loglikelihood", "multiple_choice") and not self.target:
            raise TaskError(f"{where}: output_type={self.output_type!r} needs a target template, e.g. '{{answer}}'.")
        if self.output_type == "multiple_choice" and not self.choices:
            raise TaskError(f"{where}: multiple_choice needs choices=<document field holding the list of choices>.")
        if self.output_type == "loglikelihood_rolling" and self.num_fewshot:
            raise TaskError(f"{where}: loglikelihood_rolling scores whole texts; num_fewshot must be 0, "
                            f"got {self.num_fewshot}.")
        if self.output_type == "loglikelihood_rolling" and self.target:
            # Only the rendered prompt is scored: a target (lm-eval's doc_to_target, where its
            # wikitext keeps the text) was silently left out, scoring e.g. the title alone.
            raise TaskError(f"{where}: loglikelihood_rolling scores the prompt alone, so target={self.target!r} "
                            "would be ignored; put the scored text in prompt (e.g. prompt='{text}') and leave "
                            "target out.")
        if self.num_fewshot < 0:
            raise TaskError(f"{where}: num_fewshot={self.num_fewshot} must be >= 0.")
        if self.num_fewshot and not self.fewshot_split:
            raise TaskError(f"{where}: num_fewshot={self.num_fewshot} needs a fewshot_split to draw examples from.")
        if self.max_new_tokens < 1:
            raise TaskError(f"{where}: max_new_tokens={self.max_new_tokens} must be >= 1.")

    def _check_types(self, where: str) -> None:
        """Each field's JSON type, in one line naming it: a number as a delimiter was a TypeError
        traceback (with 0 shots only after the model had compiled), a string of metrics was split
        into characters."""
        def wrong(field: str, kind: str) -> TaskError:
            return TaskError(f"{where}: {field}={getattr(self, field)!r} must be {kind}.")

        for field in ("name", "prompt", "target", "eval_split", "target_delimiter", "fewshot_delimiter",
                      "description"):
            if not isinstance(getattr(self, field), str):
                raise wrong(field, "a string")
        for field in ("choices", "fewshot_split", "answer_prefix"):
            if getattr(self, field) is not None and not isinstance(getattr(self, field), str):
                raise wrong(field, "a string (or null)")
        for field in ("num_fewshot", "fewshot_seed", "max_new_tokens"):
            if isinstance(getattr(self, field), bool) or not isinstance(getattr(self, field), numbers.Integral):
                raise wrong(field, "an integer")
        if not isinstance(self.answer_identifies_problem, bool):
            raise wrong("answer_identifies_problem", "true or false")
        if not isinstance(self.metrics, (list, tuple)) or not all(isinstance(m, str) for m in self.metrics):
            raise wrong("metrics", "a list of metric names, e.g. [\"exact_match\"]")
        until = self.until
        if until is not None and not isinstance(until, str) and not (isinstance(until, (list, tuple))
                                                                     and all(isinstance(u, str) for u in until)):
            raise wrong("until", "a stop string or a list of them (or null: the fewshot_delimiter)")

    def replace(self, **overrides: Any) -> "TaskSpec":
        # A stop string that was only the fewshot delimiter's default follows a new delimiter.
        if "fewshot_delimiter" in overrides and "until" not in overrides and self.until == (self.fewshot_delimiter,):
            overrides["until"] = None
        return dataclasses.replace(self, **overrides)


@dataclasses.dataclass(frozen=True)
class Doc:
    """One document and where it came from ("file.jsonl:12", "addition[3]") for error messages."""

    fields: dict[str, Any]
    location: str


@dataclasses.dataclass(frozen=True)
class Task:
    """A spec and its documents by split name; built through `make_task` so every doc is checked."""

    spec: TaskSpec
    splits: dict[str, tuple[Doc, ...]]

    def docs(self, split: str) -> tuple[Doc, ...]:
        if split not in self.splits:
            raise TaskError(f"task {self.spec.name!r} has no split {split!r}; it has {sorted(self.splits)}.")
        return self.splits[split]

    def prompts(self, split: str) -> tuple[str, ...]:
        """Each document's rendered prompt, rendered once per split: few-shot selection compares
        every query's prompt with the whole pool's."""
        cache = self._rendered_prompts
        if split not in cache:
            cache[split] = tuple(render(self.spec.prompt, doc, "prompt") for doc in self.docs(split))
        return cache[split]

    def answers(self, split: str) -> tuple[str, ...]:
        """Each document's gold text, computed once per split, as prompts() for the same reason."""
        cache = self._rendered_answers
        if split not in cache:
            cache[split] = tuple(gold_text(self.spec, doc) for doc in self.docs(split))
        return cache[split]

    @functools.cached_property
    def _rendered_prompts(self) -> dict[str, tuple[str, ...]]:
        return {}  # cached_property writes the instance __dict__ directly, as a frozen dataclass allows

    @functools.cached_property
    def _rendered_answers(self) -> dict[str, tuple[str, ...]]:
        return {}


def make_task(spec: TaskSpec, splits: dict[str, Sequence[Doc | dict]]) -> Task:
    """A Task whose every document renders under the spec; dict documents get locations name[i]."""
    checked = {}
    for split, docs in splits.items():
        checked[split] = tuple(d if isinstance(d, Doc) else Doc(dict(d), f"{spec.name}/{split}[{i}]")
                               for i, d in enumerate(docs))
    task = Task(spec, checked)
    task.docs(spec.eval_split)
    if spec.num_fewshot:
        task.docs(spec.fewshot_split)
    for docs in checked.values():
        for doc in docs:
            render(spec.prompt, doc, "prompt")
            if spec.target:
                gold_index(spec, doc) if spec.output_type == "multiple_choice" else render(spec.target, doc, "target")
    return task


def template_fields(template: str, where: str) -> list[str]:
    """The field names a format template uses; TaskError if its braces are malformed."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise TaskError(f"{where} {template!r} is not a valid format string ({e}); double literal braces.") from None


def render(template: str, doc: Doc, what: str) -> str:
    """`template` filled with the document's fields."""
    try:
        return template.format_map(doc.fields)
    except KeyError as e:
        raise TaskError(f"{doc.location}: field {e.args[0]!r} used by the {what} template is missing; "
                        f"the document has {sorted(doc.fields)}.") from None
    except (IndexError, AttributeError, ValueError) as e:
        raise TaskError(f"{doc.location}: cannot render the {what} template {template!r}: {e}.") from None


def choices_of(spec: TaskSpec, doc: Doc) -> list[str]:
    """The choice strings of a multiple-choice document."""
    choices = doc.fields.get(spec.choices)
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise TaskError(f"{doc.location}: field {spec.choices!r} must be a non-empty list of strings, "
                        f"got {choices!r}.")
    return choices


def gold_index(spec: TaskSpec, doc: Doc) -> int:
    """Index of the gold choice, by lm-eval 0.4.13's rule for a doc_to_target template.

    A rendered target made only of digits ("1", from an int or a digit-string field) is an
    index into the choices, even when a choice has that text (choices ["3", "2", "1"] with
    target "1" is "2"); any other target is the gold choice's own text. So a task whose
    choices are digit strings names its gold by index.
    """
    choices, target = choices_of(spec, doc), render(spec.target, doc, "target")
    # lm-eval's str.isdigit without strip: " 1" is text. ASCII only, so int() reads what it shows.
    if target.isascii() and target.isdigit():
        if int(target) < len(choices):
            return int(target)
        raise TaskError(f"{doc.location}: target {target!r} is read as an index (digits) but there are only "
                        f"{len(choices)} choices {choices}; give an index below {len(choices)}.")
    if target in choices:
        return choices.index(target)
    raise TaskError(f"{doc.location}: target {target!r} is neither one of the choices {choices} nor an index "
                    "into them.")


def gold_text(spec: TaskSpec, doc: Doc) -> str:
    """The gold continuation's text (a multiple-choice doc's gold choice)."""
    if spec.output_type == "multiple_choice":
        return choices_of(spec, doc)[gold_index(spec, doc)]
    return render(spec.target, doc, "target")


def read_jsonl(path: str) -> list[Doc]:
    """Documents of a JSONL file (one JSON object per line; blank lines skipped)."""
    if not os.path.isfile(path):
        raise TaskError(f"data file {path!r} does not exist.")
    docs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:  # was a traceback from the text reader
                raise TaskError(f"{path}:{number}: not UTF-8 text (byte {e.start + 1} of the line); save the file "
                                "as UTF-8.") from None
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno}); each line must "
                                "be one JSON object.") from None
            if not isinstance(fields, dict):
                raise TaskError(f"{path}:{number}: expected a JSON object ({{...}}), got {type(fields).__name__}.")
            docs.append(Doc(fields, f"{path}:{number}"))
    return docs


def task_from_jsonl(spec: TaskSpec, data_files: dict[str, str]) -> Task:
    """A task whose splits are read from JSONL files {split: path}."""
    return make_task(spec, {split: read_jsonl(path) for split, path in data_files.items()})


def load_task(path: str, **overrides: Any) -> Task:
    """A task from a JSON task file (see the module docstring); `overrides` replace spec fields."""
    if not os.path.isfile(path):
        raise TaskError(f"task file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
        except UnicodeDecodeError:
            raise TaskError(f"{path}: not UTF-8 text; save the task file as UTF-8.") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data_files"), dict):
        raise TaskError(f"{path}: a task file is a JSON object with a 'data_files' object {{split: jsonl path}}.")
    data_files = raw.pop("data_files")
    bad = {split: file for split, file in data_files.items() if not isinstance(file, str) or not file}
    if bad:  # a number there was a TypeError traceback from os.path.join
        raise TaskError(f"{path}: data_files {bad} must map each split to a JSONL path (a string), e.g. "
                        "{\"test\": \"test.jsonl\"}.")
    fields = {f.name for f in dataclasses.fields(TaskSpec)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise TaskError(f"{path}: unknown task field(s) {unknown}; known: {sorted(fields)}.")
    try:
        spec = TaskSpec(**{**raw, **overrides})
    except TypeError as e:  # a required field (name, output_type, prompt) is missing: field types are TaskError's
        raise TaskError(f"{path}: {e}; a task needs name, output_type and prompt.") from None
    base = os.path.dirname(os.path.abspath(path))
    return task_from_jsonl(spec, {split: os.path.join(base, file) for split, file in data_files.items()})
