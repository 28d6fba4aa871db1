"""Thread safety over every engine: queries (plain and Deep Memory, dense and with keywords) from
several threads while one thread adds and deletes nodes near the queries.

    python benchmarks/bench_threads.py                    # 60 s per engine
    python benchmarks/bench_threads.py --seconds 5 --engines qdrant,postgres

Reports per engine: queries answered, write cycles, errors, and nodes returned by a query that
started after their delete returned (both must be 0). ``tests/wrapped_checks.py`` runs the same
loop for a few seconds per engine (:func:`hammer`). Engines: the embedded store, Qdrant's
in-process mode, Chroma (embedded and a ``chroma run`` server), Milvus Lite, PostgreSQL
(``pgserver``), each wrapped by ``DeepMemoryVectorStore(vector_store=...)`` with a hand-made model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

ENGINES = ("embedded", "qdrant", "chroma", "chroma-server", "milvus", "postgres")


def hammer(store: Any, queries: np.ndarray, texts: Sequence[str], seconds: float, readers: int = 2) -> dict:
    """Run the loop for ``seconds`` over ``store`` (which has an active Deep Memory model); the
    extra nodes sit on the first four ``queries``. Returns counts, errors and late returns."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    errors: list[BaseException] = []
    deleted: dict[str, float] = {}  # id -> when its delete returned
    results: list[tuple[float, list[str]]] = []
    writes = [0]
    stop = time.monotonic() + seconds

    def write() -> None:
        cycle, alive = 0, None  # each batch lives until the next one is added
        try:
            while time.monotonic() < stop:
                ids = [f"extra_{cycle}_{j}" for j in range(4)]
                nodes = [TextNode(id_=i, text=f"extra {texts[j]}", embedding=queries[j].tolist(),
                                  metadata={"parity": j % 2}) for j, i in enumerate(ids)]
                for node in nodes:
                    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"extra_doc_{cycle}")
                store.add(nodes)
                time.sleep(0.02)
                if alive is not None:
                    if cycle % 2:
                        store.delete(f"extra_doc_{cycle - 1}")
                    else:
                        store.delete_nodes(alive)
                    done = time.monotonic()
                    deleted.update((i, done) for i in alive)
                alive = ids
                writes[0] += 1
                cycle += 1
        except BaseException as error:  # noqa: BLE001 - reported
            errors.append(error)

    def read(which: int) -> None:
        i = 0
        try:
            while time.monotonic() < stop:
                j = i % 4
                start = time.monotonic()
                query = VectorStoreQuery(query_embedding=queries[j].tolist(), similarity_top_k=10,
                                         query_str=texts[j] if which % 2 else None,
                                         mode="mmr" if which % 3 == 2 else "default")  # a third reader: MMR
                hits = store.query(query, deep_memory=bool(which % 2) or i % 3 == 0)
                results.append((start, hits.ids))
                i += 1
        except BaseException as error:  # noqa: BLE001 - reported
            errors.append(error)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(r,)) for r in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    late = [(i, start - deleted[i]) for start, ids in results for i in ids if i in deleted and deleted[i] < start]
    return {"queries": len(results), "writes": writes[0], "errors": errors, "late": late,
            "extras_seen": sum(any(i.startswith("extra_") for i in ids) for _, ids in results)}


def engine_store(name: str, work: Path, dim: int, stack: list) -> Any:
    """A ``DeepMemoryVectorStore`` over engine ``name`` (servers started here, stopped by ``stack``)."""
    from llama_index_deepmemory import DeepMemoryVectorStore

    if name == "embedded":
        return DeepMemoryVectorStore()
    if name == "qdrant":
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient

        return DeepMemoryVectorStore(vector_store=QdrantVectorStore(client=QdrantClient(":memory:"),
                                                                    collection_name="docs"))
    if name in ("chroma", "chroma-server"):
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        if name == "chroma":
            client = chromadb.EphemeralClient()
        else:
            from bench_backends import ChromaServer

            server = ChromaServer()
            server.start(work)
            stack.append(server.stop)
            client = chromadb.HttpClient(host="127.0.0.1", port=server.port)
        collection = client.get_or_create_collection("threads", metadata={"hnsw:space": "cosine"})
        return DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=collection))
    if name == "milvus":
        from llama_index.vector_stores.milvus import MilvusVectorStore

        engine = MilvusVectorStore(uri=str(work / "milvus.db"), dim=dim, similarity_metric="COSINE",
                                   use_async_client=False, overwrite=True)
        stack.append(engine.client.close)
        return DeepMemoryVectorStore(vector_store=engine)
    if name == "postgres":
        import pgserver
        from llama_index.vector_stores.postgres import PGVectorStore

        server = pgserver.get_server(work / "pgdata", cleanup_mode="delete")
        stack.append(server.cleanup)
        rest = server.get_uri().split("://", 1)[1]
        return DeepMemoryVectorStore(vector_store=PGVectorStore(
            connection_string=f"postgresql+psycopg2://{rest}", async_connection_string=f"postgresql+asyncpg://{rest}",
            table_name="threads", embed_dim=dim))
    raise SystemExit(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    from synthetic import KeywordTask
    from test_ranking import hand_model

    task = KeywordTask(seed=5)
    rows = []
    for name in args.engines.split(","):
        stack: list = []
        with tempfile.TemporaryDirectory() as folder:
            try:
                store = engine_store(name, Path(folder), task.docs.shape[1], stack)
                store.add(task.nodes(metadata=True))
                store.deep_memory.add_model("hand", hand_model(task, seed=1), activate=True)  # a hand-made model
                out = hammer(store, task.queries, task.texts, args.seconds, args.readers)
            finally:
                for close in reversed(stack):
                    close()
        row = {"engine": name, "seconds": args.seconds, "queries": out["queries"], "writes": out["writes"],
               "errors": len(out["errors"]), "first_error": repr(out["errors"][0]) if out["errors"] else None,
               "late": len(out["late"]), "extras_seen": out["extras_seen"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| engine | seconds | queries | write cycles | errors | returned after delete |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['seconds']:.0f} | {r['queries']:,} | {r['writes']:,} | {r['errors']} | {r['late']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["errors"] == 0 and r["late"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
