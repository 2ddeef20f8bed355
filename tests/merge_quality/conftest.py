"""Fixtures for the merge-quality bench tests: the finetune tests' tiny BERT and toy task."""

from pathlib import Path

import pytest

from finetune_fixtures import make_bert, write_task  # tests/conftest.py puts the fixture folders on sys.path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("toy"))
