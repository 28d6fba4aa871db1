"""Metadata filters give exactly LlamaIndex SimpleVectorStore's results (or raise where it raises)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from llama_index_deepmemory import DeepMemoryVectorStore

DIM = 4
KEYS = ["a", "b", "c"]
SPECIAL_KEYS = ["doc_id", "ref_doc_id", "_node_type"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 0.5, 2.0, 2.5]),
    st.sampled_from(["", "x", "xy", "Yx", "abc", "ab"]),
)
stored_values = st.one_of(scalars, st.lists(st.sampled_from(["x", "ab", "1"]) | st.integers(0, 2), max_size=3))
metadata_dicts = st.dictionaries(st.sampled_from(KEYS), stored_values, max_size=3)

filter_values = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.5, 2.0]),
    st.sampled_from(["", "x", "ab", "y", "None", "doc1", "TextNode"]),
    st.lists(st.sampled_from(["x", "ab", "1", "doc0"]), max_size=3),
    st.lists(st.integers(0, 3), min_size=1, max_size=3),
    st.none(),
)
leaves = st.builds(
    lambda key, value, op: MetadataFilter(key=key, value=value, operator=op),
    st.sampled_from(KEYS + SPECIAL_KEYS),
    filter_values,
    st.sampled_from(list(FilterOperator)),
)
conditions = st.sampled_from([FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT, None])
flat_filters = st.builds(
    lambda filters, condition: MetadataFilters(filters=filters, condition=condition),
    st.lists(leaves, max_size=3),
    conditions,
)
nested_filters = st.recursive(
    flat_filters,
    lambda children: st.builds(
        lambda filters, condition: MetadataFilters(filters=filters, condition=condition),
        st.lists(children | leaves, min_size=1, max_size=3),
        conditions,
    ),
    max_leaves=6,
)


def build_stores(metadatas: list[dict]) -> tuple[DeepMemoryVectorStore, SimpleVectorStore]:
    rng = np.random.default_rng(0)
    nodes = []
    for i, metadata in enumerate(metadatas):
        relationships = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i % 3}")} if i % 4 else {}
        nodes.append(
            TextNode(
                id_=f"n{i}",
                text=f"t{i}",
                metadata=metadata,
                embedding=(rng.random(DIM) + 0.1).tolist(),
                relationships=relationships,
            )
        )
    ours, simple = DeepMemoryVectorStore(), SimpleVectorStore()
    ours.add(nodes)
    simple.add(nodes)
    return ours, simple


def simple_ids(simple: SimpleVectorStore, n: int, filters: MetadataFilters) -> set[str]:
    """SimpleVectorStore's filter result (it filters before top-k; k=n returns every match)."""
    if any(isinstance(f, MetadataFilters) for f in filters.filters):  # SimpleVectorStore has no nesting:
        parts = [simple_ids(simple, n, _as_group(f)) for f in filters.filters]  # combine children by sets
        everything = simple_ids(simple, n, MetadataFilters(filters=[]))
        condition = filters.condition or FilterCondition.AND
        if condition == FilterCondition.AND:
            return set.intersection(*parts)
        union = set.union(*parts)
        return union if condition == FilterCondition.OR else everything - union
    query = VectorStoreQuery(query_embedding=[1.0] * DIM, similarity_top_k=n, filters=filters)
    return set(simple.query(query).ids)


def _as_group(item):
    return item if isinstance(item, MetadataFilters) else MetadataFilters(filters=[item])


def our_ids(ours: DeepMemoryVectorStore, n: int, filters: MetadataFilters) -> set[str]:
    by_get = {node.node_id for node in ours.get_nodes(filters=filters)}
    by_query = ours.query(VectorStoreQuery(query_embedding=[1.0] * DIM, similarity_top_k=n, filters=filters))
    assert set(by_query.ids) == by_get
    return by_get


def assert_same(ours, simple, n, filters):
    try:
        expected = simple_ids(simple, n, filters)
    except TypeError:
        with pytest.raises(TypeError, match="cannot be applied"):
            our_ids(ours, n, filters)
        return
    assert our_ids(ours, n, filters) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(metadata_dicts, min_size=1, max_size=12), st.lists(flat_filters, min_size=1, max_size=4))
def test_flat_filters_match_simple_vector_store(metadatas, filter_list):
    ours, simple = build_stores(metadatas)
    for filters in filter_list:
        assert_same(ours, simple, len(metadatas), filters)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(metadata_dicts, min_size=1, max_size=10), nested_filters)
def test_nested_filters_match_set_algebra_of_simple_vector_store(metadatas, filters):
    ours, simple = build_stores(metadatas)
    assert_same(ours, simple, len(metadatas), filters)


def test_every_operator_on_many_distinct_values():
    """Enough distinct values to take the vectorised numeric path, with mixed types."""
    rng = np.random.default_rng(1)
    metadatas = []
    for i in range(400):
        kind = i % 8
        value = (
            int(rng.integers(-50, 50)) if kind < 3
            else float(rng.normal() * 20) if kind < 6
            else None if kind == 6
            else bool(i % 3)
        )
        metadatas.append({"num": value, "word": f"w{i % 37}", "tags": [f"t{i % 5}", f"t{i % 7}"]})
    metadatas.append({"num": 2**60 + 1, "word": "W3", "tags": []})
    ours, simple = build_stores(metadatas)
    n = len(metadatas)
    cases = [
        MetadataFilter(key="num", value=v, operator=op)
        for v in (0, 3, -7.25, 2**60)
        for op in ("==", "!=", ">", ">=", "<", "<=")
    ] + [
        MetadataFilter(key="num", value=[1, 2, 3, 2**60 + 1], operator="in"),
        MetadataFilter(key="num", value=[1, 2, 3], operator="nin"),
        MetadataFilter(key="num", value=None, operator="is_empty"),
        MetadataFilter(key="word", value="w3", operator="=="),
        MetadataFilter(key="word", value="w1", operator=">="),
        MetadataFilter(key="word", value="w3", operator="text_match"),
        MetadataFilter(key="word", value="w3", operator="text_match_insensitive"),
        MetadataFilter(key="word", value=["w1", "w2"], operator="in"),
        MetadataFilter(key="tags", value="t3", operator="contains"),
        MetadataFilter(key="tags", value=["t1", "t2"], operator="any"),
        MetadataFilter(key="tags", value=["t1", "t2"], operator="all"),
        MetadataFilter(key="tags", value=None, operator="is_empty"),
        MetadataFilter(key="missing", value=1, operator="!="),
        MetadataFilter(key="doc_id", value="doc1", operator="=="),
        MetadataFilter(key="ref_doc_id", value=["None", "doc2"], operator="in"),
    ]
    for leaf in cases:
        assert_same(ours, simple, n, MetadataFilters(filters=[leaf]))
    assert_same(ours, simple, n, MetadataFilters(filters=cases[:3], condition=FilterCondition.OR))
    assert_same(ours, simple, n, MetadataFilters(filters=cases[-3:], condition=FilterCondition.NOT))


def test_columns_follow_writes():
    """Cached filter columns are updated by adds, replacements and deletes."""
    ours, _ = build_stores([{"a": i % 3} for i in range(30)])
    is_two = MetadataFilters(filters=[MetadataFilter(key="a", value=2)])
    assert {n.node_id for n in ours.get_nodes(filters=is_two)} == {f"n{i}" for i in range(2, 30, 3)}
    ours.add([TextNode(id_="n0", metadata={"a": 2}, embedding=[1.0] * DIM),
              TextNode(id_="new", metadata={"a": 2}, embedding=[1.0] * DIM)])
    ours.delete_nodes(node_ids=["n2"])
    expected = {f"n{i}" for i in range(5, 30, 3)} | {"n0", "new"}
    assert {n.node_id for n in ours.get_nodes(filters=is_two)} == expected


def test_type_errors_only_for_candidate_rows():
    """Like SimpleVectorStore, a bad comparison outside the node_ids restriction does not raise."""
    ours, simple = build_stores([{"a": 1}, {"a": "text"}, {"a": 5}])
    gt = MetadataFilters(filters=[MetadataFilter(key="a", value=2, operator=">")])
    with pytest.raises(TypeError):
        simple.query(VectorStoreQuery(query_embedding=[1.0] * DIM, similarity_top_k=3, filters=gt))
    with pytest.raises(TypeError, match="'a' > 2 cannot be applied to the stored value 'text'"):
        ours.get_nodes(filters=gt)
    query = VectorStoreQuery(query_embedding=[1.0] * DIM, similarity_top_k=3, filters=gt, node_ids=["n0", "n2"])
    assert simple.query(query).ids == ours.query(query).ids == ["n2"]
