"""Retrieval metrics against hand-computed values, a published nDCG example and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_index_deepmemory.metrics import (
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    relevance_weights,
    retrieval_metrics,
)

# one query: "b" (weight 2) at rank 2, "d" (weight 1) at rank 4, "z" (weight 1) never retrieved
RANKED = [["a", "b", "c", "d"]]
RELEVANCE = [[("b", 2.0), ("d", 1.0), ("z", 1.0)]]


def test_weighted_recall_by_hand() -> None:
    assert recall_at_k(RANKED, RELEVANCE, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANCE, 2) == pytest.approx(2 / 4)
    assert recall_at_k(RANKED, RELEVANCE, 4) == pytest.approx(3 / 4)
    assert recall_at_k(RANKED, RELEVANCE, 100) == pytest.approx(3 / 4)  # list shorter than k


def test_hit_rate_and_mrr_by_hand() -> None:
    assert hit_rate_at_k(RANKED, RELEVANCE, 1) == 0.0
    assert hit_rate_at_k(RANKED, RELEVANCE, 2) == 1.0
    assert mrr_at_k(RANKED, RELEVANCE, 1) == 0.0
    assert mrr_at_k(RANKED, RELEVANCE, 4) == pytest.approx(1 / 2)


def test_ndcg_by_hand() -> None:
    dcg = 2 / math.log2(3) + 1 / math.log2(5)  # gains 0, 2, 0, 1 at ranks 1..4
    ideal = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)  # weights 2, 1, 1 best first
    assert ndcg_at_k(RANKED, RELEVANCE, 4) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(RANKED, RELEVANCE, 4) == pytest.approx(0.54059, abs=1e-5)
    # k=2: ideal holds only the two best weights
    assert ndcg_at_k(RANKED, RELEVANCE, 2) == pytest.approx((2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_ndcg_wikipedia_example() -> None:
    """Wikipedia's DCG example: graded relevances 3,2,3,0,1,2 retrieved; two more relevant docs
    (3 and 2) not retrieved. Published values: DCG6 = 6.861, IDCG6 = 8.740, nDCG6 = 0.785."""
    ranked = [["d1", "d2", "d3", "d4", "d5", "d6"]]
    relevance = [[("d1", 3), ("d2", 2), ("d3", 3), ("d4", 0), ("d5", 1), ("d6", 2), ("d7", 3), ("d8", 2)]]
    assert ndcg_at_k(ranked, relevance, 6) == pytest.approx(6.861 / 8.740, abs=5e-4)


def test_means_and_per_query_values() -> None:
    ranked = [["a", "b"], ["x", "y"], ["q"]]
    relevance = [[("b", 1.0)], [("x", 1.0), ("y", 1.0)], [("nope", 1.0)]]
    per_query = recall_at_k(ranked, relevance, 1, per_query=True)
    np.testing.assert_allclose(per_query, [0.0, 0.5, 0.0])
    assert recall_at_k(ranked, relevance, 1) == pytest.approx(0.5 / 3)
    np.testing.assert_allclose(mrr_at_k(ranked, relevance, 2, per_query=True), [0.5, 1.0, 0.0])
    table = retrieval_metrics(ranked, relevance, ks=(1, 2))
    assert set(table) == {f"{m}@{k}" for m in ("recall", "hit_rate", "mrr", "ndcg") for k in (1, 2)}
    assert table["hit_rate@2"] == pytest.approx(2 / 3)
    assert table["recall@2"] == pytest.approx(2 / 3)


def test_duplicates_count_once() -> None:
    # a node retrieved twice counts at its first rank only; a duplicated relevant id keeps its max weight
    assert recall_at_k([["a", "a", "b"]], [[("a", 1.0), ("c", 1.0)]], 3) == pytest.approx(0.5)
    assert relevance_weights([("a", 1.0), ("a", 3.0), ("b", 0.0)]) == {"a": 3.0, "b": 0.0}
    assert ndcg_at_k([["a", "a"]], [[("a", 1.0), ("b", 1.0)]], 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_zero_weight_means_not_relevant() -> None:
    relevance = [[("a", 0.0), ("b", 1.0)]]
    assert recall_at_k([["a"]], relevance, 1) == 0.0
    assert hit_rate_at_k([["a"]], relevance, 1) == 0.0


def test_ndcg_matches_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    n_docs, n_queries = 20, 30
    grades = rng.integers(0, 4, size=(n_queries, n_docs)).astype(float)
    grades[:, 0] = np.maximum(grades[:, 0], 1)  # every query has a relevant doc
    scores = rng.random((n_queries, n_docs))  # distinct scores: no ties
    ids = [f"n{j}" for j in range(n_docs)]
    ranked = [[ids[j] for j in np.argsort(-row)] for row in scores]
    relevance = [[(ids[j], g) for j, g in enumerate(row) if g > 0] for row in grades]
    for k in (1, 5, 10, 20):
        expected = sklearn_metrics.ndcg_score(grades, scores, k=k)
        assert ndcg_at_k(ranked, relevance, k) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("ranked", "relevance", "k", "match"),
    [
        ([["a"]], [[("a", 1.0)], [("b", 1.0)]], 1, "1 ranked id lists but 2 relevance"),
        ([["a"]], [[("a", -1.0)]], 1, "finite and >= 0"),
        ([["a"]], [[("a", float("nan"))]], 1, "finite and >= 0"),
        ([["a"]], [[("a", float("inf"))]], 1, "finite and >= 0"),
        ([["a"]], [[("a", 0.0)]], 1, "no relevant node with a positive weight"),
        ([["a"]], [[("a", 1.0)]], 0, "positive integer"),
        ([["a"]], [["a1"]], 1, r"\(node_id, weight\) pair"),
        ([["a"]], [[("a", "high")]], 1, r"\(node_id, weight\) pair"),
        ([], [], 1, "no queries"),
    ],
)
def test_bad_input_is_refused(ranked, relevance, k, match) -> None:
    with pytest.raises(ValueError, match=match):
        recall_at_k(ranked, relevance, k)


def test_ranked_row_must_be_a_list() -> None:
    with pytest.raises(TypeError, match="list of node ids"):
        recall_at_k(["abc"], [[("a", 1.0)]], 1)


def test_unknown_metric_name() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        retrieval_metrics(RANKED, RELEVANCE, metrics=("precision",))
