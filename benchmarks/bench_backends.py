"""Our store beside the LlamaIndex vector stores users pick, side by side in one run.

    python benchmarks/bench_backends.py                       # 100,000 x 384, every backend (Qdrant: ~30 min)
    python benchmarks/bench_backends.py --n 10000             # quick mode
    python benchmarks/bench_backends.py --backends ours-flat,ours-hnsw,chroma
    python benchmarks/bench_backends.py --backends ours-flat@5000,qdrant@5000   # NAME@N: first N nodes
    python benchmarks/bench_backends.py --table a.json,b.json                   # tables of saved --json runs
    python benchmarks/bench_backends.py --n 10000,100000,1000000 --max-add-minutes 20   # scaling table

Backends (each in its own subprocess, so peak memory is its own):

* ``ours-flat`` / ``ours-hnsw``: ``DeepMemoryVectorStore(index_factory="Flat")`` (exact) and
  ``DeepMemoryVectorStore(index_factory="HNSW32")`` (FAISS HNSW, ``efSearch`` tuned);
* ``ours-auto``: ``DeepMemoryVectorStore()``, the default ``index_factory="auto"`` (exact below 20,000
  nodes, HNSW32 past it at its own ``ef_search``; not tuned: the row reports the default's recall);
* ``faiss``: LlamaIndex's ``FaissVectorStore`` over ``faiss.IndexFlatIP`` (keeps no text);
* ``faiss-hnsw``: ``faiss.IndexHNSWFlat(dim, 32, METRIC_INNER_PRODUCT)`` itself, ids only, no docstore
  (the floor an HNSW store can reach), ``efSearch`` tuned;
* ``lancedb``: ``LanceDBVectorStore`` on an embedded LanceDB folder with an ``IVF_PQ`` index (cosine,
  sqrt(n) partitions up to 320, 48 sub-vectors) built after the add and timed with it; ``nprobes`` and
  ``refine_factor`` tuned together;
* ``simple``: LlamaIndex's ``SimpleVectorStore`` (keeps no text; its query scores every stored
  embedding in Python and its JSON persist/load take seconds per thousand nodes, so it runs on the
  first ``--simple-n`` nodes unless ``simple@N`` says otherwise);
* ``chroma``: ``ChromaVectorStore`` over ``chromadb.PersistentClient`` (temp dir), cosine space,
  ``ef_search`` tuned;
* ``qdrant``: ``QdrantVectorStore`` over ``QdrantClient(path=...)`` (local mode: an exact NumPy
  scan, no search parameter to tune; it commits every point to SQLite, ~60 points/s here, so run it
  as ``qdrant@5000``);
* ``milvus``: ``MilvusVectorStore(uri=tmp/milvus.db)`` (Milvus Lite), COSINE, an HNSW index
  (M=16, efConstruction=200), ``ef`` tuned;
* ``chroma-server``: ``ChromaVectorStore`` over ``chromadb.HttpClient`` to a ``chroma run`` server
  on 127.0.0.1 (started by the backend process, data in the temp dir), ``ef_search`` tuned;
* ``postgres``: ``PGVectorStore`` over PostgreSQL + pgvector (``pgserver``: a server on a Unix
  socket in the temp dir), an HNSW index (m=16, ef_construction=64, cosine), ``hnsw.ef_search`` tuned.

Server and client run on this machine, so a server row's p50 holds the round trip through the
local socket but no network; its peak memory counts the server processes (children).

Data: seeded Gaussian clusters (``n // 100`` centres, unit-normalised), queries drawn the same way,
so approximate search has neighbours to miss. Per backend, through the LlamaIndex API:

* add: nodes/s of ``store.add`` in batches of ``--batch`` (building the nodes is not timed), plus any
  index build a user runs before querying (LanceDB); with ``--max-add-minutes``, a backend whose add,
  at the rate of its first minute (or more) of adding, would run past the cap is stopped and its row
  says "not run: projected X h at the measured add rate" (a floor where adds slow down as the store grows);
* recall@10 against exact NumPy search; an ANN's search breadth is the smallest of ``EF_GRID``
  reaching ``--recall`` on separate tuning queries, then recall is reported on the measured queries;
* query p50 (k=10, one query at a time; the slow stores on ``--slow-queries``), interleaved with
  ``faiss.IndexFlatIP.search`` on the same vectors in the same process: the ratio to raw FAISS cancels the machine's load, and
  ``x ours-flat`` is that ratio over ours-flat's;
* open + first query: a fresh process opens the persisted store and answers one query (imports
  timed apart); for the stores without text, the docstore persisted beside them is loaded too and
  the answer's nodes read from it, as a retriever would (``docstore.json``);
* peak memory: the backend process's peak RSS (``VmHWM``, reset just before the store is created,
  so the benchmark's data generation is left out) after add and queries, plus the RSS of any child
  processes it starts, and its growth over the process before the store (the peak once the Deep Memory
  part has run, listing included, is in ``--json`` as ``deep_memory.peak_mib``);
* Deep Memory: a SciFact-sized hand-made model (1,000 memory nodes, 1,000 remembered queries,
  keyword re-scoring of the top 50) registered on the store (ours) or on
  ``DeepMemoryVectorStore(vector_store=engine, model_dir=...)`` over the same engine (its keyword index
  built from the wrapped store's own listing, as training reads it); p50 of ``deep_memory=True`` over a
  plain query through the same store, dense and with ``query_str``.
  Stores that keep no text are refused by the wrapper: "n/a (keeps no text)".

Absolute times are the machine's; read the ratios. 1M nodes (``--n 1000000``) needs several GiB per
backend and hours for some (Qdrant's local mode, SimpleVectorStore): cap them with ``--max-add-minutes``.
``--n`` takes several sizes (``10000,100000``): one table per size, then a scaling table.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from backend_stores import BACKEND_TYPES, K, Backend, node_id, query_of, row_of  # noqa: E402,F401

logger = logging.getLogger(__name__)

BACKENDS = ("ours-flat", "ours-hnsw", "ours-auto", "faiss", "faiss-hnsw", "simple", "lancedb", "chroma", "qdrant", "milvus",
            "chroma-server", "postgres")
SLOW = ("simple", "qdrant", "milvus")  # measured (and tuned) on at most --slow-queries queries
KEEPS_NO_TEXT = tuple(name for name, kind in BACKEND_TYPES.items() if not kind.keeps_text)
WRAPPED = ("lancedb", "chroma", "qdrant", "milvus", "chroma-server", "postgres")

PROBE_S = 60.0  # seconds of adding before a backend's add rate is projected against --max-add-minutes

warnings.filterwarnings("ignore", message=".*Local mode is not recommended.*")
warnings.filterwarnings("ignore", message="Payload indexes have no effect")


# --- data -------------------------------------------------------------------------------------
def clustered(n: int, dim: int, seed: int, stream: int, clusters: int, spread: float = 1.0) -> np.ndarray:
    """``n`` unit vectors, each a random one of ``clusters`` seeded unit centres plus Gaussian noise of
    norm about ``spread`` (the centres depend on ``seed`` only: corpus and queries share them)."""
    centres = np.random.default_rng([seed, 0]).normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # small chunks: the float64 temporaries stay small
        m = min(8192, n - start)
        x = centres[rng.integers(0, clusters, m)] + spread * rng.normal(size=(m, dim)) / np.sqrt(dim)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Rows of the ``k`` highest inner products per query (exact, NumPy)."""
    from peers import top_k

    step = max(1, 20_000_000 // max(1, len(vectors)))
    return np.concatenate([top_k(queries[s : s + step] @ vectors.T, k) for s in range(0, len(queries), step)])


def texts_for(start: int, stop: int, seed: int, words: int) -> list[str]:
    from bench_store import synthetic_texts

    return synthetic_texts(stop - start, words, np.random.default_rng([seed, 7, start]))


def node_batches(vectors: np.ndarray, seed: int, words: int, batch: int):
    """TextNodes of ``vectors`` (ids from :func:`node_id`, Zipf texts, a ``group`` field), a batch at a time."""
    from llama_index.core.schema import TextNode

    for start in range(0, len(vectors), batch):
        stop = min(start + batch, len(vectors))
        texts = texts_for(start, stop, seed, words)
        yield [TextNode(id_=node_id(i), text=t, metadata={"group": i % 10}, embedding=vectors[i].tolist())
               for i, t in zip(range(start, stop), texts)]


# --- measurements ---------------------------------------------------------------------------------
def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process now (MiB), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0: ``5`` to ``/proc/self/clear_refs``), so that
    :func:`peak_mib` leaves out what the benchmark's own data generation used."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    """Peak RSS since :func:`reset_peak` (``VmHWM``), else since the process started (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def descendants_rss_mib() -> float:
    """Resident memory of this process's child processes, recursively (MiB; Linux /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, total = list(parents.get(os.getpid(), [])), 0.0
    while todo:
        pid = todo.pop()
        total += rss_mib(pid)
        todo.extend(parents.get(pid, []))
    return total


def recall_at_k(backend: Backend, store: Any, queries: list[list[float]], truth: np.ndarray) -> float:
    hits = 0
    for vector, exact in zip(queries, truth):
        hits += len(set(backend.rows(store.query(query_of(vector)))) & set(exact.tolist()))
    return hits / (K * len(queries))


def tune(backend: Backend, store: Any, queries: list[list[float]], truth: np.ndarray, target: float) -> tuple[Any, list]:
    """The first of ``backend.grid`` (cheapest first) whose recall@10 on ``queries`` reaches
    ``target`` (the last when none does), with every (value, recall) tried."""
    if backend.param is None:
        return None, []
    tried = []
    for value in backend.grid:
        backend.set_param(store, value)
        tried.append((value, recall_at_k(backend, store, queries, truth)))
        if tried[-1][1] >= target:
            break
    return tried[-1][0], tried


def deep_memory_overhead(name: str, backend: Backend, store: Any, vectors: np.ndarray, queries: np.ndarray,
                         args: argparse.Namespace, work: Path) -> dict:
    """p50 of ``deep_memory=True`` over a plain query through the same ``DeepMemoryVectorStore``
    (ours: the store itself; engines: wrapped), dense and with query text."""
    from bench_store import p50_pair, synthetic_texts, trained_like_model

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    rng = np.random.default_rng([args.seed, 9])
    n = len(vectors)
    model, memory_unit = trained_like_model(vectors, args.memory_nodes, args.keys, rng, node_id=node_id)
    face = store if name.startswith("ours") else DeepMemoryVectorStore(vector_store=store, model_dir=work / f"models-{type(store).__name__}")
    if face is store:
        ids = [node_id(i) for i in range(n)]
        texts = [t for s in range(0, n, args.batch) for t in texts_for(s, min(s + args.batch, n), args.seed, args.words)]
    else:  # as training reads them: the engine's own listing (which also names its stored ids)
        pages = list(face.iter_texts())
        ids, texts = [i for p, _ in pages for i in p], [t for _, batch in pages for t in batch]
    model = model.replace(lexical=LexicalIndex(ids, texts), lexical_weight=0.2)
    del texts, ids
    t0 = time.perf_counter()
    face.deep_memory.add_model("bench", model, activate=True)  # a hand-made model; wrapped: saved to model_dir
    out: dict[str, Any] = {"set_model_s": time.perf_counter() - t0}
    dim = vectors.shape[1]
    # half the queries sit near memory nodes (their overrides and key bonuses enter the top 10)
    near = memory_unit[rng.integers(0, len(memory_unit), len(queries))] + 0.8 * queries / np.sqrt(dim)
    vectors_in = [(near[i] if i % 2 == 0 else queries[i]).tolist() for i in range(len(queries))]
    strings = synthetic_texts(len(queries), 8, rng)
    for label, items in (("dense", [(v, None) for v in vectors_in]), ("keywords", list(zip(vectors_in, strings)))):
        def plain(it, face=face):
            return face.query(query_of(*it))

        def deep(it, face=face):
            return face.query(query_of(*it), deep_memory=True)

        for it in items[:10]:  # warm up (numba, caches)
            plain(it), deep(it)
        p_plain, p_deep = p50_pair(plain, deep, items)
        out[label] = {"plain_ms": 1e3 * p_plain, "deep_ms": 1e3 * p_deep, "ratio": p_deep / p_plain}
    if face is not store:  # what the wrapper itself costs on a plain query
        items = [(v, None) for v in vectors_in]
        wrapped, engine = p50_pair(lambda it: face.query(query_of(*it)), lambda it: store.query(query_of(*it)), items)
        out["wrapper_plain_over_engine"] = wrapped / engine
    return out


def measure(name: str, args: argparse.Namespace, work: Path, n: int) -> dict:
    """Every measurement of one backend on the first ``n`` nodes, in this process (see the module
    docstring)."""
    import faiss

    threads = faiss.omp_get_max_threads()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    try:
        return _measure(name, args, work, n)
    finally:
        faiss.omp_set_num_threads(threads)  # inline (tests): leave the process as it was


def _measure(name: str, args: argparse.Namespace, work: Path, n: int) -> dict:
    import faiss
    from bench_store import p50_pair

    backend = BACKEND_TYPES[name]()
    backend.imports()
    dim, clusters = args.dim, max(10, args.n // 100)
    vectors = clustered(args.n, dim, args.seed, 1, clusters)[:n]
    n_queries = min(args.queries, args.slow_queries) if name in SLOW else args.queries
    n_tune = min(args.tune_queries, args.slow_queries) if name in SLOW else args.tune_queries
    tune_q = clustered(n_tune, dim, args.seed, 2, clusters)
    eval_q = clustered(n_queries, dim, args.seed, 3, clusters)
    truth_tune, truth_eval = exact_top(vectors, tune_q), exact_top(vectors, eval_q)
    tune_lists, eval_lists = [q.tolist() for q in tune_q], [q.tolist() for q in eval_q]
    gc.collect()
    reset_peak()
    before_mib = rss_mib()
    store = backend.create(work, dim)
    add_s, docstore_s, docstore, added = 0.0, 0.0, None, 0
    if backend.docstore:  # what VectorStoreIndex keeps beside a store without text
        from llama_index.core.storage.docstore import SimpleDocumentStore

        docstore = SimpleDocumentStore()
    cap_s = 60.0 * args.max_add_minutes if args.max_add_minutes else None
    for batch in node_batches(vectors, args.seed, args.words, args.batch):
        t0 = time.perf_counter()
        store.add(batch)
        add_s += time.perf_counter() - t0
        added += len(batch)
        if docstore is not None:  # as VectorStoreIndex does: the nodes without their embeddings
            t0 = time.perf_counter()
            docstore.add_documents([n.model_copy(update={"embedding": None}) for n in batch], allow_update=True)
            docstore_s += time.perf_counter() - t0
        projected = add_s * len(vectors) / added
        if cap_s and added < len(vectors) and add_s >= min(PROBE_S, cap_s) and projected > cap_s:
            backend.stop()
            return projection(name, len(vectors), added, add_s, args.max_add_minutes)
    del batch
    t0 = time.perf_counter()
    built = backend.after_add(store, len(vectors))  # an index build (LanceDB): part of getting the store ready
    index_s = time.perf_counter() - t0
    add_s += index_s
    param, tried = (None, []) if name == "simple" else tune(backend, store, tune_lists, truth_tune, args.recall)
    recall = recall_at_k(backend, store, eval_lists, truth_eval)  # also the queries' warm-up
    peak = peak_mib()
    children_mib = descendants_rss_mib()
    raw = faiss.IndexFlatIP(dim)  # the same-process reference
    raw.add(vectors)
    items = list(zip(eval_lists, eval_q))
    p_store, p_raw = p50_pair(lambda it: store.query(query_of(it[0])), lambda it: raw.search(it[1][None, :], K), items)
    with_texts = None
    if docstore is not None:  # the query a retriever makes: ids from the store, nodes from the docstore
        def query_and_read(it):
            return docstore.get_nodes([node_id(r) for r in backend.rows(store.query(query_of(it[0])))])

        p_text, p_raw2 = p50_pair(query_and_read, lambda it: raw.search(it[1][None, :], K), items)
        with_texts = p_text / p_raw2
    result = {
        "backend": name, "n": len(vectors), "dim": dim, "add_s": add_s, "add_per_s": len(vectors) / add_s,
        "index_s": index_s,
        "built": (f"{built['index']}, built in {index_s:.0f} s within the add time" if built else backend.describe()),
        "held": backend.held(store), "param": backend.param, "param_value": param, "tuning": tried, "recall": recall, "queries": len(eval_q),
        "p50_ms": 1e3 * p_store, "raw_p50_ms": 1e3 * p_raw, "p50_over_raw": p_store / p_raw,
        "peak_mib": peak, "children_mib": children_mib, "before_mib": before_mib,
        "docstore_add_s": docstore_s if docstore is not None else None, "p50_with_docstore_over_raw": with_texts,
    }
    if name in KEEPS_NO_TEXT:
        result["deep_memory"] = None
    elif not args.skip_deep_memory:
        try:
            result["deep_memory"] = deep_memory_overhead(name, backend, store, vectors, eval_q, args, work)
            # the peak again once Deep Memory has listed the store (its keyword index) and queried it
            result["deep_memory"]["peak_mib"] = peak_mib() + descendants_rss_mib()
        except Exception as error:  # noqa: BLE001 - the wrapper refusing a store is a result too
            logger.exception("%s: Deep Memory failed", name)
            import traceback

            result["deep_memory"] = {"error": f"{type(error).__name__}: {error}".splitlines()[0][:300],
                                     "where": traceback.format_exc().splitlines()[-12:]}  # in --json only
            fixed = backend.quoted_engine(store, work)
            if fixed is not None:  # what it would cost once the store's bug is fixed
                result["deep_memory_fixed"] = deep_memory_overhead(name, backend, fixed, vectors, eval_q, args, work)
    t0 = time.perf_counter()
    backend.finish(store, work)
    if docstore is not None:
        docstore.persist(str(work / "docstore.json"))
    result["persist_s"] = time.perf_counter() - t0
    backend.stop()
    return result


def projection(name: str, n: int, added: int, add_s: float, cap_min: float) -> dict:
    """The row of a backend whose add would run past ``cap_min`` minutes: its rate on the first
    ``added`` nodes and the add time projected at that rate (a floor for the stores whose adds slow
    down as they grow, such as HNSW)."""
    rate = added / add_s
    logger.warning("%s: %d nodes in %.0f s (%.0f nodes/s): %d would take %.1f h, over --max-add-minutes %g",
                   name, added, add_s, rate, n, n / rate / 3600, cap_min)
    return {"backend": name, "n": n, "projected": True, "added": added, "add_s": add_s, "add_per_s": rate,
            "projected_add_s": n / rate, "cap_min": cap_min, "param_value": None}


def projected_note(r: dict) -> str:
    hours = r["projected_add_s"] / 3600
    span = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.0f} min"
    return (f"not run: projected {span} at the measured add rate ({r['add_per_s']:,.0f} nodes/s over the first "
            f"{r['added']:,} nodes; cap {r['cap_min']:g} min)")


def reopen(name: str, args: argparse.Namespace, work: Path, param: Any) -> dict:
    """Open the persisted store and answer one query (run in a fresh process)."""
    backend = BACKEND_TYPES[name]()
    query = query_of(clustered(1, args.dim, args.seed, 3, max(10, args.n // 100))[0].tolist())  # built untimed
    backend.start(work)  # a server backend's server (not timed: it runs before the app)
    t0 = time.perf_counter()
    backend.imports()
    t1 = time.perf_counter()
    try:
        store = backend.reopen(work, args.dim, param)
        found = store.query(query)
    finally:
        if not backend.docstore:
            t2 = time.perf_counter()
            backend.stop()
    if backend.docstore:  # a retriever then reads the nodes from the docstore persisted beside it
        from llama_index.core.storage.docstore import SimpleDocumentStore

        docstore = SimpleDocumentStore.from_persist_path(str(work / "docstore.json"))
        nodes = docstore.get_nodes([node_id(r) for r in backend.rows(found)])
        assert len(nodes) == K
        t2 = time.perf_counter()
    if len(found.ids) != K:
        raise RuntimeError(f"{name} reopened answered {len(found.ids)} ids, expected {K}")
    return {"import_s": t1 - t0, "open_query_s": t2 - t1}


# --- driver -------------------------------------------------------------------------------------
def run_child(argv: list[str], mode: str, name: str, work: Path, extra: list[str] = ()) -> dict:
    """Run ``--child``/``--reopen`` for one backend in a fresh Python process; its JSON result."""
    out = work / f"{mode}.json"
    command = [sys.executable, str(Path(__file__).resolve()), *argv, f"--{mode}", name, "--work", str(work), *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{name} --{mode} failed (exit {done.returncode}):\n" + "\n".join(tail))
    return json.loads(out.read_text())


def parse_backends(spec: str, n: int, simple_n: int) -> list[tuple[str, int]]:
    """``"ours-flat,simple@10000"`` -> ``[("ours-flat", n), ("simple", 10000)]`` (simple: ``simple_n``
    unless given)."""
    runs = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, size = item.partition("@")
        if name not in BACKENDS:
            raise SystemExit(f"unknown backend {name!r} in --backends {spec!r}; choose from {','.join(BACKENDS)}")
        try:
            count = int(size) if size else (min(simple_n, n) if name == "simple" else n)
        except ValueError:
            raise SystemExit(f"{item!r}: the size after @ must be an integer number of nodes") from None
        if not 0 < count <= n:
            raise SystemExit(f"{item!r}: the size after @ must be between 1 and --n ({n}), got {count}")
        runs.append((name, count))
    return runs


def ratio(value: float | None, reference: float | None) -> str:
    return "" if value is None or not reference else f"{value / reference:.2f}x"


def docstore_note(r: dict) -> str:
    value = r.get("p50_with_docstore_over_raw")
    return f" ({value:.2f}x with the nodes read from a docstore)" if value else ""


def fine(r: dict) -> bool:
    """A row that was measured (not failed, not projected)."""
    return "error" not in r and not r.get("projected")


def untuned_setting(r: dict) -> str:
    """The search setting of a row nothing was tuned for: the default index's own, or exact."""
    return "default" if r["backend"] == "ours-auto" else "exact"


def setting_of(r: dict) -> str:
    setting = f"{r['param']}={r['param_value']}" if r.get("param") else untuned_setting(r)
    built = "; ".join(part for part in (r.get("built"), r.get("held")) if part)
    return f"{setting} ({built})" if built else setting


def dm_cell(dm: dict | None, label: str, backend: str) -> str:
    if dm is None:
        return "n/a (keeps no text)" if backend in KEEPS_NO_TEXT else "not run"
    if "error" in dm:
        return f"fails: {dm['error'][:90]}..."
    return f"{dm[label]['ratio']:.3f}x ({dm[label]['deep_ms']:.2f} vs {dm[label]['plain_ms']:.2f} ms)"


def backend_note(name: str) -> str:
    return "get_nodes' id quoting fixed in a subclass" if name == "lancedb" else "fixed"


def table(results: list[dict]) -> str:
    """The results as two Markdown tables: speed, recall and memory; Deep Memory overhead."""
    refs = {r["n"]: r for r in results if r["backend"] == "ours-flat" and fine(r)}
    lines = [
        "| backend | nodes | add nodes/s | add time x ours-flat | search setting | recall@10 | query p50 ms "
        "| p50 / raw FAISS (same process) | p50 x ours-flat | open + 1st query s | x ours-flat | imports s "
        "| peak RSS MiB (growth) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['n']:,} | failed: {r['error'].splitlines()[0][:120]} |" + " |" * 10)
            continue
        ref = refs.get(r["n"])  # ours-flat on as many nodes
        if r.get("projected"):
            lines.append(f"| {r['backend']} | {r['n']:,} | {r['add_per_s']:,.0f} | "
                         f"{ratio(ref['add_per_s'], r['add_per_s']) if ref else ''} | {projected_note(r)} |" + " |" * 8)
            continue
        peak = r["peak_mib"] + r["children_mib"]
        restart = r.get("restart") or {}
        lines.append(
            f"| {r['backend']} | {r['n']:,} | {r['add_per_s']:,.0f} | "
            f"{ratio(ref['add_per_s'], r['add_per_s']) if ref else ''} | {setting_of(r)} | {r['recall']:.3f} | "
            f"{r['p50_ms']:.2f} | {r['p50_over_raw']:.2f}x{docstore_note(r)} | "
            f"{ratio(r['p50_over_raw'], ref['p50_over_raw']) if ref else ''} | "
            f"{restart.get('open_query_s', float('nan')):.2f} | "
            f"{ratio(restart.get('open_query_s'), (ref.get('restart') or {}).get('open_query_s')) if ref else ''} | "
            f"{restart.get('import_s', float('nan')):.2f} | {peak:,.0f} (+{peak - r['before_mib']:,.0f}) |"
        )
    lines += [
        "",
        "| backend | nodes | Deep Memory p50 / plain, dense | with keywords (query_str) | wrapper plain / engine plain |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if not fine(r):
            continue
        dm = r.get("deep_memory")
        wrapper = ("" if dm is None or "error" in dm else
                   f"{dm['wrapper_plain_over_engine']:.3f}x" if "wrapper_plain_over_engine" in dm else "(no wrapper)")
        lines.append(f"| {r['backend']} | {r['n']:,} | {dm_cell(dm, 'dense', r['backend'])} | "
                     f"{dm_cell(dm, 'keywords', r['backend'])} | {wrapper} |")
        fixed = r.get("deep_memory_fixed")
        if fixed:
            lines.append(f"| {r['backend']} ({backend_note(r['backend'])}) | {r['n']:,} | {dm_cell(fixed, 'dense', '')} | "
                         f"{dm_cell(fixed, 'keywords', '')} | {fixed['wrapper_plain_over_engine']:.3f}x |")
    return "\n".join(lines)


def scaling_table(results: list[dict]) -> str:
    """One line per backend and size, the sizes side by side: add rate, p50 at matched recall (and
    over ours-flat's, both over raw FAISS in the same process), peak memory, reopen, Deep Memory."""
    refs = {r["n"]: r for r in results if r["backend"] == "ours-flat" and fine(r)}
    lines = ["| backend | nodes | add nodes/s | recall@10 (setting) | query p50 ms | p50 x ours-flat | peak RSS MiB "
             "| open + 1st query s | DM dense | DM keywords |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (BACKENDS.index(r["backend"]), r["n"])):
        head = f"| {r['backend']} | {r['n']:,} |"
        if "error" in r:
            lines.append(f"{head} failed: {r['error'].splitlines()[0][:100]} |" + " |" * 7)
        elif r.get("projected"):
            lines.append(f"{head} {r['add_per_s']:,.0f} | {projected_note(r)} |" + " |" * 6)
        else:
            ref, dm = refs.get(r["n"]), r.get("deep_memory")
            setting = f"{r['param_value']}" if r.get("param") else untuned_setting(r)
            setting += f"; {r['held']}" if r.get("held") else ""
            fixed = r.get("deep_memory_fixed")

            def short(label: str, dm: dict | None = dm, fixed: dict | None = fixed, name: str = r["backend"]) -> str:
                if dm is None:
                    return "n/a" if name in KEEPS_NO_TEXT else "not run"
                if "error" in dm:
                    return f"fails (stock); {fixed[label]['ratio']:.3f}x with the fix" if fixed else "fails"
                return f"{dm[label]['ratio']:.3f}x"
            lines.append(
                f"{head} {r['add_per_s']:,.0f} | {r['recall']:.3f} ({setting}) | {r['p50_ms']:.2f} | "
                f"{ratio(r['p50_over_raw'], ref['p50_over_raw']) if ref else ''} | "
                f"{r['peak_mib'] + r['children_mib']:,.0f} | {(r.get('restart') or {}).get('open_query_s', float('nan')):.2f} | "
                f"{short('dense')} | {short('keywords')} |")
    return "\n".join(lines)


def parse_sizes(spec: str) -> list[int]:
    """``"10000,100000"`` -> ``[10000, 100000]`` (each at least 20 nodes)."""
    try:
        sizes = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--n {spec!r}: give node counts separated by commas, e.g. 10000,100000") from None
    if not sizes or min(sizes) < 20:
        raise SystemExit(f"--n {spec!r}: every size must be at least 20 nodes")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="100000",
                        help="nodes (default 100000; 10000 is the quick mode); several, comma-separated, run one "
                             "size after the other and end with a scaling table")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated, of {','.join(BACKENDS)}; NAME@N runs NAME on the first N nodes")
    parser.add_argument("--queries", type=int, default=300, help="measured queries (p50, recall)")
    parser.add_argument("--tune-queries", type=int, default=100, help="queries that pick each ANN's search breadth")
    parser.add_argument("--recall", type=float, default=0.95, help="recall@10 an ANN is tuned to reach")
    parser.add_argument("--max-add-minutes", type=float, default=0,
                        help="stop a backend whose add, at the rate measured after a minute of adding, would "
                             "take longer than this, and report the projection instead (0: no cap)")
    parser.add_argument("--simple-n", type=int, default=10_000,
                        help="nodes for SimpleVectorStore when no simple@N is given (its query and JSON load are slow)")
    parser.add_argument("--slow-queries", type=int, default=50,
                        help=f"measured (and tuning) queries for the slow stores ({', '.join(SLOW)})")
    parser.add_argument("--batch", type=int, default=2048, help="nodes per add call (VectorStoreIndex's default)")
    parser.add_argument("--words", type=int, default=100, help="words per node text (keyword re-scoring reads them)")
    parser.add_argument("--memory-nodes", type=int, default=1000, help="memory nodes of the Deep Memory model")
    parser.add_argument("--keys", type=int, default=1000, help="remembered training queries of the model")
    parser.add_argument("--threads", type=int, default=1, help="FAISS/OpenMP threads (0 = FAISS default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-deep-memory", action="store_true")
    parser.add_argument("--skip-restart", action="store_true")
    parser.add_argument("--inline", action="store_true",
                        help="run every backend in this process (tests; peak memory is then not per backend)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--table", help="print the tables of these --json files (comma-separated) and exit")
    parser.add_argument("--tmp", help="folder for the stores (default: the system's temp dir)")
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--reopen", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--param", help=argparse.SUPPRESS)
    parser.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = parse_sizes(str(args.n))
    args.n = args.sizes[-1] if len(args.sizes) == 1 else args.sizes[0]  # a child gets one size
    return args


def param_arg(text: str | None) -> Any:
    """``--param`` back to the tuned value's type (an int breadth, or a string such as ``"20/5"``)."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def run_size(args: argparse.Namespace, argv: list[str], n_total: int, root: Path, results: list[dict]) -> list[dict]:
    """Every backend of ``--backends`` on ``n_total`` nodes, one subprocess each (or inline)."""
    args.n = n_total
    passed = [a for a in argv if a != "--inline"] + ["--n", str(n_total)]
    size_results = []
    for name, n in parse_backends(args.backends, n_total, args.simple_n):
        work = root / f"{name}@{n}of{n_total}"
        work.mkdir()
        start = time.perf_counter()
        try:
            result = (measure(name, args, work, n) if args.inline
                      else run_child(passed, "child", name, work, ["--child-n", str(n)]))
            if not args.skip_restart and not args.inline and not result.get("projected"):
                extra = ["--param", str(result["param_value"])] if result["param_value"] is not None else []
                result["restart"] = run_child(passed, "reopen", name, work, extra)
        except Exception as error:  # noqa: BLE001 - one backend failing must not hide the others
            logger.exception("%s failed", name)
            result = {"backend": name, "n": n, "error": f"{type(error).__name__}: {error}"}
        shutil.rmtree(work, ignore_errors=True)  # a 1M-node store holds GiBs of disk
        result["wall_s"] = time.perf_counter() - start
        size_results.append(result)
        results.append(result)
        if args.json:  # after every backend, so a stopped run keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=1))
        note = f" ({result['error']})" if "error" in result else (" (projected)" if result.get("projected") else "")
        print(f"{name}@{n:,}: done in {result['wall_s']:.0f} s{note}", flush=True)
    return size_results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child or args.reopen:
        work = Path(args.work)
        result = (measure(args.child, args, work, args.child_n) if args.child
                  else reopen(args.reopen, args, work, param_arg(args.param)))
        (work / ("child.json" if args.child else "reopen.json")).write_text(json.dumps(result))
        return 0
    if args.table:
        results = [r for path in args.table.split(",") for r in json.loads(Path(path).read_text())]
        for n in dict.fromkeys(r["n"] for r in results):
            print(table([r for r in results if r["n"] == n]), end="\n\n")
        print(scaling_table(results))
        return 0
    for n in args.sizes:
        parse_backends(args.backends, n, args.simple_n)  # every size's specs checked before the first run
    import faiss

    root = Path(tempfile.mkdtemp(prefix="bench_backends_", dir=args.tmp))
    results: list[dict] = []
    try:
        for n_total in args.sizes:
            print(f"n={n_total} dim={args.dim} queries={args.queries} threads={args.threads} faiss {faiss.__version__} "
                  f"({'inline' if args.inline else 'one subprocess per backend'}); "
                  f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            size_results = run_size(args, argv, n_total, root, results)
            print()
            print(table(size_results), end="\n\n", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if len(args.sizes) > 1:
        print(scaling_table(results))
    print(f"ended {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
