"""LangChain face of the Deep Memory store: ``DeepMemoryLangChainStore``, a ``langchain_core`` ``VectorStore``.

Activeloop's LangChain tutorials port with only the import and constructor lines changed::

    from llama_index_deepmemory.langchain import DeepMemoryLangChainStore

    db = DeepMemoryLangChainStore(embedding=embeddings)           # was DeepLake(dataset_path=..., embedding=...)
    ids = db.add_documents(docs)
    job_id = db.vectorstore.deep_memory.train(queries=questions, relevance=relevances)
    db.vectorstore.deep_memory.evaluate(queries=test_questions, relevance=test_relevances)
    retriever = db.as_retriever()
    retriever.search_kwargs["deep_memory"] = True

The class only translates: documents become LlamaIndex ``TextNode``s whose ids are the LangChain ids,
searches become ``VectorStoreQuery``s, LangChain filter dicts become ``MetadataFilters``; storage,
ranking and Deep Memory are the wrapped :class:`~llama_index_deepmemory.store.DeepMemoryVectorStore`'s
(``db.vectorstore``), whatever backend it runs on. Importing this module needs ``langchain-core``
(``pip install "llama-index-deepmemory[langchain]"``); ``import llama_index_deepmemory`` never imports it.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Collection, Iterable, Sequence

import numpy as np

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.runnables.config import run_in_executor
    from langchain_core.vectorstores import VectorStore, VectorStoreRetriever
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "llama_index_deepmemory.langchain needs langchain-core: pip install \"llama-index-deepmemory[langchain]\""
    ) from exc
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from pydantic import ConfigDict, model_validator

from llama_index_deepmemory.langchain_filters import metadata_filters
from llama_index_deepmemory.mmr import langchain_mmr, unit_rows
from llama_index_deepmemory.store import DeepMemoryVectorStore

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

logger = logging.getLogger(__name__)

__all__ = [
    "DeepMemoryLangChainStore",
    "DeepMemoryRetriever",
    "LangChainEmbedding",
    "LlamaIndexEmbeddings",
    "default_embeddings",
    "metadata_filters",
]

DEFAULT_K = 4
# keyword arguments each kind of search accepts (besides the query itself)
SEARCH_KWARGS: dict[str, tuple[str, ...]] = {
    "similarity": ("k", "filter", "deep_memory"),
    "similarity_score_threshold": ("k", "filter", "deep_memory", "score_threshold"),
    "mmr": ("k", "fetch_k", "lambda_mult", "filter", "deep_memory"),
}

# --- embeddings ----------------------------------------------------------------------------------
class LangChainEmbedding(BaseEmbedding):
    """A LangChain ``Embeddings`` as a LlamaIndex ``BaseEmbedding`` (queries via ``embed_query``,
    texts via ``embed_documents``), so Deep Memory embeds training and evaluation queries exactly as
    :class:`DeepMemoryLangChainStore` embeds searches."""

    _embeddings: Any = PrivateAttr(default=None)

    def __init__(self, embeddings: Embeddings, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", f"langchain:{type(embeddings).__name__}")
        super().__init__(**kwargs)
        self._embeddings = embeddings

    @classmethod
    def class_name(cls) -> str:
        return "LangChainEmbedding"

    @property
    def embeddings(self) -> Embeddings:
        return self._embeddings

    def _get_query_embedding(self, query: str) -> list[float]:
        return list(self._embeddings.embed_query(query))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return list(await self._embeddings.aembed_query(query))

    def _get_text_embedding(self, text: str) -> list[float]:
        return list(self._embeddings.embed_documents([text])[0])

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return list((await self._embeddings.aembed_documents([text]))[0])

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [list(v) for v in self._embeddings.embed_documents(list(texts))]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [list(v) for v in await self._embeddings.aembed_documents(list(texts))]


class LlamaIndexEmbeddings(Embeddings):
    """A LlamaIndex ``BaseEmbedding`` as a LangChain ``Embeddings`` (e.g. the bundled all-MiniLM-L6-v2,
    see :func:`default_embeddings`)."""

    def __init__(self, embed_model: BaseEmbedding) -> None:
        if not isinstance(embed_model, BaseEmbedding):
            raise TypeError(
                f"LlamaIndexEmbeddings wraps a LlamaIndex BaseEmbedding, got {type(embed_model).__name__}"
            )
        self.embed_model = embed_model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self.embed_model.get_text_embedding_batch(list(texts))]

    def embed_query(self, text: str) -> list[float]:
        return list(map(float, self.embed_model.get_query_embedding(text)))

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in await self.embed_model.aget_text_embedding_batch(list(texts))]

    async def aembed_query(self, text: str) -> list[float]:
        return list(map(float, await self.embed_model.aget_query_embedding(text)))


def default_embeddings() -> LlamaIndexEmbeddings:
    """The bundled all-MiniLM-L6-v2 (384 dimensions, offline) as a LangChain ``Embeddings``."""
    from llama_index_deepmemory.embeddings import default_embedding

    return LlamaIndexEmbeddings(default_embedding())


def _llama_index_embedding(embedding: Embeddings) -> BaseEmbedding:
    """What the store's Deep Memory embeds queries with: the wrapped LlamaIndex model when
    ``embedding`` is one (its batched query path), else an adapter over ``embedding``."""
    if isinstance(embedding, LlamaIndexEmbeddings):
        return embedding.embed_model
    return LangChainEmbedding(embedding)


# --- the vector store ------------------------------------------------------------------------------
def _check_kwargs(method: str, kwargs: dict[str, Any], accepted: Sequence[str]) -> None:
    if kwargs:
        raise TypeError(
            f"DeepMemoryLangChainStore.{method} got unexpected keyword argument(s) {sorted(kwargs)}; "
            f"accepted: {list(accepted)}"
        )


def _check_deep_memory(deep_memory: Any) -> bool:
    if not isinstance(deep_memory, bool):
        raise TypeError(f"deep_memory must be True or False, got {deep_memory!r}")
    return deep_memory


def _check_score_threshold(threshold: Any) -> None:
    """None, or a finite number (relevance scores are in [0, 1]); NaN would silently match nothing."""
    if threshold is None:
        return
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) or not math.isfinite(threshold):
        raise ValueError(f"score_threshold must be a finite number (relevance scores are in [0, 1]), got {threshold!r}")


def _document(node: BaseNode) -> Document:
    return Document(
        id=node.node_id, page_content=node.get_content(metadata_mode=MetadataMode.NONE), metadata=dict(node.metadata)
    )


class DeepMemoryLangChainStore(VectorStore):
    """A LangChain ``VectorStore`` over a :class:`DeepMemoryVectorStore` (``self.vectorstore``).

    Args:
        embedding: the LangChain ``Embeddings`` that embeds documents and searches. It also becomes
            the wrapped store's ``embed_model``, so ``db.vectorstore.deep_memory.train/evaluate`` embed
            their queries with it.
        vectorstore: an existing :class:`DeepMemoryVectorStore` to wrap (any backend it supports);
            by default a new one, or the one persisted at ``persist_path`` if that folder holds one.
        persist_path: folder that :meth:`persist` writes to (and loaded from when it exists).
        **store_kwargs: arguments of a new ``DeepMemoryVectorStore`` (``metric``, ``index_factory``, ...).

    Search scores (``similarity_search_with_score``) are the store's: higher is more similar (cosine
    similarity by default; with Deep Memory and keyword re-scoring they can exceed 1).
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        vectorstore: DeepMemoryVectorStore | None = None,
        persist_path: str | os.PathLike[str] | None = None,
        **store_kwargs: Any,
    ) -> None:
        if not isinstance(embedding, Embeddings):
            raise TypeError(
                f"embedding must be a LangChain Embeddings (e.g. OpenAIEmbeddings(), or default_embeddings() "
                f"for the bundled offline model), got {type(embedding).__name__}"
            )
        self._embedding = embedding
        self.persist_path = None if persist_path is None else str(persist_path)
        embed_model = _llama_index_embedding(embedding)
        if vectorstore is not None:
            if store_kwargs:
                raise TypeError(
                    f"pass either vectorstore= or arguments for a new store ({sorted(store_kwargs)}), not both"
                )
            if not isinstance(vectorstore, DeepMemoryVectorStore):
                raise TypeError(
                    f"vectorstore must be a DeepMemoryVectorStore, got {type(vectorstore).__name__}; wrap another "
                    "LlamaIndex vector store in a DeepMemoryVectorStore first"
                )
            if vectorstore.embed_model is not None and vectorstore.embed_model is not embed_model:
                logger.info("replacing the wrapped store's embed_model with the LangChain embedding")
            vectorstore.embed_model = embed_model
        elif self.persist_path is not None and _holds_store(self.persist_path):
            if store_kwargs:
                raise TypeError(
                    f"{self.persist_path} already holds a store, whose settings cannot change; drop "
                    f"{sorted(store_kwargs)} or pick an empty persist_path"
                )
            vectorstore = DeepMemoryVectorStore.from_persist_path(self.persist_path, embed_model=embed_model)
        else:
            vectorstore = DeepMemoryVectorStore(embed_model=embed_model, **store_kwargs)
        self.vectorstore: DeepMemoryVectorStore = vectorstore

    def __repr__(self) -> str:
        return f"DeepMemoryLangChainStore(embedding={type(self._embedding).__name__}, vectorstore={self.vectorstore!r})"

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # --- writes ----------------------------------------------------------------------------------
    def _nodes(
        self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None, ids: Sequence[str | None] | None
    ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        """Checked (ids, texts, metadatas); missing ids become uuid4 strings."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got a single str; wrap it in a list")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected a str")
        if metadatas is None:
            metadatas = [{} for _ in texts]
        metadatas = list(metadatas)
        if len(metadatas) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(metadatas)} metadatas; pass one metadata dict per text")
        for i, metadata in enumerate(metadatas):
            if metadata is not None and not isinstance(metadata, dict):
                raise TypeError(f"metadatas[{i}] is a {type(metadata).__name__}, expected a dict")
        if ids is None:
            ids = [None] * len(texts)
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, got a single str; wrap it in a list")
        ids = list(ids)
        if len(ids) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(ids)} ids; pass one id per text")
        out_ids = []
        for i, id_ in enumerate(ids):
            if id_ is None:
                id_ = str(uuid.uuid4())
            elif not isinstance(id_, str) or not id_:
                raise TypeError(f"ids[{i}] is {id_!r}; ids must be non-empty strings (or None for a new uuid)")
            out_ids.append(id_)
        return out_ids, texts, [dict(m or {}) for m in metadatas]

    @staticmethod
    def _text_nodes(
        ids: list[str], texts: list[str], metadatas: list[dict[str, Any]], vectors: list[list[float]]
    ) -> list[TextNode]:
        if len(vectors) != len(texts):
            raise ValueError(f"the embedding returned {len(vectors)} vectors for {len(texts)} texts")
        return [
            TextNode(id_=id_, text=text, metadata=metadata, embedding=[float(x) for x in vector])
            for id_, text, metadata, vector in zip(ids, texts, metadatas, vectors)
        ]

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store texts; returns their ids (given ones kept, others new uuids). Re-adding
        an id replaces that document."""
        _check_kwargs("add_texts", kwargs, ("metadatas", "ids"))
        ids, texts, metadatas = self._nodes(texts, metadatas, ids)
        if not texts:
            return []
        vectors = self._embedding.embed_documents(texts)
        return self.vectorstore.add(self._text_nodes(ids, texts, metadatas, vectors))

    @staticmethod
    def _ids_to_delete(ids: list[str] | None, kwargs: dict[str, Any]) -> list[str]:
        _check_kwargs("delete", kwargs, ("ids",))
        if ids is None:
            raise ValueError(
                "delete needs the ids of the documents to delete; to delete everything call db.vectorstore.clear()"
            )
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, got a single str; wrap it in a list")
        return list(ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (unknown ids are ignored); returns True."""
        ids = self._ids_to_delete(ids, kwargs)
        if ids:
            self.vectorstore.delete_nodes(node_ids=ids)
        return True

    # --- reads -----------------------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Stored documents with these ids, in the given order (unknown ids skipped)."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, got a single str; wrap it in a list")
        return [_document(node) for node in self.vectorstore.get_nodes(node_ids=list(ids))]

    @staticmethod
    def _query(
        vector: Sequence[float], k: int, filter: Any, query_str: str | None
    ) -> VectorStoreQuery:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        return VectorStoreQuery(
            query_embedding=[float(x) for x in vector],
            similarity_top_k=int(k),
            filters=metadata_filters(filter),
            query_str=query_str,
        )

    @staticmethod
    def _pairs(result: VectorStoreQueryResult) -> list[tuple[Document, float]]:
        nodes = result.nodes or []
        scores = result.similarities or [float("nan")] * len(nodes)
        return [(_document(node), float(score)) for node, score in zip(nodes, scores)]

    def similarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = DEFAULT_K,
        filter: dict[str, Any] | MetadataFilters | None = None,
        *,
        deep_memory: bool = False,
        query_str: str | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Top-``k`` (document, score) for a query vector; ``deep_memory=True`` applies the store's
        active Deep Memory model (an error if there is none); ``query_str`` is the query's text, used by
        a model that re-scores with keywords."""
        _check_kwargs("similarity_search_with_score_by_vector", kwargs, ("k", "filter", "deep_memory", "query_str"))
        query = self._query(embedding, k, filter, query_str)
        return self._pairs(self.vectorstore.query(query, deep_memory=_check_deep_memory(deep_memory)))

    async def asimilarity_search_with_score_by_vector(self, embedding: list[float], *args: Any, **kwargs: Any) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score_by_vector` (run in an executor, as LangChain's own
        async methods, which this class inherits, run the sync ones)."""
        return await run_in_executor(None, self.similarity_search_with_score_by_vector, embedding, *args, **kwargs)

    def similarity_search_with_score(
        self,
        query: str,
        k: int = DEFAULT_K,
        filter: dict[str, Any] | MetadataFilters | None = None,
        *,
        deep_memory: bool = False,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Top-``k`` (document, score) for a text query (score: higher is more similar)."""
        _check_kwargs("similarity_search_with_score", kwargs, SEARCH_KWARGS["similarity"])
        return self.similarity_search_with_score_by_vector(
            self._embedding.embed_query(query), k, filter, deep_memory=deep_memory, query_str=query
        )

    def similarity_search(
        self,
        query: str,
        k: int = DEFAULT_K,
        filter: dict[str, Any] | MetadataFilters | None = None,
        *,
        deep_memory: bool = False,
        **kwargs: Any,
    ) -> list[Document]:
        """Top-``k`` documents for a text query, optionally filtered and with Deep Memory."""
        _check_kwargs("similarity_search", kwargs, SEARCH_KWARGS["similarity"])
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, deep_memory=deep_memory)]

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = DEFAULT_K,
        filter: dict[str, Any] | MetadataFilters | None = None,
        *,
        deep_memory: bool = False,
        **kwargs: Any,
    ) -> list[Document]:
        """Top-``k`` documents for a query vector."""
        _check_kwargs("similarity_search_by_vector", kwargs, SEARCH_KWARGS["similarity"])
        pairs = self.similarity_search_with_score_by_vector(embedding, k, filter, deep_memory=deep_memory)
        return [doc for doc, _ in pairs]

    def similarity_search_with_relevance_scores(self, query: str, k: int = DEFAULT_K, **kwargs: Any) -> list[tuple[Document, float]]:
        """LangChain's, with ``score_threshold`` checked (a NaN threshold is an error, not ``[]``)."""
        _check_score_threshold(kwargs.get("score_threshold"))
        return super().similarity_search_with_relevance_scores(query, k, **kwargs)

    async def asimilarity_search_with_relevance_scores(
        self, query: str, k: int = DEFAULT_K, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_relevance_scores`."""
        _check_score_threshold(kwargs.get("score_threshold"))
        return await super().asimilarity_search_with_relevance_scores(query, k, **kwargs)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Store scores -> [0, 1]: ``(1 + s) / 2`` for cosine / inner product, ``1 - sqrt(d2) / sqrt(2)``
        for l2 (scores are negative squared distances); clipped, since Deep Memory's keyword
        re-scoring can lift scores above 1."""
        if getattr(self.vectorstore, "metric", "cosine") == "l2":
            return lambda score: float(min(1.0, max(0.0, 1.0 - np.sqrt(max(0.0, -score)) / np.sqrt(2.0))))
        return lambda score: float(min(1.0, max(0.0, (1.0 + score) / 2.0)))

    # --- maximal marginal relevance ---------------------------------------------------------------
    def _candidate_vectors(self, docs: list[Document]) -> np.ndarray:
        """The stored vectors of the candidates (re-embedded when the store cannot give them)."""
        get_vectors = getattr(self.vectorstore, "get_vectors", None)
        if get_vectors is not None:
            try:
                return np.asarray(get_vectors([doc.id for doc in docs]), dtype=np.float32)
            except (NotImplementedError, KeyError):  # a backend without vector reads, or a concurrent delete
                pass
        return np.asarray(self._embedding.embed_documents([doc.page_content for doc in docs]), dtype=np.float32)

    @staticmethod
    def _mmr_check(k: int, fetch_k: int, lambda_mult: float) -> None:
        if isinstance(fetch_k, bool) or not isinstance(fetch_k, (int, np.integer)) or fetch_k < 0:
            raise ValueError(f"fetch_k must be an int >= 0, got {fetch_k!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, (int, float)) or not 0 <= lambda_mult <= 1:
            raise ValueError(f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}")

    def _mmr_select(self, pairs: list[tuple[Document, float]], k: int, lambda_mult: float) -> list[Document]:
        """LangChain's MMR (:func:`~llama_index_deepmemory.mmr.langchain_mmr`) over the store's ranked
        candidates with the store's scores as relevance (Deep Memory's when on), so ``lambda_mult=1``
        keeps the store's order; with plain cosine scores this is ``maximal_marginal_relevance``."""
        if min(int(k), len(pairs)) <= 0:
            return []
        docs = [doc for doc, _ in pairs]
        relevance = np.array([score for _, score in pairs], dtype=np.float64)
        return [docs[i] for i in langchain_mmr(relevance, unit_rows(self._candidate_vectors(docs)), k, lambda_mult)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = DEFAULT_K,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | MetadataFilters | None = None,
        *,
        deep_memory: bool = False,
        query_str: str | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` documents picked by maximal marginal relevance among the top ``fetch_k``."""
        _check_kwargs("max_marginal_relevance_search_by_vector", kwargs, (*SEARCH_KWARGS["mmr"], "query_str"))
        self._mmr_check(k, fetch_k, lambda_mult)
        pairs = self.similarity_search_with_score_by_vector(
            embedding, max(int(fetch_k), int(k)), filter, deep_memory=deep_memory, query_str=query_str
        )
        return self._mmr_select(pairs, k, lambda_mult)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = DEFAULT_K,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | MetadataFilters | None = None,
        *,
        deep_memory: bool = False,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` diverse documents for a text query (see :meth:`max_marginal_relevance_search_by_vector`)."""
        _check_kwargs("max_marginal_relevance_search", kwargs, SEARCH_KWARGS["mmr"])
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter,
            deep_memory=deep_memory, query_str=query,
        )

    # --- construction, retrievers, persistence ------------------------------------------------------
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "Self":
        """A new store (``kwargs``: the constructor's) holding ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def as_retriever(self, **kwargs: Any) -> "DeepMemoryRetriever":
        """A retriever whose ``search_kwargs`` may hold ``k``, ``filter`` and ``deep_memory`` (plus
        ``score_threshold`` or ``fetch_k``/``lambda_mult`` for those search types); others are refused."""
        tags = kwargs.pop("tags", None) or [*self._get_retriever_tags()]
        return DeepMemoryRetriever(vectorstore=self, tags=tags, **kwargs)

    def persist(self, persist_path: str | os.PathLike[str] | None = None) -> str:
        """Write the store (documents, index and Deep Memory models) to ``persist_path`` (default: the
        constructor's) atomically; returns the folder. Reopen with ``DeepMemoryLangChainStore(embedding,
        persist_path=...)``."""
        path = persist_path if persist_path is not None else self.persist_path
        if path is None:
            raise ValueError("no persist_path: pass one here or to the constructor")
        self.vectorstore.persist(str(path))
        return str(path)


def _holds_store(path: str) -> bool:
    """True when ``path`` is a non-empty folder (an existing store, loaded rather than overwritten)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"persist_path {path!r} is a file; give a folder")
    return folder.is_dir() and any(folder.iterdir())


class DeepMemoryRetriever(VectorStoreRetriever):
    """LangChain's ``VectorStoreRetriever`` that refuses search kwargs the store would not use
    (checked at construction and again at each search, since ``search_kwargs`` is a mutable dict)."""

    vectorstore: DeepMemoryLangChainStore
    allowed_search_types: ClassVar[Collection[str]] = tuple(SEARCH_KWARGS)
    model_config = ConfigDict(arbitrary_types_allowed=True)

    @model_validator(mode="after")
    def _check_search_kwargs(self) -> "DeepMemoryRetriever":
        self.check_search_kwargs()
        return self

    def check_search_kwargs(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The search kwargs merged with ``extra``; unknown keys or a non-bool ``deep_memory`` raise."""
        merged = {**self.search_kwargs, **(extra or {})}
        accepted = SEARCH_KWARGS[self.search_type]
        unknown = sorted(set(merged) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown search_kwargs {unknown} for search_type={self.search_type!r}; accepted: {list(accepted)}"
            )
        if "deep_memory" in merged:
            _check_deep_memory(merged["deep_memory"])
        _check_score_threshold(merged.get("score_threshold"))
        return merged

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        self.check_search_kwargs(kwargs)
        return super()._get_relevant_documents(query, run_manager=run_manager, **kwargs)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        self.check_search_kwargs(kwargs)
        return await super()._aget_relevant_documents(query, run_manager=run_manager, **kwargs)
