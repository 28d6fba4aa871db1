"""Where an approximate index pays: raw FAISS ``HNSW32`` against exact ``Flat`` at growing sizes,
side by side in one run (a measurement, not a test).

For each size: add seconds (batches of 2048, FAISS's threads), single-query k=10 p50 (one thread,
interleaved), and recall@10 against exact search for a few ``efSearch`` values, on
``bench_backends``' clustered data (``n // 100`` centres) and on Gaussian random data.

    python benchmarks/bench_ann_threshold.py [--sizes 10000,20000,50000,100000] [--ef 16,32,64,128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def data(kind: str, n: int, m: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit corpus (n, dim) and queries (m, dim): ``clustered`` or ``random``."""
    if kind == "clustered":
        from bench_backends import clustered

        clusters = max(10, n // 100)
        return clustered(n, dim, seed, 1, clusters), clustered(m, dim, seed, 3, clusters)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + m, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:n], x[n:]


def p50(fn, items) -> float:
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,20000,50000,100000")
    parser.add_argument("--ef", default="16,32,64,128")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--kinds", default="clustered,random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import faiss

    threads = faiss.omp_get_max_threads()
    efs = [int(e) for e in args.ef.split(",")]
    print(f"faiss {faiss.__version__}, {threads} threads for adds, 1 for queries; dim {args.dim}, k=10")
    for kind in args.kinds.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            x, q = data(kind, n, args.queries, args.dim, args.seed)
            faiss.omp_set_num_threads(threads)
            flat, hnsw = faiss.IndexFlatIP(args.dim), faiss.IndexHNSWFlat(args.dim, 32, faiss.METRIC_INNER_PRODUCT)
            adds = []
            for index in (flat, hnsw):
                t0 = time.perf_counter()
                for s in range(0, n, 2048):
                    index.add(x[s : s + 2048])
                adds.append(time.perf_counter() - t0)
            _, truth = flat.search(q, 10)
            faiss.omp_set_num_threads(1)
            rows = [q[i : i + 1] for i in range(len(q))]
            flat_p50 = p50(lambda r: flat.search(r, 10), rows)
            cells = []
            for ef in efs:
                hnsw.hnsw.efSearch = ef
                _, got = hnsw.search(q, 10)
                recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())])
                h50 = p50(lambda r: hnsw.search(r, 10), rows)
                h66 = p50(lambda r: hnsw.search(r, 66), rows)
                cells.append(f"ef{ef}: R {recall:.3f} p50 {h50 * 1e3:.3f}ms ({h50 / flat_p50:.3f}x; k=66 {h66 / h50:.2f}x)")
            print(f"{kind:9s} n={n:>7d} add flat {adds[0]:.2f}s hnsw {adds[1]:.2f}s | flat p50 {flat_p50 * 1e3:.3f}ms | "
                  + " | ".join(cells), flush=True)
            faiss.omp_set_num_threads(threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
