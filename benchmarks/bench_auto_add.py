"""Where the default store's add time goes past 20,000 nodes: ours beside raw FAISS HNSW (issue 29).

    python benchmarks/bench_auto_add.py --n 200000              # the first 200k nodes of the 1M data
    python benchmarks/bench_auto_add.py --n 200000 --threads 2

Adds the same ``bench_backends.py`` nodes (clustered 384-d, ``--clusters`` centres: 10,000 as at 1M,
batches of 2,048 TextNodes with 100-word texts) to three stores, batch by batch in turn, in one process
(so the machine's load falls on all three alike; read the ratios):

* ``ours``: ``DeepMemoryVectorStore()``, the default ``index_factory="auto"`` (Flat below 20,000 nodes,
  then HNSW32 at ``efConstruction`` 80, re-probed at each doubling), through ``store.add(nodes)``;
* ``raw80``: ``faiss.IndexHNSWFlat(384, 32, METRIC_INNER_PRODUCT)`` with ``efConstruction`` 80, ``add``
  of the batch's embeddings (stacked untimed);
* ``raw40``: the same at FAISS's default ``efConstruction`` 40 (what ``faiss-hnsw`` in bench_backends uses).

Ours is split into the FAISS adds (``VectorIndex.add``, the conversion's graph build included), the
conversion and re-probes apart from their adds (``faiss_auto.maintained``), and the rest (node
encoding, node table, normalisation), timed by wrapping those two functions.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import clustered, node_batches  # noqa: E402

DIM = 384


class Split:
    """Seconds of ours' FAISS adds and of ``maintained`` (conversion, probes), by wrapping both."""

    def __init__(self) -> None:
        self.faiss_add = 0.0  # every VectorIndex.add, the conversion's graph build included
        self.maintained = 0.0  # faiss_auto.maintained, its adds included
        self.adds_in_maintained = 0.0
        self._in_maintained = False
        self._undo: list[Callable[[], None]] = []

    def install(self, index_class: Any, auto_module: Any) -> None:
        add, maintained = index_class.add, auto_module.maintained

        def timed_add(index: Any, ids: Any, vectors: Any) -> None:
            start = time.perf_counter()
            try:
                add(index, ids, vectors)
            finally:
                spent = time.perf_counter() - start
                self.faiss_add += spent
                if self._in_maintained:
                    self.adds_in_maintained += spent

        def timed_maintained(store: Any, index: Any) -> Any:
            start, self._in_maintained = time.perf_counter(), True
            try:
                return maintained(store, index)
            finally:
                self._in_maintained = False
                self.maintained += time.perf_counter() - start

        index_class.add, auto_module.maintained = timed_add, timed_maintained
        self._undo = [lambda: setattr(index_class, "add", add), lambda: setattr(auto_module, "maintained", maintained)]

    def uninstall(self) -> None:
        for undo in self._undo:
            undo()

    @property
    def probes(self) -> float:
        """``maintained`` without its FAISS adds: probe queries, exact truths, probe searches."""
        return max(0.0, self.maintained - self.adds_in_maintained)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--clusters", type=int, default=10_000, help="data centres (bench_backends: n // 100 of its --n)")
    parser.add_argument("--threads", type=int, default=1, help="FAISS/OpenMP threads for every store")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--every", type=int, default=16, help="print a line every this many batches")
    args = parser.parse_args(argv)

    import faiss

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory import index as vector_index
    from llama_index_deepmemory.engine import faiss_store

    faiss.omp_set_num_threads(args.threads)
    vectors = clustered(args.n, DIM, 0, 1, args.clusters)
    split = Split()
    split.install(vector_index.VectorIndex, faiss_store.faiss_auto)
    store = DeepMemoryVectorStore()
    raws = {}
    for ef_construction in (80, 40):
        raws[ef_construction] = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        raws[ef_construction].hnsw.efConstruction = ef_construction
    seconds = {"ours": 0.0, "raw80": 0.0, "raw40": 0.0}
    print(f"n={args.n} clusters={args.clusters} threads={args.threads} faiss {faiss.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {os.getloadavg()[0]:.2f}", flush=True)
    print("| nodes | ours nodes/s | raw80 nodes/s | raw40 nodes/s | ours / raw80 time | raw80 / raw40 time "
          "| ours: FAISS adds s | conversion + probes s (without their adds) | rest s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    added = 0
    try:
        for i, batch in enumerate(node_batches(vectors, 0, 100, args.batch)):
            embeddings = np.asarray([node.embedding for node in batch], dtype=np.float32)
            start = time.perf_counter()
            store.add(batch)
            seconds["ours"] += time.perf_counter() - start
            for ef_construction, raw in raws.items():
                start = time.perf_counter()
                raw.add(embeddings)
                seconds[f"raw{ef_construction}"] += time.perf_counter() - start
            added += len(batch)
            if (i + 1) % args.every == 0 or added == args.n:
                print(f"| {added:,} | {added / seconds['ours']:,.0f} | {added / seconds['raw80']:,.0f} | "
                      f"{added / seconds['raw40']:,.0f} | {seconds['ours'] / seconds['raw80']:.3f} | "
                      f"{seconds['raw80'] / seconds['raw40']:.3f} | {split.faiss_add:.1f} | {split.probes:.1f} | "
                      f"{seconds['ours'] - split.faiss_add - split.probes:.1f} | "
                      f"{os.getloadavg()[0]:.2f} |", flush=True)
    finally:
        split.uninstall()
    engine = store._backend  # the embedded FAISS store
    print(f"ours holds {engine.index_in_use} (ef_search {engine._index.ef_search}); "
          f"ended {time.strftime('%H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
