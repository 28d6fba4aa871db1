"""The one top k (llama_index_deepmemory.topk) against plain Python sorting, ties included."""

from __future__ import annotations

import numpy as np

from llama_index_deepmemory.topk import stable_order, top_k


def python_order(row: np.ndarray) -> list[int]:
    """Best first, equal scores in input order: Python's stable sort on (-score, position)."""
    return sorted(range(len(row)), key=lambda i: (-float(row[i]), i))


def test_stable_order_matches_python_sorting_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(20, 30)).astype(np.float32)  # many ties
    assert [python_order(row) for row in scores] == stable_order(scores).tolist()
    assert stable_order(scores[0], depth=7).tolist() == python_order(scores[0])[:7]
    assert stable_order(np.array([], dtype=np.float32)).tolist() == []


def test_top_k_is_the_head_of_the_full_order() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(8, 50)).astype(np.float32)  # distinct: the k best are unique
    ids = np.tile(np.arange(100, 150), (8, 1))
    for k in (0, 1, 5, 50, 80):
        best, best_ids = top_k(scores, ids, k)
        expected = [python_order(row)[:k] for row in scores]
        assert best_ids.tolist() == [[100 + j for j in row] for row in expected]
        np.testing.assert_array_equal(best, np.take_along_axis(scores, np.array(expected, dtype=int).reshape(8, -1), axis=1))
