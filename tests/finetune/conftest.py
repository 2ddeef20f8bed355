"""Session fixtures for finetune tests (helpers live in finetune_fixtures.py)."""

from pathlib import Path

import pytest

from finetune_fixtures import make_bert, make_gpt2, write_task


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return make_gpt2(tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="session")
def toy_task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("toy"))
