"""The backend for a LlamaIndex vector store, chosen once: one adapter per engine, else generic."""

from __future__ import annotations

from typing import Any

from llama_index_deepmemory.engine.generic import GenericAdapter

_BY_TYPE = {  # the store's class name -> (module, adapter class)
    "QdrantVectorStore": ("qdrant", "QdrantAdapter"),
    "ChromaVectorStore": ("chroma", "ChromaAdapter"),
    "MilvusVectorStore": ("milvus", "MilvusAdapter"),
    "PGVectorStore": ("postgres", "PostgresAdapter"),
    "LanceDBVectorStore": ("lancedb", "LanceDBAdapter"),
}


def adapter_for(vector_store: Any) -> GenericAdapter:
    """The adapter serving ``vector_store``, checked (a clear error naming what is missing)."""
    from importlib import import_module

    from llama_index.core.vector_stores.types import BasePydanticVectorStore

    if not isinstance(vector_store, BasePydanticVectorStore):
        raise TypeError(
            f"vector_store must be a LlamaIndex vector store (BasePydanticVectorStore), got "
            f"{type(vector_store).__name__}; e.g. QdrantVectorStore(client=QdrantClient(path=...), collection_name=...)"
        )
    found = _BY_TYPE.get(type(vector_store).__name__)
    if found is None:
        adapter = GenericAdapter(vector_store)
    else:
        module = import_module(f"llama_index_deepmemory.engine.{found[0]}")
        adapter = getattr(module, found[1])(vector_store)
    adapter.check()
    return adapter
