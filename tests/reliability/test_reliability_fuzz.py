"""Property-based fuzzing (hypothesis, seeded and bounded) of the store's and Deep Memory's inputs.

Every generated call must end in a correct result or a clear ``ValueError``/``TypeError``, never
another exception, a hang (per-example deadline) or a silently changed store: the store's
fingerprint (nodes, vectors, Deep Memory state) is taken before each call and compared after
every refused one. Accepted writes are checked against what was asked, and must persist and
reload to the same fingerprint.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from crash_child import install_model, store_fingerprint
from llama_index_deepmemory.store import DeepMemoryVectorStore

DIM = 4
N_BASE = 12
FUZZ = settings(
    max_examples=60,
    deadline=3000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
CLEAR_ERRORS = (ValueError, TypeError)


def base_store() -> DeepMemoryVectorStore:
    rng = np.random.default_rng(0)
    store = DeepMemoryVectorStore()
    store.add([
        TextNode(id_=f"node_{i}", text=f"text {i}", metadata={"group": i % 3, "tag": ["a", "b"][i % 2]},
                 embedding=rng.normal(size=DIM).tolist(),
                 relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc_{i % 4}")})
        for i in range(N_BASE)
    ])
    install_model(store, "model_1", seed=1, n_memory=4)
    return store


BASE = base_store()
BASE_FINGERPRINT = store_fingerprint(BASE)


def fresh_store() -> DeepMemoryVectorStore:
    """A new copy of the base store (built the same seeded way, so the same fingerprint)."""
    store = base_store()
    assert store_fingerprint(store) == BASE_FINGERPRINT
    return store


# --- strategies -----------------------------------------------------------------------------------
weird_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "\ud800", "\udfff x", "node_1", "a" * 20_000, "\u202e\u0000\uffff",
                     "\U0001F600" * 5, "line\nbreak\r\n", '"quoted" \\ back']),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), weird_text,
)
metadata_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
metadata = st.dictionaries(st.one_of(st.text(max_size=10), st.sampled_from(["group", "tag", ""])), metadata_values,
                           max_size=4)
good_vector = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=DIM, max_size=DIM).filter(
    lambda v: any(abs(x) > 1e-3 for x in v))
bad_vector = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=DIM, max_size=DIM),  # may hold nan/inf
    st.lists(st.floats(-1, 1), min_size=0, max_size=DIM - 1),  # wrong dimension, empty
    st.lists(st.floats(-1, 1), min_size=DIM + 1, max_size=DIM + 3),
    st.just([0.0] * DIM),  # no cosine direction
    st.just([[1.0] * DIM]),  # nested
    st.just(["1"] * DIM),  # strings
    st.just([1e39] * DIM),  # overflows float32
)
vectors = st.one_of(good_vector, bad_vector)


def same_json(a: Any, b: Any) -> bool:
    """Equality with NaN == NaN (what a JSON round trip can promise)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def attempt(stats: Counter, store: DeepMemoryVectorStore, call, before: str) -> tuple[bool, Any]:
    """Run ``call``; (True, result) or (False, error) for a clear error after checking nothing changed."""
    stats["tried"] += 1
    try:
        result = call()
    except CLEAR_ERRORS as exc:
        assert str(exc), "an error without a message"
        assert store_fingerprint(store) == before, f"store changed by a refused call: {exc!r}"
        stats["refused (ValueError/TypeError)"] += 1
        return False, exc
    stats["accepted"] += 1
    return True, result


def report(name: str, stats: Counter) -> None:
    extra = {k: v for k, v in stats.items() if k not in ("tried", "accepted", "refused (ValueError/TypeError)")}
    print(f"\nfuzz {name}: {stats['tried']} cases tried, {stats['tried']} passed "
          f"({stats['accepted']} accepted and verified, {stats['refused (ValueError/TypeError)']} refused clearly)"
          + (f"; {extra}" if extra else ""))


# --- add ------------------------------------------------------------------------------------------
def test_fuzz_add_nodes(tmp_path_factory) -> None:
    stats: Counter = Counter()
    node_spec = st.tuples(weird_text, weird_text, metadata, vectors, st.one_of(st.none(), weird_text))

    @FUZZ
    @given(specs=st.lists(node_spec, min_size=1, max_size=3))
    def run(specs) -> None:
        store = fresh_store()
        try:
            nodes = []
            for node_id, text, meta, vector, ref in specs:
                rel = {} if ref is None else {NodeRelationship.SOURCE: RelatedNodeInfo(node_id=ref)}
                nodes.append(TextNode(id_=node_id, text=text, metadata=meta, embedding=vector, relationships=rel))
        except Exception:  # noqa: BLE001 - LlamaIndex itself refuses to build such a node
            stats["not a valid TextNode (pydantic)"] += 1
            return
        ok, _ = attempt(stats, store, lambda: store.add(nodes), BASE_FINGERPRINT)
        if not ok:
            return
        last = {n.node_id: n for n in nodes}
        got = {n.node_id: n for n in store.get_nodes(node_ids=list(last))}
        assert set(got) == set(last)
        assert len(store) == N_BASE + len(set(last) - {f"node_{i}" for i in range(N_BASE)})
        for node_id, node in last.items():
            assert got[node_id].get_content() == node.get_content()
            assert same_json(got[node_id].metadata, node.metadata), (got[node_id].metadata, node.metadata)
            assert got[node_id].ref_doc_id == node.ref_doc_id
        path = tmp_path_factory.mktemp("fuzz") / "store"
        store.persist(str(path))
        assert store_fingerprint(DeepMemoryVectorStore.from_persist_path(str(path))) == store_fingerprint(store)

    run()
    report("add (ids, texts, metadata, embeddings)", stats)


def test_text_that_cannot_be_saved_is_refused_at_add(tmp_path) -> None:
    cases = {
        "text": TextNode(id_="x", text="bad \ud800 text", embedding=[1.0, 0.0, 0.0, 0.0]),
        "id": TextNode(id_="x\udfff", text="t", embedding=[1.0, 0.0, 0.0, 0.0]),
        "metadata": TextNode(id_="x", text="t", metadata={"k": "\ud83d"}, embedding=[1.0, 0.0, 0.0, 0.0]),
    }
    for label, node in cases.items():
        store = fresh_store()
        try:
            store.add([node])
        except ValueError:
            assert store_fingerprint(store) == BASE_FINGERPRINT
            continue  # refused up front: fine
        path = tmp_path / label
        store.persist(str(path))  # accepted: then it must also be saved
        assert store_fingerprint(DeepMemoryVectorStore.from_persist_path(str(path))) == store_fingerprint(store)


# --- query ----------------------------------------------------------------------------------------
filter_values = st.one_of(
    st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=5), st.sampled_from(["a", "b"]),
    st.lists(st.integers(-1, 3), max_size=3), st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
)


@st.composite
def filters(draw) -> MetadataFilters | None:
    if draw(st.booleans()):
        return None
    leaves = []
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(["group", "tag", "missing", "doc_id", ""]))
        op = draw(st.sampled_from(list(FilterOperator)))
        value = draw(filter_values)
        try:
            leaves.append(MetadataFilter(key=key, value=value, operator=op))
        except Exception:  # noqa: BLE001 - LlamaIndex refuses this leaf itself
            continue
    condition = draw(st.sampled_from([FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT]))
    return MetadataFilters(filters=leaves, condition=condition)


def brute_force_ids(store: DeepMemoryVectorStore, q: list[float], k: int, allowed: list[str], model=None) -> list[str]:
    """Exact top-k of ``allowed`` (with ``model``: transformed query, override scores merged)."""
    if not allowed or k == 0:
        return []
    vectors = store.get_vectors(allowed)
    qn = np.asarray(q, dtype=np.float32).reshape(1, -1)  # the store also accepts one nested vector
    qn = qn / np.linalg.norm(qn)
    if model is not None:
        qn = model.transform_queries(qn)
    scores = vectors @ qn[0]
    if model is not None:
        over_ids, over_scores = model.overrides(qn)
        for node, score in zip(over_ids, over_scores[0]):
            if node in allowed:
                scores[allowed.index(node)] = score
    order = np.argsort(-scores, kind="stable")[:k]
    return [allowed[j] for j in order]


def test_fuzz_queries() -> None:
    stats: Counter = Counter()
    store = fresh_store()
    all_ids = sorted(n.node_id for n in store.get_nodes())
    node_id_lists = st.one_of(st.none(), st.lists(st.sampled_from(all_ids + ["ghost", ""]), max_size=4),
                              st.lists(weird_text, max_size=4))

    @FUZZ
    @given(data=st.data())
    def run(data) -> None:
        # at most one argument is drawn from its bad values, so valid queries are common too
        bad = data.draw(st.sampled_from([None, None, "q", "k", "deep_memory"]))
        q = data.draw(bad_vector if bad == "q" else good_vector)
        k = data.draw(st.sampled_from([-1, True, 2.5, "3", None]) if bad == "k"
                      else st.one_of(st.integers(0, 30), st.just(10**12)))
        deep_memory = data.draw(st.sampled_from(["yes", None, 1]) if bad == "deep_memory" else st.booleans())
        flt = data.draw(filters())
        node_ids = data.draw(node_id_lists)
        try:
            query = VectorStoreQuery(query_embedding=q, similarity_top_k=k, filters=flt, node_ids=node_ids)
        except Exception:  # noqa: BLE001 - LlamaIndex refuses to build the query
            stats["not a valid VectorStoreQuery (pydantic)"] += 1
            return
        ok, result = attempt(stats, store, lambda: store.query(query, deep_memory=deep_memory), BASE_FINGERPRINT)
        assert store_fingerprint(store) == BASE_FINGERPRINT  # a query never changes anything
        if not ok:
            return
        assert len(result.ids) == len(set(result.ids)) == len(result.nodes) == len(result.similarities)
        assert len(result.ids) <= k
        assert result.similarities == sorted(result.similarities, reverse=True)
        allowed = [n.node_id for n in store.get_nodes(node_ids=node_ids or None, filters=flt)]
        assert set(result.ids) <= set(allowed)
        model = store.deep_memory.active_model() if deep_memory else None
        assert result.ids == brute_force_ids(store, q, k, allowed, model)

    run()
    report("query (embeddings, k, filters, node_ids, deep_memory)", stats)
    assert stats["accepted"] > 5 and stats["refused (ValueError/TypeError)"] > 5


# --- deletes ----------------------------------------------------------------------------------------
def test_fuzz_deletes() -> None:
    stats: Counter = Counter()
    id_lists = st.one_of(st.none(), st.lists(st.one_of(weird_text, st.sampled_from([f"node_{i}" for i in range(N_BASE)]),
                                                       st.integers(), st.none()), max_size=4), weird_text)

    @FUZZ
    @given(node_ids=id_lists, flt=filters(), ref=st.one_of(weird_text, st.sampled_from(["doc_1", "doc_2"]),
                                                              st.integers(), st.none()))
    def run(node_ids, flt, ref) -> None:
        store = fresh_store()
        before = {n.node_id for n in store.get_nodes()}
        ok, _ = attempt(stats, store, lambda: store.delete_nodes(node_ids=node_ids, filters=flt), BASE_FINGERPRINT)
        if ok:
            wanted = set(before if node_ids is None else node_ids) & before
            if flt is not None and flt.filters and wanted:  # filters apply to the named rows only
                wanted = {n.node_id for n in BASE.get_nodes(node_ids=sorted(wanted), filters=flt)}
            assert {n.node_id for n in store.get_nodes()} == before - wanted
        after_first = store_fingerprint(store)
        kept = {n.node_id: n.ref_doc_id for n in store.get_nodes()}
        ok, _ = attempt(stats, store, lambda: store.delete(ref), after_first)
        if ok:
            assert {n.node_id for n in store.get_nodes()} == {i for i, r in kept.items() if r != ref}

    run()
    report("delete_nodes / delete", stats)


# --- Deep Memory inputs: relevance lists and query strings ------------------------------------------
def test_fuzz_relevance_and_query_strings() -> None:
    stats: Counter = Counter()
    store = fresh_store()
    ids = [f"node_{i}" for i in range(N_BASE)]
    good_text = weird_text.filter(lambda t: t.strip() != "")
    good_row = st.lists(st.tuples(st.sampled_from(ids), st.floats(0.1, 3.0)), min_size=1, max_size=3)
    bad_rows = st.sampled_from([
        [], "node_1", None, [("ghost", 1.0)], [("", 1.0)], [("node_1", float("nan"))], [("node_1", -1.0)],
        [("node_1", float("inf"))], [("node_1", "1")], [("node_1", True)], [("node_1",)], [(3, 1.0)],
        [("node_1", 0.0)], ["node_1"], [("node_1", None)], [("node_1", [1])], [("node_1", 1.0, 2.0)],
    ])

    @FUZZ
    @given(data=st.data())
    def run(data) -> None:
        # at most one argument is drawn from its bad values, so valid inputs are common too
        bad = data.draw(st.sampled_from([None, None, "queries", "relevance", "lengths", "embedding"]))
        m = data.draw(st.integers(1, 4))
        queries: Any = data.draw(st.lists(good_text, min_size=m, max_size=m))
        relevance: Any = data.draw(st.lists(good_row, min_size=m, max_size=m))
        embedding: Any = np.random.default_rng(m).normal(size=(m, DIM)).tolist()
        where = data.draw(st.integers(0, m - 1))
        if bad == "queries":
            queries = data.draw(st.sampled_from(["a string", None]))  if data.draw(st.booleans()) else (
                queries[:where] + [data.draw(st.sampled_from(["", "   ", "\n", 5, None, b"bytes"]))] + queries[where + 1:])
        elif bad == "relevance":
            relevance = relevance[:where] + [data.draw(bad_rows)] + relevance[where + 1:]
        elif bad == "lengths":
            relevance = relevance[:-1] if data.draw(st.booleans()) else relevance + relevance[:1]
        elif bad == "embedding":
            embedding = data.draw(st.sampled_from([
                np.full((m, DIM), np.nan).tolist(), np.ones((m + 1, DIM)).tolist(), np.ones((m, DIM + 1)).tolist(),
                np.ones(DIM).tolist(), [], "vectors", np.zeros((m, DIM)).tolist(),
            ]))
        jobs_before = len(store.deep_memory.list_jobs())
        ok, result = attempt(
            stats, store, lambda: store.deep_memory.evaluate(queries, relevance, top_k=(1, 3), embedding=embedding),
            BASE_FINGERPRINT,
        )
        if ok:  # recall@k from a brute-force ranking of the same vectors
            for k in (1, 3):
                expected = []
                for vector, row in zip(embedding, relevance):
                    ranked = brute_force_ids(store, vector, k, ids)
                    best: dict[str, float] = {}
                    for node, w in row:
                        best[str(node)] = max(best.get(str(node), 0.0), float(w))
                    expected.append(sum(w for node, w in best.items() if node in ranked) / sum(best.values()))
                assert result["without model"][f"recall@{k}"] == pytest.approx(float(np.mean(expected)))
        else:  # the same input is refused by train before any job starts
            stats["tried"] += 1
            with pytest.raises(CLEAR_ERRORS):
                store.deep_memory.train(queries, relevance, embedding=embedding, epochs=1)
            assert len(store.deep_memory.list_jobs()) == jobs_before
            assert store_fingerprint(store) == BASE_FINGERPRINT
            stats["refused (ValueError/TypeError)"] += 1

    run()
    report("deep_memory.evaluate/train (relevance lists, query strings, vectors)", stats)
    assert stats["accepted"] > 3 and stats["refused (ValueError/TypeError)"] > 3
