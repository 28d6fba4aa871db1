"""Memory and key scores computed after the plain search, only where they can count
(``deep_memory/pruning.py``), against the unpruned reference: ``kernels.adapter_memory_scores``
(every memory node and key scored before the search) followed by ``kernels.rank_row``. The ranking
must be the same, ids and scores bit for bit, whether pruning skips nothing, some or everything."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_deepmemory.deep_memory import kernels, pruning, ranking
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel, int8_rows
from llama_index_deepmemory.engine.faiss_view import Slots
from llama_index_deepmemory.store import DeepMemoryVectorStore

WORDS = [f"w{i}" for i in range(30)]
_NONE = np.zeros(0, np.int64)


def _model(rng: np.random.Generator, d: int, metric: str, memory: np.ndarray, keys: np.ndarray,
           threshold: float, key_weight: float = 0.5, ids: list[str] | None = None, lexical=None) -> AdapterMemoryModel:
    n_mem, n_keys = len(memory), len(keys)
    n_links = n_keys + n_keys // 2
    return AdapterMemoryModel(
        dim=d, metric=metric,
        weight=np.eye(d) + 0.05 * rng.normal(size=(d, d)), bias=0.02 * rng.normal(size=d),
        memory_ids=ids[:n_mem] if ids is not None else [f"m{i}" for i in range(n_mem)], memory_vectors=memory,
        key_vectors=keys,
        link_key=np.concatenate([np.arange(n_keys), rng.integers(0, n_keys, n_links - n_keys)]).astype(np.int64),
        link_node=rng.integers(0, n_mem, n_links), link_weight=rng.uniform(-0.5, 1.0, n_links),
        key_weight=key_weight, key_threshold=threshold,
        lexical=lexical, lexical_weight=0.3 if lexical is not None else 0.0,
    )


def _both(model: AdapterMemoryModel, q: np.ndarray, plain: np.ndarray, keep: np.ndarray, usable: np.ndarray,
          depth: int, k: int):
    """(reference, pruned): rank_row's (scores, sources, complete) of one query with every override
    scored before, and with scored_rank_row; the pruned side also returns the rows it scored."""
    transformed, _, scores = model.apply(q[None, :])
    t, ids, scoring = model.apply_after_search(q[None, :])
    np.testing.assert_array_equal(t, transformed)  # the searched vector: the same bits
    assert ids == model.memory_ids
    empty = (np.zeros(0, np.float32), np.zeros((1, 2), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
             np.zeros(0, np.int32), 0.0, 0, depth, k, len(plain) + 1)
    reference = kernels.rank_row(plain, keep, _NONE, scores[0], usable, _NONE, *empty)
    pruned = pruning.scored_rank_row(t[0], plain, keep, _NONE, usable, _NONE, *empty, *scoring)
    return reference, pruned


def _assert_same(reference, pruned) -> None:
    np.testing.assert_array_equal(pruned[0], reference[0])
    np.testing.assert_array_equal(pruned[1], reference[1])
    assert pruned[2] == reference[2]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("d", [24, 33])  # an odd dimension pads the packed nibbles
def test_pruned_ranking_is_the_unpruned_one(metric: str, d: int) -> None:
    """Seeded queries near memory nodes and keys (some fire, some do not) over random plain hits:
    the same ranking bit for bit, and rows really skipped."""
    rng = np.random.default_rng(d)
    memory = rng.normal(size=(60, d))
    keys = memory[rng.integers(0, 60, 40)] + 0.3 * rng.normal(size=(40, d))
    scored_total = rows_total = 0
    for threshold in (0.2, 0.6, 0.9):
        model = _model(rng, d, metric, memory, keys, threshold)
        for trial in range(40):
            q = (memory[trial % 60] + 0.4 * rng.normal(size=d)).astype(np.float32)
            if metric == "cosine":
                q /= np.linalg.norm(q)
            t = model.apply(q[None, :])[0][0]
            stored = rng.normal(size=(200, d)).astype(np.float32)
            plain = np.sort((stored @ t).astype(np.float32))[::-1].copy()
            if metric == "l2":
                plain = np.sort(-((stored - t) ** 2).sum(axis=1).astype(np.float32))[::-1].copy()
            keep = rng.random(len(plain)) > 0.1
            usable = rng.random(60) > 0.1
            for depth, k in ((10, 10), (50, 10), (1, 1)):
                reference, pruned = _both(model, q, plain, keep, usable, depth, k)
                _assert_same(reference, pruned)
                scored_total += pruned[3]
                rows_total += 60 + 40
    assert scored_total < rows_total / 2  # most rows skipped here


def test_pruning_that_skips_nothing_and_everything() -> None:
    """Every memory node and key above the floor and the threshold: all scored, the same ranking;
    every one far below: none scored, the plain hits alone; too few kept hits: no floor, all scored."""
    rng = np.random.default_rng(1)
    d = 32
    q = rng.normal(size=d).astype(np.float32)
    q /= np.linalg.norm(q)
    near = q + 0.05 * rng.normal(size=(20, d))
    stored = rng.normal(size=(100, d)).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    usable = np.ones(20, bool)
    for memory, threshold, expected, unfloored in ((near, -1.0, 20 + 15, 20 + 15), (-near, 0.99, 0, 20)):
        model = _model(rng, d, "cosine", memory, memory[:15], threshold)
        t = model.apply(q[None, :])[0][0]
        plain = np.sort((stored @ t).astype(np.float32))[::-1].copy()
        keep = np.ones(len(plain), bool)
        reference, pruned = _both(model, q, plain, keep, usable, 10, 10)
        _assert_same(reference, pruned)
        assert pruned[3] == expected
        if expected:
            assert (reference[1] < 0).sum() == 10  # the memory nodes hold the top 10
        reference, pruned = _both(model, q, plain, np.zeros(len(plain), bool), usable, 10, 10)  # nothing kept
        _assert_same(reference, pruned)
        assert pruned[3] == unfloored


def test_the_bound_holds_for_extreme_codes() -> None:
    """The nibble bound is at least the float32 score of rows of extreme, zero and random codes,
    for queries of every sign pattern and scale."""
    rng = np.random.default_rng(2)
    for d in (1, 2, 7, 64, 385):
        rows = np.concatenate([
            np.full((1, d), 127.0), np.full((1, d), -127.0), np.zeros((1, d)), rng.choice([-127.0, 127.0], size=(2, d)),
            rng.normal(size=(20, d)) * rng.uniform(1e-6, 1e3, size=(20, 1)), rng.integers(-127, 128, size=(5, d)) * 1.0,
        ])
        codes, scales = int8_rows(rows)
        packed, bounds = pruning.nibble_bounds(codes, scales)
        for scale in (1e-3, 1.0, 1e3):
            for q in (rng.normal(size=d), np.abs(rng.normal(size=d)), -np.abs(rng.normal(size=d)), np.ones(d)):
                q = (q * scale).astype(np.float32)
                h = packed.shape[1]
                padded = np.zeros(2 * h, np.float32)
                padded[:d] = q
                dots = np.empty(len(codes), np.float32)
                pruning._nibble_dots(packed, padded[:h].copy(), padded[h:].copy(), dots)
                q64 = q.astype(np.float64)
                args = (float(q64.sum()), float(np.maximum(q64, 0).sum()), float(np.sqrt(q64 @ q64)) * (1 + 2.0**-40))
                for r in range(len(codes)):
                    exact = np.float32(kernels._dot_codes(codes[r], q) * scales[r])
                    upper = pruning._upper(dots[r], bounds[r, 0], bounds[r, 1], scales[r], *args)
                    assert upper >= exact, (d, r, scale)


def _store(rng: np.random.Generator, metric: str, n: int = 400, d: int = 16):
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    ids = [f"n{i}" for i in range(n)]
    texts = [" ".join(rng.choice(WORDS, size=10)) for _ in range(n)]
    store = DeepMemoryVectorStore(metric=metric)
    store.add([TextNode(id_=i, text=t, embedding=v.tolist()) for i, t, v in zip(ids, texts, vectors)])
    memory = vectors[:40] + 0.2 * rng.normal(size=(40, d))
    keys = vectors[rng.integers(0, 40, 30)] + 0.3 * rng.normal(size=(30, d))
    model = _model(rng, d, metric, memory, keys, 0.5, ids=ids, lexical=LexicalIndex(ids, texts))
    store.deep_memory.add_model("m", model, activate=True)
    return store, vectors, model


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_store_queries_rank_as_the_unpruned_path(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``store.query`` (one query: overrides scored after the search, pruned) against ``rank`` with
    a plain cache (every override scored before the search): the same ids and scores, dense and
    with keywords, with and without a restriction, the pruned path really taken."""
    rng = np.random.default_rng(7)
    store, vectors, model = _store(rng, metric)
    backend = store._backend
    taken = []
    scored_rank_row = pruning.scored_rank_row
    monkeypatch.setattr(ranking._pruning(), "scored_rank_row", lambda *a: taken.append(1) or scored_rank_row(*a))
    queries = np.concatenate([vectors[:40:3] + 0.1 * rng.normal(size=(14, 16)), rng.normal(size=(10, 16))])
    for text in (None, "w1 w2 w3"):
        for node_ids in (None, [f"n{i}" for i in range(0, 400, 2)]):
            for q in queries.astype(np.float32):
                result = store.query(VectorStoreQuery(query_embedding=q.tolist(), query_str=text,
                                                      similarity_top_k=10, node_ids=node_ids), deep_memory=True)
                with backend._lock.read():
                    prepared = backend._as_matrix(q.tolist(), "query")
                    restriction = None
                    if node_ids is not None:
                        from llama_index_deepmemory.engine.faiss_view import Slots

                        restriction = Slots(backend._select(node_ids, None, None))
                    scores, ids = ranking.rank(backend._held, prepared, model, 10, texts=[text],
                                               filters=restriction, plain_cache={})
                assert result.ids == ids[0]
                np.testing.assert_array_equal(np.float32(result.similarities), scores[0])
    assert len(taken) >= 2 * 2 * 24 - 2  # the keyword path starts on the store's second keyword query
