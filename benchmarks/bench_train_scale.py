"""Training time and peak memory of Deep Memory on large random corpora (default 1M nodes).

    python benchmarks/bench_train_scale.py [--nodes 1000000] [--dim 384] [--queries 1000]

Random unit vectors stand in for a corpus; each training query is a noisy mix of one node and a
fixed random rotation of it, so plain search is mediocre and a linear adapter has a signal to find. The corpus is served exactly by an ``ArrayStoreView``
(chunked BLAS products over the vectors in place) or a real embedded store, through the StoreView
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the package, when not installed

logger = logging.getLogger(__name__)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB, Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SearchCounter:
    """Counts the query rows sent to a store's ``search_vectors`` (the cost that grows with the corpus)."""

    def __init__(self, search) -> None:
        self.search, self.rows = search, 0

    def __call__(self, queries, k, **kwargs):
        self.rows += len(queries)
        return self.search(queries, k, **kwargs)


def random_unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):  # chunked so the draw stays small
        chunk = rng.standard_normal((min(100_000, n - lo), dim), dtype=np.float32)
        vectors[lo : lo + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return vectors


def embedded_store(vectors: np.ndarray, batch: int = 10_000):
    """A real ``DeepMemoryVectorStore`` (embedded FAISS backend) holding ``vectors`` as nodes ``n<i>``."""
    from llama_index.core.schema import TextNode

    from llama_index_deepmemory import DeepMemoryVectorStore

    store = DeepMemoryVectorStore()
    for lo in range(0, len(vectors), batch):
        store.add([
            TextNode(id_=f"n{i}", text=f"node {i}", embedding=vectors[i].tolist())
            for i in range(lo, min(len(vectors), lo + batch))
        ])
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.3, help="query noise (relative to a unit vector)")
    parser.add_argument("--options", default='{"epochs": 10}', help="JSON TrainOptions")
    parser.add_argument(
        "--store", choices=("view", "embedded"), default="view",
        help="view: the exact ArrayStoreView; embedded: a real DeepMemoryVectorStore (FAISS backend), "
        "nodes added through its add(), trained with store.deep_memory.train",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    vectors = random_unit_vectors(rng, args.nodes, args.dim)
    if args.store == "view":
        store = ArrayStoreView([f"n{i}" for i in range(args.nodes)], vectors)
        view = store
    else:
        store = embedded_store(vectors)
        view = store._backend  # the StoreView that training searches
    counter = SearchCounter(view.search_vectors)
    view.search_vectors = counter
    build_s = time.perf_counter() - start
    rss_store = peak_rss_mib()

    targets = rng.integers(0, args.nodes, size=args.queries)
    rotation, _ = np.linalg.qr(rng.standard_normal((args.dim, args.dim)))
    noise = rng.standard_normal((args.queries, args.dim), dtype=np.float32) * args.noise / np.sqrt(args.dim)
    own = vectors[targets]
    queries = (0.3 * own + 0.95 * own @ rotation.T.astype(np.float32) + noise).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    relevance = [[(f"n{t}", 1.0)] for t in targets]

    options = json.loads(args.options)
    start = time.perf_counter()
    if args.store == "view":
        result = train_model(store, queries, relevance, options=TrainOptions.from_kwargs(options))
        val_before, val_after, improved, info = result.val_before, result.val_after, result.improved, result.info
    else:
        job = store.deep_memory.wait(
            store.deep_memory.train([f"q{i}" for i in range(args.queries)], relevance, embedding=queries, **options)
        )
        if job["status"] != "completed":
            raise SystemExit(f"training job ended {job['status']}: {job['error']}")
        val_before, val_after, improved, info = job["val_before"], job["val_after"], job["active"], job["info"]
    train_s = time.perf_counter() - start
    copy = " + FAISS copy" if args.store == "embedded" or not hasattr(view, "vectors") else ""
    print(
        f"{args.store}: nodes={args.nodes} dim={args.dim} queries={args.queries}: store build {build_s:.1f}s "
        f"(peak RSS {rss_store:.0f} MiB, vectors {vectors.nbytes / 2**20:.0f} MiB{copy}); "
        f"training {train_s:.1f}s, peak RSS {peak_rss_mib():.0f} MiB, {counter.rows} query rows searched; "
        f"val nDCG@10 {val_before['ndcg@10']:.3f} -> {val_after['ndcg@10']:.3f}, activated={improved}; info={info}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
