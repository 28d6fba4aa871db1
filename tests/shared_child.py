"""A second (third, ...) process over one store, for the several-process tests of shared models.

``python tests/shared_child.py train FOLDER SEED`` loads the embedded store persisted at ``FOLDER``,
prints ``{"ready": true}``, waits for a line on stdin (so the test trains at the same moment),
trains on the rotation task and prints ``{"job": ..., "model": ..., "active": ...}``.
``... train-engine MODEL_DIR SEED`` does the same over an in-memory Qdrant holding the same
nodes, its models shared through ``MODEL_DIR``.
``... serve FOLDER`` loads the store once and answers stdin lines: ``wait NAME`` (``none`` for no
model) waits up to 5 s until ``get_model()`` says ``NAME`` and prints the seconds that took and the
Deep Memory ranking of the task's test queries; ``quit`` (or end of input) exits.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from llama_index.core.vector_stores.types import VectorStoreQuery

from synthetic import RotationTask

FAST = dict(epochs=8, learning_rate=2e-2, batch_size=32, query_memory=False, refit=False)
N_TRAIN = 120
WAIT_LIMIT_S = 5.0


def task() -> RotationTask:
    return RotationTask(n_docs=150, dim=16, n_queries=160, seed=0)


def train(store, seed: int) -> None:
    t = task()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # the go signal (or end of input)
    job = store.deep_memory.train(t.texts[:N_TRAIN], t.relevance[:N_TRAIN], embedding=t.queries[:N_TRAIN],
                                  seed=seed, **FAST)
    state = store.deep_memory.status(job)
    print(json.dumps({"job": job, "model": state["model_name"], "active": store.deep_memory.get_model()}), flush=True)


def ranking(store) -> list[list[str]]:
    t = task()
    return [store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5), deep_memory=True).ids
            for q in t.queries[N_TRAIN:]]


def engine_store(model_dir: str):
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from llama_index_deepmemory import DeepMemoryVectorStore

    t = task()
    engine = QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="docs")
    store = DeepMemoryVectorStore(vector_store=engine, model_dir=model_dir)
    store.add([TextNode(id_=i, text=f"document {i}", embedding=v.tolist()) for i, v in zip(t.ids, t.docs)])
    return store


def serve(store) -> None:
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            return
        want = None if command[1] == "none" else command[1]
        began = time.monotonic()
        while store.deep_memory.get_model() != want and time.monotonic() - began < WAIT_LIMIT_S:
            time.sleep(0.02)
        seen, seconds = store.deep_memory.get_model(), time.monotonic() - began
        try:
            ids = ranking(store)
        except ValueError as exc:
            ids = f"error: {exc}"
        print(json.dumps({"active": seen, "seconds": seconds, "ids": ids}), flush=True)


def main(argv: list[str]) -> int:
    from llama_index_deepmemory import DeepMemoryVectorStore

    command, where = argv[0], argv[1]
    if command == "train":
        train(DeepMemoryVectorStore.from_persist_path(where), int(argv[2]))
    elif command == "train-engine":
        train(engine_store(where), int(argv[2]))
    elif command == "serve":
        store = DeepMemoryVectorStore.from_persist_path(where)
        print(json.dumps({"ready": True}), flush=True)
        serve(store)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
