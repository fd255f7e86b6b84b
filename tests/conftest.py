"""Shared fixtures: tiny random-init models saved to folders, a small labelled CSV, log capture by logger."""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

from tiny_models import save_tiny_model  # noqa: E402

POS = "good great fine nice happy love best wonderful excellent superb".split()
NEG = "bad awful poor sad hate worst terrible boring dull weak".split()
FILL = "the a movie film story plot actor scene was is very quite really and but".split()


def make_rows(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """Synthetic but learnable sentiment sentences of varied length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILL) for _ in range(rng.randint(3, 12))]
        for _ in range(rng.randint(1, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: save_tiny_model(arch, root / arch) for arch in ("bert", "llama", "gpt2")}


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def log_messages() -> Iterator[Callable[[str], list[str]]]:
    """log_messages("transformers.modeling_utils") -> the list that logger's messages go to during the test
    (for libraries whose loggers do not propagate to caplog's root handler)."""
    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def attach(name: str) -> list[str]:
        handler, logger = _Messages(), logging.getLogger(name)
        logger.addHandler(handler)
        attached.append((logger, handler))
        return handler.messages

    yield attach
    for logger, handler in attached:
        logger.removeHandler(handler)


@pytest.fixture(scope="session")
def csv_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", make_rows(240))
