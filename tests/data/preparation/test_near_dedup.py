"""MinHash near-dedup (datatrove's stages, through our pipeline) on a generated set with known pairs."""
import os
import random

from datatrove.utils.text import TextNormConfig, ngrams, simplify_text

from research.data.preparation import PreparationConfig, prepare_dataset, resolve_inputs
from research.data.preparation.document_stages import SHINGLE_WORDS
from tests.data.preparation.conftest import good_document
from tests.data.preparation.corpora import random_words, write_files


def shingles(text: str, n: int = 5) -> set:
    """The exact shingle set minhash estimates (same normalisation and words as the pipeline)."""
    return set(ngrams(SHINGLE_WORDS.word_tokenize(simplify_text(text, TextNormConfig())), n))


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def variant(rng: random.Random, words: list[str], low: float, high: float) -> tuple[str, float]:
    """A copy of `words` with substitutions until its Jaccard similarity falls in [low, high]."""
    target = rng.uniform(low, high)
    edited, base = list(words), " ".join(words)
    for position in rng.sample(range(len(words)), len(words)):
        kept, edited[position] = edited[position], rng.choice(["amber", "cobalt", "ivory", "saffron", "violet"])
        similarity = jaccard(base, " ".join(edited))
        if similarity < low:
            edited[position] = kept  # overshot: an edit elsewhere removes fewer shingles
        elif similarity <= target:
            return " ".join(edited), similarity
    similarity = jaccard(base, " ".join(edited))  # every position tried: as close to the target as it gets
    assert low <= similarity <= high, (low, similarity, high)
    return " ".join(edited), similarity


def test_near_duplicate_recall_and_precision_at_jaccard_0_8(tmp_path):
    rng = random.Random(0)
    bases = [random_words(rng, 200) for _ in range(60)]
    files = {f"base_{i:02d}.txt": " ".join(words) for i, words in enumerate(bases)}
    true_pairs, similar_only = [], []
    for i in range(30):  # near duplicates: Jaccard in [0.8, 0.95]
        files[f"near_{i:02d}.txt"], similarity = variant(rng, bases[i], 0.8, 0.95)
        true_pairs.append((f"base_{i:02d}.txt", f"near_{i:02d}.txt"))
    for i in range(30, 45):  # related but not duplicates: Jaccard in [0.3, 0.5]
        files[f"related_{i:02d}.txt"], similarity = variant(rng, bases[i], 0.3, 0.5)
        similar_only.append((f"base_{i:02d}.txt", f"related_{i:02d}.txt"))
    corpus = write_files(str(tmp_path / "corpus"), files)
    assert max(jaccard(files["base_00.txt"], files[f"base_{i:02d}.txt"]) for i in range(1, 60)) < 0.1

    config = PreparationConfig.from_dict({
        "gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
        "decontamination": {"all_catalog_tasks": False}, "max_examples": 1000,
        "dedup": {"jaccard_threshold": 0.8, "shingle_size": 5},
        "output": {"num_shards": 2, "validation_fraction": 0.2}, "execution": {"read_tasks": 2}})
    report = prepare_dataset(resolve_inputs(corpus), output_dir=str(tmp_path / "out"), name="near", config=config)
    near = next(s for s in report["stages"] if s["stage"] == "near_dedup")
    removed = {e["origin"] for e in near["examples"].get("near_duplicate", [])}
    assert len(removed) == near["docs_in"] - near["docs_out"]

    caught = [a in removed or b in removed for a, b in true_pairs]
    assert not any(a in removed and b in removed for a, b in true_pairs)  # one of each pair is kept
    in_true_pair = {name for pair in true_pairs for name in pair}
    recall = sum(caught) / len(true_pairs)
    precision = len(removed & in_true_pair) / max(1, len(removed))
    print(f"near-dup recall={recall:.3f} precision={precision:.3f} removed={len(removed)}")
    assert recall >= 0.9, recall
    assert precision >= 0.95, precision
    assert report["totals"]["docs_out"] == len(files) - len(removed)
    assert os.path.isdir(tmp_path / "out" / "near" / "1.0.0")


def test_near_duplicates_in_a_script_without_spaces_are_found(tmp_path):
    """A Chinese page without spaces was one word: no 5-word shingle, never compared (3 of 10
    near copies removed, by chance of punctuation); its characters are shingle words now."""
    rng = random.Random(1)
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 400)]
    bases = ["".join(rng.choice(han) for _ in range(300)) + "。" for _ in range(20)]
    files = {f"base_{i:02d}.txt": text for i, text in enumerate(bases)}
    for i in range(10):  # three characters changed: character 5-gram Jaccard about 0.9
        chars = list(bases[i])
        for position in rng.sample(range(300), 3):
            chars[position] = rng.choice(han)
        files[f"near_{i:02d}.txt"] = "".join(chars)
        assert 0.8 < jaccard(bases[i], files[f"near_{i:02d}.txt"]) < 0.97
    config = PreparationConfig.from_dict({
        "gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
        "decontamination": {"all_catalog_tasks": False}, "max_examples": 1000,
        "output": {"num_shards": 1, "validation_fraction": 0.2}, "execution": {"read_tasks": 1}})
    report = prepare_dataset(resolve_inputs(write_files(str(tmp_path / "corpus"), files)),
                             output_dir=str(tmp_path / "out"), name="zh", config=config)
    near = next(s for s in report["stages"] if s["stage"] == "near_dedup")
    removed = {e["origin"] for e in near["examples"].get("near_duplicate", [])}
    pairs = [(f"base_{i:02d}.txt", f"near_{i:02d}.txt") for i in range(10)]
    assert sum(a in removed or b in removed for a, b in pairs) >= 9 and len(removed) <= 10
    assert removed <= {name for pair in pairs for name in pair}


def test_documents_differing_only_in_numbers_are_duplicates_unless_numbers_are_kept(tmp_path):
    """datatrove reads every digit run as '0' before shingling: 20 tables with no word 5-gram in
    common were 19 near duplicates. normalize_numbers=False compares their numbers too."""
    def table(seed: int) -> str:
        rng = random.Random(seed)
        return "\n".join(f"station {rng.randint(1000, 9999)} reading {rng.randint(10, 99)}.{rng.randint(0, 9)} at "
                         f"{rng.randint(0, 23)}:{rng.randint(10, 59)}" for _ in range(40))
    files = {f"table_{i:02d}.txt": table(i) for i in range(20)}
    files.update({f"prose_{i:02d}.txt": good_document(i) for i in range(10)})  # both splits keep documents
    corpus = write_files(str(tmp_path / "corpus"), files)
    removed = {}
    for normalize in (True, False):
        config = PreparationConfig.from_dict({
            "gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
            "decontamination": {"all_catalog_tasks": False}, "dedup": {"normalize_numbers": normalize},
            "output": {"num_shards": 1, "validation_fraction": 0.2}, "execution": {"read_tasks": 1}})
        report = prepare_dataset(resolve_inputs(corpus), output_dir=str(tmp_path / f"out_{normalize}"), name="tables",
                                 config=config)
        near = next(s for s in report["stages"] if s["stage"] == "near_dedup")
        removed[normalize] = near["docs_in"] - near["docs_out"]
    assert removed == {True: 19, False: 0}
