"""A writer process over one LanceDB folder, for the several-process test of the LanceDB adapter.

``python tests/lancedb_child.py URI PREFIX N`` opens the folder's ``docs`` table through
``DeepMemoryVectorStore(vector_store=LanceDBVectorStore(...))``, prints ``{"ready": true}``, waits for
a line on stdin (so every writer starts at once), adds ``N`` nodes ``PREFIX-0 ..`` in batches of 10,
deletes every fifth, and prints the ids it kept.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from llama_index.core.schema import TextNode
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from llama_index_deepmemory.store import DeepMemoryVectorStore

DIM = 8


def nodes(prefix: str, n: int) -> list[TextNode]:
    rng = np.random.default_rng([ord(c) for c in prefix])
    vectors = rng.normal(size=(n, DIM))
    return [TextNode(id_=f"{prefix}-{i}", text=f"{prefix} text {i}", metadata={"writer": prefix},
                     embedding=v.tolist()) for i, v in enumerate(vectors)]


def main(uri: str, prefix: str, n: int) -> None:
    store = DeepMemoryVectorStore(vector_store=LanceDBVectorStore(uri=uri, table_name="docs", mode="append"))
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    made = nodes(prefix, n)
    for start in range(0, n, 10):
        store.add(made[start : start + 10])
    gone = [node.node_id for node in made[::5]]
    store.delete_nodes(gone)
    print(json.dumps({"kept": [node.node_id for node in made if node.node_id not in gone]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
