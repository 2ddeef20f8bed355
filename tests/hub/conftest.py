"""Fixtures for hub tests: a fake Hub on 127.0.0.1 and a tiny model folder."""

from pathlib import Path

import pytest

from fake_hub import FakeHub
from hub_fixtures import ALICE, BOB, make_model


@pytest.fixture
def hub():
    with FakeHub({ALICE: "alice", BOB: "bob"}, orgs={"alice": ["alice-lab"]}) as server:
        yield server


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model(tmp_path / "merged")
