"""``DeepMemoryVectorStoreIndex``: LlamaIndex's ``VectorStoreIndex`` that honours ``deep_memory=``.

LlamaIndex's ``VectorIndexRetriever`` swallows keyword arguments it does not know, so the line of
Activeloop's tutorial ``index.as_retriever(similarity_top_k=4, deep_memory=True)`` returns plain
results without a word on a plain ``VectorStoreIndex``. This subclass moves ``deep_memory`` into
``vector_store_kwargs`` (where the store reads it), so the line ranks with Deep Memory, or fails
loudly when no model is active; ``as_query_engine(deep_memory=...)`` and ``as_chat_engine`` reach
it through ``as_retriever`` too. Everything else is LlamaIndex's index, unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever

logger = logging.getLogger(__name__)

PROGRESS_FROM = 256  # nodes to embed from which the index shows LlamaIndex's progress bar by default


class DeepMemoryVectorStoreIndex(VectorStoreIndex):
    """A ``VectorStoreIndex`` whose ``as_retriever(deep_memory=True)`` reaches the store.

    Build it like ``VectorStoreIndex`` (``DeepMemoryVectorStoreIndex(nodes, storage_context=...)``,
    ``.from_documents``, ``.from_vector_store(store)``). ``deep_memory`` given both directly and in
    ``vector_store_kwargs`` with different values is an error, as is ``deep_memory=True`` over a
    vector store that does not take it (only stores that know Deep Memory do).
    """

    def __init__(self, nodes: Any = None, **kwargs: Any) -> None:
        """``VectorStoreIndex(nodes, **kwargs)``, with ``show_progress`` on by default when at least
        :data:`PROGRESS_FROM` nodes need embedding; without ``embed_model=``, the store's embedding
        model (``DeepMemoryVectorStore(embed_model=...)``, or the one recorded with a persisted
        store) rather than ``Settings.embed_model``. A store without one gets the index's, so
        ``store.deep_memory.train(queries, relevance)`` embeds with it and ``persist`` records it."""
        context = kwargs.get("storage_context")
        store = getattr(context, "vector_store", None)
        if "show_progress" not in kwargs and nodes is not None:  # embedding many nodes shows a bar
            kwargs["show_progress"] = sum(getattr(n, "embedding", None) is None for n in nodes) >= PROGRESS_FROM
        if kwargs.get("embed_model") is None and getattr(store, "embed_model", None) is not None:
            kwargs["embed_model"] = store.embed_model
        super().__init__(nodes, **kwargs)
        if store is not None and hasattr(store, "deep_memory") and getattr(store, "embed_model", 1) is None:
            store.embed_model = self._embed_model

    def as_retriever(self, **kwargs: Any) -> BaseRetriever:
        if "deep_memory" in kwargs:
            kwargs["vector_store_kwargs"] = _with_deep_memory(
                kwargs.pop("deep_memory"), kwargs.get("vector_store_kwargs"), self._vector_store)
        return super().as_retriever(**kwargs)


def _with_deep_memory(deep_memory: Any, vector_store_kwargs: Any, vector_store: Any) -> dict[str, Any]:
    """``vector_store_kwargs`` with ``deep_memory`` added, checked."""
    if not isinstance(deep_memory, bool):
        raise TypeError(f"deep_memory must be True or False, got {deep_memory!r}")
    merged = dict(vector_store_kwargs or {})
    if "deep_memory" in merged and merged["deep_memory"] != deep_memory:
        raise ValueError(
            f"deep_memory={deep_memory!r} conflicts with vector_store_kwargs={{'deep_memory': {merged['deep_memory']!r}}}; "
            "give it once"
        )
    if deep_memory and not hasattr(vector_store, "deep_memory"):
        raise ValueError(
            f"deep_memory=True needs a store that ranks with Deep Memory; {type(vector_store).__name__} does not "
            "(use DeepMemoryVectorStore(), or DeepMemoryVectorStore(vector_store=...) around it)"
        )
    merged["deep_memory"] = deep_memory
    return merged
