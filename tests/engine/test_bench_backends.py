"""``benchmarks/bench_backends.py`` on a tiny corpus: exact stores find exactly NumPy's top 10.

Runs the benchmark's own measurement (inline, two exact backends, 500 nodes) and checks what it
reports against brute-force NumPy search, so a broken id mapping or data generator fails here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("llama_index.vector_stores.faiss")
import bench_backends  # noqa: E402


def test_exact_stores_reach_recall_one_and_report_every_column(tmp_path) -> None:
    args = bench_backends.parse_args(["--n", "500", "--queries", "20", "--tune-queries", "5", "--words", "5",
                                      "--skip-deep-memory", "--inline"])  # Deep Memory: numba compile time
    results = []
    for name in ("ours-flat", "faiss"):
        work = tmp_path / name
        work.mkdir()
        results.append(bench_backends.measure(name, args, work, 500))
    for result in results:
        assert result["n"] == 500 and result["queries"] == 20
        assert result["recall"] == 1.0, result  # exact search against exact NumPy search
        assert result["add_per_s"] > 0 and result["p50_ms"] > 0 and result["peak_mib"] > 0
    assert results[1]["deep_memory"] is None  # FaissVectorStore keeps no text: not wrappable
    assert results[1]["p50_with_docstore_over_raw"] > 0  # its nodes read from a docstore, as a retriever does
    table = bench_backends.table(results)
    assert "n/a (keeps no text)" in table and "| ours-flat | 500 |" in table and "not run" in table


def test_the_data_has_structure_and_the_exact_search_is_exact() -> None:
    vectors = bench_backends.clustered(400, 16, 0, 1, clusters=8)
    queries = bench_backends.clustered(5, 16, 0, 3, clusters=8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    top = bench_backends.exact_top(vectors, queries, k=10)
    scores = queries @ vectors.T
    for row, best in zip(scores, top):
        assert set(best) == set(np.argsort(-row)[:10])
    # clustered: a query's nearest neighbours are far closer than a random node
    assert np.take_along_axis(scores, top, axis=1).mean() > scores.mean() + 0.3


def test_backend_specs_are_checked() -> None:
    assert bench_backends.parse_backends("ours-flat,simple@50", 100, 1000) == [("ours-flat", 100), ("simple", 50)]
    assert bench_backends.parse_backends("simple", 100, 30) == [("simple", 30)]
    with pytest.raises(SystemExit, match="unknown backend 'pinecone'"):
        bench_backends.parse_backends("pinecone", 100, 30)
    with pytest.raises(SystemExit, match="between 1 and --n"):
        bench_backends.parse_backends("qdrant@500", 100, 30)


def test_raw_hnsw_row_reaches_the_tuned_recall_against_numpy(tmp_path) -> None:
    args = bench_backends.parse_args(["--n", "600", "--queries", "20", "--tune-queries", "10", "--words", "5",
                                      "--skip-deep-memory", "--inline", "--recall", "0.99"])
    result = bench_backends.measure("faiss-hnsw", args, tmp_path, 600)
    assert result["param"] == "efSearch" and result["param_value"] in bench_backends.BACKEND_TYPES["faiss-hnsw"].grid
    assert result["tuning"][-1][1] >= 0.99 or result["param_value"] == 512, result["tuning"]
    assert result["recall"] >= 0.9, result  # on the measured queries, against exact NumPy search
    assert result["deep_memory"] is None  # ids only: nothing to wrap
    assert "IndexHNSWFlat" in bench_backends.table([result])


def test_a_capped_add_stops_and_reports_its_projection(tmp_path) -> None:
    args = bench_backends.parse_args(["--n", "500", "--batch", "100", "--words", "5", "--inline",
                                      "--max-add-minutes", "1e-9"])
    result = bench_backends.measure("ours-flat", args, tmp_path, 500)
    assert result["projected"] and result["added"] == 100  # stopped after the first batch
    assert result["projected_add_s"] == pytest.approx(result["add_s"] * 5)
    assert "not run: projected" in bench_backends.table([result])
    assert "not run: projected" in bench_backends.scaling_table([result])


def test_sizes_are_checked() -> None:
    args = bench_backends.parse_args(["--n", "2000,1000"])
    assert args.sizes == [2000, 1000] and args.n == 2000
    assert bench_backends.parse_args(["--n", "300"]).n == 300
    with pytest.raises(SystemExit, match="node counts separated by commas"):
        bench_backends.parse_args(["--n", "10k"])


def test_the_default_row_says_which_index_the_store_chose(tmp_path) -> None:
    """Below 20,000 nodes the default holds the exact index: recall 1.0 and "holds Flat" in both tables."""
    args = bench_backends.parse_args(["--n", "300", "--queries", "10", "--tune-queries", "5", "--words", "5",
                                      "--skip-deep-memory", "--inline"])
    result = bench_backends.measure("ours-auto", args, tmp_path, 300)
    assert result["recall"] == 1.0 and result["held"] == "holds Flat"
    assert "default (auto: Flat below 20,000 nodes" in bench_backends.table([result])
    assert "1.000 (default; holds Flat)" in bench_backends.scaling_table([result])
