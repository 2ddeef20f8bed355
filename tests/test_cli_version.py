"""`mergekit-het --version` prints the installed distribution's version and exits 0."""

from __future__ import annotations

import importlib.metadata

import pytest

from mergekit_het.cli import main


def test_version_flag_prints_the_distribution_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mergekit-het {importlib.metadata.version('mergekit-het')}"
