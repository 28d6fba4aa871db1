"""Stable node ids and the seeded train/test split."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, TextNode

from llama_index_deepmemory import assign_stable_ids, split_nodes

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def make_documents() -> list[Document]:
    return [
        Document(id_=f"doc-{d}", text=" ".join(f"{WORDS[(d + i) % len(WORDS)]}{i}." for i in range(300)))
        for d in range(3)
    ]


def chunk(documents: list[Document]) -> list:
    return SentenceSplitter(chunk_size=128, chunk_overlap=0).get_nodes_from_documents(documents)


def test_ids_follow_node_order_like_the_seed_notebook() -> None:
    nodes = chunk(make_documents())
    texts = [n.get_content() for n in nodes]
    renamed = assign_stable_ids(nodes)
    assert [id(n) for n in renamed] == [id(n) for n in nodes]  # the same nodes, renamed in place
    assert [n.node_id for n in nodes] == [f"node_{i}" for i in range(len(nodes))]
    assert [n.get_content() for n in nodes] == texts


def test_same_input_gives_same_ids_across_runs() -> None:
    first = assign_stable_ids(chunk(make_documents()))
    second = assign_stable_ids(chunk(make_documents()))
    assert len(first) > 6
    assert [(n.node_id, n.get_content()) for n in first] == [(n.node_id, n.get_content()) for n in second]


def test_links_between_nodes_follow_the_rename() -> None:
    nodes = chunk(make_documents())
    before = {
        n.node_id: (n.prev_node.node_id if n.prev_node else None, n.next_node.node_id if n.next_node else None)
        for n in nodes
    }
    old_ids = [n.node_id for n in nodes]
    assign_stable_ids(nodes)
    new_of = {old: f"node_{i}" for i, old in enumerate(old_ids)}
    for old, node in zip(old_ids, nodes):
        prev_old, next_old = before[old]
        assert (node.prev_node.node_id if node.prev_node else None) == new_of.get(prev_old)
        assert (node.next_node.node_id if node.next_node else None) == new_of.get(next_old)
        # the source document is not among the nodes: its id stays
        assert node.relationships[NodeRelationship.SOURCE].node_id.startswith("doc-")


def test_prefix_and_start() -> None:
    nodes = [TextNode(text=f"t{i}") for i in range(3)]
    assign_stable_ids(nodes, prefix="faq_", start=10)
    assert [n.node_id for n in nodes] == ["faq_10", "faq_11", "faq_12"]


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"nodes\[1\] is a str"):
        assign_stable_ids([TextNode(text="a"), "not a node"])
    with pytest.raises(TypeError, match="prefix"):
        assign_stable_ids([TextNode(text="a")], prefix=3)  # type: ignore[arg-type]
    node = TextNode(text="a")
    with pytest.raises(ValueError, match="more than once"):
        assign_stable_ids([node, node])
    with pytest.raises(ValueError, match="train_fraction"):
        split_nodes([node], train_fraction=1.5)
    with pytest.raises(ValueError, match="train_fraction"):
        split_nodes([node], train_fraction=float("nan"))
    with pytest.raises(TypeError, match="seed"):
        split_nodes([node], seed="42")  # type: ignore[arg-type]


def test_split_is_80_20_disjoint_and_reproducible() -> None:
    nodes = assign_stable_ids([TextNode(text=f"t{i}") for i in range(100)])
    train, test = split_nodes(nodes, train_fraction=0.8, seed=42)
    assert (len(train), len(test)) == (80, 20)
    train_ids, test_ids = {n.node_id for n in train}, {n.node_id for n in test}
    assert not train_ids & test_ids and train_ids | test_ids == {n.node_id for n in nodes}
    again_train, again_test = split_nodes(nodes, train_fraction=0.8, seed=42)
    assert [n.node_id for n in again_train] == [n.node_id for n in train]
    assert [n.node_id for n in again_test] == [n.node_id for n in test]
    other_train, _ = split_nodes(nodes, train_fraction=0.8, seed=7)
    assert [n.node_id for n in other_train] != [n.node_id for n in train]
    # shuffled, not the first 80 nodes
    assert [n.node_id for n in train] != [f"node_{i}" for i in range(80)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), fraction=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_split_sizes_and_partition(n: int, fraction: float, seed: int) -> None:
    items = [TextNode(id_=f"node_{i}", text="x") for i in range(n)]
    train, test = split_nodes(items, train_fraction=fraction, seed=seed)
    assert len(train) == int(round(n * fraction))
    assert sorted(x.node_id for x in train + test) == sorted(x.node_id for x in items)
    assert math.isclose(len(train) + len(test), n)


def test_nodes_sharing_an_id_still_get_one_id_each() -> None:
    # e.g. copies of one node, or documents read twice: each position gets its own stable id
    first, copy, other = TextNode(text="a", id_="same"), TextNode(text="b", id_="same"), TextNode(text="c", id_="x")
    other.relationships[NodeRelationship.PREVIOUS] = first.as_related_node_info()
    assign_stable_ids([first, copy, other])
    assert [n.node_id for n in (first, copy, other)] == ["node_0", "node_1", "node_2"]
    assert other.prev_node.node_id == "node_0"  # a link to a shared id follows its first holder
