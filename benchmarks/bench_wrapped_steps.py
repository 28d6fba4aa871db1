"""Where a ``deep_memory=True`` query's time goes over a wrapped engine (``bench_backends``'s
``chroma``, ``chroma-server`` or ``postgres`` store and Deep Memory model): per query, the adapter's
search, the model (``apply``), the allowed override nodes, the merge (``by_ids``), the whole ranking,
the result's bodies and any read by id, beside a plain query's search and total. Medians over the
queries, in ms, the row cache emptied before each query (as for a query whose rows were not read
recently). A measurement, not a test.

    python benchmarks/bench_wrapped_steps.py --engine postgres [--n 20000] [--queries 200] [--ef 16]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backends as bb  # noqa: E402
from bench_store import p50_pair, synthetic_texts, trained_like_model  # noqa: E402


def timed_steps(face: Any, items: list[tuple[list[float], str]]) -> dict[tuple[str, str], list[float]]:
    """Seconds per step of each query kind (steps wrapped in place; the store is not used after)."""
    from llama_index_deepmemory.deep_memory import ranking

    wrapped, backend = face._backend, face._backend.backend
    spent: dict[str, float] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def step(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, step)

    for owner, name, label in ((backend, "search", "adapter search"), (backend, "bodies", "result bodies"),
                               (backend, "get", "read by id"), (ranking, "rank", "ranking (with search)"),
                               (ranking, "_applied", "model apply"), (ranking._Row, "by_ids", "merge (by_ids)"),
                               (wrapped, "usable_ids", "allowed override nodes")):
        wrap(owner, name, label)
    kinds = (("deep, keywords", lambda v, s: face.query(bb.query_of(v, s), deep_memory=True)),
             ("plain", lambda v, s: face.query(bb.query_of(v))),
             ("deep, dense", lambda v, s: face.query(bb.query_of(v), deep_memory=True)))
    out: dict[tuple[str, str], list[float]] = {}
    for kind, run in kinds:
        for vector, text in items:
            with backend._lock:
                backend._rows.clear()
            spent.clear()
            t0 = time.perf_counter()
            run(vector, text)
            spent["total"] = time.perf_counter() - t0
            for label, seconds in spent.items():
                out.setdefault((kind, label), []).append(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("chroma", "chroma-server", "postgres"), required=True)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, default=16, help="the engine's search breadth (ef_search)")
    args = parser.parse_args(argv)
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    dim, seed, clusters = 384, 0, max(10, args.n // 100)
    vectors = bb.clustered(args.n, dim, seed, 1, clusters)
    backend = bb.BACKEND_TYPES[args.engine]()
    backend.imports()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = backend.create(work, dim)
        try:
            for batch in bb.node_batches(vectors, seed, 100, 2048):
                store.add(batch)
            backend.set_param(store, args.ef)
            rng = np.random.default_rng([seed, 9])
            model, memory_unit = trained_like_model(vectors, 1000, 1000, rng, node_id=bb.node_id)
            face = DeepMemoryVectorStore(vector_store=store, model_dir=work / "models")
            pages = list(face.iter_texts())
            model = model.replace(lexical=LexicalIndex([i for p, _ in pages for i in p],
                                                       [t for _, b in pages for t in b]), lexical_weight=0.2)
            face.deep_memory.add_model("bench", model, activate=True)
            queries = bb.clustered(args.queries, dim, seed, 3, clusters)
            near = memory_unit[rng.integers(0, len(memory_unit), len(queries))] + 0.8 * queries / np.sqrt(dim)
            items = [((near[i] if i % 2 == 0 else queries[i]).tolist(), text)
                     for i, text in enumerate(synthetic_texts(len(queries), 8, rng))]
            for vector, text in items[:10]:  # warm up (numba, caches)
                face.query(bb.query_of(vector)), face.query(bb.query_of(vector, text), deep_memory=True)
            for kind, text_of in (("dense", lambda t: None), ("keywords", lambda t: t)):
                plain, deep = p50_pair(lambda it: face.query(bb.query_of(it[0])),
                                       lambda it: face.query(bb.query_of(it[0], text_of(it[1])), deep_memory=True),
                                       items)
                print(f"{args.engine} {kind}: deep p50 / plain p50 {deep / plain:.3f}x "
                      f"({1e3 * deep:.2f} vs {1e3 * plain:.2f} ms)")
            for (kind, label), values in timed_steps(face, items).items():
                print(f"{kind:<15} {label:<24} {len(values):>4} queries  median {1e3 * statistics.median(values):7.3f} ms")
            print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
        finally:
            backend.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
