"""The "auto" index's graph and probe on bench_backends.py's clustered data (issue 29), raw FAISS.

    python benchmarks/bench_auto_probe.py efc 300000        # build time and recall@10 at efConstruction 40 vs 80
    python benchmarks/bench_auto_probe.py probe 100000 80   # probe recall (within / off sets) beside real queries
    python benchmarks/bench_auto_probe.py random 20000 80   # the same on uniformly random 384-d vectors

Builds run one after the other in one process (one FAISS thread for ``efc``); compare them as ratios.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import clustered  # noqa: E402

from llama_index_deepmemory import index as vi  # noqa: E402

DIM = 384


def efc(n: int) -> None:
    faiss.omp_set_num_threads(1)
    xb, xq = clustered(n, DIM, 0, 1, n // 100), clustered(200, DIM, 0, 2, n // 100)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(xb)
    _, truth = exact.search(xq, 10)
    for ef_construction in (40, 80):
        graph = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        start = time.perf_counter()
        graph.add(xb)
        row = [f"n={n} efC={ef_construction} build={time.perf_counter() - start:.1f}s"]
        for ef in (64, 128, 256, 512):
            graph.hnsw.efSearch = ef
            start = time.perf_counter()
            _, got = graph.search(xq, 10)
            ms = (time.perf_counter() - start) * 1000 / len(xq)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
            row.append(f"ef{ef}:R={recall:.3f},{ms:.2f}ms")
        print(" ".join(row), flush=True)


def probe(n: int, ef_construction: int, random: bool) -> None:
    if random:
        x = np.random.default_rng(5).normal(size=(n + 200, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        xb, xq = x[:n], x[n:]
    else:
        xb, xq = clustered(n, DIM, 0, 1, n // 100), clustered(200, DIM, 0, 3, n // 100)
    faiss.omp_set_num_threads(2)
    graph = vi.VectorIndex(DIM, "cosine", "HNSW32", ef_construction=ef_construction)
    start = time.perf_counter()
    for s in range(0, n, 65536):
        graph.add(np.arange(s, min(n, s + 65536)), xb[s : s + 65536])
    print(f"build {time.perf_counter() - start:.1f}s", flush=True)
    faiss.omp_set_num_threads(1)
    real = graph.search_all_exact(xq, 10)[1]
    for seed in (1, 2):
        inside, outside = vi.probe_queries(graph, np.sort(np.random.default_rng(seed).choice(n, 100, replace=False)), seed + 10)
        t_in, t_out = graph.search_all_exact(inside, 10)[1], graph.search_all_exact(outside, 10)[1]
        row = []
        for ef in (16, 32, 64, 128, 256, 512, 1024):
            graph.set_ef_search(ef)
            row.append(f"ef{ef}: within {vi.probe_recall(graph, inside, t_in):.3f} off "
                       f"{vi.probe_recall(graph, outside, t_out):.3f} real {vi.probe_recall(graph, xq, real):.3f}")
        print(n, seed, " | ".join(row), flush=True)


if __name__ == "__main__":
    mode, size = sys.argv[1], int(sys.argv[2])
    if mode == "efc":
        efc(size)
    else:
        probe(size, int(sys.argv[3]) if len(sys.argv) > 3 else vi.AUTO_EF_CONSTRUCTION, mode == "random")
