"""``keyword_depth``: a smaller keyword head (the top D candidates re-scored with BM25 instead of the
model's 50), over the embedded store and a wrapped engine, against a NumPy reference; and the
wrapped store's spare hits (``search_margin``, a callable or a number) running out: the ranking
searches deeper and returns the same result."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH
from llama_index_deepmemory.store import DeepMemoryVectorStore
from llama_index_deepmemory.wrapped_store import WRAPPED_KEYWORD_DEPTH
from synthetic import KeywordTask, brute_force_scores, hand_model, reference_keyword_weights
from tiny_store import TinyTextStore


@pytest.fixture(scope="module")
def task() -> KeywordTask:
    return KeywordTask(seed=4)


def reference_ids(task: KeywordTask, model, q: np.ndarray, text: str | None, k: int, head: int) -> list[str]:
    """Dense Deep Memory scores of every node, then (with text) BM25 re-scoring of the top ``head``
    with the model's keyword weight, the rest after them in dense order."""
    scores = brute_force_scores(q[None, :], task.docs, task.ids, model)[0]
    order = np.argsort(-scores, kind="stable")
    if text is None:
        return [task.ids[j] for j in order[:k]]
    top, tail = order[:head], order[head:k]
    keyword = model.lexical.scores(text, [task.ids[j] for j in top])
    weight = reference_keyword_weights(model, q[None, :])[0]
    fused = scores[top] + (weight * keyword / keyword.max() if keyword.max() > 0 else 0)
    return ([task.ids[top[j]] for j in np.argsort(-fused, kind="stable")] + [task.ids[j] for j in tail])[:k]


def query_ids(store: DeepMemoryVectorStore, q: np.ndarray, k: int, text: str | None) -> list[str]:
    query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k, query_str=text)
    return store.query(query, deep_memory=True).ids


def embedded(task: KeywordTask, **kwargs) -> DeepMemoryVectorStore:
    store = task.store(**kwargs)
    store.deep_memory.add_model("hand", hand_model(task), activate=True)
    return store


def wrapped(task: KeywordTask, **kwargs) -> DeepMemoryVectorStore:
    store = DeepMemoryVectorStore(vector_store=TinyTextStore(), **kwargs)
    store.add(task.nodes())
    store.deep_memory.add_model("hand", hand_model(task), activate=True)
    return store


@pytest.mark.parametrize("depth", [1, 5, 20, 50, 200])
def test_the_embedded_store_re_scores_the_top_keyword_depth(task, depth) -> None:
    store, model = embedded(task, keyword_depth=depth), hand_model(task)
    head = min(depth, LEXICAL_DEPTH)  # never more than the model's own head
    assert store.keyword_depth == depth
    for i in range(30):
        q, text = task.queries[i], task.texts[i]
        for k in (1, 5, 60):
            assert query_ids(store, q, k, text) == reference_ids(task, model, q, text, k, head), (i, k)
        assert query_ids(store, q, 10, None) == reference_ids(task, model, q, None, 10, head)  # dense: unchanged


def test_a_smaller_head_changes_some_rankings(task) -> None:
    """The reference itself tells the heads apart on this task (so the tests above can fail)."""
    model = hand_model(task)
    differ = sum(reference_ids(task, model, q, t, 10, 5) != reference_ids(task, model, q, t, 10, LEXICAL_DEPTH)
                 for q, t in zip(task.queries[:30], task.texts[:30]))
    assert differ >= 5


@pytest.mark.parametrize("depth", [None, 5, 30])
def test_a_wrapped_engine_re_scores_its_keyword_depth(task, depth) -> None:
    store, model = wrapped(task, keyword_depth=depth), hand_model(task)
    head = WRAPPED_KEYWORD_DEPTH if depth is None else depth
    assert store.keyword_depth == head
    for i in range(30):
        q, text = task.queries[i], task.texts[i]
        for k in (1, 10, 60):
            assert query_ids(store, q, k, text) == reference_ids(task, model, q, text, k, head), (i, k)
    batched = store.deep_memory.search_ids(task.queries[:30], 10, deep_memory=True, texts=task.texts[:30])
    assert batched == [reference_ids(task, model, q, t, 10, head) for q, t in zip(task.queries[:30], task.texts[:30])]


def test_keyword_depth_can_be_changed_and_reset(task) -> None:
    store, model = wrapped(task), hand_model(task)
    store.keyword_depth = 50
    q, text = task.queries[3], task.texts[3]
    assert store.keyword_depth == 50 and query_ids(store, q, 10, text) == reference_ids(task, model, q, text, 10, 50)
    store.keyword_depth = None  # back to the wrapped default
    assert store.keyword_depth == WRAPPED_KEYWORD_DEPTH
    local = embedded(task)
    assert local.keyword_depth is None  # the embedded store: the model's own head
    assert query_ids(local, q, 10, text) == reference_ids(task, model, q, text, 10, LEXICAL_DEPTH)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "20"])
def test_bad_keyword_depths_are_refused(task, bad) -> None:
    with pytest.raises(ValueError, match="keyword_depth"):
        DeepMemoryVectorStore(keyword_depth=bad)
    with pytest.raises(ValueError, match="keyword_depth"):
        DeepMemoryVectorStore(vector_store=TinyTextStore(), keyword_depth=bad)
    store = wrapped(task)
    with pytest.raises(ValueError, match="keyword_depth"):
        store.keyword_depth = bad
    from llama_index_deepmemory.wrapped_store import WrappedStore

    with pytest.raises(ValueError, match="keyword_depth"):  # at construction, not at the first deep query
        WrappedStore(TinyTextStore(), None, keyword_depth=bad)


def test_a_reloaded_store_takes_keyword_depth_again(task, tmp_path) -> None:
    """A serving setting, not persisted: the loader takes it (without it, the model's own head)."""
    store, model = embedded(task), hand_model(task)
    store.persist(str(tmp_path / "store"))
    again = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), keyword_depth=5,
                                                    load_recorded_embedding=False)
    plain = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), load_recorded_embedding=False)
    assert again.keyword_depth == 5 and plain.keyword_depth is None
    for q, text in zip(task.queries[:30], task.texts[:30]):  # some of these differ between the heads
        assert query_ids(again, q, 10, text) == reference_ids(task, model, q, text, 10, 5)
        assert query_ids(plain, q, 10, text) == reference_ids(task, model, q, text, 10, LEXICAL_DEPTH)
    with pytest.raises(ValueError, match="keyword_depth"):
        DeepMemoryVectorStore.from_persist_path(str(tmp_path / "store"), keyword_depth=0, load_recorded_embedding=False)


@pytest.mark.parametrize("margin", [0, 1, (lambda n, depth: 0)], ids=["none", "one", "callable-none"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_spare_hits_running_out_search_deeper_with_the_same_result(task, margin, with_text) -> None:
    """30 of 80 nodes are override nodes: with no spare hits most first searches come back short
    of the merged top, and the ranking searches deeper (a second search) for the same result."""
    store, model = wrapped(task), hand_model(task)
    backend = store._backend
    backend.search_margin = margin
    asked: list[int] = []
    search = backend.backend.search

    def counting(queries, k, *args, **kwargs):
        asked.append(int(k))
        return search(queries, k, *args, **kwargs)

    backend.backend.search = counting
    head = store.keyword_depth
    searches = 0
    for i in range(30):
        q, text = task.queries[i], task.texts[i] if with_text else None
        asked.clear()
        assert query_ids(store, q, 10, text) == reference_ids(task, model, q, text, 10, head), i
        searches += len(asked) - 1
        assert asked[0] == max(10, head if with_text else 0) + (margin if isinstance(margin, int) else 0)
    assert searches >= 1  # deeper searches happened (and returned the reference)


def test_the_share_margin_is_the_override_nodes_expected_share(task) -> None:
    """``search_margin`` over an engine that pays per hit: ceil(depth * share / (1 - share)), at
    most the override nodes, no floor (known values: 30 override nodes in 80 stored)."""
    backend = wrapped(task)._backend
    assert backend._share_margin(30, 10) == 6  # ceil(10 * 0.375 / 0.625)
    assert backend._share_margin(30, 58) == 30  # capped at the override nodes
    assert backend._share_margin(1, 10) == 1  # ceil(10 * (1/80) / (79/80)) = ceil(0.127)
    assert backend._share_margin(0, 10) == 0
