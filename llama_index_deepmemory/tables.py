"""A pandas ``DataFrame`` that prints in full: ``print(result.table)`` shows every column, never ``...``.

pandas shortens a wide frame to the terminal's width; the result tables here are a few rows of
named scores that people read whole, so they print with ``DataFrame.to_string`` instead. Imported
only by code that already builds DataFrames (pandas is heavy).
"""

from __future__ import annotations

import logging

import pandas as pd

logger = logging.getLogger(__name__)


class FullTable(pd.DataFrame):
    """A ``DataFrame`` whose ``repr``/``str`` is ``to_string()`` (every row and column)."""

    @property
    def _constructor(self) -> type["FullTable"]:
        return FullTable

    def __repr__(self) -> str:
        return self.to_string()

    def __str__(self) -> str:
        return self.to_string()
