"""Retriever comparison on a tiny LlamaIndex index with hand-set embeddings (known rankings)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.schema import TextNode

from llama_index_deepmemory.evaluation import (
    display_results,
    evaluate_dataset,
    evaluate_retrievers,
    plot_recall_at_k,
    recall_at_k_table,
    recall_curves,
)

# four orthogonal nodes; query vectors chosen so cosine rankings are known without ties
NODE_VECTORS = {f"n{i}": np.eye(4)[i].tolist() for i in range(4)}
QUERY_VECTORS = {
    "alpha": [0.9, 0.5, 0.1, 0.0],   # ranking n0, n1, n2, n3
    "beta": [0.1, 0.2, 0.9, 0.5],    # ranking n2, n3, n1, n0
    "gamma": [0.05, 0.0, 0.3, 0.9],  # ranking n3, n2, n0, n1
}
# the "perfect" embedding puts each query on its first relevant node
PERFECT_VECTORS = {"alpha": [0.1, 0.9, 0.0, 0.0], "beta": [0.9, 0.0, 0.1, 0.0], "gamma": [0.5, 0.0, 0.0, 0.9]}
DATASET = SimpleNamespace(
    queries={"qa": "alpha", "qb": "beta", "qc": "gamma"},
    relevant_docs={"qa": ["n1"], "qb": ["n0"], "qc": ["n3", "n0"]},
    corpus={},
)


class TableEmbedding(BaseEmbedding):
    """Looks query vectors up in a table (a real LlamaIndex embedding, no network)."""

    table: dict[str, list[float]] = Field(default_factory=dict)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.table[query]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self.table[query]

    def _get_text_embedding(self, text: str) -> list[float]:
        raise AssertionError("node embeddings are set by hand")


def make_retriever(table: dict[str, list[float]], top_k: int, store: str = "simple") -> Any:
    """A real VectorStoreIndex retriever over LlamaIndex's SimpleVectorStore or our store."""
    from llama_index.core import StorageContext

    nodes = [TextNode(id_=node_id, text=node_id, embedding=vec) for node_id, vec in NODE_VECTORS.items()]
    kwargs: dict[str, Any] = {}
    if store == "deepmemory":
        from llama_index_deepmemory.store import DeepMemoryVectorStore

        kwargs["storage_context"] = StorageContext.from_defaults(vector_store=DeepMemoryVectorStore())
    index = VectorStoreIndex(nodes, embed_model=TableEmbedding(table=table), **kwargs)
    return index.as_retriever(similarity_top_k=top_k)


@pytest.mark.parametrize("store", ["simple", "deepmemory"])
def test_metrics_match_hand_computed_values(store: str) -> None:
    results = evaluate_dataset(
        make_retriever(QUERY_VECTORS, top_k=3, store=store),
        DATASET,
        ("hit_rate", "mrr", "precision", "recall", "ndcg"),
        workers=2,
    )
    assert [r.query for r in results] == ["alpha", "beta", "gamma"]  # dataset order kept
    assert results[0].retrieved_ids == ["n0", "n1", "n2"]
    table = display_results(["plain"], [results])
    row = table.iloc[0]
    assert list(table.columns) == ["retrievers", "hit_rate", "mrr", "precision", "recall", "ndcg"]
    assert row["hit_rate"] == pytest.approx(2 / 3)
    assert row["mrr"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert row["precision"] == pytest.approx((1 / 3 + 0 + 2 / 3) / 3)
    assert row["recall"] == pytest.approx((1 + 0 + 1) / 3)
    # LlamaIndex nDCG: linear gain, ideal DCG over all expected ids
    ndcg_alpha = (1 / math.log2(3)) / 1.0
    ndcg_gamma = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert row["ndcg"] == pytest.approx((ndcg_alpha + 0 + ndcg_gamma) / 3)


def test_evaluate_retrievers_compares_side_by_side() -> None:
    table = evaluate_retrievers(
        {"without deep memory": make_retriever(QUERY_VECTORS, 3), "with deep memory": make_retriever(PERFECT_VECTORS, 3)},
        DATASET,
        workers=1,
    )
    assert list(table.columns) == ["retrievers", "hit_rate", "mrr"]
    assert table["retrievers"].tolist() == ["without deep memory", "with deep memory"]
    assert table["hit_rate"].tolist() == pytest.approx([2 / 3, 1.0])
    assert table["mrr"].tolist() == pytest.approx([0.5, 1.0])


def test_recall_curve_from_retrievers() -> None:
    curves = recall_curves({"plain": make_retriever(QUERY_VECTORS, 4)}, DATASET, ks=[1, 2, 3, 4], workers=3)
    assert curves.index.tolist() == [1, 2, 3, 4]
    assert curves["plain"].tolist() == pytest.approx([1 / 6, 1 / 2, 2 / 3, 1.0])


def test_recall_table_and_plot(tmp_path: Path) -> None:
    relevance = [[("a", 1.0)], [("b", 1.0), ("c", 1.0)]]
    table = recall_at_k_table(
        {"without": [["x", "a"], ["b", "y"]], "with": [["a", "x"], ["b", "c"]]}, relevance, ks=range(1, 101)
    )
    assert table.loc[1].tolist() == pytest.approx([0.25, 0.75])
    assert table.loc[2].tolist() == pytest.approx([0.75, 1.0])
    path = plot_recall_at_k(table, tmp_path / "plots" / "recall.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert [p.name for p in path.parent.iterdir()] == ["recall.png"]  # no temporary file left
    with pytest.raises(ValueError, match=".png"):
        plot_recall_at_k(table, tmp_path / "recall.jpg")


def test_bad_inputs_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate_dataset(make_retriever(QUERY_VECTORS, 3), DATASET, ("hit_rate", "f1"))
    with pytest.raises(TypeError, match="EmbeddingQAFinetuneDataset"):
        evaluate_dataset(make_retriever(QUERY_VECTORS, 3), {"queries": {}})
    with pytest.raises(ValueError, match="no relevant node"):
        evaluate_dataset(make_retriever(QUERY_VECTORS, 3), SimpleNamespace(queries={"q": "alpha"}, relevant_docs={}))
    with pytest.raises(ValueError, match="workers"):
        evaluate_dataset(make_retriever(QUERY_VECTORS, 3), DATASET, workers=0)
    with pytest.raises(ValueError, match="one name per retriever"):
        display_results(["a", "b"], [[]])


def test_plot_is_in_percent_zoomed_to_the_data_and_annotates_the_gain(tmp_path: Path) -> None:
    import pandas as pd

    from llama_index_deepmemory.evaluation import recall_figure

    ks = list(range(1, 101))
    without = [min(1.0, 0.596 + 0.004 * (k - 1)) for k in ks]
    with_dm = [min(1.0, w + (0.019 if k == 1 else -0.038 if k in (3, 5) else 0.0)) for k, w in zip(ks, without)]
    table = pd.DataFrame({"without deep memory": without, "with deep memory": with_dm}, index=pd.Index(ks, name="k"))
    axes = recall_figure(table).axes[0]
    low, high = axes.get_ylim()
    assert 50.0 < low < 59.6 and 100.0 <= high <= 104.0  # zoomed to 59.6..100 %, not 0..1
    assert "%" in axes.get_ylabel()
    assert [line.get_ydata()[0] for line in axes.get_lines()] == pytest.approx([59.6, 61.5])
    notes = {text.xy[0]: text.get_text() for text in axes.texts if hasattr(text, "xy")}
    assert any("in recall points" in text.get_text() for text in axes.texts)
    assert notes[1] == "+1.9" and notes[3] == "-3.8" and notes[5] == "-3.8" and notes[100] == "+0.0"
    path = plot_recall_at_k(table, tmp_path / "r.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_relevant_id_listed_twice_counts_once() -> None:
    # relevant_docs {"qa": ["n1", "n1"]} (a hand-edited file): the same judgement as ["n1"], as in metrics.py
    doubled = SimpleNamespace(
        queries=DATASET.queries, relevant_docs={**DATASET.relevant_docs, "qa": ["n1", "n1"]}, corpus={}
    )
    names = ("hit_rate", "mrr", "precision", "recall", "ap", "ndcg")
    retriever = make_retriever(QUERY_VECTORS, top_k=3)
    once = [r.metric_vals_dict for r in evaluate_dataset(retriever, DATASET, names)]
    twice = [r.metric_vals_dict for r in evaluate_dataset(retriever, doubled, names)]
    assert twice == once
    assert twice[0]["ndcg"] == pytest.approx(1 / math.log2(3))
