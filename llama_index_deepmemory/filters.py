"""``MetadataFilters`` -> a vectorised predicate over the node table.

Semantics are those of LlamaIndex's ``SimpleVectorStore`` (``build_metadata_filter_fn`` in
``llama_index.core.vector_stores.utils``), leaf by leaf:

* a missing key or a ``None`` value matches only ``NE`` and ``NIN`` (and ``IS_EMPTY``);
* ``EQ``/``NE``/``GT``/``GTE``/``LT``/``LTE`` are Python's ``==``, ``!=``, ``>``, ...;
* ``IN``/``NIN``: ``stored in value``; ``CONTAINS``: ``value in stored``;
* ``ANY``/``ALL``: any/all of ``value`` in ``stored``;
* ``TEXT_MATCH`` (case sensitive) / ``TEXT_MATCH_INSENSITIVE``: substring, strings only;
* ``IS_EMPTY``: missing, ``None``, ``""`` or ``[]``;
* ``AND`` (default) / ``OR`` / ``NOT`` (= none of the filters match); an empty filter list
  matches everything. Unlike ``SimpleVectorStore``, nested ``MetadataFilters`` are supported,
  combined recursively with the same rules.

Where Python would raise (``"a" > 1``, ``TEXT_MATCH`` on a number) a ``TypeError`` naming the key,
the operator and the offending stored value is raised, as ``SimpleVectorStore`` raises then.

How: each filtered key becomes a dictionary-encoded column (an int32 code per row, code 0 = missing
or ``None``), built once from the table and then updated in place on writes. A leaf is evaluated
once per *distinct* value (numeric comparisons vectorised with numpy), then gathered per row.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

MISSING = 0  # column code of a missing key or a None value
_EXACT_INT = 2**53  # ints beyond this are compared in Python, not float64
_NUMERIC_OPS = {"==", "!=", ">", ">=", "<", "<="}
OPERATORS = ("==", "!=", ">", ">=", "<", "<=", "in", "nin", "any", "all", "text_match",
             "text_match_insensitive", "contains", "is_empty")
MAX_FILTER_DEPTH = 32  # MetadataFilters nested deeper are refused with one line, not a RecursionError


def check_filter_depth(filters: Any, limit: int = MAX_FILTER_DEPTH) -> None:
    """ValueError when ``MetadataFilters`` nest more than ``limit`` levels (walked without recursion)."""
    stack = [(filters, 1)] if filters is not None else []
    while stack:
        group, depth = stack.pop()
        if depth > limit:
            raise ValueError(
                f"metadata filters are nested more than {limit} levels deep (MetadataFilters inside "
                "MetadataFilters); flatten them: an AND/OR of AND/ORs rarely needs more than a few levels"
            )
        stack.extend((child, depth + 1) for child in getattr(group, "filters", None) or [] if hasattr(child, "filters"))


def _op_name(operator: Any) -> str:
    return str(getattr(operator, "value", operator))


def _condition_name(condition: Any) -> str:
    return "and" if condition is None else str(getattr(condition, "value", condition)).lower()


def match_value(op: str, value: Any, stored: Any) -> bool:
    """One leaf on one stored value, exactly as ``SimpleVectorStore`` evaluates it."""
    if op == "is_empty":
        return stored is None or stored == "" or stored == []
    if stored is None:
        return op in ("!=", "nin")
    if op == "==":
        return bool(stored == value)
    if op == "!=":
        return bool(stored != value)
    if op == ">":
        return bool(stored > value)
    if op == ">=":
        return bool(stored >= value)
    if op == "<":
        return bool(stored < value)
    if op == "<=":
        return bool(stored <= value)
    if op == "in":
        return stored in value
    if op == "nin":
        return stored not in value
    if op == "contains":
        return value in stored
    if op in ("text_match", "text_match_insensitive"):
        if isinstance(value, str) and isinstance(stored, str):
            if op == "text_match":
                return value in stored
            return value.lower() in stored.lower()
        raise TypeError(f"{op} needs a string stored value and a string filter value")
    if op == "all":
        return all(v in stored for v in value)
    if op == "any":
        return any(v in stored for v in value)
    raise ValueError(f"unknown filter operator {op!r}; known operators: {OPERATORS}")


def _unique_key(value: Any) -> Any:
    """Hashable identity of a JSON value: values with equal keys behave identically in filters."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return (type(value), value)
    return ("json", json.dumps(value, sort_keys=True, ensure_ascii=False))


class Column:
    """Dictionary-encoded values of one metadata key, by row."""

    def __init__(self, capacity: int) -> None:
        self.codes = np.zeros(capacity, dtype=np.int32)
        self.values: list[Any] = [None]
        self._lookup: dict[Any, int] = {}
        self._numeric: tuple[np.ndarray, np.ndarray] | None = None  # (float64 values, is exact number)

    def code_for(self, value: Any) -> int:
        if value is None:
            return MISSING
        key = _unique_key(value)
        code = self._lookup.get(key)
        if code is None:
            code = len(self.values)
            self.values.append(value)
            self._lookup[key] = code
            self._numeric = None
        return code

    def ensure_capacity(self, capacity: int) -> None:
        if capacity > len(self.codes):
            grown = np.zeros(max(capacity, 2 * len(self.codes)), dtype=np.int32)
            grown[: len(self.codes)] = self.codes
            self.codes = grown

    def numeric(self) -> tuple[np.ndarray, np.ndarray]:
        """(float64 value per code, whether that code is a number float64 holds exactly)."""
        if self._numeric is None or len(self._numeric[0]) != len(self.values):
            nums = np.full(len(self.values), np.nan)
            is_num = np.zeros(len(self.values), dtype=bool)
            for code, v in enumerate(self.values):
                if isinstance(v, (bool, float)) or (isinstance(v, int) and -_EXACT_INT <= v <= _EXACT_INT):
                    nums[code] = float(v)
                    is_num[code] = True
            self._numeric = (nums, is_num)
        return self._numeric


class MetadataColumns:
    """Lazily built, incrementally maintained columns for the keys filters use.

    ``read_key(key)`` must return the value of ``key`` for every row slot (``None`` when the
    key is missing or the slot is empty); it is called once per key, the first time the key
    is filtered on. Afterwards the store reports writes with :meth:`set_rows`.
    """

    def __init__(self, read_key: Callable[[str], Sequence[Any]]) -> None:
        self._read_key = read_key
        self._columns: dict[str, Column] = {}
        self._lock = threading.Lock()

    @property
    def keys(self) -> list[str]:
        return list(self._columns)

    def clear(self) -> None:
        with self._lock:
            self._columns = {}

    def set_rows(self, slots: Sequence[int], metadata: Sequence[dict[str, Any] | None]) -> None:
        """Record the (effective) metadata written at ``slots`` (None for a removed row)."""
        with self._lock:
            if not self._columns or not len(slots):
                return
            top = int(max(slots)) + 1
            for key, column in list(self._columns.items()):
                column.ensure_capacity(top)
                codes = column.codes
                for slot, meta in zip(slots, metadata):
                    codes[slot] = column.code_for(meta.get(key)) if meta is not None else MISSING
                if len(column.values) > 2 * len(codes) + 1024:  # mostly values of removed rows
                    del self._columns[key]  # rebuilt from the table on next use

    def column(self, key: str) -> Column:
        with self._lock:
            column = self._columns.get(key)
            if column is None:
                values = self._read_key(key)
                column = Column(len(values))
                code_for = column.code_for
                column.codes[:] = np.fromiter((code_for(v) for v in values), dtype=np.int32, count=len(values))
                self._columns[key] = column
            return column

    # --- evaluation -------------------------------------------------------------------
    def evaluate(self, filters: Any, rows: np.ndarray) -> np.ndarray:
        """Bool mask aligned with ``rows`` (int slots): which rows pass ``filters``.

        Raises TypeError when a leaf cannot be applied to the value of one of ``rows``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if filters is None:
            return np.ones(len(rows), dtype=bool)
        check_filter_depth(filters)
        match, problem = self._evaluate_group(filters, rows)
        if problem is not None:
            raise TypeError(problem)
        return match

    def _evaluate_group(self, group: Any, rows: np.ndarray) -> tuple[np.ndarray, str | None]:
        children = list(getattr(group, "filters", None) or [])
        if not children:
            return np.ones(len(rows), dtype=bool), None
        condition = _condition_name(getattr(group, "condition", None))
        if condition not in ("and", "or", "not"):
            raise ValueError(f"unknown filter condition {condition!r}; use 'and', 'or' or 'not'")
        combined: np.ndarray | None = None
        problem: str | None = None
        for child in children:  # every child is evaluated, as SimpleVectorStore does
            if hasattr(child, "filters"):
                match, child_problem = self._evaluate_group(child, rows)
            else:
                match, child_problem = self._evaluate_leaf(child, rows)
            problem = problem or child_problem
            if combined is None:
                combined = match.copy()
            elif condition == "and":
                combined &= match
            else:
                combined |= match
        assert combined is not None
        if condition == "not":
            combined = ~combined
        return combined, problem

    def _evaluate_leaf(self, leaf: Any, rows: np.ndarray) -> tuple[np.ndarray, str | None]:
        op = _op_name(leaf.operator)
        if op not in OPERATORS:
            raise ValueError(f"unknown filter operator {op!r}; known operators: {OPERATORS}")
        column = self.column(str(leaf.key))
        codes = column.codes[rows]
        n_values = len(column.values)
        wanted = np.unique(codes) if len(rows) < n_values else np.arange(n_values)
        match_by_code = np.zeros(n_values, dtype=bool)
        error_by_code = np.zeros(n_values, dtype=bool)
        _fill_codes(column, op, leaf.value, wanted, match_by_code, error_by_code)
        problem = None
        if error_by_code.any():
            bad_rows = np.flatnonzero(error_by_code[codes])
            if len(bad_rows):
                stored = column.values[codes[bad_rows[0]]]
                problem = (
                    f"metadata filter {leaf.key!r} {op} {leaf.value!r} cannot be applied to the stored "
                    f"value {stored!r} (type {type(stored).__name__}) of {len(bad_rows)} node(s); "
                    "SimpleVectorStore raises here too. Filter on keys whose values share one "
                    "comparable type, or use EQ / IN for mixed types."
                )
        return match_by_code[codes], problem


def _fill_codes(
    column: Column, op: str, value: Any, wanted: np.ndarray, match: np.ndarray, error: np.ndarray
) -> None:
    """Evaluate one leaf for the distinct values ``wanted`` (codes), vectorised where exact."""
    remaining = wanted
    numeric_value = isinstance(value, float) or (
        isinstance(value, int) and not isinstance(value, bool) and -_EXACT_INT <= value <= _EXACT_INT
    )
    if op in _NUMERIC_OPS and numeric_value and len(wanted) > 32:
        nums, is_num = column.numeric()
        sel = wanted[is_num[wanted]]
        x = nums[sel]
        v = float(value)
        compare = {"==": np.equal, "!=": np.not_equal, ">": np.greater, ">=": np.greater_equal,
                   "<": np.less, "<=": np.less_equal}[op]
        match[sel] = compare(x, v)
        remaining = wanted[~is_num[wanted]]
    values = column.values
    for code in remaining.tolist():
        try:
            match[code] = match_value(op, value, values[code])
        except TypeError:
            error[code] = True

