"""LangChain filter dicts (the Chroma / Qdrant form) -> LlamaIndex ``MetadataFilters``.

``{"field": value}``, ``{"field": {"$op": value}}`` and ``{"$and"/"$or": [filter, ...]}``; nesting
deeper than :data:`~llama_index_deepmemory.filters.MAX_FILTER_DEPTH` levels is refused with one
line, and error messages show values shortened (``reprlib``), so no input ends in a RecursionError.
"""

from __future__ import annotations

import logging
import reprlib
from typing import Any

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
from pydantic import ValidationError

from llama_index_deepmemory.filters import MAX_FILTER_DEPTH
from llama_index_deepmemory.node_table import HIDDEN_KEYS, NODE_TYPE_KEY, REF_DOC_KEYS

logger = logging.getLogger(__name__)

# LangChain's filter operators (Chroma / Qdrant dict form) -> LlamaIndex's
FIELD_OPERATORS: dict[str, FilterOperator] = {
    "$eq": FilterOperator.EQ,
    "$ne": FilterOperator.NE,
    "$gt": FilterOperator.GT,
    "$gte": FilterOperator.GTE,
    "$lt": FilterOperator.LT,
    "$lte": FilterOperator.LTE,
    "$in": FilterOperator.IN,
    "$nin": FilterOperator.NIN,
}
LOGICAL_OPERATORS: dict[str, FilterCondition] = {"$and": FilterCondition.AND, "$or": FilterCondition.OR}
ACCEPTED_OPERATORS = (*FIELD_OPERATORS, *LOGICAL_OPERATORS)
# keys LlamaIndex filters on its own values (as SimpleVectorStore does), never on a document's metadata
RESERVED_KEYS: dict[str, str] = {
    **{key: "the node's ref_doc_id, 'None' for documents added through LangChain" for key in REF_DOC_KEYS},
    NODE_TYPE_KEY: "the LlamaIndex node class, e.g. 'TextNode'",
    **{key: "LlamaIndex's serialized node, never filterable" for key in HIDDEN_KEYS},
}


def metadata_filters(filter: dict[str, Any] | MetadataFilters | None) -> MetadataFilters | None:
    """A LangChain filter dict as LlamaIndex ``MetadataFilters`` (a ``MetadataFilters`` passes through).

    Accepted: ``{"field": value}`` (equality; several fields are ANDed), ``{"field": {"$op": value}}``
    with ``$eq $ne $gt $gte $lt $lte $in $nin`` (several operators on one field are ANDed), and
    ``{"$and": [filter, ...]}`` / ``{"$or": [filter, ...]}``, nested freely. Semantics are the store's
    (LlamaIndex ``SimpleVectorStore``'s): a missing field matches only ``$ne`` and ``$nin``.
    Anything else raises ``ValueError`` naming the operator and the accepted ones; so does a field
    LlamaIndex reserves (:data:`RESERVED_KEYS`: ``doc_id``, ``_node_type``, ...), which would never
    match the documents' metadata.
    """
    if filter is None or isinstance(filter, MetadataFilters):
        return filter
    if not isinstance(filter, dict):
        raise TypeError(
            f"filter must be a dict such as {{'source': 'a.html'}} or {{'year': {{'$gte': 2020}}}}, "
            f"got {type(filter).__name__}: {reprlib.repr(filter)}"
        )
    if not filter:
        return None
    return _filters_of(filter, "filter")


def _filters_of(spec: dict[str, Any], where: str, depth: int = 1) -> MetadataFilters:
    """``spec`` (a non-empty dict) as an AND of its entries (``depth``: its nesting level)."""
    if depth > MAX_FILTER_DEPTH:
        raise ValueError(
            f"filter is nested more than {MAX_FILTER_DEPTH} levels deep ($and/$or inside each other, at "
            f"{where[:120]}...); flatten it"
        )
    parts: list[MetadataFilter | MetadataFilters] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: keys must be strings, got {key!r}")
        if key.startswith("$"):
            parts.append(_logical(key, value, f"{where}[{key!r}]", depth))
        elif isinstance(value, dict):
            if not value:
                raise ValueError(
                    f"{where}[{key!r}] is an empty dict; give an operator, e.g. {{'$eq': 1}}, "
                    f"one of {list(FIELD_OPERATORS)}"
                )
            for op, operand in value.items():
                parts.append(_leaf(key, op, operand, f"{where}[{key!r}]"))
        else:
            parts.append(_leaf(key, "$eq", value, f"{where}[{key!r}]"))
    return MetadataFilters(filters=parts, condition=FilterCondition.AND)


def _logical(op: str, value: Any, where: str, depth: int = 1) -> MetadataFilters:
    condition = LOGICAL_OPERATORS.get(op)
    if condition is None:
        raise ValueError(
            f"unsupported filter operator {op!r} at {where}; accepted operators: {list(ACCEPTED_OPERATORS)} "
            "(plain {'field': value} means $eq)"
        )
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: {op} takes a non-empty list of filter dicts, got {reprlib.repr(value)}")
    parts: list[MetadataFilter | MetadataFilters] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not item:
            raise ValueError(f"{where}[{i}]: each {op} entry must be a non-empty filter dict, got {reprlib.repr(item)}")
        parts.append(_filters_of(item, f"{where}[{i}]", depth + 1))
    return MetadataFilters(filters=parts, condition=condition)


def _leaf(key: str, op: Any, value: Any, where: str) -> MetadataFilter:
    if key in RESERVED_KEYS:
        raise ValueError(
            f"{where}: filter field {key!r} is LlamaIndex's own key ({RESERVED_KEYS[key]}), not the documents' "
            f"metadata, so it never matches a metadata value stored under that name; rename that metadata key "
            f"(e.g. 'source{key if key.startswith('_') else '_' + key}') when adding documents, or pass LlamaIndex "
            f"MetadataFilters to filter on LlamaIndex's {key!r}"
        )
    operator = FIELD_OPERATORS.get(op) if isinstance(op, str) else None
    if operator is None:
        raise ValueError(
            f"unsupported filter operator {op!r} on field {key!r} ({where}); accepted operators: "
            f"{list(ACCEPTED_OPERATORS)} (plain {{'field': value}} means $eq)"
        )
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: {op} takes a list of values, e.g. {{{op!r}: ['a', 'b']}}, got {reprlib.repr(value)}")
        value = list(value)
        scalars = value
    else:
        scalars = [value]
    for item in scalars:
        if item is not None and not isinstance(item, (str, int, float, bool)):
            raise ValueError(
                f"{where}: {op} compares with str, int, float, bool or None values, got "
                f"{type(item).__name__} {reprlib.repr(item)}"
            )
    try:
        return MetadataFilter(key=key, value=value, operator=operator)
    except ValidationError:
        # LlamaIndex's field type refuses booleans and mixed-type lists; the store compares them
        # with Python's operators like any other value (True == 1, as in SimpleVectorStore)
        return MetadataFilter.model_construct(key=key, value=value, operator=operator)
