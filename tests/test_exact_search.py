"""``exact_search.exact_top_k`` against brute-force NumPy (a full stable sort of every score), with
ties, chunk edges, k past the matrix, and the ``ArrayStoreView`` that searches with it."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_deepmemory import exact_search
from llama_index_deepmemory.exact_search import exact_top_k


def _reference(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every score, sorted best first with equal scores in row order, cut to ``k``."""
    scores = queries @ matrix.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(matrix))]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize(
    ("n", "m", "k"),
    [(10, 3, 20), (5000, 7, 5), (9000, 50, 64), (3000, 2, 2500), (1, 1, 1), (4097, 1, 4097)],
)
def test_exact_top_k_matches_a_stable_sort_with_ties(n: int, m: int, k: int, monkeypatch) -> None:
    monkeypatch.setattr(exact_search, "MIN_CHUNK_ROWS", 1024)  # several chunks even for small n
    monkeypatch.setattr(exact_search, "CHUNK_SCORES", 1024)
    rng = np.random.default_rng(n + m + k)
    matrix = np.round(rng.standard_normal((n, 8)), 1).astype(np.float32)  # coarse values: many equal scores
    matrix[n // 2 :: 7] = matrix[0]  # exact duplicates across chunks
    queries = np.round(rng.standard_normal((m, 8)), 1).astype(np.float32)
    scores, rows = exact_top_k(matrix, queries, k)
    want_scores, want_rows = _reference(matrix, queries, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-6)
    assert scores.dtype == np.float32 and rows.dtype == np.int64


def test_exact_top_k_random_unit_vectors_default_chunks() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((70_000, 32)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    queries = matrix[[5, 69_999, 123]] + 0.01
    scores, rows = exact_top_k(matrix, queries, 26)
    want_scores, want_rows = _reference(matrix, queries, 26)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    assert rows[0, 0] == 5 and rows[1, 0] == 69_999


def test_exact_top_k_empty_and_bad_inputs() -> None:
    matrix = np.eye(4, dtype=np.float32)
    scores, rows = exact_top_k(matrix, np.zeros((0, 4), np.float32), 3)
    assert scores.shape == rows.shape == (0, 3)
    scores, rows = exact_top_k(matrix, matrix[:2], 0)
    assert scores.shape == (2, 0)
    with pytest.raises(ValueError, match="float32"):
        exact_top_k(matrix.astype(np.float64), matrix[:1], 2)
    with pytest.raises(ValueError, match="same width"):
        exact_top_k(matrix, np.zeros((1, 3), np.float32), 2)


def test_array_store_view_searches_exactly() -> None:
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    rng = np.random.default_rng(3)
    vectors = np.round(rng.standard_normal((3000, 16)), 1).astype(np.float32)
    view = ArrayStoreView([f"n{i}" for i in range(len(vectors))], vectors)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    scores, ids = view.search_vectors(queries, 40)
    want_scores, want_rows = _reference(vectors, queries, 40)
    assert ids == [[f"n{j}" for j in row] for row in want_rows.tolist()]
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    scores, ids = view.search_vectors(queries[:1], 10_000)  # k past the store: every node once
    assert sorted(ids[0]) == sorted(view.ids) and scores.shape == (1, 3000)

