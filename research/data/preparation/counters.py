"""Per-stage counters: documents, words and bytes in and out, drops by reason, example drops.

Each datatrove task keeps a `StageCounters` and saves it as one JSON file per (step, rank);
`merge_counters` sums them in a fixed order, so the report does not depend on how many
tasks or workers ran. Words are whitespace-separated tokens.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any

EXAMPLE_CHARS = 400  # characters of a dropped document kept in the report


def _empty() -> dict[str, Any]:
    return {"docs_in": 0, "docs_out": 0, "words_in": 0, "words_out": 0, "bytes_in": 0, "bytes_out": 0,
            "rewritten": 0, "dropped": {}, "noted": {}, "examples": {}}


def text_size(text: str) -> tuple[int, int]:
    """(words, UTF-8 bytes) of a text."""
    return len(text.split()), len(text.encode("utf-8", errors="replace"))


class StageCounters:
    """Counters of several named stages, in the order they were first seen."""

    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.stages: dict[str, dict[str, Any]] = {}

    def stage(self, name: str) -> dict[str, Any]:
        return self.stages.setdefault(name, _empty())

    def entered(self, name: str, text: str) -> None:
        counts, (words, size) = self.stage(name), text_size(text)
        counts["docs_in"] += 1
        counts["words_in"] += words
        counts["bytes_in"] += size

    def kept(self, name: str, text: str, *, rewritten: bool = False) -> None:
        counts, (words, size) = self.stage(name), text_size(text)
        counts["docs_out"] += 1
        counts["words_out"] += words
        counts["bytes_out"] += size
        counts["rewritten"] += int(rewritten)

    def dropped(self, name: str, reason: str, origin: str, text: str, **details: Any) -> None:
        self._tally(name, "dropped", reason, origin, text, **details)

    def noted(self, name: str, note: str, origin: str, text: str) -> None:
        """A kept document worth reporting (e.g. one whose bad bytes were repaired)."""
        self._tally(name, "noted", note, origin, text)

    def _tally(self, name: str, kind: str, reason: str, origin: str, text: str, **details: Any) -> None:
        counts = self.stage(name)
        counts[kind][reason] = counts[kind].get(reason, 0) + 1
        examples = counts["examples"].setdefault(reason, [])
        # Each task keeps its max_examples smallest origins, so the merge keeps the smallest of all
        # whatever the number of tasks (max_examples 0: none, and no last one to compare with).
        if self.max_examples and (len(examples) < self.max_examples or origin < examples[-1]["origin"]):
            examples.append({"origin": origin, "text": text[:EXAMPLE_CHARS], **details})
            examples.sort(key=lambda e: e["origin"])
            del examples[self.max_examples:]

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.stages, f)  # insertion order = stage order
        os.replace(tmp, path)


def merge_counters(directory: str, max_examples: int) -> dict[str, dict[str, Any]]:
    """The sum of every `*.json` under `directory`/<step>/ (stage order: first seen, files sorted)."""
    merged: dict[str, dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*", "*.json"))):
        with open(path, encoding="utf-8") as f:
            stages = json.load(f)
        for name in stages:
            counts, total = stages[name], merged.setdefault(name, _empty())
            for key in ("docs_in", "docs_out", "words_in", "words_out", "bytes_in", "bytes_out", "rewritten"):
                total[key] += counts[key]
            for kind in ("dropped", "noted"):
                for reason, n in counts[kind].items():
                    total[kind][reason] = total[kind].get(reason, 0) + n
            for reason, examples in counts["examples"].items():
                total["examples"].setdefault(reason, []).extend(examples)
    for total in merged.values():
        total["dropped"] = dict(sorted(total["dropped"].items()))
        total["noted"] = dict(sorted(total["noted"].items()))
        total["examples"] = {reason: sorted(examples, key=lambda e: e["origin"])[:max_examples]
                             for reason, examples in sorted(total["examples"].items())}
    return merged
