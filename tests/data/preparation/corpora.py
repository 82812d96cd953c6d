"""Small handmade and generated corpora for the preparation tests."""
from __future__ import annotations

import json
import os
import random

# Ordinary English words; every sentence below has stop words and 3-10 letter words on average.
SENTENCES = [
    "The river runs through the valley and past the old mill that was built with stone.",
    "Children walk to the school in the morning and they have lunch with their friends.",
    "A small garden of herbs grows behind the house, and the cook picks them each day.",
    "The library opens at nine, so students wait outside with coffee and their notes.",
    "Winter storms close the mountain pass, and the village has to store food for weeks.",
    "Scientists measure the ocean temperature to learn how the climate of the planet changes.",
    "The market sells bread, cheese and fruit that farmers bring from the hills by truck.",
    "Music from the festival fills the square until the lights go out after midnight.",
]
VOCABULARY = ("river valley mill stone school morning lunch friend garden herb house cook library "
              "student coffee note winter storm mountain village food ocean climate planet market "
              "bread cheese fruit farmer hill truck music festival square light midnight bridge "
              "train station harbour ship island forest meadow field castle tower window door").split()
STOP = ["the", "and", "of", "to", "with", "that", "have", "be"]


def prose(seed: int, sentences: int = 8) -> str:
    """A document of shuffled SENTENCES: passes the Gopher rules (~120 words)."""
    rng = random.Random(seed)
    return " ".join(rng.choice(SENTENCES) for _ in range(sentences))


def random_words(rng: random.Random, n: int) -> list[str]:
    """Words drawn from VOCABULARY and stop words: passes Gopher quality; repeats few n-grams."""
    return [rng.choice(VOCABULARY) if rng.random() < 0.75 else rng.choice(STOP) for _ in range(n)]


def write_files(folder: str, documents: dict[str, str | bytes]) -> str:
    os.makedirs(folder, exist_ok=True)
    for name, text in documents.items():
        mode = "wb" if isinstance(text, bytes) else "w"
        with open(os.path.join(folder, name), mode) as f:
            f.write(text)
    return folder


def write_jsonl(path: str, records: list[dict]) -> str:
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return path
