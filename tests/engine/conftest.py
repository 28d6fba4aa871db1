"""Fixtures shared by the engine tests."""

from __future__ import annotations

import pytest

from synthetic import KeywordTask


@pytest.fixture(scope="module")
def task() -> KeywordTask:
    """The seeded keyword task every wrapped engine is checked on (built per module: cheap, never shared)."""
    return KeywordTask(seed=5)
