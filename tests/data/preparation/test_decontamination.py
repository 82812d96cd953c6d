"""Decontamination finds evaluation items (catalog tasks and task files) inside training text."""
import json

import pytest

from research.data.config import DataError
from research.data.preparation.config import DecontaminationConfig
from research.data.preparation.decontamination import build_index, contamination_index, evaluation_items, words_of
from research.evaluation.task_catalog import catalog_task
from tests.data.preparation.corpora import prose

QUESTION = "Q: Which river flows through the ancient capital city of the northern kingdom? A: the silver river"


def test_index_uses_fifth_percentile_length_clipped_and_skips_short_items():
    index = build_index({"long": [QUESTION], "short": ["3 + 4 = 7"]}, min_ngram=8, max_ngram=13)
    by_task = {t.task: t for t in index.tasks}
    assert by_task["long"].n == 13 and by_task["long"].items_indexed == 1  # 19 words, clipped to 13
    assert by_task["short"].n == 8 and by_task["short"].items_indexed == 0  # 4 words < 8: cannot be matched
    words = words_of(QUESTION)
    assert index.first_match(prose(1) + " " + " ".join(words[3:16]) + " " + prose(2)) == "long"
    assert index.first_match(" ".join(words[3:15])) is None  # 12 consecutive words: below n
    assert index.first_match(QUESTION.upper().replace(" ", "  ")) == "long"  # case and spacing ignored
    assert index.first_match(prose(3)) is None


def test_catalog_chain_of_thought_items_are_indexed_and_found():
    task = catalog_task("addition_3digit_cot", num_test=20)
    items = evaluation_items(["addition_3digit_cot"], num_test=20)["addition_3digit_cot"]
    assert len(items) == len(task.docs(task.spec.eval_split)) == 20
    index = contamination_index(DecontaminationConfig(tasks=("addition_3digit_cot",), all_catalog_tasks=False, num_test=20))
    planted = prose(4) + "\nworked example: " + items[7] + "\n" + prose(5)
    assert index.first_match(planted) == "addition_3digit_cot"
    assert index.first_match(prose(4)) is None


def test_task_file_items(tmp_path):
    (tmp_path / "capitals_test.jsonl").write_text(json.dumps({"question": QUESTION[3:-21], "answer": "the silver river"}) + "\n")
    spec = {"name": "capitals", "output_type": "generate_until", "prompt": "Q: {question} A:", "target": "{answer}",
            "data_files": {"test": "capitals_test.jsonl"}}
    (tmp_path / "capitals.json").write_text(json.dumps(spec))
    index = contamination_index(DecontaminationConfig(tasks=(str(tmp_path / "capitals.json"),), all_catalog_tasks=False))
    assert index.first_match("notes: " + QUESTION) == "capitals"


def test_unknown_task_is_one_line():
    with pytest.raises(DataError, match="cannot load task 'no_such_task'"):
        evaluation_items(["no_such_task"])


def test_an_item_is_found_whatever_the_unicode_form_of_item_and_document():
    """A decomposed accent split an item's word in two ('cafe', then the mark dropped), so an item
    written decomposed never matched the composed (standardised) documents; full-width letters
    and case-folding likewise."""
    import unicodedata
    item = "Q: Which café in the old town serves the best crème brûlée on the square? A: the blue door"
    index = build_index({"t": [unicodedata.normalize("NFD", item)]}, min_ngram=8, max_ngram=13)
    assert index.first_match("Intro. " + unicodedata.normalize("NFC", item) + " more") == "t"
    assert words_of("ＣＡＦÉ Straße") == ["café", "strasse"]


@pytest.mark.parametrize("emphasis", ["*ancient*", "_ancient_", "__ancient__", "**ancient**"])
def test_markdown_emphasis_in_a_document_does_not_hide_an_item(emphasis):
    """\\w counts '_' as a letter, so '_ancient_' was one word that no item word equals: a document
    quoting an item with markdown emphasis was kept as clean."""
    index = build_index({"t": [QUESTION]}, min_ngram=8, max_ngram=13)
    assert index.first_match("Notes. " + QUESTION.replace("ancient", emphasis) + " more") == "t"


def test_underscores_separate_words_in_items_and_documents_alike():
    assert words_of("__Ancient__ snake_case _x_ a_1") == ["ancient", "snake", "case", "x", "a", "1"]
    item = "Q: Which river_flows through the ancient capital city of the northern_kingdom? A: the silver river"
    index = build_index({"t": [item]}, min_ngram=8, max_ngram=13)
    assert index.first_match(QUESTION) == "t"  # the item's joined words are the document's two
