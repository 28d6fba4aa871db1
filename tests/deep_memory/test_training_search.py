"""Training's searches through the fast exact path (``ArrayStoreView``: chunked BLAS,
``exact_search.exact_top_k``) give the same run as brute-force NumPy searches: the same
validation metrics, epochs, chosen model and mined negatives, on seeded problems."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_deepmemory import exact_search
from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model
from llama_index_deepmemory.engine.array_view import ArrayStoreView
from synthetic import normalise


class BruteForceView(ArrayStoreView):
    """The reference: every score computed, a full stable sort (no chunks, no thresholds)."""

    def __init__(self, ids, vectors) -> None:
        super().__init__(ids, vectors)
        self.rows_searched = 0

    def search_vectors(self, queries, k, deep_memory=False, texts=None, filters=None):
        assert filters is None and not deep_memory
        self.rows_searched += len(queries)
        scores = np.asarray(queries, dtype=np.float32) @ self.vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(self.ids))]
        return np.take_along_axis(scores, top, axis=1), [[self.ids[j] for j in row] for row in top]


class CountingView(ArrayStoreView):
    def __init__(self, ids, vectors) -> None:
        super().__init__(ids, vectors)
        self.rows_searched = 0

    def search_vectors(self, queries, k, **kwargs):
        self.rows_searched += len(queries)
        return super().search_vectors(queries, k, **kwargs)


def _task(seed: int, n_docs: int, n_queries: int, dim: int = 24, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    docs = normalise(rng.normal(size=(n_docs, dim))).astype(np.float32)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    targets = rng.integers(0, n_docs, size=n_queries)
    queries = normalise(docs[targets] @ rotation.T + noise * rng.normal(size=(n_queries, dim)) / np.sqrt(dim))
    ids = [f"n{i}" for i in range(n_docs)]
    return ids, docs, queries.astype(np.float32), [[(ids[t], 1.0)] for t in targets]


@pytest.mark.parametrize(("seed", "n_queries"), [(0, 240), (1, 600)], ids=["3-fold", "held-out"])
def test_training_over_the_fast_exact_path_equals_brute_force(seed: int, n_queries: int, monkeypatch) -> None:
    monkeypatch.setattr(exact_search, "MIN_CHUNK_ROWS", 256)  # several chunks on a small corpus
    monkeypatch.setattr(exact_search, "CHUNK_SCORES", 256)
    ids, docs, queries, relevance = _task(seed, n_docs=3000, n_queries=n_queries)
    options = dict(epochs=8, learning_rate=1e-2, batch_size=32, full_softmax_max_nodes=100, remine_every=3,
                   num_negatives=32, seed=0)
    fast, reference = CountingView(ids, docs), BruteForceView(ids, docs)
    got = train_model(fast, queries, relevance, options=TrainOptions(**options))
    want = train_model(reference, queries, relevance, options=TrainOptions(**options))
    assert got.info["softmax"] == "32 mined negatives"
    assert got.val_before == want.val_before and got.val_after == want.val_after
    assert got.improved == want.improved
    for key in ("epochs_run", "best_epoch", "key_weight", "key_threshold", "memory_nodes", "validation_folds"):
        assert got.info[key] == want.info[key], key
    np.testing.assert_allclose(got.model.weight, want.model.weight, rtol=1e-5, atol=1e-6)
    assert list(got.model.memory_ids) == list(want.model.memory_ids)
    assert fast.rows_searched == reference.rows_searched > 0
    assert got.val_after["ndcg@10"] > got.val_before["ndcg@10"]  # a task with something to learn
