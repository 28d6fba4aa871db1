"""A tiny LlamaIndex vector store that keeps text but cannot list its nodes (the generic
adapter's hardest case), searched by brute-force cosine."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)


class TinyTextStore(BasePydanticVectorStore):
    """Nodes in a dict, searched by brute force; ``get_nodes`` by id only (no listing)."""

    stores_text: bool = True
    _nodes: dict[str, BaseNode] = PrivateAttr(default_factory=dict)

    @property
    def client(self) -> Any:
        return None

    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        for node in nodes:
            self._nodes[node.node_id] = node.model_copy(deep=True)
        return [n.node_id for n in nodes]

    def delete(self, ref_doc_id: str, **kwargs: Any) -> None:
        self._nodes = {i: n for i, n in self._nodes.items() if n.ref_doc_id != ref_doc_id}

    def delete_nodes(self, node_ids: Optional[list[str]] = None, filters: Optional[MetadataFilters] = None,
                     **kwargs: Any) -> None:
        self._nodes = {i: n for i, n in self._nodes.items()
                       if not ((node_ids is None or i in node_ids) and self._allowed(n, filters))}

    def clear(self) -> None:
        self._nodes = {}

    def get_nodes(self, node_ids: Optional[list[str]] = None, filters: Optional[MetadataFilters] = None,
                  **kwargs: Any) -> list[BaseNode]:
        if node_ids is None:
            raise NotImplementedError("TinyTextStore cannot list its nodes")
        return [self._nodes[i].model_copy(deep=True) for i in node_ids
                if i in self._nodes and self._allowed(self._nodes[i], filters)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        nodes = [n for n in self._nodes.values() if self._allowed(n, query.filters)
                 and (not query.node_ids or n.node_id in query.node_ids)
                 and (query.doc_ids is None or n.ref_doc_id in query.doc_ids)]
        if not nodes:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        q = np.asarray(query.query_embedding, dtype=np.float64)
        vectors = np.asarray([n.embedding for n in nodes], dtype=np.float64)
        cosine = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
        top = np.argsort(-cosine, kind="stable")[: query.similarity_top_k]
        hits = [nodes[j].model_copy(deep=True) for j in top]
        return VectorStoreQueryResult(nodes=hits, similarities=[float(cosine[j]) for j in top],
                                      ids=[n.node_id for n in hits])

    @staticmethod
    def _allowed(node: BaseNode, filters: Optional[MetadataFilters]) -> bool:
        return filters is None or all(node.metadata.get(f.key) == f.value for f in filters.filters)
