"""The one relevance validator (llama_index_deepmemory.relevance) and its three callers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llama_index_deepmemory.data.datasets import validate_query_relevance
from llama_index_deepmemory.relevance import validate_relevance


def test_normalises_pairs_merges_duplicates_and_keeps_order() -> None:
    queries, rows = validate_relevance(("q1", "q2"), [[("b", 1), ("a", np.float32(0.5)), ("b", 3.0)], [("c", 0.0), ("a", 2)]])
    assert queries == ["q1", "q2"]
    assert rows == [[("b", 3.0), ("a", 0.5)], [("c", 0.0), ("a", 2.0)]]
    assert all(type(w) is float for row in rows for _, w in row)
    _, rows = validate_relevance(None, [["a", ("b", 2)]], bare_ids=True, n_queries=1)
    assert rows == [[("a", 1.0), ("b", 2.0)]]


@pytest.mark.parametrize(
    ("queries", "relevance", "kwargs", "error", "match"),
    [
        (["q"], [[("a", 1.0)], [("b", 1.0)]], {}, ValueError, r"got 1 queries but 2 relevance lists"),
        (None, [[("a", 1.0)]], {"n_queries": 3}, ValueError, r"got 3 queries but 1 relevance lists"),
        ("q", [[("a", 1.0)]], {}, TypeError, r"queries must be a list of strings, got str"),
        ([], [], {}, ValueError, r"queries is empty"),
        (["q"], None, {}, TypeError, r"relevance must be a list of lists .* got NoneType"),
        ([3], [[("a", 1.0)]], {}, TypeError, r"queries\[0\] is a int \(3\), expected a non-empty string"),
        (["\n"], [[("a", 1.0)]], {}, ValueError, r"queries\[0\] is an empty string \('\\n'\)"),
        (["q"], ["a"], {}, ValueError, r"relevance\[0\] is 'a'; each query needs a non-empty list"),
        (["q"], [["a"]], {}, ValueError, r"relevance\[0\]\[0\] is 'a'; each entry must be a \(node_id, weight\) pair"),
        (["q"], [[("a", 1.0, 2.0)]], {"bare_ids": True}, ValueError, r"pair or a node id"),
        (["q"], [[("", 1.0)]], {}, ValueError, r"relevance\[0\]\[0\]: the node id must be a non-empty string, got ''"),
        (["q"], [[(3, 1.0)]], {}, ValueError, r"the node id must be a non-empty string, got 3"),
        (["q"], [[("a", "1")]], {}, ValueError, r"gives node 'a' the weight '1'; weights must be numbers"),
        (["q"], [[("a", True)]], {}, ValueError, r"the weight True"),
        (["q"], [[("a", -1.0)]], {}, ValueError, r"finite and >= 0"),
        (["q"], [[("a", math.inf)]], {}, ValueError, r"the weight inf"),
        (["q"], [[("a", 0.0)]], {}, ValueError, r"relevance\[0\] has no node with a positive weight"),
        (["q", "r"], [[("a", 1.0)], [("b", 1.0), ("z", 1.0)]], {"known_ids": {"a", "b"}}, ValueError,
         r"relevance\[1\] \(query 'r'\) names unknown ids \['z'\] \(1 unknown id\(s\) in all\)"),
        (None, [[("x", 1.0)]], {"known_ids": lambda ids: [i for i in ids if i != "a"]}, ValueError,
         r"relevance\[0\] names unknown ids \['x'\]"),
    ],
)
def test_bad_input_gets_an_error_naming_value_and_fix(queries, relevance, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        validate_relevance(queries, relevance, **kwargs)


def test_the_data_readers_accept_bare_ids_and_share_the_rules() -> None:
    assert validate_query_relevance(["q"], [["a", ("a", 2), ("b", 0)]]) == (["q"], [[("a", 2.0), ("b", 0.0)]])
    with pytest.raises(ValueError, match=r"relevance\[0\] has no node with a positive weight"):
        validate_query_relevance(["q"], [[("a", 0)]])


def test_metrics_use_the_same_rule_and_message() -> None:
    from llama_index_deepmemory.metrics import recall_at_k

    for bad in ([[("a", -1.0)]], [[("a", "1")]], [["a"]], [[("", 1.0)]]):
        with pytest.raises(ValueError) as from_validator:
            validate_relevance(["q"], bad)
        with pytest.raises(ValueError) as from_metrics:
            recall_at_k([["a"]], bad, 1)
        assert str(from_metrics.value) == str(from_validator.value)
    assert recall_at_k([["b", "a"]], [[("a", 1.0), ("b", 0.0)]], 1) == 0.0  # weight 0: judged, not relevant
