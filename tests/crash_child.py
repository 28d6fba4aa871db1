"""Helpers for the reliability tests: store fingerprints, two distinguishable states, and a
kill-at-random-times supervisor run as a subprocess.

As a script (``python tests/crash_child.py DIR N_NODES``) it builds states A and B, persists A
to ``DIR`` cleanly, prints ``{"a": <fingerprint>, "b": <fingerprint>}`` and then serves lines
from stdin:

* ``kill <seconds> <a|b>``: fork a worker that persists B, A, B, ... (or A, B, A, ... for ``a``)
  to ``DIR`` in a loop, SIGKILL it after ``<seconds>``, reap it and answer
  ``{"killed": true, "persists_done": <n>}``;
* ``quit`` (or end of input): exit.

Forking one worker per trial keeps each trial cheap (no re-import of LlamaIndex). Every worker
stops by itself after ``WORKER_LIFETIME_S`` and the supervisor exits when its stdin closes, so
nothing outlives the test. Run with ``OMP_NUM_THREADS=1`` so forking is safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np

WORKER_LIFETIME_S = 20.0
DIM = 48


def store_fingerprint(store: Any) -> str:
    """sha256 of everything a user can observe: config, nodes (id, text, metadata, ref doc),
    stored vectors and the Deep Memory state (models, arrays, active model)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([store.dim, store.metric, store.index_factory, len(store)]).encode())
    nodes = sorted(store.get_nodes(), key=lambda n: n.node_id)
    for node in nodes:
        row = [node.node_id, node.get_content(), node.metadata, node.ref_doc_id, type(node).__name__]
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=True, allow_nan=True).encode())
    if nodes:
        vectors = store.get_vectors([n.node_id for n in nodes])
        digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    meta, arrays = store.deep_memory.to_state()
    digest.update(json.dumps([meta["active"], meta["models"]], sort_keys=True).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def install_model(store: Any, name: str, seed: int, n_memory: int, keep: dict | None = None,
                  n_keys: int = 0) -> None:
    """Give ``store`` an active ``AdapterMemoryModel`` ``name`` (seeded arrays) through the
    public ``deep_memory.load_state``; ``keep`` = extra (meta, arrays) models to keep beside it;
    ``n_keys`` remembered query vectors (inert: key weight 0) make the model file bigger."""
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

    rng = np.random.default_rng(seed)
    d = store.dim
    ids = [n.node_id for n in store.get_nodes()][:n_memory]
    model = AdapterMemoryModel(
        d,
        store.metric,
        weight=np.eye(d) + 0.05 * rng.normal(size=(d, d)),
        bias=0.01 * rng.normal(size=d),
        memory_ids=ids,
        memory_vectors=rng.normal(size=(len(ids), d)),
        key_vectors=rng.normal(size=(n_keys, d)),
    )
    models = dict(keep or {})
    models[name] = model.to_state()
    meta = {"format_version": 1, "active": name, "models": {k: m for k, (m, _) in models.items()}, "jobs": []}
    arrays = {f"{k}/{key}": v for k, (_, a) in models.items() for key, v in a.items()}
    store.deep_memory.load_state(meta, arrays)


def build_states(n_nodes: int) -> tuple[Any, Any]:
    """Two stores that differ in every file: A (``n_nodes`` nodes, model_a active) and B
    (``n_nodes + 200`` other texts/vectors, deletions, model_b active with model_a kept). The
    models' files are the largest, so many random kills land while a model is being saved."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    from llama_index_deepmemory.store import DeepMemoryVectorStore

    def nodes(count: int, seed: int, tag: str) -> list[TextNode]:
        rng = np.random.default_rng(seed)
        vectors = rng.normal(size=(count, DIM))
        return [
            TextNode(
                id_=f"node_{i}",
                text=f"{tag} text {i} \u00e9\u4e2d",
                metadata={"group": i % 7, "tag": tag, "score": float(i) / 3},
                embedding=vectors[i].tolist(),
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc_{i % 50}")},
            )
            for i in range(count)
        ]

    a = DeepMemoryVectorStore()
    a.add(nodes(n_nodes, 1, "A"))
    install_model(a, "model_a", seed=11, n_memory=n_nodes // 2, n_keys=40 * n_nodes)
    b = DeepMemoryVectorStore()
    b.add(nodes(n_nodes + 200, 2, "B"))
    b.delete("doc_3")
    b.delete_nodes(node_ids=["node_1", "node_2"])
    a_meta, a_arrays = a.deep_memory.to_state()
    keep = {"model_a": (a_meta["models"]["model_a"],
                        {k.split("/", 1)[1]: v for k, v in a_arrays.items() if k.startswith("model_a/")})}
    install_model(b, "model_b", seed=12, n_memory=n_nodes // 2, keep=keep, n_keys=40 * n_nodes)
    return a, b


def _worker(path: str, first: Any, second: Any, counter_fd: int) -> None:
    """Persist first, second, first, ... until killed (or WORKER_LIFETIME_S passes)."""
    deadline = time.monotonic() + WORKER_LIFETIME_S
    done = 0
    while time.monotonic() < deadline:
        (first if done % 2 == 0 else second).persist(path, overwrite=True)  # two handles take turns on purpose
        done += 1
        os.write(counter_fd, b".")


def main(argv: list[str]) -> int:
    path, n_nodes = argv[0], int(argv[1])
    a, b = build_states(n_nodes)
    a.persist(path)
    print(json.dumps({"a": store_fingerprint(a), "b": store_fingerprint(b)}), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        delay = float(command[1])
        first, second = (a, b) if command[2:] == ["a"] else (b, a)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            try:
                _worker(path, first, second, write_fd)
            finally:
                os._exit(0)
        os.close(write_fd)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        done = 0
        while chunk := os.read(read_fd, 4096):
            done += len(chunk)
        os.close(read_fd)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        print(json.dumps({"killed": killed, "persists_done": done}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
