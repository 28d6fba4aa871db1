"""Where a ``deep_memory=True`` query's time goes over a wrapped engine (``bench_backends``'s
``chroma``, ``chroma-server`` or ``postgres`` store and Deep Memory model): per query, the adapter's
search, the model (``apply``), the allowed override nodes, the merge (``by_ids``), the whole ranking,
the result's bodies and any read by id, beside a plain query's search and total. Medians over the
queries, in ms, the row cache emptied before each query (as for a query whose rows were not read
recently). A measurement, not a test.

``--compare`` instead times, interleaved over the same queries in one process, a plain query and
``deep_memory=True`` under each configuration of :data:`CONFIGS` (the keyword head and the spare hits
asked: before this change, each change alone, after), the row cache emptied before each query, and
counts the calls to the engine per query (``search``; ``get``: rows by id; ``_owners``: names of
ids-only hits).

``--floor`` instead replays each query's calls to the engine adapter (its search, then the bodies of the
nodes returned) as a keyword Deep Memory query makes them and as a plain query makes them, interleaved
with the plain query (the row cache emptied before each): the ratio a keyword query could reach over
that engine if its ranking cost nothing.

    python benchmarks/bench_wrapped_steps.py --engine postgres [--n 20000] [--queries 200] [--ef 16] [--compare | --floor]
"""

from __future__ import annotations

import argparse
import functools
import math
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


def legacy_margin(wrapped: Any) -> Any:
    """The spare hits asked before this change: the override nodes' expected share plus three
    standard deviations, at least 2 (``WrappedStore._share_margin`` at 3f89158)."""

    def margin(n_overrides: int, depth: int) -> int:
        share = min(1.0, n_overrides / max(wrapped._count_hint(), 1))
        expected = depth * share / max(1.0 - share, 0.05)
        return min(n_overrides, max(2, math.ceil(expected + 3.0 * math.sqrt(expected))))

    return margin


# (label, keyword head: None = the model's own 50, "default" = WRAPPED_KEYWORD_DEPTH, or a number;
#  margin: "legacy" or "share" = today's WrappedStore)
CONFIGS = (("before (head 50, share+3sd)", None, "legacy"),
           ("head 50, share", None, "share"),
           ("default head, share+3sd", "default", "legacy"),
           ("after (default head, share)", "default", "share"),
           ("head 10, share", 10, "share"))


def compare(face: Any, items: list[tuple[list[float], Any]], kind: str) -> list[str]:
    """Per configuration: deep p50 / plain p50 and round trips per deep query, every query timed
    under every configuration and plainly, in an order rotating from query to query."""
    wrapped, backend = face._backend, face._backend.backend
    share, default = wrapped._share_margin, wrapped.default_keyword_depth
    calls: dict[str, int] = {}

    def count(name: str) -> None:
        original = getattr(backend, name)

        @functools.wraps(original)
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        setattr(backend, name, counted)

    for name in ("search", "get", "_owners"):  # each a call to the engine (get: rows by id, _owners: names)
        count(name)

    def run(config: tuple[str, Any, str] | None, vector: list[float], text: Any) -> None:
        if config is None:
            face.query(bb.query_of(vector))
            return
        _, head, margin = config
        wrapped.keyword_depth = default if head == "default" else head
        wrapped.search_margin = share if margin == "share" else legacy_margin(wrapped)
        face.query(bb.query_of(vector, text), deep_memory=True)

    runs: list[tuple[str, Any, str] | None] = [None, *CONFIGS]
    times: dict[int, list[float]] = {j: [] for j in range(len(runs))}
    trips: dict[int, dict[str, int]] = {j: {} for j in range(len(runs))}
    for i, (vector, text) in enumerate(items):
        for step in range(len(runs)):
            j = (i + step) % len(runs)
            calls.clear()
            with backend._lock:  # as for a query whose rows were not read recently
                backend._rows.clear()
            t0 = time.perf_counter()
            run(runs[j], vector, text)
            times[j].append(time.perf_counter() - t0)
            for name, n in calls.items():
                trips[j][name] = trips[j].get(name, 0) + n
    wrapped.keyword_depth, wrapped.search_margin = default, share
    plain = statistics.median(times[0])
    lines = [f"{kind:<9} plain                          p50 {1e3 * plain:6.2f} ms"]
    for j, config in enumerate(runs[1:], start=1):
        deep = statistics.median(times[j])
        per = ", ".join(f"{name} {n / len(items):.2f}" for name, n in sorted(trips[j].items()))
        lines.append(f"{kind:<9} {config[0]:<30} p50 {1e3 * deep:6.2f} ms  {deep / plain:.3f}x plain  "
                     f"round trips per query: {per}")
    return lines


def engine_floor(face: Any, items: list[tuple[list[float], Any]]) -> list[str]:
    """What the engine alone charges a keyword Deep Memory query: each query's calls to the engine
    adapter (``search``, then ``bodies`` of the nodes returned) as the keyword query makes them and as a
    plain query makes them, replayed interleaved with the plain query itself, the row cache emptied
    before each. The floor is 1 + (deep calls - plain calls) / plain query: the ratio a keyword query
    could reach if its ranking cost nothing."""
    backend = face._backend.backend
    originals = {name: getattr(backend, name) for name in ("search", "bodies")}
    calls: list[tuple[str, tuple, dict]] = []

    def recording(name: str) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args, kwargs))
            return originals[name](*args, **kwargs)
        return recorded

    replays = []
    for name in originals:
        setattr(backend, name, recording(name))
    try:
        for vector, text in items:
            calls.clear()
            face.query(bb.query_of(vector))
            plain_calls = list(calls)
            calls.clear()
            face.query(bb.query_of(vector, text), deep_memory=True)
            replays.append((vector, plain_calls, list(calls)))
    finally:
        for name, method in originals.items():
            setattr(backend, name, method)
    if any(sum(name == "search" for name, _, _ in d) != 1 for _, _, d in replays):
        return ["keywords  a keyword query searched the engine more than once; no floor (see --compare's round trips)"]

    def replay(made: list[tuple[str, tuple, dict]]) -> None:
        with backend._lock:  # as for a query whose rows were not read recently
            backend._rows.clear()
        for name, args, kwargs in made:
            originals[name](*args, **kwargs)

    def plain_query(vector: list[float]) -> None:
        with backend._lock:
            backend._rows.clear()
        face.query(bb.query_of(vector))

    times: list[list[float]] = [[], [], []]
    for i, (vector, plain_calls, deep_calls) in enumerate(replays):
        runs = (lambda: plain_query(vector), lambda: replay(plain_calls), lambda: replay(deep_calls))
        for step in range(3):
            j = (i + step) % 3
            t0 = time.perf_counter()
            runs[j]()
            times[j].append(time.perf_counter() - t0)
    query, shallow, deep = (statistics.median(t) for t in times)
    asked = statistics.median_low(int(args[1]) for _, _, d in replays for name, args, _ in d if name == "search")
    return [f"keywords  a keyword Deep Memory query asks the engine for {asked} hits (median), then the bodies of "
            "those it returns; a plain query for 10 with their bodies",
            f"engine calls p50 {1e3 * deep:6.2f} ms vs {1e3 * shallow:6.2f} ms; plain query p50 {1e3 * query:6.2f} ms; "
            f"floor 1 + {1e3 * (deep - shallow):.2f} / {1e3 * query:.2f} = {1 + (deep - shallow) / query:.3f}x"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("chroma", "chroma-server", "postgres"), required=True)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, default=16, help="the engine's search breadth (ef_search)")
    parser.add_argument("--compare", action="store_true", help="before/after configurations side by side (see above)")
    parser.add_argument("--floor", action="store_true",
                        help="only the engine's part of a keyword query's extra time (see above)")
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
            if args.floor:
                print(f"{args.engine}, {args.n} nodes, ef_search {args.ef}, {args.queries} queries; "
                      f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
                print("\n".join(engine_floor(face, items)))
                print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
                return 0
            if args.compare:
                print(f"{args.engine}, {args.n} nodes, ef_search {args.ef}, {args.queries} queries; "
                      f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
                for kind, text_of in (("dense", lambda t: None), ("keywords", lambda t: t)):
                    print("\n".join(compare(face, [(v, text_of(t)) for v, t in items], kind)), flush=True)
                print("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()))
                return 0
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
