"""Training time and peak memory of Deep Memory on large random corpora (default 1M nodes).

    python benchmarks/bench_train_scale.py [--nodes 1000000] [--dim 384] [--queries 1000]

Random unit vectors stand in for a corpus; each training query is a noisy mix of one node and a
fixed random rotation of it, so plain search is mediocre and a linear adapter has a signal to find. The corpus is served by a FAISS flat index through the StoreView
protocol (the same calls the real store answers); above ``full_softmax_max_nodes`` the trainer
never loads the corpus into torch: it mines hard negatives with ``search_vectors``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB, Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.3, help="query noise (relative to a unit vector)")
    parser.add_argument("--options", default='{"epochs": 10}', help="JSON TrainOptions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    vectors = np.empty((args.nodes, args.dim), dtype=np.float32)
    for lo in range(0, args.nodes, 100_000):  # chunked so the float64 draw stays small
        chunk = rng.standard_normal((min(100_000, args.nodes - lo), args.dim), dtype=np.float32)
        vectors[lo : lo + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    store = ArrayStoreView([f"n{i}" for i in range(args.nodes)], vectors)
    build_s = time.perf_counter() - start
    rss_store = peak_rss_mib()

    targets = rng.integers(0, args.nodes, size=args.queries)
    rotation, _ = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))
    noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * args.noise / np.sqrt(args.dim)
    own = vectors[targets]
    queries = (0.3 * own + 0.95 * own @ rotation.T.astype(np.float32) + noise).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    relevance = [[(f"n{t}", 1.0)] for t in targets]

    options = TrainOptions.from_kwargs(json.loads(args.options))
    start = time.perf_counter()
    result = train_model(store, queries, relevance, options=options)
    train_s = time.perf_counter() - start
    print(
        f"nodes={args.nodes} dim={args.dim} queries={args.queries}: store build {build_s:.1f}s "
        f"(peak RSS {rss_store:.0f} MiB, vectors {vectors.nbytes / 2**20:.0f} MiB + FAISS copy); "
        f"training {train_s:.1f}s, peak RSS {peak_rss_mib():.0f} MiB; "
        f"val nDCG@10 {result.val_before['ndcg@10']:.3f} -> {result.val_after['ndcg@10']:.3f}, "
        f"improved={result.improved}; info={result.info}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
