"""A handmade corpus with one document per rule, prepared once per session."""
import json
import os
import random

import pytest

from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs
from research.data.preparation.document_stages import standardise
from research.data.preparation.config import StandardiseConfig
from tests.data.preparation.corpora import random_words, write_files, write_jsonl

PLANTED_QUESTION = ("Q: Which river flows through the ancient capital city of the northern kingdom "
                    "before it reaches the sea? A:")
PLANTED_ANSWER = "the silver river"


def good_document(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    text = random_words(rng, words)
    # Sentences of 10 words, one per line: prose-like for every rule.
    return "\n".join(" ".join(text[i:i + 10]).capitalize() + "." for i in range(0, words, 10))


def write_task_file(folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "rivers_test.jsonl"), "w") as f:
        f.write(json.dumps({"question": PLANTED_QUESTION, "answer": PLANTED_ANSWER}) + "\n")
    spec = {"name": "rivers", "output_type": "generate_until", "prompt": "{question}", "target": "{answer}",
            "data_files": {"test": "rivers_test.jsonl"}}
    path = os.path.join(folder, "rivers.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def corpus_config(task_file: str, **execution) -> PreparationConfig:
    return PreparationConfig.from_dict({
        "blocklist": {"words": ["forbidden phrase"]},
        "decontamination": {"tasks": [task_file], "all_catalog_tasks": False},
        "output": {"num_shards": 3, "validation_fraction": 0.25},
        "execution": {"read_tasks": 2, "workers": 1, **execution}})


@pytest.fixture(scope="session")
def handmade(tmp_path_factory):
    """(input folder, task file, expected kept texts by origin, expected drops {stage: {reason: count}})."""
    root = tmp_path_factory.mktemp("handmade")
    corpus = str(root / "corpus")
    files = {f"good_{i:02d}.txt": good_document(i) for i in range(12)}
    # Equal after normalisation (case, full-width letters, spacing), different bytes.
    files["exact_copy.txt"] = files["good_03.txt"].replace(" ", "  ").replace("\n", " \n\n").replace("A", "Ａ") + "\n"
    near = files["good_05.txt"].split(" ")
    near[40], near[100] = "lighthouse", "telescope"  # two words of ~150: Jaccard of 5-shingles ~0.87
    files["near_copy.txt"] = " ".join(near)
    files["short.txt"] = "Too short to be a document."
    files["blocked.txt"] = good_document(100) + "\nIt has a forbidden phrase in it."
    files["contaminated.md"] = good_document(101) + "\n" + PLANTED_QUESTION + " " + PLANTED_ANSWER + "\n"
    files["empty.txt"] = ""
    files["latin1.txt"] = good_document(102).encode("utf-8") + b"\nCaf\xe9 au lait."  # one invalid byte: repaired
    files["crlf.txt"] = good_document(103).replace("\n", "\r\n")
    write_files(corpus, files)
    records = [{"text": good_document(200 + i), "id": i} for i in range(6)]
    records.insert(2, {"text": " ", "id": "blank"})  # blank text: dropped by standardise as empty
    write_jsonl(os.path.join(corpus, "more.jsonl"), records)
    task_file = write_task_file(str(root / "tasks"))

    expected = {name: standardise_text(text) for name, text in files.items() if name.startswith("good_")}
    expected["crlf.txt"] = good_document(103)
    expected["latin1.txt"] = good_document(102) + "\nCaf\ufffd au lait."
    expected.update({f"more.jsonl:{line}": good_document(200 + i)
                     for i, line in enumerate([1, 2, 4, 5, 6, 7])})
    drops = {"standardise": {"empty": 1}, "gopher_quality": {"gopher_short_doc": 1}, "blocklist": {"blocklist": 1},
             "decontamination": {"contains_rivers": 1}, "exact_dedup": {"exact_duplicate": 1},
             "near_dedup": {"near_duplicate": 1}}
    output_dir = str(root / "out")
    report = prepare_dataset(resolve_inputs(corpus), output_dir=output_dir, name="handmade",
                             config=corpus_config(task_file))
    return {"corpus": corpus, "task_file": task_file, "expected": expected, "drops": drops,
            "output_dir": output_dir, "report": report}


def standardise_text(text: str) -> str:
    from datatrove.data import Document
    return standardise(Document(text=text, id="x", metadata={}), StandardiseConfig()).text
