"""Tiny labelled data for fast tests (seeded, written to temp folders).

    from tiny_data import WORDS, write_choice_file
    path = write_choice_file(tmp_path / "mc.jsonl", WORDS, 80, 0, "the answer is")
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "good bad great poor fine sad happy love hate best worst".split()
COLORS = "red blue green yellow black white".split()


def write_choice_file(path: Path, options: list[str], n: int, seed: int, prefix: str) -> Path:
    """A learnable multiple-choice task: the right option is named in the question."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            ch = rng.sample(options, 2 + i % 3)
            label = rng.randrange(len(ch))
            answer = ch[label] if i % 2 else label  # the label as the option's text or as its index
            fh.write(json.dumps({"text": f"{prefix} {ch[label]} number {i}", "choices": ch, "label": answer}) + "\n")
    return path


def write_generation_file(path: Path, n: int, seed: int, verb: str = "repeat") -> Path:
    """A learnable prompt -> response task (JSONL prompt/response): the answer is the last two words of the prompt."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            words = [rng.choice(WORDS + COLORS) for _ in range(2)]
            fh.write(json.dumps({"prompt": f"{verb} number {i} : {' '.join(words)}", "response": " ".join(words)}) + "\n")
    return path
