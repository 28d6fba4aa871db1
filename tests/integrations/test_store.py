"""DeepMemoryVectorStore against brute-force NumPy references on seeded random data."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel

DIM = 16


def make_nodes(n: int, dim: int = DIM, seed: int = 0, prefix: str = "n", docs: int = 10) -> tuple[list[TextNode], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    nodes = [
        TextNode(
            id_=f"{prefix}{i}",
            text=f"text {i}",
            metadata={"group": i % 5, "color": ["red", "green", "blue"][i % 3], "tags": [f"t{i % 4}", "all"]},
            embedding=vectors[i].tolist(),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i % docs}")},
        )
        for i in range(n)
    ]
    return nodes, vectors


def brute_force(vectors: np.ndarray, q: np.ndarray, metric: str, k: int, rows: np.ndarray | None = None):
    """Reference top-k (row numbers, scores) with numpy."""
    rows = np.arange(len(vectors)) if rows is None else np.asarray(rows)
    v = vectors[rows].astype(np.float64)
    q = q.astype(np.float64)
    if metric == "cosine":
        scores = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    elif metric == "ip":
        scores = v @ q
    else:
        scores = -((v - q) ** 2).sum(axis=1)
    order = np.argsort(-scores, kind="stable")[:k]
    return rows[order], scores[order]


def query(store, q, k=5, **kwargs):
    extra = {key: kwargs.pop(key) for key in list(kwargs) if key in ("deep_memory",)}
    return store.query(VectorStoreQuery(query_embedding=np.asarray(q).tolist(), similarity_top_k=k, **kwargs), **extra)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_query_matches_brute_force(metric, k):
    nodes, vectors = make_nodes(300, seed=1)
    store = DeepMemoryVectorStore(metric=metric)
    assert store.add(nodes) == [n.node_id for n in nodes]
    rng = np.random.default_rng(2)
    for q in rng.normal(size=(5, DIM)).astype(np.float32):
        result = query(store, q, k)
        rows, scores = brute_force(vectors, q, metric, k)
        assert result.ids == [f"n{r}" for r in rows]
        np.testing.assert_allclose(result.similarities, scores, rtol=1e-4, atol=1e-4)
        assert [n.node_id for n in result.nodes] == result.ids


def test_restrictions_and_filters_match_brute_force():
    nodes, vectors = make_nodes(400, seed=3)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    q = np.random.default_rng(4).normal(size=DIM).astype(np.float32)
    node_ids = [f"n{i}" for i in range(0, 400, 3)] + ["unknown"]
    result = query(store, q, 10, node_ids=node_ids)
    rows, _ = brute_force(vectors, q, "cosine", 10, np.arange(0, 400, 3))
    assert result.ids == [f"n{r}" for r in rows]

    result = query(store, q, 10, doc_ids=["doc1", "doc7"])
    rows, _ = brute_force(vectors, q, "cosine", 10, np.array([i for i in range(400) if i % 10 in (1, 7)]))
    assert result.ids == [f"n{r}" for r in rows]

    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="group", value=2, operator=FilterOperator.GTE),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="color", value="red"),
                    MetadataFilter(key="tags", value="t1", operator=FilterOperator.CONTAINS),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    expected = np.array([i for i in range(400) if i % 5 >= 2 and (i % 3 == 0 or i % 4 == 1)])
    result = query(store, q, 25, filters=filters)
    rows, _ = brute_force(vectors, q, "cosine", 25, expected)
    assert result.ids == [f"n{r}" for r in rows]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF16,Flat"])
def test_selective_filters_never_starve(factory):
    """Few matching nodes still give min(k, matches) results, exactly the best ones."""
    nodes, vectors = make_nodes(5000, seed=5)
    for i, node in enumerate(nodes):
        node.metadata["rare"] = "yes" if i % 997 == 0 else "no"
    store = DeepMemoryVectorStore(index_factory=factory)
    store.add(nodes)
    q = np.random.default_rng(6).normal(size=DIM).astype(np.float32)
    matches = np.array([i for i in range(5000) if i % 997 == 0])
    result = query(store, q, 10, filters=MetadataFilters(filters=[MetadataFilter(key="rare", value="yes")]))
    rows, _ = brute_force(vectors, q, "cosine", 10, matches)
    assert result.ids == [f"n{r}" for r in rows]  # 6 matches < k
    # a large allowed set goes through the FAISS selector: still k exact results for Flat
    big = MetadataFilters(filters=[MetadataFilter(key="group", value=0, operator=FilterOperator.NE)])
    result = query(store, q, 10, filters=big)
    assert len(result.ids) == 10
    assert all(int(i[1:]) % 5 != 0 for i in result.ids)
    if factory == "Flat":
        rows, _ = brute_force(vectors, q, "cosine", 10, np.array([i for i in range(5000) if i % 5]))
        assert result.ids == [f"n{r}" for r in rows]


def test_re_adding_replaces_and_duplicates_keep_last():
    nodes, vectors = make_nodes(50, seed=7)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    new_vec = np.ones(DIM, dtype=np.float32)
    replacement = TextNode(id_="n3", text="new text", metadata={"group": 99}, embedding=new_vec.tolist())
    older = TextNode(id_="n4", text="first", embedding=(-new_vec).tolist())
    newer = TextNode(id_="n4", text="second", embedding=new_vec.tolist())
    assert store.add([replacement, older, newer]) == ["n3", "n4", "n4"]
    assert len(store) == 50
    assert store.client.ntotal == 50  # no duplicate vectors
    got = {n.node_id: n for n in store.get_nodes(node_ids=["n3", "n4"])}
    assert got["n3"].text == "new text" and got["n3"].metadata == {"group": 99}
    assert got["n4"].text == "second"
    result = query(store, new_vec, 2)
    assert set(result.ids) == {"n3", "n4"}
    np.testing.assert_allclose(result.similarities, [1.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(store.get_vectors(["n4"])[0], new_vec / np.linalg.norm(new_vec), atol=1e-6)


def test_nodes_come_back_whole():
    node = TextNode(
        id_="x",
        text="hello world",
        metadata={"a": 1, "nested": {"b": [1, 2]}, "when": "2024"},
        excluded_llm_metadata_keys=["a"],
        embedding=[0.1] * DIM,
        relationships={
            NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-1", metadata={"k": "v"}),
            NodeRelationship.NEXT: RelatedNodeInfo(node_id="y"),
        },
        start_char_idx=3,
        end_char_idx=14,
    )
    store = DeepMemoryVectorStore()
    store.add([node])
    (back,) = store.get_nodes(node_ids=["x"])
    expected = node.model_copy()
    expected.embedding = None
    assert back == expected
    assert back.ref_doc_id == "doc-1"
    assert query(store, [0.1] * DIM, 1).nodes[0] == expected


def test_deletes_and_get_nodes():
    nodes, vectors = make_nodes(100, seed=8)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    store.delete("doc3")
    assert len(store) == 90 and store.client.ntotal == 90
    assert not any(n.ref_doc_id == "doc3" for n in store.get_nodes())
    store.delete_nodes(node_ids=["n0", "n1", "n13"])  # n13 already gone with doc3
    assert store.missing_ids(["n0", "n1", "n2"]) == ["n0", "n1"]
    red = MetadataFilters(filters=[MetadataFilter(key="color", value="red")])
    store.delete_nodes(node_ids=["n2", "n6", "n9"], filters=red)  # only n6, n9 are red
    assert store.missing_ids(["n2", "n6", "n9"]) == ["n6", "n9"]
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="group", value=4)]))
    remaining = {n.node_id for n in store.get_nodes()}
    expected = {f"n{i}" for i in range(100) if i % 10 != 3 and i % 5 != 4} - {"n0", "n1", "n6", "n9"}
    assert remaining == expected
    assert [n.node_id for n in store.get_nodes(node_ids=["n8", "n2", "zzz", "n8"])] == ["n8", "n2"]
    got = store.get_nodes(node_ids=["n2", "n3", "n5"], filters=MetadataFilters(filters=[MetadataFilter(key="group", value=0)]))
    assert [n.node_id for n in got] == ["n5"]
    # search after deletes still matches brute force over what is left
    q = np.random.default_rng(9).normal(size=DIM).astype(np.float32)
    rows = np.array(sorted(int(i[1:]) for i in expected))
    ref, _ = brute_force(vectors, q, "cosine", 8, rows)
    assert query(store, q, 8).ids == [f"n{r}" for r in ref]
    with pytest.raises(ValueError, match="clear"):
        store.delete_nodes()
    store.clear()
    assert len(store) == 0 and store.get_nodes() == [] and query(store, q, 3).ids == []
    store.add(nodes[:5])  # still usable after clear
    assert len(store) == 5


def test_slots_are_reused_and_hnsw_tombstones_compact():
    nodes, vectors = make_nodes(2400, seed=10)
    flat = DeepMemoryVectorStore()
    flat.add(nodes)
    for _ in range(3):
        flat.delete_nodes(node_ids=[n.node_id for n in nodes[:1000]])
        flat.add(nodes[:1000])
    assert flat._backend._table.capacity == 2400
    hnsw = DeepMemoryVectorStore(index_factory="HNSW16")
    hnsw.add(nodes)
    hnsw.delete_nodes(node_ids=[n.node_id for n in nodes[:1100]])
    assert hnsw.client.ntotal == 2400  # tombstones
    assert query(hnsw, vectors[5], 1).ids != ["n5"]
    hnsw.delete_nodes(node_ids=[n.node_id for n in nodes[1100:1250]])
    assert hnsw.client.ntotal == 1150  # rebuilt once tombstones outnumbered live rows
    assert query(hnsw, vectors[2000], 1).ids == ["n2000"]
    hnsw.add(nodes[:10])
    assert len(hnsw) == 1160 and query(hnsw, vectors[3], 1).ids == ["n3"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ([1.0] * (DIM - 1), "15-dimensional"),
        ([float("nan")] + [1.0] * (DIM - 1), "NaN"),
        ([float("inf")] + [1.0] * (DIM - 1), "NaN or infinite"),
        ([0.0] * DIM, "zero vector"),
        ([], "0-dimensional"),
    ],
)
def test_bad_vectors_change_nothing(bad, message):
    nodes, _ = make_nodes(20, seed=11)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    before = (len(store), store.client.ntotal, [n.node_id for n in store.get_nodes()])
    batch = [TextNode(id_="n0", text="replaced?", embedding=[1.0] * DIM), TextNode(id_="new", embedding=bad)]
    with pytest.raises(ValueError, match=message):
        store.add(batch)
    assert (len(store), store.client.ntotal, [n.node_id for n in store.get_nodes()]) == before
    assert store.get_nodes(node_ids=["n0"])[0].text == "text 0"
    with pytest.raises(ValueError, match=message):
        query(store, bad or [], 3)


def test_other_input_errors():
    store = DeepMemoryVectorStore()
    with pytest.raises(ValueError, match="has no embedding"):
        store.add([TextNode(id_="a", text="no vector")])
    assert store.dim is None and len(store) == 0
    assert store.add([]) == []
    nodes, _ = make_nodes(5, seed=12)
    store.add(nodes)
    with pytest.raises(TypeError, match="unexpected keyword.*'bogus'.*deep_memory"):
        store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=2), bogus=1)
    with pytest.raises(ValueError, match="no active Deep Memory model"):
        query(store, nodes[0].embedding, 2, deep_memory=True)
    with pytest.raises(ValueError, match="similarity_top_k"):
        query(store, nodes[0].embedding, -1)
    with pytest.raises(ValueError, match="mode"):
        store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, mode=VectorStoreQueryMode.SPARSE))
    with pytest.raises(ValueError, match="query_embedding is None"):
        store.query(VectorStoreQuery(query_embedding=None))
    assert query(store, nodes[0].embedding, 0).ids == []
    for kwargs, message in [
        ({"metric": "dot"}, "metric"),
        ({"dim": 0}, "dim"),
        ({"index_factory": "NotAnIndex"}, "index_factory"),
        ({"index_factory": "IDMap,Flat"}, "IDMap"),
        ({"index_factory": "PQ8"}, "not supported"),
        ({"nprobe": -1}, "nprobe"),
    ]:
        with pytest.raises(ValueError, match=message):
            DeepMemoryVectorStore(**kwargs)


def test_ivf_needs_enough_vectors_to_train():
    nodes, vectors = make_nodes(100, seed=13)
    store = DeepMemoryVectorStore(index_factory="IVF64,Flat")
    with pytest.raises(ValueError, match="at least 64 vectors"):
        store.add(nodes[:30])
    assert len(store) == 0 and store.dim is None
    store.add(nodes)
    assert len(store) == 100
    store.delete_nodes(node_ids=["n5"])
    assert store.client.ntotal == 99
    np.testing.assert_allclose(store.get_vectors(["n6"])[0], vectors[6] / np.linalg.norm(vectors[6]), atol=1e-6)


def test_store_view_protocol():
    nodes, vectors = make_nodes(130, seed=14)
    store = DeepMemoryVectorStore(metric="ip")
    store.add(nodes)
    assert store.dim == DIM and store.metric == "ip" and len(store) == 130
    np.testing.assert_allclose(store.get_vectors(["n5", "n9"]), vectors[[5, 9]], rtol=1e-6)
    with pytest.raises(KeyError):
        store.get_vectors(["n5", "nope"])
    with pytest.raises(TypeError, match="list of ids, not a single string"):  # as get_nodes refuses it
        store.get_vectors("n5")  # (it was read as the ids "n" and "5": KeyError naming neither)
    seen = {}
    for ids, vecs in store.iter_vectors(batch_size=50):
        assert len(ids) == len(vecs) <= 50
        seen.update(zip(ids, vecs))
    assert len(seen) == 130
    np.testing.assert_allclose(seen["n77"], vectors[77], rtol=1e-6)
    q = store.prepare_queries(vectors[:3])
    scores, ids = store.search_vectors(q, 4)
    for row in range(3):
        ref, ref_scores = brute_force(vectors, vectors[row], "ip", 4)
        assert ids[row] == [f"n{r}" for r in ref]
        np.testing.assert_allclose(scores[row], ref_scores, rtol=1e-4)
    with pytest.raises(ValueError, match="dimension"):
        store.prepare_queries(np.ones((2, DIM + 1)))
    assert store.deep_memory is store.deep_memory


@pytest.mark.parametrize("listing", ["iter_vectors", "iter_texts"])
def test_listing_that_outlives_a_clear_ends_instead_of_failing(listing):
    """Training lists the store batch by batch while other threads may write: a ``clear()`` between
    two batches ends the listing (its nodes are gone), and nodes added after it are not listed as
    if they were the ones it started with; before, the next batch raised IndexError."""
    nodes, vectors = make_nodes(130, seed=15)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    pages = getattr(store, listing)(batch_size=50)
    first_ids, first = next(pages)
    assert first_ids == [f"n{i}" for i in range(50)]
    if listing == "iter_vectors":
        np.testing.assert_allclose(first, vectors[:50] / np.linalg.norm(vectors[:50], axis=1, keepdims=True), atol=1e-6)
    store.clear()
    store.add(make_nodes(120, seed=16, prefix="m")[0])  # refills the slots the listing had not reached
    assert list(pages) == []
    assert sum(len(ids) for ids, _ in getattr(store, listing)(batch_size=50)) == 120


class ShiftAndBoost(DeepMemoryModel):
    """A test-only model: a fixed linear query transform plus exact scores for two nodes."""

    kind = "test-shift-and-boost"

    def __init__(self, dim: int, metric: str = "cosine", matrix=None, ids=(), boosts=()) -> None:
        super().__init__(dim, metric)
        self.matrix = np.asarray(matrix, dtype=np.float32)
        self.ids = list(ids)
        self.boosts = np.asarray(boosts, dtype=np.float32)

    def transform_queries(self, queries):
        return queries @ self.matrix

    def overrides(self, transformed):
        # override score = plain score + a per-node boost (any function of the query would do)
        return self.ids, np.tile(self.boosts, (len(transformed), 1)) + transformed[:, : len(self.ids)]


def install(store, model):
    # add and activate a hand-made model (train() is the other way to get one)
    store.deep_memory.add_model("t", model, activate=True)


def test_deep_memory_merge_matches_brute_force():
    nodes, vectors = make_nodes(500, seed=15)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    rng = np.random.default_rng(16)
    matrix = np.eye(DIM, dtype=np.float32) + 0.3 * rng.normal(size=(DIM, DIM)).astype(np.float32)
    model = ShiftAndBoost(DIM, matrix=matrix, ids=["n10", "n20", "missing"], boosts=[5.0, -5.0, 9.0])
    install(store, model)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    red = MetadataFilters(filters=[MetadataFilter(key="color", value="red")])  # n10 is not red, n21 is
    for q in rng.normal(size=(4, DIM)).astype(np.float32):
        plain = query(store, q, 6)
        qn = (q / np.linalg.norm(q))[None, :]
        qt = qn @ matrix
        scores = (normed @ qt[0]).astype(np.float64)
        _, over = model.overrides(qt)
        scores[10], scores[20] = over[0, 0], over[0, 1]
        order = np.argsort(-scores, kind="stable")[:6]
        result = query(store, q, 6, deep_memory=True)
        assert result.ids == [f"n{r}" for r in order]
        np.testing.assert_allclose(result.similarities, scores[order], rtol=1e-4, atol=1e-4)
        assert "n10" in result.ids and "n20" not in result.ids
        # filters/restrictions apply to override nodes too
        filtered = query(store, q, 6, deep_memory=True, filters=red)
        allowed = np.array([i for i in range(500) if i % 3 == 0])
        order = allowed[np.argsort(-scores[allowed], kind="stable")[:6]]
        assert filtered.ids == [f"n{r}" for r in order]
        # deep_memory=False is exactly the plain store
        assert query(store, q, 6, deep_memory=False).ids == plain.ids


def test_deep_memory_overrides_crowding_the_top():
    """Overrides that demote the 40 nearest nodes: the next plain hits must fill the top k."""
    nodes, vectors = make_nodes(300, seed=20)
    store = DeepMemoryVectorStore(metric="ip")
    store.add(nodes)
    q = np.random.default_rng(21).normal(size=DIM).astype(np.float32)
    scores = vectors.astype(np.float64) @ q
    nearest = np.argsort(-scores)[:40]
    model = ShiftAndBoost(DIM, matrix=np.eye(DIM), ids=[f"n{i}" for i in nearest], boosts=np.full(40, -1e3))
    model.overrides = lambda t: (model.ids, np.full((len(t), 40), -1e3, dtype=np.float32))
    install(store, model)
    scores[nearest] = -1e3
    expected = np.argsort(-scores, kind="stable")[:10]
    result = query(store, q, 10, deep_memory=True)
    assert result.ids == [f"n{r}" for r in expected]
    everything = query(store, q, 300, deep_memory=True)
    assert len(everything.ids) == 300 and set(everything.ids[-40:]) == {f"n{i}" for i in nearest}


def test_override_ids_changed_in_place_are_not_served_from_a_stale_cache():
    """A model without a revision (the default None) promises nothing: a model that hands out one
    list and edits it in place is merged with its current ids."""
    nodes, vectors = make_nodes(200, seed=22)
    store = DeepMemoryVectorStore(metric="ip")
    store.add(nodes)
    q = np.random.default_rng(23).normal(size=DIM).astype(np.float32)
    worst = [f"n{i}" for i in np.argsort(vectors @ q)[:2]]  # the two lowest plain scores
    model = ShiftAndBoost(DIM, matrix=np.eye(DIM), ids=worst, boosts=[1e3, 1e3])
    install(store, model)
    assert query(store, q, 2, deep_memory=True).ids == worst
    for _ in range(2):
        model.ids[:] = [f"n{i}" for i in np.argsort(vectors @ q)[2:4]]  # same list object, new ids
        assert query(store, q, 2, deep_memory=True).ids == model.ids
        model.ids[:] = worst
        assert query(store, q, 2, deep_memory=True).ids == worst


def test_override_ids_are_looked_up_again_when_they_or_the_store_change():
    """The store remembers which override ids it holds per id sequence and store version: a model
    handing out new ids is merged with them, and a deleted override node is never served."""
    nodes, vectors = make_nodes(200, seed=22)
    store = DeepMemoryVectorStore(metric="ip")
    store.add(nodes)
    q = np.random.default_rng(23).normal(size=DIM).astype(np.float32)
    order = np.argsort(vectors @ q)
    first, second = [f"n{i}" for i in order[:2]], [f"n{i}" for i in order[2:4]]
    model = ShiftAndBoost(DIM, matrix=np.eye(DIM), ids=tuple(first), boosts=[1e3, 1e3])
    install(store, model)
    assert query(store, q, 2, deep_memory=True).ids == first
    assert query(store, q, 2, deep_memory=True).ids == first  # the same tuple: from the cache
    model.ids = tuple(second)
    assert query(store, q, 2, deep_memory=True).ids == second
    store.delete_nodes([second[0]], None)  # a store change: the deleted node is not served
    assert query(store, q, 2, deep_memory=True).ids[0] == second[1]
    assert second[0] not in query(store, q, 10, deep_memory=True).ids


def test_adapter_model_hands_out_one_id_tuple():
    """AdapterMemoryModel is immutable and returns the same ids tuple on every call, so stores
    look its override ids up once."""
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

    rng = np.random.default_rng(24)
    model = AdapterMemoryModel(DIM, memory_ids=["n1", "n2"], memory_vectors=rng.normal(size=(2, DIM)))
    q = model.transform_queries(rng.normal(size=(1, DIM)))
    assert model.overrides(q)[0] is model.overrides(q)[0] == ("n1", "n2")
    assert model.apply(q)[1] is model.overrides(q)[0]


def test_concurrent_queries_while_writing_stay_consistent():
    stable, stable_vecs = make_nodes(400, seed=17, prefix="s")
    churn, _ = make_nodes(300, seed=18, prefix="c")
    store = DeepMemoryVectorStore()
    store.add(stable)
    truth = {n.node_id: np.asarray(n.embedding) / np.linalg.norm(n.embedding) for n in stable + churn}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for round_ in range(15):
                store.add(churn)
                store.delete_nodes(node_ids=[n.node_id for n in churn[round_ % 2 :: 2]])
                store.delete_nodes(node_ids=[n.node_id for n in churn])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                q = rng.normal(size=DIM).astype(np.float32)
                result = query(store, q, 8)
                assert len(result.ids) == 8 and len(set(result.ids)) == 8
                qn = q / np.linalg.norm(q)
                expected = [float(truth[i] @ qn) for i in result.ids]
                np.testing.assert_allclose(result.similarities, expected, atol=1e-4)
                assert result.similarities == sorted(result.similarities, reverse=True)
                # the best stable node is always there unless churn nodes beat it
                best_stable, _ = brute_force(stable_vecs, q, "cosine", 1)
                if f"s{best_stable[0]}" not in result.ids:
                    assert sum(i.startswith("c") for i in result.ids) == 8
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert len(store) == 400


def test_async_twins():
    nodes, vectors = make_nodes(40, seed=19)
    store = DeepMemoryVectorStore()

    async def run():
        assert await store.async_add(nodes) == [n.node_id for n in nodes]
        result = await store.aquery(VectorStoreQuery(query_embedding=vectors[7].tolist(), similarity_top_k=1))
        assert result.ids == ["n7"]
        await store.adelete("doc7")
        await store.adelete_nodes(node_ids=["n0"])
        assert len(await store.aget_nodes()) == 35
        await store.aclear()
        assert len(store) == 0

    asyncio.run(run())


# --- review fixes -----------------------------------------------------------------------------
def test_numpy_metadata_scalars_are_stored_as_python_values():
    store = DeepMemoryVectorStore(dim=4)
    meta = {"i": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True), "l": [np.int32(1), 2]}
    store.add([TextNode(id_="a", text="t", metadata=meta, embedding=[1.0, 0.0, 0.0, 0.0])])
    got = store.get_nodes(node_ids=["a"])[0].metadata
    assert got == {"i": 3, "f": 0.5, "b": True, "l": [1, 2]}
    assert type(got["i"]) is int and type(got["b"]) is bool
    hits = store.get_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="i", value=3)]))
    assert [n.node_id for n in hits] == ["a"]


def test_metadata_json_cannot_hold_is_refused_naming_node_key_and_type():
    store = DeepMemoryVectorStore(dim=4)
    store.add([TextNode(id_="keep", text="t", embedding=[0.0, 1.0, 0.0, 0.0])])
    bad = TextNode(id_="bad", text="t", metadata={"ok": 1, "when": {1, 2}}, embedding=[1.0, 0.0, 0.0, 0.0])
    with pytest.raises(TypeError, match=r"'bad'.*'when'.*set"):
        store.add([bad])
    assert [n.node_id for n in store.get_nodes()] == ["keep"]


def test_empty_filters_are_refused_by_delete_nodes():
    nodes, _ = make_nodes(20)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    with pytest.raises(ValueError, match="clear"):
        store.delete_nodes(filters=MetadataFilters(filters=[]))
    with pytest.raises(ValueError, match="clear"):
        store.delete_nodes()
    assert len(store) == 20


def test_delete_by_doc_uses_the_doc_index_consistently():
    """delete(ref_doc_id) must match a brute-force scan of ref_doc_id after adds/replaces/deletes."""
    nodes, _ = make_nodes(60, docs=6)
    store = DeepMemoryVectorStore()
    store.add(nodes)
    moved, _ = make_nodes(10, seed=1, docs=3)  # re-add n0..n9 under doc0..doc2
    store.add(moved)
    store.delete_nodes(["n11", "n12"])
    expected = {n.node_id: n.ref_doc_id for n in store.get_nodes()}
    for doc in ("doc1", "doc4"):
        store.delete(doc)
        expected = {k: v for k, v in expected.items() if v != doc}
        assert {n.node_id: n.ref_doc_id for n in store.get_nodes()} == expected
    table = store._backend._table
    assert {d: sorted(s) for d, s in table.doc_slots.items()} == {
        d: sorted(table.slot_of[k] for k, v in expected.items() if v == d) for d in set(expected.values())
    }
    store.clear()
    assert store._backend._table.doc_slots == {}


def test_clear_keeps_a_trained_ivf_index():
    nodes, vectors = make_nodes(300)
    store = DeepMemoryVectorStore(index_factory="IVF8,Flat", nprobe=8)
    store.add(nodes)
    store.clear()
    assert len(store) == 0 and store.client.is_trained and store.client.ntotal == 0
    store.add(nodes[:5])  # fewer than nlist: fine, the index is still trained
    q = vectors[0]
    assert query(store, q, k=5).ids == [f"n{r}" for r in brute_force(vectors[:5], q, "cosine", 5)[0]]


def test_factory_needing_a_dimension_is_accepted_with_dim_none():
    store = DeepMemoryVectorStore(index_factory="IVF4,PQ8")  # PQ8 needs dim % 8 == 0: not 96-only
    nodes, vectors = make_nodes(300, dim=16)
    store.add(nodes)
    assert len(store) == 300
    with pytest.raises(ValueError, match="dim="):
        DeepMemoryVectorStore(index_factory="NotAnIndex")
    odd = DeepMemoryVectorStore(index_factory="IVF4,PQ8")
    bad_nodes, _ = make_nodes(300, dim=12)  # 12 % 8 != 0: refused at the first add, nothing stored
    with pytest.raises(ValueError, match="dim=12"):
        odd.add(bad_nodes)
    assert len(odd) == 0 and odd.dim is None


def test_deep_memory_manager_is_created_once_under_contention():
    for _ in range(20):
        store = DeepMemoryVectorStore(dim=4)
        seen, barrier = [], threading.Barrier(6)

        def grab():
            barrier.wait()
            seen.append(store.deep_memory)

        threads = [threading.Thread(target=grab) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(m) for m in seen}) == 1


def test_deleted_nodes_free_their_field_strings():
    import gc
    import tracemalloc

    store = DeepMemoryVectorStore(dim=4)
    store.add([TextNode(id_="keep", text="t", embedding=[0.0, 1.0, 0.0, 0.0])])
    nodes = [TextNode(id_=f"x{i}", text="t", excluded_llm_metadata_keys=[f"key-{i}-" + "z" * 2000],
                      embedding=[1.0, float(i), 0.0, 0.0]) for i in range(500)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store.add(nodes)
        grown = tracemalloc.get_traced_memory()[0] - base
        store.delete_nodes([n.node_id for n in nodes])
        gc.collect()
        left = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown > 500 * 2000 and left < grown / 10, (grown, left)  # the distinct extras are freed


def test_reader_waiting_on_a_writer_gets_in_before_the_next_writer():
    from llama_index_deepmemory.rwlock import ReadWriteLock

    lock, order = ReadWriteLock(), []
    first_writer_in, release_first = threading.Event(), threading.Event()

    def writer(name, hold=None):
        with lock.write():
            if hold is not None:
                first_writer_in.set()
                hold.wait(5)
            order.append(name)

    def reader():
        with lock.read():
            order.append("reader")

    w1 = threading.Thread(target=writer, args=("w1", release_first))
    w1.start()
    first_writer_in.wait(5)
    r = threading.Thread(target=reader)
    r.start()
    w2 = threading.Thread(target=writer, args=("w2",))
    import time

    time.sleep(0.05)
    w2.start()
    time.sleep(0.05)  # both wait on w1
    release_first.set()
    for t in (w1, r, w2):
        t.join(5)
    assert order == ["w1", "reader", "w2"]
