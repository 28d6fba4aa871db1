"""Peak memory of a large DeepMemoryVectorStore: add, filtered query, persist, reload.

    python benchmarks/bench_memory_1m.py                 # 1,000,000 nodes x 384 dims (minutes)
    python benchmarks/bench_memory_1m.py --n 100000      # a quick trial

Nodes arrive in batches of ``--batch`` (10,000) with short texts and small metadata. Target from
the issue: the process's peak RSS stays within ``2 x raw vector bytes + raw text bytes + raw
metadata bytes`` (the budget). Printed per phase: seconds, the phase's peak RSS (the kernel's
high-water mark, reset at each phase start through ``/proc/self/clear_refs``, which resets
``ru_maxrss`` too, so the run's peak is the largest phase peak) and the RSS at its end. Peaks
are shown in total and above the RSS after imports (the interpreter, LlamaIndex, FAISS). The reload also runs in a fresh subprocess so its
peak is measured without the build's leftovers. All figures come from one run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) for this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


class Phases:
    """Times each phase and records its peak and final RSS."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.can_reset = reset_peak()

    def run(self, name: str, fn):
        gc.collect()
        reset_peak()
        started = time.perf_counter()
        result = fn()
        row = {"phase": name, "seconds": time.perf_counter() - started,
               "peak_gib": peak_bytes() / GIB, "end_gib": rss_bytes() / GIB}
        self.rows.append(row)
        print(f"  {name:<28} {row['seconds']:8.1f} s   peak {row['peak_gib']:6.2f} GiB   end {row['end_gib']:6.2f} GiB",
              flush=True)
        return result


def node_text(i: int) -> str:
    return f"Short passage number {i} about topic {i % 97}."


def node_metadata(i: int) -> dict:
    return {"group": i % 10, "source": f"file{i % 100}.html"}


def batch_nodes(start: int, stop: int, dim: int, seed: int):
    from llama_index.core.schema import TextNode

    vectors = np.random.default_rng(seed + start).standard_normal((stop - start, dim), dtype=np.float32)
    return [
        TextNode(id_=f"node-{i}", text=node_text(i), metadata=node_metadata(i), embedding=vectors[i - start].tolist())
        for i in range(start, stop)
    ]


def raw_sizes(n: int, dim: int) -> dict[str, int]:
    """Bytes of the raw data: float32 vectors, UTF-8 texts, compact JSON metadata."""
    text = sum(len(node_text(i).encode("utf-8")) for i in range(n))
    meta = sum(len(json.dumps(node_metadata(i), separators=(",", ":")).encode("utf-8")) for i in range(n))
    return {"vectors": n * dim * 4, "text": text, "metadata": meta}


def run_queries(store, dim: int, count: int, seed: int = 7) -> dict[str, float]:
    from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

    rng = np.random.default_rng(seed)
    flt = MetadataFilters(filters=[MetadataFilter(key="group", value=3)])
    plain, filtered = [], []
    for _ in range(count):
        q = rng.standard_normal(dim).astype(np.float32).tolist()
        started = time.perf_counter()
        store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=10))
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=10, filters=flt))
        filtered.append(time.perf_counter() - started)
        assert len(result.ids) == 10 and all(n.metadata["group"] == 3 for n in result.nodes)
    return {"plain_p50_ms": 1000 * float(np.median(plain)), "filtered_p50_ms": 1000 * float(np.median(filtered))}


def reload_only(path: str, dim: int, queries: int) -> None:
    """Subprocess mode: load, query, print JSON figures."""
    baseline = rss_bytes()
    phases = Phases()
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    phases.run("import", lambda: None)
    imported = rss_bytes()
    store = phases.run("reload (fresh process)", lambda: DeepMemoryVectorStore.from_persist_path(path))
    timings = phases.run("query after reload", lambda: run_queries(store, dim, queries))
    print(json.dumps({
        "count": len(store),
        "baseline_gib": baseline / GIB,
        "after_import_gib": imported / GIB,
        "phases": phases.rows,
        "peak_gib": max(r["peak_gib"] for r in phases.rows),
        "queries": timings,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="number of nodes (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=20, help="queries per kind (plain and filtered)")
    parser.add_argument("--workdir", default=None, help="where to persist (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reload-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reload_only:
        reload_only(args.reload_only, args.dim, args.queries)
        return 0

    baseline = rss_bytes()
    importlib.import_module("llama_index.core.schema")  # import cost outside the phases

    from llama_index_deepmemory.store import DeepMemoryVectorStore

    raw = raw_sizes(args.n, args.dim)
    budget = 2 * raw["vectors"] + raw["text"] + raw["metadata"]
    print(f"n={args.n:,} dim={args.dim} batch={args.batch:,}: raw vectors {raw['vectors'] / GIB:.3f} GiB, "
          f"text {raw['text'] / 2**20:.1f} MiB, metadata {raw['metadata'] / 2**20:.1f} MiB; "
          f"budget 2x vectors + text + metadata = {budget / GIB:.3f} GiB")
    imported = rss_bytes()
    print(f"  RSS at start {baseline / GIB:.2f} GiB, after imports {imported / GIB:.2f} GiB"
          f"{'' if reset_peak() else '  (peak reset unsupported: phase peaks are cumulative)'}")
    phases = Phases()
    store = DeepMemoryVectorStore(dim=args.dim)

    def build() -> None:
        for start in range(0, args.n, args.batch):
            store.add(batch_nodes(start, min(args.n, start + args.batch), args.dim, args.seed))

    phases.run(f"add ({args.n // args.batch} batches)", build)
    assert len(store) == args.n
    query_times = phases.run("query (plain + filtered)", lambda: run_queries(store, args.dim, args.queries))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_memory_"))
    path = workdir / "store"
    try:
        phases.run("persist", lambda: store.persist(str(path)))
        on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        store = None
        phases.run("drop the built store", lambda: None)
        reloaded = phases.run("reload (same process)", lambda: DeepMemoryVectorStore.from_persist_path(str(path)))
        assert len(reloaded) == args.n
        phases.run("query after reload", lambda: run_queries(reloaded, args.dim, args.queries))
        reloaded = None
        gc.collect()
        main_peak = max(r["peak_gib"] for r in phases.rows) * GIB
        child = subprocess.run(
            [sys.executable, __file__, "--reload-only", str(path), "--dim", str(args.dim), "--queries", str(args.queries)],
            capture_output=True, text=True, check=True,
        )
        print("\n".join("  " + line for line in child.stdout.splitlines()[:-1]))
        fresh = json.loads(child.stdout.splitlines()[-1])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    build_peak = max(r["peak_gib"] for r in phases.rows if r["phase"].startswith(("add", "query (", "persist"))) * GIB
    print("\nresults")
    print(f"  on disk: {on_disk / GIB:.3f} GiB; query p50 plain {query_times['plain_p50_ms']:.1f} ms, "
          f"filtered {query_times['filtered_p50_ms']:.1f} ms")
    rows = [
        ("add + query + persist", build_peak, imported),
        ("whole run, one process", main_peak, imported),
        ("reload + query, fresh process", fresh["peak_gib"] * GIB, fresh["after_import_gib"] * GIB),
    ]
    for label, value, base in rows:
        print(f"  {label:<30} peak RSS {value / GIB:6.2f} GiB = {value / budget:5.2f} x budget "
              f"({value / raw['vectors']:4.2f} x raw vectors) {'OK' if value <= budget else 'OVER'}; "
              f"above imports {(value - base) / GIB:6.2f} GiB = {(value - base) / budget:5.2f} x budget")
    print(f"  fresh process: {fresh['after_import_gib']:.2f} GiB after imports, reload "
          f"{fresh['phases'][1]['seconds']:.1f} s, query p50 plain {fresh['queries']['plain_p50_ms']:.1f} ms, "
          f"filtered {fresh['queries']['filtered_p50_ms']:.1f} ms")
    return 0 if max(v for _, v, _ in rows) <= budget else 1


if __name__ == "__main__":
    sys.exit(main())
