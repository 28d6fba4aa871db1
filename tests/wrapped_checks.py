"""Checks every wrapped engine passes (``tests/engine/test_wrapped_chroma.py``, ``_milvus``, ``_generic``).

Each takes the same nodes in the embedded FAISS store and in the engine, with one hand-made model
registered in both, and compares: the wrapper's plain results with the engine's own, and the Deep
Memory ranking over the engine with the one over FAISS.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory.engine.ids import ID_KEY, engine_id
from llama_index_deepmemory.store import DeepMemoryVectorStore
from llama_index_deepmemory.wrapped_store import WRAPPED_KEYWORD_DEPTH
from synthetic import N_TRAIN, KeywordTask
from synthetic import hand_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # bench_threads.hammer
EVEN = MetadataFilters(filters=[MetadataFilter(key="parity", value=0)])


def nodes_with_docs(task: KeywordTask) -> list:
    """The task's nodes with ``{"parity": i % 2}`` and a source document ``doc_{i // 10}``."""
    nodes = task.nodes(metadata=True)
    for j, node in enumerate(nodes):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc_{j // 10}")
    return nodes


def ask(store, q, k=10, text=None, filters=None, deep_memory=False, **kwargs):
    query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k, query_str=text, filters=filters, **kwargs)
    return store.query(query, deep_memory=deep_memory)


def with_model(task: KeywordTask, *stores: DeepMemoryVectorStore, seed: int = 1) -> None:
    model = hand_model(task, seed=seed)
    for store in stores:
        store.deep_memory.add_model("hand", model, activate=True)  # a hand-made model


def faiss_twin(task: KeywordTask) -> DeepMemoryVectorStore:
    """The task's nodes in the embedded store, ranking with the keyword head a wrapped engine uses."""
    store = DeepMemoryVectorStore(keyword_depth=WRAPPED_KEYWORD_DEPTH)
    store.add(nodes_with_docs(task))
    return store


def check_plain_equals_engine(task, store, filters, to_cosine: Callable[[list[float]], list[float]] = list) -> None:
    """The wrapper's plain top 7 equal the engine's own query (ids, texts; scores as cosine)."""
    engine = store.vector_store
    for q in task.queries[:15]:
        ours = ask(store, q, k=7, filters=filters)
        theirs = engine.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=7, filters=filters))
        assert len(ours.ids) == 7
        assert [engine_id(i) for i in ours.ids] == [n.node_id for n in theirs.nodes] or \
            ours.ids == [n.metadata[ID_KEY] for n in theirs.nodes]
        np.testing.assert_allclose(ours.similarities, to_cosine(theirs.similarities), rtol=1e-5, atol=1e-5)
        expected = np.sort(task.docs @ q)[::-1] if filters is None else np.sort(task.docs[::2] @ q)[::-1]
        np.testing.assert_allclose(ours.similarities, expected[:7], atol=1e-5)  # exact cosine, not a proxy
        assert all(ID_KEY not in n.metadata for n in ours.nodes)  # the engine id travels hidden
        assert [n.text for n in ours.nodes] == [task.doc_texts[task.ids.index(i)] for i in ours.ids]


def check_ranks_like_faiss(task, faiss_store, store, filters, with_text, n_queries: int = 40) -> None:
    for i, q in enumerate(task.queries[:n_queries]):
        text = task.texts[i] if with_text else None
        over_faiss = ask(faiss_store, q, text=text, filters=filters, deep_memory=True)
        over_engine = ask(store, q, text=text, filters=filters, deep_memory=True)
        assert over_engine.ids == over_faiss.ids, f"query {i}"
        np.testing.assert_allclose(over_engine.similarities, over_faiss.similarities, rtol=1e-4, atol=1e-5)
    if filters is None and with_text:  # and the batched path evaluate uses
        queries, texts = task.queries[:n_queries], task.texts[:n_queries]
        batched = store.deep_memory.search_ids(queries, 10, deep_memory=True, texts=texts)
        assert batched == faiss_store.deep_memory.search_ids(queries, 10, deep_memory=True, texts=texts)


def check_restrictions(task, faiss_store, store) -> None:
    """node_ids and doc_ids restrict plain and Deep Memory queries alike over both stores."""
    q, text = task.queries[0], task.texts[0]
    assert ask(store, q, k=3, doc_ids=[]).ids == []
    assert len(ask(store, q, k=3, node_ids=[]).ids) == 3  # empty node_ids restrict nothing
    for kwargs in ({"node_ids": ["node_4", "node_9", "node_31"]}, {"doc_ids": ["doc_2", "doc_5"]},
                   {"node_ids": ["node_4", "node_9", "node_31"], "filters": EVEN},
                   {"doc_ids": ["doc_2", "doc_5"], "filters": EVEN}):
        for deep in (False, True):
            ours = ask(store, q, k=12, text=text, deep_memory=deep, **kwargs)
            theirs = ask(faiss_store, q, k=12, text=text, deep_memory=deep, **kwargs)
            assert ours.ids == theirs.ids and ours.ids, (kwargs, deep)
    assert set(ask(store, q, k=12, doc_ids=["doc_2"]).ids) == {f"node_{j}" for j in range(20, 30)}


def check_deletes_filters_and_get_nodes(task, store) -> None:
    n = len(task.ids)
    assert len(store) == n
    got = store.get_nodes(["node_3", "node_1", "nope"])
    assert [g.node_id for g in got] == ["node_3", "node_1"]
    np.testing.assert_allclose(got[0].embedding, task.docs[3], atol=1e-6)  # embeddings come back
    assert [g.node_id for g in store.get_nodes(["node_3", "node_2"], filters=EVEN)] == ["node_2"]
    store.delete_nodes(["node_0", "node_2"])
    assert len(store) == n - 2
    assert [g.node_id for g in store.get_nodes(["node_2", "node_1", "node_0"])] == ["node_1"]
    assert {g.node_id for g in store.get_nodes(filters=EVEN)} == {i for j, i in enumerate(task.ids) if j % 2 == 0} - {
        "node_0", "node_2"}
    hits = ask(store, task.queries[0], k=n, deep_memory=True, text=task.texts[0])
    assert "node_0" not in hits.ids and "node_2" not in hits.ids and len(hits.ids) == n - 2
    store.delete("doc_1")  # by source document: node_10 .. node_19
    assert len(store) == n - 12 and not set(ask(store, task.queries[1], k=n).ids) & {f"node_{j}" for j in range(10, 20)}
    store.delete_nodes(filters=EVEN)
    left = ask(store, task.queries[1], k=100).ids
    assert left and all(int(i.split("_")[1]) % 2 for i in left)
    store.clear()
    assert len(store) == 0 and ask(store, task.queries[0]).ids == []
    store.add(nodes_with_docs(task)[:5])  # still usable after clear
    assert len(store) == 5 and len(ask(store, task.queries[0], deep_memory=True, text=task.texts[0]).ids) == 5


def check_reopened(task, first: DeepMemoryVectorStore, reopen: Callable[[], DeepMemoryVectorStore], close=None,
                   n_queries: int = 20) -> None:
    """A hand-made model saved to ``model_dir`` serves the same ranking over a reopened engine."""
    with_model(task, first, seed=2)  # set_model saves the models to model_dir
    queries, texts = task.queries[N_TRAIN : N_TRAIN + n_queries], task.texts[N_TRAIN : N_TRAIN + n_queries]
    expected = [ask(first, q, text=t, deep_memory=True).ids for q, t in zip(queries, texts)]
    plain = [ask(first, q).ids for q in queries]
    if close is not None:
        close()
    second = reopen()
    assert second.deep_memory.get_model() == "hand" and len(second) == len(task.ids)
    assert [ask(second, q).ids for q in queries] == plain
    got = [ask(second, q, text=t, deep_memory=True).ids for q, t in zip(queries, texts)]
    assert got == expected


def check_listing(task, store) -> None:
    """The engine's own paging lists every node with its vector and text (keyword statistics and
    training read the corpus this way), and training copies it whole."""
    pages = list(store.iter_vectors(batch_size=32))
    assert [len(ids) for ids, _ in pages] == [32, 32, len(task.ids) - 64]
    ids = [i for page, _ in pages for i in page]
    assert sorted(ids) == sorted(task.ids)
    np.testing.assert_allclose(np.concatenate([v for _, v in pages]), task.docs[[task.ids.index(i) for i in ids]],
                               atol=1e-6)
    texts = {i: t for page, batch in store.iter_texts(batch_size=32) for i, t in zip(page, batch)}
    assert texts == dict(zip(task.ids, task.doc_texts))
    view = store._backend.training_view(10_000)  # what training reads (not on the face: white-box)
    assert type(view).__name__ == "ArrayStoreView" and len(view) == len(task.ids)


def check_ids_cannot_impersonate(task, store) -> None:
    """No user id or metadata can replace, hide or impersonate another node (``store`` holds the
    task's nodes): a UUID equal to the id ``node_7`` is stored under is refused, so is metadata
    named ``deepmemory_id``, and a node written straight into the engine with that metadata comes
    back under its own id."""
    import uuid

    import pytest
    from llama_index.core.schema import TextNode

    n, original = len(task.ids), task.doc_texts[7]
    impostor = TextNode(id_=engine_id("node_7"), text="impostor", embedding=task.docs[7].tolist())
    with pytest.raises(ValueError, match="already holds node 'node_7'"):
        store.add([impostor])
    twin = TextNode(id_="node_new", text="twin", embedding=task.docs[8].tolist())
    with pytest.raises(ValueError, match="already holds node 'node_new'"):  # within one batch, too
        store.add([twin, TextNode(id_=engine_id("node_new"), text="impostor", embedding=task.docs[8].tolist())])
    with pytest.raises(ValueError, match=f"metadata key '{ID_KEY}'"):
        store.add([TextNode(id_="node_x", text="x", metadata={ID_KEY: "node_3"}, embedding=task.docs[3].tolist())])
    assert len(store) == n and store.get_nodes(["node_7"])[0].text == original
    assert store.get_nodes(["node_new", "node_x"]) == []  # nothing of a refused batch was stored
    sneaky = str(uuid.uuid4())
    store.vector_store.add([TextNode(id_=sneaky, text="sneaky", metadata={ID_KEY: "node_3", "parity": 1},
                                     embedding=task.docs[3].tolist())])  # straight into the engine
    hits = ask(store, task.docs[3], k=3)
    assert hits.ids.count("node_3") == 1 and sneaky in hits.ids, hits.ids
    by_id = dict(zip(hits.ids, hits.nodes))
    assert by_id["node_3"].text == task.doc_texts[3] and by_id[sneaky].text == "sneaky"
    assert [g.text for g in store.get_nodes(["node_3", sneaky])] == [task.doc_texts[3], "sneaky"]


def check_threads(task, store, seconds: float = 2.0, readers: int = 3) -> dict:
    """Queries (plain and Deep Memory, with keywords, MMR) from ``readers`` threads while one thread adds
    and deletes nodes near the queries (``benchmarks/bench_threads.py``'s loop): no error, and no
    node comes back from a query that started after its delete returned. ``store`` holds the
    task's nodes and an active model."""
    from bench_threads import hammer

    out = hammer(store, task.queries, task.texts, seconds, readers)
    assert not out["errors"], f"{len(out['errors'])} error(s), first: {out['errors'][0]!r}"
    assert not out["late"], f"nodes returned after their delete returned: {out['late'][:5]}"
    assert out["writes"] > 0 and out["queries"] > 0, out
    assert out["extras_seen"] > 0, out  # the writes were seen
    return out


def check_delete_nodes_like_simple(task, store) -> None:
    """``delete_nodes(ids, filters)`` deletes the named nodes that pass the filters, no others, as
    ``SimpleVectorStore`` does (``store`` empty): no ids named deletes nothing, and an OR of filters
    never widens the ids named."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import FilterCondition

    def nodes():
        return [TextNode(id_=f"n{i}", text=f"t{i}", metadata={"a": i}, embedding=task.docs[i].tolist())
                for i in range(6)]

    simple = SimpleVectorStore()
    simple.add(nodes())
    store.add(nodes())
    either = MetadataFilters(filters=[MetadataFilter(key="a", value=2), MetadataFilter(key="a", value=3)],
                             condition=FilterCondition.OR)
    for node_ids, filters in (([], None), ([], EVEN_A), (["n1"], either), (["n1", "n2"], either), (["n4"], EVEN_A)):
        simple.delete_nodes(node_ids, filters=filters)
        store.delete_nodes(node_ids, filters=filters)
        expected = sorted(simple.data.embedding_dict)
        assert sorted(n.node_id for n in store.get_nodes()) == expected, (node_ids, filters)
    assert expected == ["n0", "n1", "n3", "n5"]


EVEN_A = MetadataFilters(filters=[MetadataFilter(key="a", value=[0, 2, 4], operator="in")])


def check_filters_like_simple(task, store) -> None:
    """Filters select the nodes ``SimpleVectorStore`` selects (``store`` empty), in ``get_nodes``,
    ``query`` and ``delete_nodes``: a node missing the key passes NE and NIN, fails the rest; an int
    equals the same float."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import FilterCondition, FilterOperator

    metadatas = [{"a": 1, "s": "x", "f": 1.0}, {"a": 2, "s": "y", "f": 2.5}, {"a": 3, "f": 2.0}, {"s": "x"}, {"b": 0}]

    def nodes():
        return [TextNode(id_=f"n{i}", text=f"t{i}", metadata=dict(m), embedding=task.docs[i].tolist())
                for i, m in enumerate(metadatas)]

    def leaf(key, value, operator="=="):
        return MetadataFilter(key=key, value=value, operator=FilterOperator(operator))

    simple = SimpleVectorStore()
    simple.add(nodes())
    store.add(nodes())
    cases = [MetadataFilters(filters=[f]) for f in (
        leaf("a", 1), leaf("a", 1, "!="), leaf("a", 1, ">"), leaf("a", 3, "<"), leaf("a", [1, 3], "in"),
        leaf("a", [1, 3], "nin"), leaf("s", "x", "!="), leaf("s", ["x"], "nin"), leaf("zz", 1, "!="),
        # numbers compare as numbers, an int value with a float field and a float value with an int field
        leaf("f", 1), leaf("f", 2, "!="), leaf("f", [1, 2], "in"), leaf("f", [2], "nin"), leaf("a", 2.0),
        leaf("a", [1.0, 3.0], "in"), leaf("a", [1.0], "nin"))]
    cases += [MetadataFilters(filters=[leaf("a", 1, "!="), leaf("s", "x", "!=")], condition=FilterCondition.OR),
              MetadataFilters(filters=[leaf("a", 2, "<"), MetadataFilters(filters=[leaf("s", "y", "!=")])]),
              MetadataFilters(filters=[leaf("a", 1, ">"), leaf("s", "y")], condition=None)]  # None: AND

    def selected(filters) -> set:  # SimpleVectorStore's ids (a nested AND group: the intersection of its parts)
        if any(isinstance(f, MetadataFilters) for f in filters.filters):
            return set.intersection(*(selected(f if isinstance(f, MetadataFilters) else MetadataFilters(filters=[f]))
                                      for f in filters.filters))
        return set(simple.query(VectorStoreQuery(query_embedding=task.docs[0].tolist(), similarity_top_k=10,
                                                 filters=filters)).ids)

    for filters in cases:
        expected = sorted(selected(filters))
        assert sorted(n.node_id for n in store.get_nodes(filters=filters)) == expected, filters
        assert sorted(ask(store, task.docs[0], k=10, filters=filters).ids) == expected, filters
        assert sorted(n.node_id for n in store.get_nodes([f"n{i}" for i in range(5)], filters=filters)) == expected
    store.delete_nodes(filters=cases[1])  # a != 1: every node but n0
    assert [n.node_id for n in store.get_nodes()] == ["n0"]


def check_readding_replaces(task, store) -> None:
    """Adding a node id again replaces the node, as in the embedded store (``store`` empty): one
    node under the id, the new text and vector; within one batch, the last node of an id wins."""
    from llama_index.core.schema import TextNode

    def node(node_id: str, text: str, j: int) -> TextNode:
        return TextNode(id_=node_id, text=text, embedding=task.docs[j].tolist())

    embedded = DeepMemoryVectorStore()
    for target in (embedded, store):
        target.add([node("a", "first", 0), node("b", "b", 1)])
        target.add([node("a", "second", 2)])
        target.add([node("c", "first", 3), node("c", "second", 4)])
    for target in (embedded, store):
        assert len(target) == 3
        assert sorted((n.node_id, n.text) for n in target.get_nodes()) == [("a", "second"), ("b", "b"), ("c", "second")]
        assert ask(target, task.docs[2], k=5).ids[:1] == ["a"] and len(set(ask(target, task.docs[2], k=5).ids)) == 3
        assert ask(target, task.docs[4], k=1).ids == ["c"] and ask(target, task.docs[0], k=3).ids.count("a") == 1


def check_failed_readd_keeps_the_node(task, store, refused_metadata: dict) -> None:
    """A re-add the engine refuses (``refused_metadata``) leaves the stored node as it was."""
    import pytest
    from llama_index.core.schema import TextNode

    store.add([TextNode(id_="a", text="first", metadata={"k": 1}, embedding=task.docs[0].tolist())])
    with pytest.raises(Exception):  # noqa: B017 - whichever the engine raises
        store.add([TextNode(id_="a", text="second", metadata=refused_metadata, embedding=task.docs[1].tolist())])
    assert [(n.node_id, n.text, n.metadata) for n in store.get_nodes()] == [("a", "first", {"k": 1})]
    assert ask(store, task.docs[0], k=2).ids == ["a"]
