"""Run the suite from a scratch directory so trial's mktemp() does not litter the checkout."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.chdir(tmp_path_factory.mktemp("work"))
