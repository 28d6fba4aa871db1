"""Where the time of served ``store.query`` calls goes, Deep Memory against plain: each step wrapped
with a timer inside real queries (so every step sees the caches a real query leaves it), on
``bench_auto_index``'s clustered data and model (a measurement, not a test). Prints the mean µs per
query of each step, for dense and keyword queries, with ``deep_memory=True`` and ``False``. The
timers add ~0.3 µs per wrapped call.

    python benchmarks/bench_query_steps.py [--n 100000] [--queries 300] [--index-factory auto|Flat|HNSW32]
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import clustered  # noqa: E402
from bench_store import batches, make_nodes, synthetic_texts, trained_like_model  # noqa: E402

_SPENT: dict[str, int] = collections.defaultdict(int)
_CALLS: dict[str, int] = collections.defaultdict(int)


def _timed(owner: object, name: str, label: str) -> None:
    """Replace ``owner.name`` with a version that adds its time to ``label``."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter_ns()
        try:
            return function(*args, **kwargs)
        finally:
            _SPENT[label] += time.perf_counter_ns() - t0
            _CALLS[label] += 1

    setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--index-factory", default="auto")
    args = parser.parse_args(argv)

    import faiss
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory import kernels, models, ranking
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
    from llama_index_deepmemory.engine import faiss_store, faiss_view

    n, dim, m = args.n, 384, args.queries
    clusters = max(10, n // 100)
    vectors, queries = clustered(n, dim, 0, 1, clusters), clustered(m, dim, 0, 3, clusters)
    store = DeepMemoryVectorStore(index_factory=args.index_factory)
    faiss.omp_set_num_threads(2)
    for chunk in batches(make_nodes(vectors), 2048):
        store.add(chunk)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    model, memory_unit = trained_like_model(vectors, 1000, 1000, rng)
    keyword_model = model.replace(lexical=LexicalIndex([f"node-{i}" for i in range(n)], synthetic_texts(n, 100, rng)),
                                  lexical_weight=0.1)
    near = memory_unit[rng.integers(0, len(memory_unit), m)] + 0.8 * queries / np.sqrt(dim)
    asked = [(near[i] if i % 2 == 0 else queries[i]).tolist() for i in range(m)]
    strings = synthetic_texts(m, 8, rng)
    store.deep_memory.add_model("dense", model, activate=True)
    store.deep_memory.add_model("keywords", keyword_model, activate=False)
    print(f"n={n} clustered, the store holds {type(faiss.downcast_index(store.client.index)).__name__}")

    for owner, name, label in (
        (type(store), "query", "store.query"), (faiss_store.FaissStore, "query", "backend query"),
        (faiss_store.FaissStore, "_as_matrix", "query vector check"),
        (faiss_store.FaissStore, "_nodes_at", "nodes of the hits"),
        (faiss_store.FaissStore, "_search", "index search (FAISS + checks)"), (ranking, "rank", "rank()"),
        (ranking, "_applied", "model.apply + checks"), (kernels, "adapter_memory_scores", "adapter/memory/keys kernel"),
        (kernels, "rank_row", "rank_row kernel"), (kernels, "kept_rows", "kept_rows kernel"),
        (kernels, "rank_indexed_row", "kept_rows + rank_row kernel"),
        (LexicalIndex, "query_term_ids", "query term ids"), (faiss_view.HeldView, "usable_ids", "usable override ids"),
        (faiss_view.HeldView, "search_rows", "search_rows (search + rows)"),
        (faiss_view.HeldView, "search_slots", "search_slots (search + flags)"),
        (models.AdapterMemoryModel, "route", "model.route"), (ranking, "_query_plans", "keyword plans"),
    ):
        _timed(owner, name, label)
    for label, texts in (("dense", [None] * m), ("keywords", strings)):
        store.deep_memory.set_model(label)
        items = list(zip(asked, texts))
        for deep_memory in (True, False):
            def query(item, deep_memory=deep_memory):
                return store.query(VectorStoreQuery(query_embedding=item[0], query_str=item[1], similarity_top_k=10),
                                   deep_memory=deep_memory)

            for item in items[:20]:
                query(item)
            _SPENT.clear()
            _CALLS.clear()
            for _ in range(3):
                for item in items:
                    query(item)
            print(f"{label}, deep_memory={deep_memory}: mean µs per query (calls per query)")
            for step, spent in sorted(_SPENT.items(), key=lambda kv: -kv[1]):
                print(f"  {step:<32} {spent / (3 * m) / 1e3:9.1f}  ({_CALLS[step] / (3 * m):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
