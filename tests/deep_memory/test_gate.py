"""The per-query gate (issue 17): queries far from every remembered training query are ranked by
the adapter alone (memory nodes at their stored vectors, no key bonus); near ones use memory.
Checked against brute-force NumPy rankings, through ``rank`` and the store's compiled path."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel, model_from_state
from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model
from llama_index_deepmemory.store import DeepMemoryVectorStore
from synthetic import DIM, KeywordTask, RotationTask, gated_model, normalise

THRESHOLD = 0.5
EVEN = MetadataFilters(filters=[MetadataFilter(key="parity", value=0)])


def adapter_only_top(model: AdapterMemoryModel, queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    """Brute force: the adapter's transformed queries against every stored vector."""
    qt = model.transform_queries(queries)
    return np.argsort(-(qt @ docs.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def gated() -> tuple[KeywordTask, DeepMemoryVectorStore, AdapterMemoryModel, np.ndarray]:
    task = KeywordTask(seed=4)
    store = task.store()
    model, memory = gated_model(task)
    store.deep_memory.add_model("gated", model, activate=True)
    return task, store, model, memory


def test_gate_falls_back_far_from_training_queries_and_opens_near_them(gated) -> None:
    task, store, model, memory = gated
    qt = model.transform_queries(task.queries)
    closed = (task.queries @ normalise(task.queries[:20]).T).max(axis=1) < THRESHOLD
    assert closed[20:].sum() >= 60 and not closed[:20].any()  # random queries far, the keys themselves near
    routed = model.route(store.prepare_queries(task.queries))
    np.testing.assert_array_equal(routed, closed)
    assert model.fallback is not None and not len(model.fallback.memory_ids)
    _, _, scores = model.apply(task.queries[~closed])
    stored = qt[~closed] @ task.docs[memory].T
    assert np.abs(scores - stored).max() > 0.1  # memory and key bonuses at work where the gate is open
    ranked = rank(store, store.prepare_queries(task.queries), model, 10)[1]
    expected = adapter_only_top(model, task.queries, task.docs, 10)
    for i in np.flatnonzero(closed):
        assert ranked[i] == [task.ids[j] for j in expected[i]], f"query {i}"
    # near queries: the memory documents they are linked to lead
    assert all(ranked[i][0] == task.ids[memory[i]] for i in range(20))


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("keywords", [False, True], ids=["dense", "keywords"])
def test_gated_store_query_equals_rank(keywords, filters) -> None:
    """The compiled single-query path, the batched store path and ``rank`` agree, the fallback
    re-scoring with its own keyword weight."""
    task = KeywordTask(seed=6)
    store = DeepMemoryVectorStore()
    store.add(task.nodes(metadata=True))
    model, _ = gated_model(task, keywords=keywords)
    store.deep_memory.add_model("gated", model, activate=True)
    texts = task.texts if keywords else None
    prepared = store.prepare_queries(task.queries)
    scores, ids = rank(store, prepared, model, 10, texts=texts, filters=filters)
    assert ids != rank(store, prepared, model.fallback, 10, texts=texts, filters=filters)[1]
    batch = store.search_vectors(prepared, 10, deep_memory=True, texts=texts, filters=filters)[1]
    assert batch == ids
    for i, q in enumerate(task.queries[:60]):  # 20 near the keys, 40 routed
        result = store.query(
            VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10, query_str=texts[i] if texts else None,
                             filters=filters),
            deep_memory=True,
        )
        assert result.ids == ids[i], f"query {i}"
        np.testing.assert_allclose(result.similarities, scores[i], rtol=1e-5, atol=1e-5)


def test_gate_survives_the_state_round_trip(gated) -> None:
    task, _, model, _ = gated
    meta, arrays = model.to_state()
    assert meta["format_version"] == 3 and meta["gate_threshold"] == THRESHOLD
    keyed, _ = gated_model(task, keywords=True)
    loaded = model_from_state(*keyed.to_state())
    assert loaded.fallback.lexical_weight == 0.8 and loaded.fallback.lexical is loaded.lexical
    loaded = model_from_state(meta, arrays)
    for a, b in zip(model.apply(task.queries), loaded.apply(task.queries)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ungated, _ = gated_model(task, threshold=0.0)
    assert ungated.to_state()[0]["format_version"] == 1  # no gate, no keywords: older installs load it


def test_gate_needs_stored_vectors_and_keys() -> None:
    task = KeywordTask(seed=0)
    with pytest.raises(ValueError, match="gate_keys"):
        AdapterMemoryModel(DIM, memory_ids=[task.ids[0]], memory_vectors=task.docs[:1], gate_threshold=0.5)
    assert AdapterMemoryModel(DIM, gate_threshold=0.5).route(task.queries) is None  # no memory: nothing to gate
    with pytest.raises(ValueError, match="gate_threshold must be"):
        AdapterMemoryModel(DIM, gate_threshold=1.5)
    with pytest.raises(ValueError, match="gate_threshold must be"):
        TrainOptions.from_kwargs({"gate_threshold": -0.1})


def test_trained_gate_leaves_queries_about_unseen_documents_to_the_adapter() -> None:
    """Training on queries about documents 0-29 only; queries about documents 30-59 (never seen)
    are ranked exactly as the adapter alone ranks them, memory nodes included."""
    task = RotationTask(n_docs=60, dim=64, n_queries=100, seed=2)
    targets = np.asarray([int(rel[0][0].split("_")[1]) for rel in task.relevance])
    seen, unseen = np.flatnonzero(targets < 30), np.flatnonzero(targets >= 30)
    store = task.store()
    result = train_model(
        store, task.queries[seen], [task.relevance[i] for i in seen],
        options=TrainOptions(
            epochs=4, learning_rate=2e-2, seed=0, lexical=False, query_memory=False, validation_folds=1, refit=False,
            gate_threshold=0.5,
        ),
    )
    model = result.model
    assert model.gate_threshold == 0.5 and len(model.memory_ids) > 0
    closed = (task.queries[unseen] @ task.queries[seen].T).max(axis=1) < model.gate_threshold
    assert closed.mean() > 0.5
    ranked = rank(store, task.queries[unseen], model, 10)[1]
    expected = adapter_only_top(model, task.queries[unseen], task.docs, 10)
    for i in np.flatnonzero(closed):
        assert ranked[i] == [task.ids[j] for j in expected[i]], f"unseen query {i}"
