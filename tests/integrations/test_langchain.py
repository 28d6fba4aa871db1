"""The LangChain face (``llama_index_deepmemory.langchain``) on the real store.

LangChain's own standard suites (``langchain-tests``: vector store sync + async, retriever) run
against ``DeepMemoryLangChainStore``; the rest checks what those suites do not: filters against a
brute-force evaluation of LangChain's filter dicts, refused operators and search kwargs, Deep Memory
through the face (training embeds with the LangChain embedding; ``deep_memory=True`` rankings equal
the store's and a brute-force NumPy ranking), MMR against LangChain's reference implementation,
persistence, and that plain ``import llama_index_deepmemory`` never loads LangChain.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import random
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("langchain_core")
langchain_tests = pytest.importorskip("langchain_tests")
pytest.importorskip("pytest_asyncio")  # the standard suites' async tests need it

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402
from langchain_core.vectorstores.utils import maximal_marginal_relevance  # noqa: E402
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests  # noqa: E402
from llama_index.core.vector_stores.types import VectorStoreQuery  # noqa: E402

from llama_index_deepmemory.langchain import (  # noqa: E402
    DeepMemoryLangChainStore,
    DeepMemoryRetriever,
    LangChainEmbedding,
    metadata_filters,
)
from llama_index_deepmemory.langchain_filters import ACCEPTED_OPERATORS  # noqa: E402
from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402
from synthetic import RotationTask, brute_force_scores, brute_force_top_k  # noqa: E402

# the standard suites' coroutine tests need pytest-asyncio's mark; marking the suite's own functions
# (not overriding them, which its no-override check forbids) keeps the sync tests unmarked
for _suite in (VectorStoreIntegrationTests, RetrieversIntegrationTests):
    for _name in dir(_suite):
        if _name.startswith("test_") and inspect.iscoroutinefunction(getattr(_suite, _name)):
            pytest.mark.asyncio(getattr(_suite, _name))

FAST = dict(epochs=8, learning_rate=2e-2, batch_size=32, query_memory=False, refit=False, lexical=False)


# --- LangChain's standard suites -------------------------------------------------------------------
class TestStandardVectorStore(VectorStoreIntegrationTests):
    """``langchain-tests``' VectorStoreIntegrationTests (sync and async), unmodified."""

    @pytest.fixture
    def vectorstore(self) -> DeepMemoryLangChainStore:
        return DeepMemoryLangChainStore(embedding=self.get_embeddings())


RETRIEVER_DOCS = [
    Document(page_content=text, metadata={"n": i})
    for i, text in enumerate(
        [
            "FAISS indexes dense vectors for nearest neighbour search.",
            "Deep Memory trains a small query adapter on question and chunk pairs.",
            "LangChain retrievers return documents for a query.",
            "Recall at k counts the relevant chunks found in the top k.",
            "A validation gate keeps a model off when it does not help.",
            "Metadata filters restrict a search to matching documents.",
        ]
    )
]


def make_retriever(k: int = 4, deep_memory: bool = False) -> DeepMemoryRetriever:
    """A retriever over a fresh six-document store, ``search_kwargs={"k": k, "deep_memory": ...}``."""
    db = DeepMemoryLangChainStore.from_documents(RETRIEVER_DOCS, DeterministicFakeEmbedding(size=8))
    return db.as_retriever(search_kwargs={"k": k, "deep_memory": deep_memory})


class TestStandardRetriever(RetrieversIntegrationTests):
    """``langchain-tests``' RetrieversIntegrationTests, unmodified."""

    @property
    def retriever_constructor(self) -> Any:
        return make_retriever

    @property
    def retriever_query_example(self) -> str:
        return "How does Deep Memory train?"


# --- construction, documents, ids ------------------------------------------------------------------
class CountingEmbeddings(Embeddings):
    """A LangChain embedding over a fixed text -> vector table that counts its calls."""

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.query_calls = 0
        self.document_calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.document_calls += len(texts)
        return [self.table[t].tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.query_calls += 1
        return self.table[text].tolist()


def test_documents_round_trip_with_ids_and_metadata() -> None:
    emb = DeterministicFakeEmbedding(size=8)
    docs = [Document(page_content=f"text {i}", metadata={"i": i, "tags": ["a", "b"], "nested": {"x": i}})
            for i in range(5)]
    db = DeepMemoryLangChainStore.from_documents(docs, emb, ids=[f"d{i}" for i in range(5)])
    assert isinstance(db.vectorstore, DeepMemoryVectorStore) and len(db.vectorstore) == 5
    assert db.embeddings is emb
    # the LangChain ids are the store's node ids (the ids Deep Memory's relevance lists name)
    assert sorted(n.node_id for n in db.vectorstore.get_nodes()) == [f"d{i}" for i in range(5)]
    assert db.get_by_ids(["d3", "missing", "d1"]) == [
        Document(id="d3", page_content="text 3", metadata={"i": 3, "tags": ["a", "b"], "nested": {"x": 3}}),
        Document(id="d1", page_content="text 1", metadata={"i": 1, "tags": ["a", "b"], "nested": {"x": 1}}),
    ]
    # scores are the store's cosine similarities, checked against NumPy
    vectors = np.array(emb.embed_documents([d.page_content for d in docs]))
    q = np.array(emb.embed_query("text 2"))
    cosine = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    pairs = db.similarity_search_with_score("text 2", k=5)
    assert [d.id for d, _ in pairs] == [f"d{i}" for i in np.argsort(-cosine, kind="stable")]
    np.testing.assert_allclose([s for _, s in pairs], np.sort(cosine)[::-1], atol=1e-5)
    relevance = db.similarity_search_with_relevance_scores("text 2", k=5)
    np.testing.assert_allclose([s for _, s in relevance], (1 + np.sort(cosine)[::-1]) / 2, atol=1e-5)
    assert db.similarity_search_by_vector(q.tolist(), k=2) == [d for d, _ in pairs[:2]]
    assert db.delete(["d0", "nope"]) is True
    assert len(db.vectorstore) == 4 and db.get_by_ids(["d0"]) == []


def test_add_texts_checks_its_input() -> None:
    db = DeepMemoryLangChainStore(embedding=DeterministicFakeEmbedding(size=4))
    with pytest.raises(ValueError, match="2 texts but 1 metadatas"):
        db.add_texts(["a", "b"], [{}])
    with pytest.raises(ValueError, match="2 texts but 3 ids"):
        db.add_texts(["a", "b"], ids=["1", "2", "3"])
    with pytest.raises(TypeError, match="single str"):
        db.add_texts("ab")
    with pytest.raises(TypeError, match=r"ids\[1\] is 7"):
        db.add_texts(["a", "b"], ids=["1", 7])
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['batch_size'\]"):
        db.add_texts(["a"], batch_size=3)
    with pytest.raises(TypeError, match=r"metadata\['when'\] holds a object"):
        db.add_texts(["a"], [{"when": object()}])
    assert len(db.vectorstore) == 0  # nothing half-added
    with pytest.raises(ValueError, match="db.vectorstore.clear"):
        db.delete()
    with pytest.raises(TypeError, match="LangChain Embeddings"):
        DeepMemoryLangChainStore(embedding=lambda texts: texts)
    with pytest.raises(TypeError, match="DeepMemoryVectorStore"):
        DeepMemoryLangChainStore(embedding=DeterministicFakeEmbedding(size=4), vectorstore=object())
    with pytest.raises(TypeError, match="not both"):
        DeepMemoryLangChainStore(
            embedding=DeterministicFakeEmbedding(size=4), vectorstore=DeepMemoryVectorStore(), metric="ip"
        )


def test_async_twins_equal_the_sync_methods() -> None:
    emb = DeterministicFakeEmbedding(size=8)
    texts = [f"text {i}" for i in range(12)]
    metadatas = [{"even": i % 2 == 0, "i": i} for i in range(12)]

    async def run() -> tuple[Any, ...]:
        db = await DeepMemoryLangChainStore.afrom_texts(texts, emb, metadatas, ids=[str(i) for i in range(12)])
        await db.adelete(["0"])
        return (
            db,
            await db.asimilarity_search("text 4", k=3, filter={"even": True}),
            await db.asimilarity_search_with_score("text 4", k=3),
            await db.asimilarity_search_by_vector(emb.embed_query("text 5"), k=2),
            await db.amax_marginal_relevance_search("text 4", k=3, fetch_k=6),
            await db.aget_by_ids(["3", "0"]),
            await db.as_retriever(search_kwargs={"k": 2}).ainvoke("text 7"),
        )

    db, filtered, scored, by_vector, mmr, got, retrieved = asyncio.run(run())
    assert filtered == db.similarity_search("text 4", k=3, filter={"even": True})
    assert [d.metadata["even"] for d in filtered] == [True] * 3 and filtered[0].id == "4"
    assert scored == db.similarity_search_with_score("text 4", k=3)
    assert by_vector == db.similarity_search_by_vector(emb.embed_query("text 5"), k=2)
    assert mmr == db.max_marginal_relevance_search("text 4", k=3, fetch_k=6)
    assert [d.id for d in got] == ["3"]
    assert retrieved == db.similarity_search("text 7", k=2)
    with_relevance = asyncio.run(db.asimilarity_search_with_relevance_scores("text 4", k=3, score_threshold=0.1))
    assert with_relevance == db.similarity_search_with_relevance_scores("text 4", k=3, score_threshold=0.1)
    by_vector_scored = asyncio.run(db.asimilarity_search_with_score_by_vector(emb.embed_query("text 5"), 2, deep_memory=False))
    assert by_vector_scored == db.similarity_search_with_score_by_vector(emb.embed_query("text 5"), 2)
    with pytest.raises(ValueError, match="score_threshold must be a finite number"):
        asyncio.run(db.asimilarity_search_with_relevance_scores("text 4", score_threshold=float("nan")))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['top_k'\]"):
        asyncio.run(db.asimilarity_search("text 4", top_k=3))


def test_async_methods_are_langchains_delegating_ones() -> None:
    """The face writes no async twin of a search or write: LangChain's base runs the sync one."""
    inherited = ("aadd_texts", "aadd_documents", "adelete", "aget_by_ids", "asimilarity_search",
                 "asimilarity_search_with_score", "asimilarity_search_by_vector", "amax_marginal_relevance_search",
                 "amax_marginal_relevance_search_by_vector", "afrom_texts", "afrom_documents", "asearch")
    def function(cls: type, name: str) -> Any:
        method = getattr(cls, name)
        return getattr(method, "__func__", method)  # a classmethod is bound to each class

    for name in inherited:
        assert function(DeepMemoryLangChainStore, name) is function(VectorStore, name), name


def test_wraps_an_existing_store_and_persists(tmp_path) -> None:
    emb = DeterministicFakeEmbedding(size=8)
    inner = DeepMemoryVectorStore(metric="l2")
    db = DeepMemoryLangChainStore(embedding=emb, vectorstore=inner, persist_path=tmp_path / "db")
    assert db.vectorstore is inner and isinstance(inner.embed_model, LangChainEmbedding)
    db.add_texts([f"text {i}" for i in range(6)], [{"i": i} for i in range(6)], ids=[str(i) for i in range(6)])
    pairs = db.similarity_search_with_score("text 1", k=6)
    assert pairs[0][0].id == "1" and abs(pairs[0][1]) < 1e-5  # l2: scores are negative squared distances
    assert all(s <= 0 for _, s in pairs)
    relevance = [s for _, s in db.similarity_search_with_relevance_scores("text 1", k=6)]
    assert all(0 <= s <= 1 for s in relevance) and relevance == sorted(relevance, reverse=True)
    assert db.persist() == str(tmp_path / "db")
    reopened = DeepMemoryLangChainStore(embedding=emb, persist_path=tmp_path / "db")
    assert reopened.vectorstore.metric == "l2"
    assert reopened.similarity_search_with_score("text 1", k=6) == pairs
    with pytest.raises(TypeError, match="already holds a store"):
        DeepMemoryLangChainStore(embedding=emb, persist_path=tmp_path / "db", metric="ip")
    with pytest.raises(ValueError, match="no persist_path"):
        DeepMemoryLangChainStore(embedding=emb).persist()


# --- filters -----------------------------------------------------------------------------------------
FIELD_TESTS = {
    "$eq": lambda stored, v: stored is not None and stored == v,
    "$ne": lambda stored, v: stored is None or stored != v,
    "$gt": lambda stored, v: stored is not None and stored > v,
    "$gte": lambda stored, v: stored is not None and stored >= v,
    "$lt": lambda stored, v: stored is not None and stored < v,
    "$lte": lambda stored, v: stored is not None and stored <= v,
    "$in": lambda stored, v: stored is not None and stored in v,
    "$nin": lambda stored, v: stored is None or stored not in v,
}


def reference_match(metadata: dict[str, Any], spec: dict[str, Any]) -> bool:
    """LangChain's filter dict evaluated plainly (a missing field matches only $ne / $nin)."""
    results = []
    for key, value in spec.items():
        if key == "$and":
            results.append(all(reference_match(metadata, s) for s in value))
        elif key == "$or":
            results.append(any(reference_match(metadata, s) for s in value))
        elif isinstance(value, dict):
            results.append(all(FIELD_TESTS[op](metadata.get(key), v) for op, v in value.items()))
        else:
            results.append(FIELD_TESTS["$eq"](metadata.get(key), value))
    return all(results)


def random_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    def field() -> dict[str, Any]:
        key = rng.choice(["year", "score", "kind"])
        if key == "kind":
            op = rng.choice(["$eq", "$ne", "$in", "$nin", None])
            value: Any = rng.sample(["a", "b", "c"], 2) if op in ("$in", "$nin") else rng.choice("abc")
        else:
            op = rng.choice(list(FIELD_TESTS) + [None])
            pool = [2019, 2020, 2021, 2022] if key == "year" else [0.1, 0.5, 0.9]
            value = rng.sample(pool, 2) if op in ("$in", "$nin") else rng.choice(pool)
        if op is None:
            return {key: value}
        if rng.random() < 0.3:  # two operators on one field
            low = min(pool) if key != "kind" else "a"
            return {key: {op: value, "$ne" if key == "kind" else "$gte": low}}
        return {key: {op: value}}

    if depth < 2 and rng.random() < 0.4:
        return {rng.choice(["$and", "$or"]): [random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    spec = field()
    if rng.random() < 0.3:
        spec = {**spec, **{k: v for k, v in field().items() if k not in spec}}  # several fields: AND
    return spec


def test_filters_match_a_brute_force_evaluation() -> None:
    rng = random.Random(0)
    metadatas = []
    for i in range(60):
        metadata: dict[str, Any] = {"i": i}
        if rng.random() < 0.85:
            metadata["year"] = rng.choice([2019, 2020, 2021, 2022])
        if rng.random() < 0.85:
            metadata["score"] = rng.choice([0.1, 0.5, 0.9])
        if rng.random() < 0.85:
            metadata["kind"] = rng.choice("abc")
        metadatas.append(metadata)
    db = DeepMemoryLangChainStore.from_texts(
        [f"text {i}" for i in range(60)], DeterministicFakeEmbedding(size=8), metadatas, ids=[str(i) for i in range(60)]
    )
    seen_empty = seen_partial = 0
    for _ in range(150):
        spec = random_filter(rng)
        expected = {str(m["i"]) for m in metadatas if reference_match(m, spec)}
        got = {d.id for d in db.similarity_search("text 0", k=60, filter=spec)}
        assert got == expected, spec
        seen_empty += not expected
        seen_partial += 0 < len(expected) < 60
    assert seen_partial > 100 and seen_empty > 0  # the filters were selective, not trivially all/none
    # filtered queries keep their k: the top 3 among matches, not the matches among the top 3
    top = db.similarity_search("text 0", k=3, filter={"kind": "a", "year": {"$gte": 2021}})
    assert len(top) == 3 and all(d.metadata["kind"] == "a" and d.metadata["year"] >= 2021 for d in top)


def test_boolean_and_mixed_values_filter() -> None:
    db = DeepMemoryLangChainStore.from_texts(
        ["a", "b", "c"], DeterministicFakeEmbedding(size=4),
        [{"ok": True, "v": "x"}, {"ok": False, "v": 1}, {"v": None}], ids=["a", "b", "c"],
    )
    assert {d.id for d in db.similarity_search("a", k=3, filter={"ok": True})} == {"a"}
    assert {d.id for d in db.similarity_search("a", k=3, filter={"ok": {"$ne": True}})} == {"b", "c"}
    assert {d.id for d in db.similarity_search("a", k=3, filter={"v": {"$in": ["x", 1]}})} == {"a", "b"}


@pytest.mark.parametrize(
    "spec, bad",
    [
        ({"year": {"$regex": "20.*"}}, "'$regex'"),
        ({"year": {"$exists": True}}, "'$exists'"),
        ({"$not": [{"year": 2020}]}, "'$not'"),
        ({"$and": [{"year": 2020}], "$nor": [{"year": 2021}]}, "'$nor'"),
        ({"$or": [{"kind": {"$like": "a%"}}]}, "'$like'"),
        ({"tags": {"$contains": "a"}}, "'$contains'"),
    ],
)
def test_unsupported_filter_operators_are_refused(spec: dict, bad: str) -> None:
    db = DeepMemoryLangChainStore.from_texts(["a"], DeterministicFakeEmbedding(size=4), [{"year": 2020}])
    with pytest.raises(ValueError) as info:
        db.similarity_search("a", filter=spec)
    message = str(info.value)
    assert f"unsupported filter operator {bad}" in message
    assert all(op in message for op in ACCEPTED_OPERATORS)


def test_malformed_filters_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\$in takes a list"):
        metadata_filters({"kind": {"$in": "a"}})
    with pytest.raises(ValueError, match=r"\$or takes a non-empty list"):
        metadata_filters({"$or": []})
    with pytest.raises(ValueError, match="empty dict"):
        metadata_filters({"kind": {}})
    with pytest.raises(ValueError, match="compares with str, int, float, bool or None"):
        metadata_filters({"kind": {"$eq": {"a": 1}}})
    with pytest.raises(TypeError, match="filter must be a dict"):
        metadata_filters("kind == 'a'")
    assert metadata_filters({}) is None and metadata_filters(None) is None


# --- search kwargs and retrievers ------------------------------------------------------------------
def test_unknown_search_kwargs_are_refused_with_the_accepted_list() -> None:
    db = DeepMemoryLangChainStore.from_documents(RETRIEVER_DOCS, DeterministicFakeEmbedding(size=8))
    with pytest.raises(TypeError, match=r"\['top_k'\]; accepted: \['k', 'filter', 'deep_memory'\]"):
        db.similarity_search("query", top_k=3)
    with pytest.raises(ValueError, match=r"unknown search_kwargs \['fetch_k'\] .*accepted: \['k', 'filter', 'deep_memory'\]"):
        db.as_retriever(search_kwargs={"fetch_k": 10})
    with pytest.raises(ValueError, match=r"search_type of nearest not allowed"):
        db.as_retriever(search_type="nearest")
    retriever = db.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5, "lambda_mult": 0.3})
    assert len(retriever.invoke("query")) == 2
    retriever = db.as_retriever()
    retriever.search_kwargs["similarity_top_k"] = 3  # mutated after construction: refused at search time
    with pytest.raises(ValueError, match=r"unknown search_kwargs \['similarity_top_k'\]"):
        retriever.invoke("query")
    with pytest.raises(ValueError, match=r"unknown search_kwargs \['similarity_top_k'\]"):
        asyncio.run(retriever.ainvoke("query"))
    retriever.search_kwargs.pop("similarity_top_k")
    retriever.search_kwargs["deep_memory"] = "yes"
    with pytest.raises(TypeError, match="deep_memory must be True or False, got 'yes'"):
        retriever.invoke("query")
    threshold = db.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99})
    assert [d.page_content for d in threshold.invoke(RETRIEVER_DOCS[2].page_content)] == [RETRIEVER_DOCS[2].page_content]


def test_deep_memory_without_a_model_is_an_error() -> None:
    retriever = make_retriever(k=3, deep_memory=True)
    with pytest.raises(ValueError, match="no active Deep Memory model"):
        retriever.invoke("anything")
    with pytest.raises(ValueError, match="no active Deep Memory model"):
        asyncio.run(retriever.ainvoke("anything"))
    db = retriever.vectorstore
    for search in (db.similarity_search, db.max_marginal_relevance_search):
        with pytest.raises(ValueError, match="no active Deep Memory model"):
            search("anything", deep_memory=True)


def test_mmr_equals_langchains_reference() -> None:
    emb = DeterministicFakeEmbedding(size=16)
    texts = [f"passage {i}" for i in range(40)]
    db = DeepMemoryLangChainStore.from_texts(texts, emb, ids=[str(i) for i in range(40)])
    query = "a question about passages"  # not a stored text: a stored one ties every MMR score at 0
    q = np.array(emb.embed_query(query))
    for k, fetch_k, lambda_mult in itertools.product((1, 4, 8), (8, 20), (0.0, 0.25, 0.5, 1.0)):
        candidates = db.similarity_search(query, k=fetch_k)
        vectors = [emb.embed_query(d.page_content) for d in candidates]  # the fake embeds texts the same either way
        expected = [candidates[i].id for i in maximal_marginal_relevance(q, vectors, lambda_mult=lambda_mult, k=k)]
        got = [d.id for d in db.max_marginal_relevance_search(query, k=k, fetch_k=fetch_k, lambda_mult=lambda_mult)]
        assert got == expected, (k, fetch_k, lambda_mult)
    assert [d.id for d in db.max_marginal_relevance_search(query, k=5, lambda_mult=1.0)] == [
        d.id for d in db.similarity_search(query, k=5)
    ]
    with pytest.raises(ValueError, match="lambda_mult must be a number in"):
        db.max_marginal_relevance_search(query, lambda_mult=2)


# --- Deep Memory through the face ------------------------------------------------------------------
@pytest.fixture(scope="module")
def rotation() -> tuple[RotationTask, DeepMemoryLangChainStore, CountingEmbeddings, str]:
    """The rotation task through LangChain: documents and queries embedded by a table embedding,
    trained with ``db.vectorstore.deep_memory.train`` as in the tutorial (100 training queries)."""
    task = RotationTask(n_docs=150, dim=16, n_queries=140, seed=0)
    table = {f"document {i}": v for i, v in enumerate(task.docs)}
    table.update({text: v for text, v in zip(task.texts, task.queries)})
    emb = CountingEmbeddings(table)
    db = DeepMemoryLangChainStore(embedding=emb)
    ids = db.add_texts([f"document {i}" for i in range(150)], [{"n": i} for i in range(150)], ids=task.ids)
    assert ids == task.ids
    before = emb.query_calls
    job_id = db.vectorstore.deep_memory.train(queries=task.texts[:100], relevance=task.relevance[:100], **FAST)
    assert emb.query_calls - before == 100  # the training queries went through the LangChain embedding
    return task, db, emb, job_id


def test_deep_memory_trains_on_langchain_ids_and_ranks_as_the_store(rotation) -> None:
    task, db, emb, job_id = rotation
    status = db.vectorstore.deep_memory.status(job_id)
    assert status["status"] == "completed" and db.vectorstore.deep_memory.get_model() == "model_1"
    model = db.vectorstore.deep_memory.active_model()
    texts, vectors = task.texts[100:], task.queries[100:]
    expected = brute_force_top_k(vectors, task.docs, task.ids, 10, model)
    plain = brute_force_top_k(vectors, task.docs, task.ids, 10)
    retriever = db.as_retriever()
    retriever.search_kwargs["deep_memory"] = True  # the tutorial's lines
    retriever.search_kwargs["k"] = 10
    for text, vector, want, want_plain in zip(texts, vectors, expected, plain):
        got = db.similarity_search_with_score(text, k=10, deep_memory=True)
        assert [d.id for d, _ in got] == [task.ids[j] for j in want]
        store = db.vectorstore.query(
            VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=10, query_str=text), deep_memory=True
        )
        assert [d.id for d, _ in got] == store.ids
        np.testing.assert_allclose([s for _, s in got], store.similarities, rtol=1e-6)
        assert [d.id for d in retriever.invoke(text)] == store.ids
        assert [d.id for d in db.similarity_search(text, k=10)] == [task.ids[j] for j in want_plain]
    before = emb.query_calls
    recall = db.vectorstore.deep_memory.evaluate(queries=texts, relevance=task.relevance[100:], top_k=[1, 10])
    assert emb.query_calls - before == len(texts)
    assert recall["with model"]["recall@10"] > recall["without model"]["recall@10"] + 0.2, recall


def test_deep_memory_mmr_and_filters(rotation) -> None:
    task, db, _, _ = rotation
    model = db.vectorstore.deep_memory.active_model()
    for text, vector in zip(task.texts[100:120], task.queries[100:120]):
        ranked = db.similarity_search(text, k=10, deep_memory=True)
        assert db.max_marginal_relevance_search(text, k=10, fetch_k=10, lambda_mult=1.0, deep_memory=True) == ranked
        # a filtered Deep Memory query: the model's top 5 among the allowed documents
        scores = brute_force_scores(vector[None, :], task.docs, task.ids, model)[0]
        allowed = [j for j in range(len(task.ids)) if j % 3 == 0]
        want = [task.ids[j] for j in sorted(allowed, key=lambda j: -scores[j])[:5]]
        got = db.similarity_search(text, k=5, deep_memory=True, filter={"n": {"$in": allowed}})
        assert [d.id for d in got] == want
    db2 = DeepMemoryLangChainStore(embedding=db.embeddings, vectorstore=db.vectorstore)  # same store, new face
    text = task.texts[120]
    assert db2.similarity_search(text, k=10, deep_memory=True) == db.similarity_search(text, k=10, deep_memory=True)


def test_embedding_function_from_the_activeloop_api(rotation) -> None:
    """Activeloop's ``embedding_function=embeddings.embed_documents`` still works for evaluate."""
    task, db, emb, _ = rotation
    recall = db.vectorstore.deep_memory.evaluate(
        queries=task.texts[100:110], relevance=task.relevance[100:110], top_k=[10],
        embedding_function=emb.embed_documents,
    )
    assert set(recall) == {"without model", "with model"}


# --- import isolation ----------------------------------------------------------------------------------
def test_plain_import_and_cli_help_never_import_langchain() -> None:
    code = (
        "import sys, contextlib, io\n"
        "import llama_index_deepmemory\n"
        "from llama_index_deepmemory import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('langchain')"
        " or m == 'llama_index_deepmemory.langchain'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


@pytest.mark.parametrize("key", ["doc_id", "document_id", "ref_doc_id", "_node_type", "_node_content"])
def test_filter_on_a_key_llama_index_reserves_is_refused(key: str) -> None:
    """LlamaIndex filters these keys on its own values (the ref_doc_id, the node class), not the document's
    metadata: LangChain's InMemoryVectorStore would find the document, so a silent [] is refused."""
    db = DeepMemoryLangChainStore.from_texts(
        ["a", "b"], DeterministicFakeEmbedding(size=4), [{key: "x"}, {}], ids=["a", "b"]
    )
    assert db.get_by_ids(["a"])[0].metadata == {key: "x"}  # stored as given
    for spec in ({key: "x"}, {key: {"$ne": "x"}}, {"$or": [{"other": 1}, {key: {"$in": ["x"]}}]}):
        with pytest.raises(ValueError, match=rf"'{key}'.*rename") as info:
            db.similarity_search("a", k=2, filter=spec)
        assert "MetadataFilters" in str(info.value)
    # LlamaIndex's own MetadataFilters still reach LlamaIndex's keys (every LangChain document's is 'None')
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

    if key == "doc_id":
        own = MetadataFilters(filters=[MetadataFilter(key="doc_id", value="None")])
        assert {d.id for d in db.similarity_search("a", k=2, filter=own)} == {"a", "b"}
