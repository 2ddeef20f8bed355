"""Fixtures for the merge-quality bench tests: the finetune tests' tiny BERT and toy task."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "finetune"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from finetune_fixtures import make_bert, write_task  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("toy"))
