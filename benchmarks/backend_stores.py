"""The stores ``bench_backends.py`` measures, each built, tuned, persisted and reopened through the
LlamaIndex API (one :class:`Backend` per row; see ``bench_backends.py`` for what each row measures)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

K = 10
READY_S = 120.0  # a server backend's bounded start
EF_GRID = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MILVUS_INDEX = {"index_type": "HNSW", "metric_type": "COSINE", "params": {"M": 16, "efConstruction": 200}}

def node_id(row: int) -> str:
    """Row ``row``'s node id: a UUID (Qdrant accepts only UUIDs or integers as point ids)."""
    return str(uuid.UUID(int=int(row)))


def row_of(node: str) -> int:
    return uuid.UUID(node).int


def query_of(vector: list[float], text: str | None = None):
    from llama_index.core.vector_stores.types import VectorStoreQuery

    return VectorStoreQuery(query_embedding=vector, similarity_top_k=K, query_str=text)


# --- backends -----------------------------------------------------------------------------------
class Backend:
    """How one store is built, tuned, persisted and reopened (through the LlamaIndex API)."""

    param: str | None = None  # the search breadth tuned for recall, None: nothing to tune
    grid: tuple = EF_GRID  # the values tried for ``param``, cheapest first
    keeps_text = True  # False: Deep Memory cannot wrap it
    docstore = False  # True: a VectorStoreIndex keeps the nodes in a docstore beside it (timed too)

    def describe(self) -> str:
        """How the store is built, for the table (e.g. its index)."""
        return ""

    def held(self, store: Any) -> str:
        """What the store holds after the add, where it chose it itself (the default's index)."""
        return ""

    def imports(self) -> None:
        """Import what :meth:`create` and :meth:`reopen` need (timed apart at restart)."""

    def create(self, work: Path, dim: int) -> Any:
        raise NotImplementedError

    def set_param(self, store: Any, value: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no search parameter")

    def quoted_engine(self, store: Any, work: Path) -> Any:
        """The same data behind a store with a known wrapper-blocking bug fixed (None: no such fix)."""
        return None

    def after_add(self, store: Any, n: int) -> dict:
        """Work a user does once the nodes are in, before querying (an index build; timed with the
        add); what it chose."""
        return {}

    def rows(self, result: Any) -> list[int]:
        return [row_of(i) for i in result.ids]

    def finish(self, store: Any, work: Path) -> None:
        """Persist and close, so that a fresh process can open the store."""

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        raise NotImplementedError

    def start(self, work: Path) -> None:
        """Start the backend's server (a server backend; not timed)."""

    def stop(self) -> None:
        """Stop the server :meth:`start` started."""


class OursFlat(Backend):
    def imports(self) -> None:
        from llama_index_deepmemory import DeepMemoryVectorStore  # noqa: F401

    def create(self, work: Path, dim: int) -> Any:
        from llama_index_deepmemory import DeepMemoryVectorStore

        return DeepMemoryVectorStore(index_factory="Flat")  # exact at every size (the default turns HNSW)

    def finish(self, store: Any, work: Path) -> None:
        store.persist(str(work / "ours"))

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        from llama_index_deepmemory import DeepMemoryVectorStore

        return DeepMemoryVectorStore.from_persist_path(str(work / "ours"))


class OursHnsw(OursFlat):
    param = "efSearch"

    def create(self, work: Path, dim: int) -> Any:
        from llama_index_deepmemory import DeepMemoryVectorStore

        return DeepMemoryVectorStore(index_factory="HNSW32")

    def set_param(self, store: Any, value: int) -> None:
        import faiss

        faiss.downcast_index(store.client.index).hnsw.efSearch = int(value)  # IDMap2 over HNSW

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        store = super().reopen(work, dim, param)
        if param is not None:
            self.set_param(store, param)
        return store


class OursAuto(OursFlat):
    """The default, ``index_factory="auto"``: exact below its threshold, HNSW32 past it (at its own
    ``ef_search``, not tuned here: the row reports the recall the default gives)."""

    def describe(self) -> str:
        return "auto: Flat below 20,000 nodes, HNSW32 efConstruction=80 past it, ef_search re-probed"

    def held(self, store: Any) -> str:
        engine = store._backend  # the embedded FaissStore
        index = engine._index
        if index is None or index.exact:
            return "holds Flat"
        from llama_index_deepmemory.index import DEFAULT_EF_SEARCH

        return f"holds {engine.index_in_use} at ef_search {index.ef_search or DEFAULT_EF_SEARCH}"

    def create(self, work: Path, dim: int) -> Any:
        from llama_index_deepmemory import DeepMemoryVectorStore

        return DeepMemoryVectorStore()


class LlamaFaiss(Backend):
    keeps_text, docstore = False, True
    def imports(self) -> None:
        import faiss  # noqa: F401
        from llama_index.vector_stores.faiss import FaissVectorStore  # noqa: F401

    def create(self, work: Path, dim: int) -> Any:
        import faiss
        from llama_index.vector_stores.faiss import FaissVectorStore

        return FaissVectorStore(faiss_index=faiss.IndexFlatIP(dim))  # unit vectors: cosine

    def rows(self, result: Any) -> list[int]:
        return [int(i) for i in result.ids]  # its ids are FAISS row numbers

    def finish(self, store: Any, work: Path) -> None:
        store.persist(str(work / "faiss" / "index.faiss"))

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        from llama_index.vector_stores.faiss import FaissVectorStore

        return FaissVectorStore.from_persist_path(str(work / "faiss" / "index.faiss"))


class Simple(Backend):
    keeps_text, docstore = False, True
    def imports(self) -> None:
        from llama_index.core.vector_stores import SimpleVectorStore  # noqa: F401

    def create(self, work: Path, dim: int) -> Any:
        from llama_index.core.vector_stores import SimpleVectorStore

        return SimpleVectorStore()

    def finish(self, store: Any, work: Path) -> None:
        store.persist(str(work / "simple" / "vector_store.json"))

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        from llama_index.core.vector_stores import SimpleVectorStore

        return SimpleVectorStore.from_persist_path(str(work / "simple" / "vector_store.json"))


class Chroma(Backend):
    param = "ef_search"

    def imports(self) -> None:
        os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
        import chromadb  # noqa: F401
        from llama_index.vector_stores.chroma import ChromaVectorStore  # noqa: F401

    def create(self, work: Path, dim: int) -> Any:
        self.imports()
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        client = chromadb.PersistentClient(path=str(work / "chroma"))
        collection = client.get_or_create_collection("bench", metadata={"hnsw:space": "cosine"})
        return ChromaVectorStore(chroma_collection=collection)

    def set_param(self, store: Any, value: int) -> None:
        store._collection.modify(configuration={"hnsw": {"ef_search": int(value)}})

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        import chromadb
        from llama_index.vector_stores.chroma import ChromaVectorStore

        collection = chromadb.PersistentClient(path=str(work / "chroma")).get_collection("bench")
        store = ChromaVectorStore(chroma_collection=collection)
        if param is not None and collection.configuration["hnsw"]["ef_search"] != param:
            self.set_param(store, param)
        return store


class Qdrant(Backend):
    def imports(self) -> None:
        from llama_index.vector_stores.qdrant import QdrantVectorStore  # noqa: F401
        from qdrant_client import QdrantClient  # noqa: F401

    def create(self, work: Path, dim: int) -> Any:
        from llama_index.vector_stores.qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient

        return QdrantVectorStore(client=QdrantClient(path=str(work / "qdrant")), collection_name="bench")

    def finish(self, store: Any, work: Path) -> None:
        store.client.close()

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        return self.create(work, dim)


class Milvus(Backend):
    param = "ef"

    def imports(self) -> None:
        from llama_index.vector_stores.milvus import MilvusVectorStore  # noqa: F401

    def _store(self, work: Path, dim: int, ef: int, overwrite: bool) -> Any:
        from llama_index.vector_stores.milvus import MilvusVectorStore

        return MilvusVectorStore(uri=str(work / "milvus.db"), dim=dim, similarity_metric="COSINE",
                                 use_async_client=False, overwrite=overwrite, index_config=dict(MILVUS_INDEX),
                                 search_config={"ef": ef})

    def create(self, work: Path, dim: int) -> Any:
        return self._store(work, dim, 64, overwrite=True)

    def set_param(self, store: Any, value: int) -> None:
        store.search_config = {"ef": int(value)}

    def finish(self, store: Any, work: Path) -> None:
        store.client.close()

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        store = self._store(work, dim, param or 64, overwrite=False)
        store.client.load_collection(store.collection_name)  # a reopened Milvus Lite file starts released
        return store


class ChromaServer(Chroma):
    """``chroma run`` on 127.0.0.1 (data in the work folder), through ``chromadb.HttpClient``."""

    server: Any = None
    port = 0

    def start(self, work: Path) -> None:
        import socket

        import chromadb

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        command = [shutil.which("chroma") or "chroma", "run", "--host", "127.0.0.1", "--port", str(self.port),
                   "--path", str(work / "chroma-server")]
        self.server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.stop)  # also when the measurement fails
        deadline = time.monotonic() + READY_S
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=self.port).heartbeat()
                return
            except Exception:  # noqa: BLE001 - not listening yet
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chroma run did not become ready") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(30)
            self.server = None

    def _collection(self, create: bool) -> Any:
        import chromadb

        client = chromadb.HttpClient(host="127.0.0.1", port=self.port)
        return (client.get_or_create_collection("bench", metadata={"hnsw:space": "cosine"}) if create
                else client.get_collection("bench"))

    def create(self, work: Path, dim: int) -> Any:
        self.imports()
        from llama_index.vector_stores.chroma import ChromaVectorStore

        self.start(work)
        return ChromaVectorStore(chroma_collection=self._collection(create=True))

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        from llama_index.vector_stores.chroma import ChromaVectorStore

        collection = self._collection(create=False)
        store = ChromaVectorStore(chroma_collection=collection)
        if param is not None and collection.configuration["hnsw"]["ef_search"] != param:
            self.set_param(store, param)
        return store


class Postgres(Backend):
    """PostgreSQL + pgvector (``pgserver``, a Unix socket in the work folder) through
    ``PGVectorStore`` with an HNSW index (m=16, ef_construction=64), ``hnsw.ef_search`` tuned."""

    param = "hnsw.ef_search"
    server: Any = None

    def imports(self) -> None:
        import pgserver  # noqa: F401
        from llama_index.vector_stores.postgres import PGVectorStore  # noqa: F401

    def start(self, work: Path) -> None:
        import pgserver

        self.server = pgserver.get_server(work / "pgdata", cleanup_mode="stop")

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None

    def _store(self, dim: int, ef: int) -> Any:
        from llama_index.vector_stores.postgres import PGVectorStore

        rest = self.server.get_uri().split("://", 1)[1]
        return PGVectorStore(connection_string=f"postgresql+psycopg2://{rest}",
                             async_connection_string=f"postgresql+asyncpg://{rest}", table_name="bench",
                             embed_dim=dim, hnsw_kwargs={"hnsw_m": 16, "hnsw_ef_construction": 64,
                                                         "hnsw_ef_search": ef, "hnsw_dist_method": "vector_cosine_ops"})

    def create(self, work: Path, dim: int) -> Any:
        self.start(work)
        return self._store(dim, 40)

    def set_param(self, store: Any, value: int) -> None:
        store.hnsw_kwargs["hnsw_ef_search"] = int(value)

    def reopen(self, work: Path, dim: int, param: int | None) -> Any:
        return self._store(dim, param or 40)


class FaissHnswRaw(Backend):
    """``faiss.IndexHNSWFlat(dim, 32, METRIC_INNER_PRODUCT)`` itself, ids only (the floor an HNSW
    store can reach): ``add`` stacks the batch's embeddings and calls ``index.add``; ``query`` is one
    ``index.search`` (the answer's ids are row numbers, no nodes, no docstore)."""

    param = "efSearch"
    keeps_text = False

    class Store:
        def __init__(self, index: Any) -> None:
            self.index = index

        def add(self, nodes: list) -> list[str]:
            self.index.add(np.asarray([n.embedding for n in nodes], dtype=np.float32))
            return [n.node_id for n in nodes]

        def query(self, query: Any) -> Any:
            from types import SimpleNamespace

            vector = np.asarray(query.query_embedding, dtype=np.float32)[None, :]
            _, rows = self.index.search(vector, query.similarity_top_k)
            return SimpleNamespace(ids=[int(r) for r in rows[0] if r >= 0])

    def imports(self) -> None:
        import faiss  # noqa: F401

    def describe(self) -> str:
        return "IndexHNSWFlat M=32 efConstruction=40"

    def create(self, work: Path, dim: int) -> Any:
        import faiss

        return self.Store(faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT))

    def rows(self, result: Any) -> list[int]:
        return list(result.ids)

    def set_param(self, store: Any, value: Any) -> None:
        store.index.hnsw.efSearch = int(value)

    def finish(self, store: Any, work: Path) -> None:
        import faiss

        faiss.write_index(store.index, str(work / "hnsw.faiss"))

    def reopen(self, work: Path, dim: int, param: Any) -> Any:
        import faiss

        store = self.Store(faiss.read_index(str(work / "hnsw.faiss")))
        if param is not None:
            self.set_param(store, param)
        return store


class LanceDB(Backend):
    """``LanceDBVectorStore`` on an embedded LanceDB folder, with an ``IVF_PQ`` index (cosine,
    sqrt(n) partitions up to ``MAX_PARTITIONS``, 48 sub-vectors of 8 dimensions) built after the add
    (timed with it): the vector index LanceDB's docs recommend; ``nprobes`` and ``refine_factor``
    (full-vector re-ranking of ``refine x k`` PQ candidates) tuned together, cheapest first. The cap:
    k-means trains on 256 rows per partition, so sqrt(1M) = 1,000 partitions would cost ~10x the
    100,000-node build (3-4 min on this 2-core machine). Deep Memory wraps the stock store: the
    package's LanceDB adapter reads, lists and deletes through the table (the store's own
    ``get_nodes(node_ids=...)`` double-quotes ids and fails, its ``get_nodes()`` loads the whole table)."""

    param = "nprobes/refine_factor"
    grid = ("20/1", "20/2", "20/5", "20/10", "40/10", "40/20", "80/20", "80/40", "160/40", "320/80")
    SUB_VECTORS = 48
    MAX_PARTITIONS = 320

    def imports(self) -> None:
        import lancedb  # noqa: F401
        from llama_index.vector_stores.lancedb import LanceDBVectorStore  # noqa: F401

    def create(self, work: Path, dim: int) -> Any:
        from llama_index.vector_stores.lancedb import LanceDBVectorStore

        return LanceDBVectorStore(uri=str(work / "lancedb"), table_name="bench", mode="overwrite")

    def after_add(self, store: Any, n: int) -> dict:
        partitions = max(1, min(self.MAX_PARTITIONS, int(round(np.sqrt(n)))))
        store.create_index(metric="cosine", num_partitions=partitions, num_sub_vectors=self.SUB_VECTORS,
                           index_type="IVF_PQ")
        return {"index": f"IVF_PQ cosine, {partitions} partitions, {self.SUB_VECTORS} sub-vectors"}

    def set_param(self, store: Any, value: Any) -> None:
        nprobes, refine = (int(v) for v in str(value).split("/"))
        store.nprobes, store.refine_factor = nprobes, (refine if refine > 1 else None)

    def reopen(self, work: Path, dim: int, param: Any) -> Any:
        from llama_index.vector_stores.lancedb import LanceDBVectorStore

        store = LanceDBVectorStore(uri=str(work / "lancedb"), table_name="bench", mode="append")
        if param is not None:
            self.set_param(store, param)
        return store


BACKEND_TYPES: dict[str, Callable[[], Backend]] = {
    "ours-flat": OursFlat, "ours-hnsw": OursHnsw, "ours-auto": OursAuto, "faiss": LlamaFaiss, "simple": Simple,
    "chroma": Chroma, "qdrant": Qdrant, "milvus": Milvus, "chroma-server": ChromaServer, "postgres": Postgres,
    "faiss-hnsw": FaissHnswRaw, "lancedb": LanceDB,
}
