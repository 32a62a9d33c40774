"""Shared by the recipe tests: one full `prepare` run."""

from __future__ import annotations

import pytest

from recipes import prepare


@pytest.fixture(scope="session")
def recipe_dir(tmp_path_factory):
    """One full `prepare` run (all corpora, default sizes) shared by the recipe test modules."""
    root = tmp_path_factory.mktemp("recipes")
    return root, prepare.prepare(root, seed=0)
