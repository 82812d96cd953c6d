"""Evaluation items as word n-grams, to drop training documents that contain one.

As in GPT-3 (Brown et al. 2020, Appendix C): text is lower-cased words (punctuation
dropped), and each task's n is the 5th percentile of its items' lengths, clipped to
[min_ngram, max_ngram], so a document containing any n consecutive words of an item is
contaminated. An item is its prompt, the target delimiter and its gold answer.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from typing import Iterable, Mapping, Sequence

import numpy as np

from research.data.config import DataError
from research.data.preparation.config import DecontaminationConfig

# Letters and digits, not '_': \w counts it as a word character, so markdown emphasis
# ('_ancient_', '__ancient__') made a document's word differ from the item's and a contaminated
# document was kept. The blocklist treats '_' the same way (document_stages._blocked_pattern).
_WORD = re.compile(r"[^\W_]+")


def words_of(text: str) -> list[str]:
    """Case-folded words (runs of letters and digits; '_' separates words, as punctuation does) of
    NFKC text: an item and a document that spell a word in two Unicode forms (composed 'é' /
    'e' + combining accent, full-width letters) share its words; without it the combining
    accent split a word in two."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


@dataclasses.dataclass(frozen=True)
class TaskNgrams:
    """One task's n and how many of its items could be indexed."""

    task: str
    n: int
    items: int
    items_indexed: int  # items with at least n words


class ContaminationIndex:
    """n -> {n-gram: task}; `first_match(text)` names the first task whose n-gram a text contains."""

    def __init__(self, ngrams_by_n: Mapping[int, Mapping[str, str]], tasks: Sequence[TaskNgrams]):
        self.ngrams_by_n = {n: dict(grams) for n, grams in sorted(ngrams_by_n.items())}
        # First words of the n-grams: most positions of a document start none, and skip the join.
        self.first_words = {n: {gram.split(" ", 1)[0] for gram in grams} for n, grams in self.ngrams_by_n.items()}
        self.tasks = tuple(tasks)

    def __len__(self) -> int:
        return sum(len(grams) for grams in self.ngrams_by_n.values())

    def first_match(self, text: str) -> str | None:
        words = words_of(text)
        for n, grams in self.ngrams_by_n.items():
            first_words = self.first_words[n]
            for i in range(len(words) - n + 1):
                if words[i] in first_words:
                    task = grams.get(" ".join(words[i:i + n]))
                    if task is not None:
                        return task
        return None


def build_index(items_by_task: Mapping[str, Iterable[str]], *, min_ngram: int, max_ngram: int) -> ContaminationIndex:
    """The index of every task's item n-grams (tasks in sorted order: the first task owns a shared n-gram)."""
    ngrams_by_n: dict[int, dict[str, str]] = {}
    summaries = []
    for task in sorted(items_by_task):
        items = [words_of(text) for text in items_by_task[task]]
        if not items:
            continue
        n = int(np.clip(np.percentile([len(w) for w in items], 5, method="lower"), min_ngram, max_ngram))
        grams = ngrams_by_n.setdefault(n, {})
        indexed = 0
        for words in items:
            if len(words) >= n:
                indexed += 1
                for i in range(len(words) - n + 1):
                    grams.setdefault(" ".join(words[i:i + n]), task)
        summaries.append(TaskNgrams(task, n, len(items), indexed))
    return ContaminationIndex({n: g for n, g in ngrams_by_n.items() if g}, summaries)


def evaluation_items(names: Sequence[str], *, num_test: int | None = None) -> dict[str, list[str]]:
    """Each task's evaluation-split items as text: prompt + delimiter + gold answer."""
    from research.evaluation.task_catalog import catalog_task
    from research.evaluation.task_spec import TaskError, gold_text, render

    items = {}
    for name in names:
        try:
            task = catalog_task(name, num_test=num_test)
        except (TaskError, ValueError, OSError) as e:
            raise DataError(f"decontamination: cannot load task {name!r} ({e}); give a catalog name or a .json task file.") from None
        spec = task.spec
        items[spec.name if name.endswith(".json") else name] = [
            render(spec.prompt, doc, "prompt") + spec.target_delimiter + gold_text(spec, doc)
            for doc in task.docs(spec.eval_split)]
    return items


def decontamination_items(config: DecontaminationConfig) -> dict[str, list[str]]:
    """The items of every task `config` names ({} when decontamination is off)."""
    from research.evaluation.task_catalog import catalog_names
    names = list(config.tasks) + (catalog_names() if config.all_catalog_tasks else [])
    names = list(dict.fromkeys(names))  # first occurrence, stable order
    return evaluation_items(names, num_test=config.num_test) if names else {}


def contamination_index(config: DecontaminationConfig,
                        items: Mapping[str, Sequence[str]] | None = None) -> ContaminationIndex:
    """The index of `items` (default: decontamination_items(config))."""
    items = decontamination_items(config) if items is None else items
    return build_index(items, min_ngram=config.min_ngram, max_ngram=config.max_ngram)
