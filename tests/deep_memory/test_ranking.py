"""One ranking: ``deep_memory.ranking.rank`` serves ``store.query``, batched search, evaluation and
training's validation alike; checked against brute force, for the same model, queries and filters."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.deep_memory.training import _evaluate, _Split
from llama_index_deepmemory.metrics import ndcg_at_k
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import KeywordTask, brute_force_scores, hand_model

EVEN = MetadataFilters(filters=[MetadataFilter(key="parity", value=0)])


@pytest.fixture(scope="module")
def trained() -> tuple[KeywordTask, DeepMemoryVectorStore]:
    task = KeywordTask(seed=3)
    store = DeepMemoryVectorStore()
    store.add(task.nodes(metadata=True))
    store.deep_memory.add_model("hand", hand_model(task), activate=True)  # a hand-made model
    return task, store


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_validation_ranking_equals_store_query(trained, filters, with_text) -> None:
    task, store = trained
    model = store.deep_memory.active_model()
    assert model.rerank_depth > 0 and len(model.overrides(task.queries[:1])[0]) > 0  # memory and keywords
    queries = store.prepare_queries(task.queries)
    texts = task.texts if with_text else None
    scores, ids = rank(store, queries, model, 10, texts=texts, filters=filters)
    for i, q in enumerate(task.queries):
        result = store.query(
            VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10, filters=filters,
                             query_str=texts[i] if texts else None),
            deep_memory=True,
        )
        assert result.ids == ids[i], f"query {i}"
        np.testing.assert_allclose(result.similarities, scores[i], rtol=1e-5, atol=1e-5)
    if filters is not None:
        assert all(int(node.split("_")[1]) % 2 == 0 for row in ids for node in row)
    if texts is None:  # and both equal the brute-force reference of the model's dense parts
        reference = np.argsort(-brute_force_scores(queries, task.docs, task.ids, model), axis=1, kind="stable")
        if filters is None:
            assert ids == [[task.ids[j] for j in row[:10]] for row in reference]


def test_training_validation_uses_the_same_ranking(trained) -> None:
    task, store = trained
    model = store.deep_memory.active_model()
    queries = store.prepare_queries(task.queries)
    validation = _evaluate(store, _Split(queries, task.relevance, task.texts), model)  # what training's validation scores
    served = rank(store, queries, model, 10, texts=task.texts)[1]
    np.testing.assert_array_equal(validation.per_query, ndcg_at_k(served, task.relevance, 10, per_query=True))
    batched = store.deep_memory.search_ids(task.queries, 10, deep_memory=True, texts=task.texts)
    assert batched == rank(store, queries, model, 10, texts=task.texts)[1]


def test_forgotten_nodes_score_as_plain_vectors(trained) -> None:
    task, store = trained
    model = store.deep_memory.active_model()
    queries = store.prepare_queries(task.queries[:20])
    forget = [{node for node, _ in pairs} for pairs in task.relevance[:20]]
    _, ids = rank(store, queries, model, 5, forget=forget)
    full = brute_force_scores(queries, task.docs, task.ids, model)
    plain = model.transform_queries(queries) @ task.docs.T
    for i, nodes in enumerate(forget):
        for node in nodes:
            full[i, task.ids.index(node)] = plain[i, task.ids.index(node)]
    expected = [[task.ids[j] for j in row[:5]] for row in np.argsort(-full, axis=1, kind="stable")]
    assert ids == expected


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_overrides_crowding_the_first_search_are_ranked_exactly(metric) -> None:
    """rank asks for k plain hits first and more only when overridden hits crowd a row and the
    override scores do not make up for them: demoted, promoted and untouched rows all rank as
    brute force does."""
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    rng = np.random.default_rng(12)
    n, d = 400, 16
    docs = rng.normal(size=(n, d)).astype(np.float32)
    if metric == "cosine":
        docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(n)]
    view = ArrayStoreView(ids, docs)
    queries = rng.normal(size=(30, d)).astype(np.float32)
    if metric == "cosine":
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    crowd = np.argsort(-(queries[0] @ docs.T))[:40]  # query 0's 40 nearest: demoted below everything
    lifted = rng.choice(np.setdiff1d(np.arange(n), crowd), size=20, replace=False)  # raised a little
    memory = np.concatenate([crowd, lifted])
    vectors = np.concatenate([-3.0 * docs[crowd], 1.2 * docs[lifted]])
    model = AdapterMemoryModel(d, metric, memory_ids=[ids[j] for j in memory], memory_vectors=vectors)
    for k in (1, 10, 35):
        scores, got = rank(view, view.prepare_queries(queries), model, k)
        full = brute_force_scores(view.prepare_queries(queries), docs, ids, model)
        order = np.argsort(-full, axis=1, kind="stable")[:, :k]
        assert got == [[ids[j] for j in row] for row in order]
        np.testing.assert_allclose(np.stack(scores), np.take_along_axis(full, order, axis=1), rtol=1e-4, atol=1e-4)


def test_rank_never_counts_the_store() -> None:
    """Counting is a round trip on some engines (Chroma's ``count()``) and a listing on others:
    rank learns that a row holds every allowed node when the store returns fewer than asked,
    also for k beyond the store's size and for an empty store."""
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    class Uncountable(ArrayStoreView):
        def __len__(self) -> int:
            raise AssertionError("rank counted the store")

    rng = np.random.default_rng(13)
    n, d = 30, 8
    docs = rng.normal(size=(n, d)).astype(np.float32)
    ids = [f"d{i}" for i in range(n)]
    view = Uncountable(ids, docs)
    model = AdapterMemoryModel(d, "ip", memory_ids=ids[:5], memory_vectors=-docs[:5])
    queries = rng.normal(size=(4, d)).astype(np.float32)
    full = brute_force_scores(queries, docs, ids, model)
    for k in (3, n, 3 * n):
        scores, got = rank(view, queries, model, k)
        assert got == [[ids[j] for j in row[:k]] for row in np.argsort(-full, axis=1, kind="stable")]
        assert all(len(row) == min(k, n) for row in got)
    assert rank(view, queries, None, 3 * n)[1] == [[ids[j] for j in row] for row in np.argsort(-(queries @ docs.T), axis=1, kind="stable")]


def test_validation_and_serving_run_the_same_kernel(monkeypatch) -> None:
    """Training's validation and a store query both rank every row with ``kernels.rank_row``:
    the one kernel is wrapped and its calls counted on each path."""
    from llama_index_deepmemory.deep_memory import kernels
    from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model
    from synthetic import N_TRAIN, OPTIONS

    calls = {"n": 0}
    serving = kernels.rank_row

    def counted(*args):
        calls["n"] += 1
        return serving(*args)

    monkeypatch.setattr(kernels, "rank_row", counted)
    task = KeywordTask(seed=5)
    store = task.store()
    result = train_model(store, task.queries[:N_TRAIN], task.relevance[:N_TRAIN],
                         options=TrainOptions(seed=0, **OPTIONS), query_texts=task.texts[:N_TRAIN])
    trained_calls = calls["n"]
    assert trained_calls >= N_TRAIN  # every validated query row went through the kernel
    store.deep_memory.add_model("m", result.model, activate=True)  # the trained model, served
    for i in range(N_TRAIN, N_TRAIN + 3):  # dense and keyword queries alike
        store.query(VectorStoreQuery(query_embedding=task.queries[i].tolist(), similarity_top_k=5,
                                     query_str=task.texts[i] if i % 2 else None), deep_memory=True)
    assert calls["n"] - trained_calls >= 3
