"""Where a ``deep_memory=True`` query's time goes: each step of ``deep_memory.ranking.rank`` timed
on its own right after a FAISS search (as in a real query, the search leaves the caches cold), at
100,000 x 384 vectors with one FAISS thread and ``bench_store``'s SciFact-sized model with keyword
re-scoring. Medians over the queries, in µs (a measurement, not a test). ``--data clustered``
(``bench_backends``' clustered vectors, as ``bench_auto_index.py``) lets ``auto`` convert to HNSW32.

    python benchmarks/bench_rank_steps.py [--n 100000] [--queries 300] [--index-factory Flat|auto|HNSW32]
        [--data random|clustered]
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

from bench_backends import clustered  # noqa: E402
from bench_store import make_nodes, synthetic_texts, trained_like_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--index-factory", default="Flat", help="the store's index_factory ('auto': its default)")
    parser.add_argument("--data", choices=("random", "clustered"), default="random")
    args = parser.parse_args(argv)

    import faiss

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory import ranking
    from llama_index_deepmemory.deep_memory import kernels
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    faiss.omp_set_num_threads(1)
    n, dim = args.n, 384
    rng = np.random.default_rng(0)
    if args.data == "clustered":
        vectors = clustered(n, dim, 0, 1, max(10, n // 100))
    else:
        vectors = rng.normal(size=(n, dim)).astype(np.float32)
    store = DeepMemoryVectorStore(index_factory=args.index_factory)
    nodes = make_nodes(vectors)
    faiss.omp_set_num_threads(2)  # adds on two threads (a graph build), queries on one
    for start in range(0, n, 2048):
        store.add(nodes[start : start + 2048])
    faiss.omp_set_num_threads(1)
    del nodes
    print(f"n={n} {args.data}, the store holds {type(faiss.downcast_index(store.client.index)).__name__}")
    view = store._backend._held  # the view a query ranks over (the store's lock is not taken here)
    model, memory_unit = trained_like_model(vectors, 1000, 1000, rng)
    model = model.replace(lexical=LexicalIndex([f"node-{i}" for i in range(n)], synthetic_texts(n, 100, rng)), lexical_weight=0.1)
    raw = (clustered(args.queries, dim, 0, 3, max(10, n // 100)) if args.data == "clustered"
           else rng.normal(size=(args.queries, dim)).astype(np.float32))
    near = memory_unit[rng.integers(0, len(memory_unit), args.queries)] + 0.8 * raw / np.sqrt(dim)
    queries = [store._backend.prepare_queries(near[i] if i % 2 == 0 else raw[i]) for i in range(args.queries)]
    texts = synthetic_texts(args.queries, 8, rng)
    plan, index = model.keyword_plan(), store.client
    times: dict[str, list[float]] = {}

    def timed(label, step):
        index.search(queries[0], 66)  # a scan first: every step starts cold, as in a query
        t0 = time.perf_counter()
        result = step()
        times.setdefault(label, []).append(time.perf_counter() - t0)
        return result

    for _ in range(2):  # the store keeps its row per slot from the second ask at an unchanged store
        view.search_rows(queries[0], 66, None, plan.index)
    none = np.zeros(0, np.int64)
    for q, text in zip(queries, texts):
        transformed, ids, scores = timed("adapter + memory scores (apply kernel)", lambda: ranking._applied(model, q))
        usable = timed("usable override ids (cached)", lambda: view.usable_ids(ids))
        overridden = model.override_set(ids)
        over_rows, flags, _ = plan.override_rows(ids)
        hit_scores, hit_rows, id_at = timed("keywords: plain search as keyword rows, 66 hits (FAISS scan)",
                                            lambda: view.search_rows(transformed, 66, None, plan.index))
        terms = timed("keywords: query term ids (regex)", lambda: plan.index.query_term_ids(text))
        keep = timed("keywords: which hits are override nodes (kept_rows)",
                     lambda: kernels.kept_rows(hit_rows, flags)[0])
        _, picks, _ = timed("keywords: rank_row (merge + BM25 fusion + top 10)", lambda: kernels.rank_row(
            hit_scores, keep, hit_rows, scores[0], usable, over_rows, np.zeros(0, np.float32), *plan.index.postings,
            terms, plan.weight, 50, 50, 10, 66))
        timed("keywords: ids of the 10 returned", lambda: [id_at(p) if p >= 0 else ids[-1 - p] for p in picks.tolist()])
        plain_scores, plain_ids = timed("dense: plain search, 26 ids (FAISS scan)",
                                        lambda: view.search_vectors(transformed, 26))
        row = plain_ids[0]
        keep = timed("dense: which hits are override nodes (26 set lookups)",
                     lambda: np.fromiter((node not in overridden for node in row), dtype=bool, count=len(row)))
        timed("dense: rank_row (merge + top 10)", lambda: kernels.rank_row(
            plain_scores[0], keep, none, scores[0], usable, none, np.zeros(0, np.float32),
            np.zeros((1, 2), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.int32),
            0.0, 0, 10, 10, 26))
        timed("whole rank(), keywords", lambda: ranking.rank(view, q, model, 10, texts=[text]))
        timed("whole rank(), dense", lambda: ranking.rank(view, q, model, 10))
        timed("plain search, 10 ids (FAISS scan)", lambda: view.search_vectors(q, 10))
    for label, values in times.items():
        print(f"{label:<48} {statistics.median(values) * 1e6:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
