"""Issue 26 (finding 5): memory bombs and bad inputs end in one line naming the limit, never a
RecursionError, OverflowError, MemoryError or a silent empty answer."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery
from synthetic import KeywordTask, gated_model

from llama_index_deepmemory.cli import main
from llama_index_deepmemory.data.datasets import read_query_log
from llama_index_deepmemory.filters import MAX_FILTER_DEPTH
from llama_index_deepmemory.metrics import hit_rate_at_k, mrr_at_k, ndcg_at_k, recall_at_k


@pytest.fixture(scope="module")
def keyword_store():
    """80 documents with metadata and an active hand-made model (memory, gate, keyword re-scoring)."""
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    task = KeywordTask(seed=0)
    store = DeepMemoryVectorStore()
    store.add(task.nodes(metadata=True))
    model, _ = gated_model(task, keywords=True)
    store.deep_memory.add_model("gated", model, activate=True)  # as tests/deep_memory/test_gate.py does
    return task, store


def nested(levels: int) -> MetadataFilters:
    """``parity == 1`` wrapped in ``levels`` MetadataFilters in all."""
    filters = MetadataFilters(filters=[MetadataFilter(key="parity", value=1)])
    for _ in range(levels - 1):
        filters = MetadataFilters(filters=[filters])
    return filters


# --- k ------------------------------------------------------------------------------------------
def test_metrics_with_a_huge_k_equal_k_at_the_longest_list() -> None:
    ranked = [["a", "b", "c"], ["d", "x"], []]
    relevance = [[("c", 1.0), ("z", 2.0)], [("x", 1.0)], [("q", 1.0)]]
    for metric in (recall_at_k, hit_rate_at_k, mrr_at_k, ndcg_at_k):
        start = time.perf_counter()
        huge = metric(ranked, relevance, 10**12, per_query=True)  # was a (3, 10**12) float64 array
        assert time.perf_counter() - start < 1.0
        np.testing.assert_allclose(huge, metric(ranked, relevance, 50, per_query=True))
    # known values: ideal DCG still counts both relevant ids of query 0 (weights 2 and 1)
    idcg = 2.0 + 1.0 / math.log2(3)
    assert ndcg_at_k(ranked, relevance, 10**12, per_query=True)[0] == pytest.approx((1.0 / math.log2(4)) / idcg)
    assert recall_at_k(ranked, relevance, 10**12) == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_evaluate_with_a_huge_k_is_recall_at_the_store_size(keyword_store) -> None:
    task, store = keyword_store
    queries, relevance, vectors = task.texts[:20], task.relevance[:20], task.queries[:20]
    huge = store.deep_memory.evaluate(queries, relevance, top_k=(3, 10**9), embedding=vectors)
    exact = store.deep_memory.evaluate(queries, relevance, top_k=(3, len(task.ids)), embedding=vectors)
    for label in ("without model", "with model"):
        assert huge[label]["recall@3"] == exact[label]["recall@3"]
        assert huge[label]["recall@1000000000"] == exact[label][f"recall@{len(task.ids)}"] == 1.0


def test_top_k_above_sys_maxsize_is_one_clear_error(keyword_store) -> None:
    task, store = keyword_store
    query = VectorStoreQuery(query_embedding=task.queries[0].tolist(), similarity_top_k=2**63, query_str=task.texts[0])
    for deep_memory in (True, False):
        with pytest.raises(ValueError, match=f"from 0 to sys.maxsize \\({sys.maxsize}"):
            store.query(query, deep_memory=deep_memory)
    query.similarity_top_k = sys.maxsize  # the largest k is fine: every node, ranked as with k = len(store)
    everything = store.query(query, deep_memory=True)
    query.similarity_top_k = len(task.ids)
    assert everything.ids == store.query(query, deep_memory=True).ids and len(everything.ids) == len(task.ids)



def test_search_ids_with_a_huge_k_returns_every_node_ranked(keyword_store) -> None:
    task, store = keyword_store
    queries = task.queries[:3]
    for deep_memory in (True, False):
        every = store.deep_memory.search_ids(queries, 2**63, deep_memory, texts=task.texts[:3])
        assert every == store.deep_memory.search_ids(queries, len(task.ids), deep_memory, texts=task.texts[:3])
        assert all(len(ids) == len(task.ids) for ids in every)
    with pytest.raises(ValueError, match="k must be an int >= 0, got -1"):
        store.deep_memory.search_ids(queries, -1, True)

# --- filters ------------------------------------------------------------------------------------
def test_filters_nested_past_the_limit_are_refused_and_up_to_it_work(keyword_store) -> None:
    task, store = keyword_store
    query = VectorStoreQuery(query_embedding=task.queries[0].tolist(), similarity_top_k=10)
    flat = store.query(VectorStoreQuery(query_embedding=task.queries[0].tolist(), similarity_top_k=10,
                                        filters=nested(1)), deep_memory=True)
    assert flat.ids and all(node.metadata["parity"] == 1 for node in flat.nodes)
    query.filters = nested(MAX_FILTER_DEPTH)
    assert store.query(query, deep_memory=True).ids == flat.ids
    for levels in (MAX_FILTER_DEPTH + 1, 1000):
        query.filters = nested(levels)
        with pytest.raises(ValueError, match=f"nested more than {MAX_FILTER_DEPTH} levels"):
            store.query(query, deep_memory=True)


def test_langchain_filters_nested_1000_deep_and_nan_thresholds(keyword_store) -> None:
    pytest.importorskip("langchain_core")
    from llama_index_deepmemory.langchain import DeepMemoryLangChainStore, LlamaIndexEmbeddings, metadata_filters

    spec: dict = {"parity": 1}
    for _ in range(1000):
        spec = {"$and": [spec]}
    with pytest.raises(ValueError, match=f"nested more than {MAX_FILTER_DEPTH} levels deep"):
        metadata_filters(spec)
    deep_list: list = []
    for _ in range(5000):
        deep_list = [deep_list]
    with pytest.raises(ValueError, match=r"non-empty filter dict, got \[+\.\.\.\]+$"):
        metadata_filters({"$or": [deep_list]})  # shown shortened, not a RecursionError
    from llama_index.core.embeddings import MockEmbedding

    db = DeepMemoryLangChainStore(LlamaIndexEmbeddings(MockEmbedding(embed_dim=8)))
    db.add_texts(["alpha", "beta", "gamma"], metadatas=[{"n": 1}, {"n": 2}, {"n": 3}])
    assert len(db.similarity_search_with_relevance_scores("alpha", k=3, score_threshold=0.0)) == 3
    for bad in (float("nan"), float("inf"), "0.5"):
        with pytest.raises(ValueError, match="score_threshold must be a finite number"):
            db.similarity_search_with_relevance_scores("alpha", k=3, score_threshold=bad)
    with pytest.raises(ValueError, match="score_threshold must be a finite number"):
        db.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": float("nan")})


# --- files --------------------------------------------------------------------------------------
def test_a_query_log_line_nested_100000_deep_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"query": "ok", "relevant_ids": ["n1"]}) + "\n"
                   + '{"query": "deep", "relevant_ids": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValueError, match=r"log.jsonl:2: JSON nested deeper than Python's parser allows"):
        read_query_log(log)
    shallow = tmp_path / "shallow.jsonl"  # deep enough to need a shortened repr in the message
    shallow.write_text('{"query": "deep", "relevant_ids": [' + "[" * 400 + "]" * 400 + "]}\n")
    with pytest.raises(ValueError, match=r"shallow.jsonl:1: field 'relevant_ids': each entry must be an id"):
        read_query_log(shallow)
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text("{}")
    assert main(["evaluate", "--store", str(store), "--query-log", str(log), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested deeper" in err and "Traceback" not in err


def test_several_query_logs_are_read_as_one(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.csv"
    first.write_text("\n".join(json.dumps(r) for r in [{"query": "q1", "relevant_ids": ["n1"]},
                                                        {"query": "q2", "relevant_ids": [["n2", 2.0]]}]) + "\n")
    second.write_text("query,relevant_ids\nq2,n3\nq3,n4;n5\n")
    queries, relevance = read_query_log([first, second])
    assert queries == ["q1", "q2", "q3"]
    assert relevance == [[("n1", 1.0)], [("n2", 2.0), ("n3", 1.0)], [("n4", 1.0), ("n5", 1.0)]]
    with pytest.raises(ValueError, match="no query log given"):
        read_query_log([])


def test_ingest_refuses_a_non_html_file_and_names_what_a_beir_folder_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    assert main(["ingest", str(png), "--store", str(tmp_path / "s1"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "plot.png is not an HTML file" in err and err.count("\n") == 1 and not (tmp_path / "s1").exists()
    page = tmp_path / "page"  # an HTML file without a suffix is still read
    page.write_text("<!DOCTYPE html><html><body><p>Hello there, reader.</p></body></html>")
    from llama_index_deepmemory.data.html import load_html_documents

    assert [d.text.strip() for d in load_html_documents(page, show_progress=False)] == ["Hello there, reader."]

    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "hello"}) + "\n")
    assert main(["ingest", str(beir), "--store", str(tmp_path / "s2"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "queries.jsonl is missing" in err and "corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv" in err
    assert "no HTML pages" not in err and not (tmp_path / "s2").exists()
