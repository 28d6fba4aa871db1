"""The ``store.deep_memory`` facade: train, follow, evaluate and switch Deep Memory models.

Mirrors Activeloop's ``vectorstore.deep_memory`` so its tutorials port line by line::

    job_id = store.deep_memory.train(queries, relevance)          # blocking, with a progress bar
    store.deep_memory.status(job_id)                              # status, ETA, recall@10 change
    store.deep_memory.evaluate(test_queries, test_relevance)      # recall@k without / with model
    retriever = index.as_retriever(vector_store_kwargs={"deep_memory": True})

Jobs run one at a time per process: a job started while another runs is queued and starts when it
ends. A job that is cancelled, raises, or produces a model that cannot be saved leaves the active
model as it was; a model that does not beat the plain store on validation is kept but not
activated, and so is one whose activation someone changed while it trained.

A store loaded from a folder (or built with ``model_dir=``) is *bound* to that model location
(:mod:`llama_index_deepmemory.deep_memory.state`): trainings, activations and deletions are
recorded there at once, and every process serving it sees them within
:data:`~llama_index_deepmemory.deep_memory.state.REFRESH_SECONDS` (or on :meth:`DeepMemory.refresh`).
A store built in memory keeps its models in memory until it is persisted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory import jobs, state
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView, check_query_texts
from llama_index_deepmemory.deep_memory.keeping import ModelKeeping, check_model_name
from llama_index_deepmemory.deep_memory.models import model_from_state
from llama_index_deepmemory.deep_memory.training_record import TrainingRecord
from llama_index_deepmemory.metrics import recall_at_k
from llama_index_deepmemory.relevance import Relevance, validate_relevance

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.training import TrainOptions, TrainResult

logger = logging.getLogger(__name__)
FEW_QUERIES = 10  # training on fewer queries warns: validation on so few says little

STATE_FORMAT_VERSION = 1
DEFAULT_TOP_K = (1, 3, 5, 10, 50, 100)


class DeepMemoryTrainingError(RuntimeError):
    """A blocking ``train`` call whose job failed (the previously active model stays active)."""


class DeepMemory(ModelKeeping):
    """Trains, evaluates and manages Deep Memory models for one store."""

    def __init__(self, store: StoreView) -> None:
        self._store = store
        self._lock = threading.RLock()
        self._models: dict[str, DeepMemoryModel] = {}
        self._trained_on: dict[str, TrainingRecord] = {}  # what each model was trained on
        self._active: str | None = None
        self._jobs = jobs.JobBook(prefix="job")
        self._rewritten_during: dict[str, set[str]] = {}  # running job -> ids re-added since it started
        self._active_version = 0  # counts activation changes (a training activates only if unchanged)
        self._location: state.ModelLocation | None = None  # where the models are shared, once bound
        self._folders: dict[str, str] = {}  # model name -> its folder in the location
        self._stamp: Any = None  # the catalog's stat when last read
        self._next_check = 0.0  # monotonic time of the next look at the catalog
        self._sync_lock = threading.Lock()
        self._saved_versions: dict[str, int] = {}  # model location persisted to -> its catalog version then
        self._jobs.on_status = self._record_job

    def __repr__(self) -> str:
        return f"DeepMemory(models={list(self._models)}, active={self._active!r})"

    # --- training --------------------------------------------------------------------------
    def train(
        self,
        queries: Sequence[str],
        relevance: Sequence[Sequence[tuple[str, float]]],
        embedding_function: Any = None,
        embedding: Any = None,
        background: bool = False,
        **options: Any,
    ) -> str:
        """Train a model on ``queries`` and their relevant node ids; return the job id.

        ``relevance[i]`` lists ``(node_id, weight)`` pairs for ``queries[i]``. Queries are embedded
        with ``embedding_function`` (a LlamaIndex ``BaseEmbedding`` or a callable taking a list of
        strings), defaulting to the store's ``embed_model``, unless ``embedding`` gives the query
        vectors. ``options`` are :class:`~llama_index_deepmemory.deep_memory.training.TrainOptions`
        (``epochs``, ``learning_rate``, ``seed``, ...). Blocks with a progress bar unless
        ``background=True``; a failed blocking job raises :class:`DeepMemoryTrainingError`.
        Fewer than :data:`FEW_QUERIES` (10) queries train, with a warning: validation on so few
        says little.
        """
        from llama_index_deepmemory.deep_memory.training import TrainOptions

        train_options = TrainOptions.from_kwargs(options)
        self._require_nodes("train")
        queries, rows = check_relevance(self._store, queries, relevance)
        if len(rows) < 2:
            raise ValueError(f"Deep Memory training needs at least 2 queries, got {len(rows)}")
        if len(rows) < FEW_QUERIES:
            logger.warning(
                "training on %d queries, fewer than %d: validation on so few says little (the model may be kept "
                "off, or a gain may be chance); log or generate more questions (hundreds help most)", len(rows), FEW_QUERIES)
        prepared = self._query_vectors(queries, embedding_function, embedding)

        options_json = _jsonable(dataclasses.asdict(train_options))
        record = jobs.JobRecord("", options=options_json, num_queries=len(rows), owner=state.owner())
        if self._location is not None:  # a number no other process holds, recorded at once
            job_id, number = self._location.reserve_job(record.to_dict())
        else:
            job_id, number = self._jobs.new_id()
            while f"model_{number}" in self._models:  # a name add_model took: never replaced
                job_id, number = self._jobs.new_id()
        record.job_id, model_name = job_id, f"model_{number}"

        def work(context: jobs.JobContext) -> None:
            self._run_training(context, prepared, rows, train_options, model_name, queries)

        busy = [r.job_id for r in self._jobs.records() if r.status in (jobs.QUEUED, jobs.RUNNING)]
        self._jobs.submit(record, work)
        if busy:
            print(f"Deep Memory job {job_id} is queued: it starts after {', '.join(busy)} "
                  "(one job runs at a time).")
        if background:
            print(f"Deep Memory training job {job_id} started in the background; "
                  f"follow it with store.deep_memory.status({job_id!r}).")
            return job_id
        self._wait_with_progress(job_id)
        finished = self._jobs.get(job_id)
        if finished.status == jobs.FAILED:
            raise DeepMemoryTrainingError(
                f"Deep Memory training job {job_id} failed: {finished.error}. "
                f"The active model is unchanged ({self._active or 'none'})."
            )
        print(self._summary(finished))
        return job_id

    def _run_training(
        self,
        context: jobs.JobContext,
        vectors: np.ndarray,
        relevance: Relevance,
        options: "TrainOptions",
        model_name: str,
        query_texts: list[str] | None = None,
    ) -> None:
        """The job body: train, then save and (if it improved) activate the model."""
        from llama_index_deepmemory.deep_memory.training import TrainingCancelled, train_model

        rewritten: set[str] = set()
        with self._lock:
            self._rewritten_during[model_name] = rewritten
        try:
            started_version = self._current_active_version()
            copy = getattr(self._store, "training_view", None)  # an engine's exact in-memory copy
            store = copy(options.full_softmax_max_nodes) if copy is not None else self._store
            result = train_model(
                store, vectors, relevance, options=options,
                progress=context.progress, should_stop=context.should_stop, query_texts=query_texts,
            )
            context.raise_if_cancelled()
            context.progress(1.0, "saving the model")
            model = _saved_copy(result.model)
            with self._lock:  # record and model change together, as to_state sees them
                plan = model.keyword_plan()
                if plan is not None and rewritten:  # the job may have indexed their old texts
                    plan.index.forget(list(rewritten))
                context.complete(
                    val_before=_float_dict(result.val_before),
                    val_after=_float_dict(result.val_after),
                    model_name=model_name,
                    note=None if result.improved else _not_improved_note(result, model_name),
                    info=_jsonable(dict(result.info)),
                    message="done",
                )
                trained_on = TrainingRecord.of(query_texts, relevance) if query_texts is not None else None
                if trained_on is not None:
                    self._trained_on[model_name] = trained_on
                try:
                    activated = self._keep_model(model_name, model, context.job_id, result.improved, started_version,
                                                 trained_on)
                except BaseException:  # a model that cannot be saved is not kept
                    self._trained_on.pop(model_name, None)
                    raise
                if result.improved and not activated:
                    self._jobs.update(context.job_id, note=(
                        f"{model_name} beat the plain store but was kept without activating it: the active model "
                        f"was changed (now {self._active or 'none'}) while this job ran, so it was left as is "
                        f"(activate it with store.deep_memory.set_model({model_name!r}))"))
        except TrainingCancelled as exc:
            raise jobs.JobCancelled(str(exc)) from exc
        finally:
            with self._lock:
                self._rewritten_during.pop(model_name, None)

    def _wait_with_progress(self, job_id: str) -> None:
        """Block until the job ends, drawing a tqdm bar; Ctrl-C cancels the job."""
        from tqdm.auto import tqdm

        bar_format = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}"
        bar = tqdm(total=100, desc=f"Deep Memory {job_id}", bar_format=bar_format)
        shown: tuple[float, str] | None = None
        try:
            while True:
                done = self._jobs.wait(job_id, timeout=0.2)
                record = self._jobs.get(job_id)
                state = (round(100 * record.progress, 1), record.message or record.status)
                if state != shown:
                    bar.n = state[0]
                    bar.set_postfix_str(state[1], refresh=False)
                    bar.refresh()
                    shown = state
                if done:
                    return
        except KeyboardInterrupt:
            self._jobs.cancel(job_id)
            self._jobs.wait(job_id, timeout=30)
            raise
        finally:
            bar.close()

    # --- jobs ------------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """Print and return one job's state: status, progress, ETA, validation metrics, model."""
        record = self._snapshot(job_id)
        print(jobs.format_status(record))
        return record.to_dict()

    def list_jobs(self) -> list[dict[str, Any]]:
        """Print a table of all jobs (oldest first; on a bound store every process's) and return their states."""
        self._maybe_refresh(force=True)
        records = [self._mark_active(record) for record in self._records()]
        print(jobs.format_jobs(records) if records else "No Deep Memory training jobs yet.")
        return [record.to_dict() for record in records]

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job (the active model stays as it was).

        Returns True when the job was asked to stop, False when it had already finished.
        """
        stopped = self._jobs.cancel(job_id)
        if stopped:
            print(f"Cancelled Deep Memory job {job_id}.")
        else:
            status = self._jobs.get(job_id).status
            print(f"Deep Memory job {job_id} already finished ({status}); nothing to cancel.")
        return stopped

    def wait(self, job_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until a job ends (or ``timeout`` seconds pass) and return its state."""
        self._jobs.wait(job_id, timeout)
        return self._snapshot(job_id).to_dict()

    def _snapshot(self, job_id: str) -> jobs.JobRecord:
        self._maybe_refresh()
        try:
            return self._mark_active(self._jobs.get(job_id))
        except ValueError:
            found = [r for r in self._records() if r.job_id == job_id]
            if not found:
                raise
            return self._mark_active(found[0])

    def _mark_active(self, record: jobs.JobRecord) -> jobs.JobRecord:
        record.active = record.model_name is not None and record.model_name == self._active
        return record

    # --- models ----------------------------------------------------------------------------
    def training_data(self, name: str | None = None) -> tuple[list[str], Relevance] | None:
        """``(queries, relevance)`` the named (default: active) model was trained on; None when unknown."""
        if name is not None:
            check_model_name(name)
        record = self._training_record(name or self.get_model() or "")
        return None if record is None else (list(record.queries), [list(p) for p in record.relevance])

    def _training_record(self, name: str) -> TrainingRecord | None:
        """What ``name`` was trained on: this process's record, else the one its shared location keeps."""
        with self._lock:
            record = self._trained_on.get(name)
            folder = self._folders.get(name) if self._location is not None else None
        if record is None and folder is not None:
            data = self._location.load_training_record(folder)
            if data is not None:
                where = f"the training record of {name} in {str(self._location.root / 'models' / folder / 'model.json')!r}"
                record = TrainingRecord.from_json(data, where=where)
        return record

    def list_models(self) -> list[dict[str, Any]]:
        """Kept models: name, kind, whether active, and the job that trained it."""
        self._maybe_refresh(force=True)
        by_model = {r.model_name: r for r in self._records() if r.model_name}
        with self._lock:
            return [
                {
                    "name": name,
                    "kind": model.kind,
                    "active": name == self._active,
                    "job_id": by_model[name].job_id if name in by_model else None,
                    "val_after": dict(by_model[name].val_after) if name in by_model else {},
                }
                for name, model in self._models.items()
            ]

    def texts_changed(self, node_ids: Sequence[str]) -> None:
        """Called by the store when ``node_ids`` were (re-)added: keyword indexes stop using the
        texts they indexed for them and score their current texts instead."""
        with self._lock:
            plans = [m.keyword_plan() for m in self._models.values()]
            indexes = {id(plan.index): plan.index for plan in plans if plan is not None}
            for rewritten in self._rewritten_during.values():  # a running job may have read the old texts
                rewritten.update(node_ids)
        for index in indexes.values():
            index.forget(node_ids)

    def active_model(self) -> DeepMemoryModel | None:
        """The model applied by ``query(..., deep_memory=True)``, or None."""
        self._maybe_refresh()
        active = self._active
        return self._models.get(active) if active else None

    def require_active_model(self) -> DeepMemoryModel:
        """The active model, or a clear error saying how to get one."""
        model = self.active_model()
        if model is None:
            kept = ", ".join(sorted(self._models)) if self._models else None
            why = (
                f"trained model(s) {kept} were kept but not activated because they did not beat the "
                "plain store on validation (see store.deep_memory.status(job_id)); deep_memory=False "
                "gives results as good, or activate one anyway with store.deep_memory.set_model(name)."
                if kept
                else "train one with store.deep_memory.train(queries, relevance), or query with "
                "deep_memory=False."
            )
            raise ValueError(f"deep_memory=True was requested but this store has no active Deep Memory model: {why}")
        return model

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(
        self,
        queries: Sequence[str],
        relevance: Sequence[Sequence[tuple[str, float]]],
        top_k: Sequence[int] = DEFAULT_TOP_K,
        embedding_function: Any = None,
        embedding: Any = None,
    ) -> dict[str, dict[str, float]]:
        """Recall@k of the plain store and of the active model, ranked as ``store.query`` ranks.

        Rankings come from :meth:`search_ids` (batched; equal to ``store.query(deep_memory=...)``).
        Prints Activeloop-style blocks and returns ``{"without model": {"recall@1": ...},
        "with model": {...}}`` (fractions; weighted recall, see :mod:`llama_index_deepmemory.metrics`).
        Without an active model only ``"without model"`` is returned.
        """
        ks = _check_top_k(top_k)
        self._require_nodes("evaluate")
        queries, rows = check_relevance(self._store, queries, relevance)
        prepared = self._query_vectors(queries, embedding_function, embedding)
        model = self.active_model()
        results: dict[str, dict[str, float]] = {}
        for label, title, use_model in (
            ("without model", "without Deep Memory", False),
            ("with model", "with Deep Memory", True),
        ):
            if use_model and model is None:
                print("No active Deep Memory model: train one (store.deep_memory.train) to compare.")
                break
            # a k above the store's size ranks every node: recall@k is then recall@len(store)
            ranked = self._search_prepared(prepared, min(max(ks), max(1, len(self._store))), use_model, texts=queries)
            results[label] = {f"recall@{k}": float(recall_at_k(ranked, rows, k)) for k in ks}
            print(f"---- Evaluating {title} ---- ")
            for k in ks:
                print(f"Recall@{k}:\t {100 * results[label][f'recall@{k}']:5.1f}%")
        return results

    def search_ids(
        self,
        vectors: Any,
        k: int,
        deep_memory: bool,
        batch_size: int = 1024,
        texts: Sequence[str | None] | None = None,
    ) -> list[list[str]]:
        """Top-``k`` node ids per raw query vector, batched, ranked as ``store.query(deep_memory=...)``
        ranks queries whose ``query_str`` is the matching entry of ``texts`` (None: no query text).
        A ``k`` above the store's size returns every node."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        k = min(int(k), len(self._store))  # no search asks for more than there is (k=2**63 stays an int64)
        if deep_memory:
            self.require_active_model()
        return self._search_prepared(self._store.prepare_queries(vectors), k, deep_memory, batch_size, texts)

    def _search_prepared(
        self,
        prepared: np.ndarray,
        k: int,
        deep_memory: bool,
        batch_size: int = 1024,
        texts: Sequence[str | None] | None = None,
    ) -> list[list[str]]:
        """:meth:`search_ids` for vectors already through ``store.prepare_queries``."""
        texts = check_query_texts(texts, len(prepared))
        ranked: list[list[str]] = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            chunk_texts = None if texts is None else list(texts[start : start + batch_size])
            ranked.extend(self._store.search_vectors(chunk, int(k), deep_memory=deep_memory, texts=chunk_texts)[1])
        return ranked

    # --- input checks and embedding ----------------------------------------------------------
    def _require_nodes(self, action: str) -> None:
        if len(self._store) == 0:
            raise ValueError(
                f"cannot {action} Deep Memory on an empty store: add nodes first (index.insert_nodes / store.add)"
            )

    def _query_vectors(
        self, queries: list[str], embedding_function: Any, embedding: Any
    ) -> np.ndarray:
        """Prepared query vectors ``(m, d) float32`` (validated, normalised for cosine) from
        ``embedding`` or an embedding model."""
        if embedding is not None and embedding_function is not None:
            raise ValueError(
                "pass either embedding_function (to embed the queries) or embedding (query vectors), not both"
            )
        if embedding is None:
            embedder = embedding_function if embedding_function is not None else self._store.embed_model
            if embedder is None:
                raise ValueError(
                    "no way to embed the queries: pass embedding_function=<a LlamaIndex BaseEmbedding>, "
                    "or embedding=<query vectors>, or create the store with embed_model=..."
                )
            embedding = embed_with(embedder, queries)
        try:
            raw = np.asarray(embedding, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"embedding must be an array of shape (queries, dim) of numbers: {exc}") from None
        dim = self._store.dim
        if raw.ndim != 2 or raw.shape[0] != len(queries) or raw.shape[1] != dim:
            raise ValueError(
                f"query vectors have shape {raw.shape}, expected ({len(queries)}, {dim}): one vector of the "
                f"store's dimension {dim} per query (was the store built with another embedding model?)"
            )
        return self._store.prepare_queries(raw)

    # --- persistence hooks used by the store ------------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything to persist: JSON metadata (models, active, job history) and named arrays."""
        self._maybe_refresh(force=True)
        with self._lock:
            meta: dict[str, Any] = {
                "format_version": STATE_FORMAT_VERSION,
                "active": self._active,
                "models": {},
                "jobs": [dataclasses.asdict(r) for r in self._records()],
            }
            arrays: dict[str, np.ndarray] = {}
            for name, model in self._models.items():
                m_meta, m_arrays = model.to_state()
                meta["models"][name] = m_meta
                for key, arr in m_arrays.items():
                    arrays[f"{name}/{key}"] = arr
            names = list(self._models)
        records = {name: self._training_record(name) for name in names}
        meta["training_records"] = {name: r.to_json() for name, r in records.items() if r is not None}
        return meta, arrays

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`to_state`; refuses states from a newer format. A bound store records
        the state in its location (replacing what was there)."""
        version = int(meta.get("format_version", 1))
        if version > STATE_FORMAT_VERSION:
            raise ValueError(
                f"Deep Memory state format {version} is newer than this package supports "
                f"({STATE_FORMAT_VERSION}); upgrade llama-index-deepmemory"
            )
        models: dict[str, DeepMemoryModel] = {}
        for name, m_meta in meta.get("models", {}).items():
            prefix = f"{name}/"
            m_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            models[name] = model_from_state(m_meta, m_arrays)
        active = meta.get("active")
        if active is not None and active not in models:
            raise ValueError(
                f"persisted Deep Memory state names active model {active!r} but holds only {sorted(models)}"
            )
        records = {name: TrainingRecord.from_json(data, where=f"the training record of {name}")
                   for name, data in meta.get("training_records", {}).items() if name in models}
        with self._lock:
            self._trained_on = records
            self._jobs.load_state(list(meta.get("jobs", [])))
            if self._location is not None:
                self._location.replace({**meta, "jobs": self._jobs.to_state()}, arrays)
                self._sync(force=True)
                return
            self._models = models
            self._active, self._active_version = active, self._active_version + 1

    def _summary(self, record: jobs.JobRecord) -> str:
        if record.status == jobs.CANCELLED:
            active = self._active or "none"
            return f"Deep Memory job {record.job_id} was cancelled; the active model is unchanged ({active})."
        from llama_index_deepmemory.evaluation import gate_scores, model_contents

        scores = gate_scores(record.val_before, record.val_after) or jobs.format_result(record)
        line = (f"Deep Memory job {record.job_id} completed: {scores}. "
                f"{record.model_name}: {model_contents(record.info or {})}.")
        if record.note:
            return f"{line} {record.note}"
        return f"{line} Gain above two standard errors, so {record.model_name} is now the active model."


# --- module helpers --------------------------------------------------------------------------
def check_relevance(
    store: StoreView, queries: Iterable[str], relevance: Iterable[Sequence[tuple[str, float]]]
) -> tuple[list[str], Relevance]:
    """Queries and relevance validated against the store (:mod:`llama_index_deepmemory.relevance`):
    the queries as a list, the relevance as ``(str, float)`` pairs, duplicate ids within one
    query keeping their largest weight (as in :mod:`llama_index_deepmemory.metrics`)."""
    return validate_relevance(queries, relevance, known_ids=store.missing_ids)


def embed_with(embedder: Any, queries: list[str]) -> Any:
    """Embed queries with a LlamaIndex ``BaseEmbedding`` (query mode, through
    :func:`llama_index_deepmemory.embeddings.embed_queries`), a LangChain ``Embeddings`` or a
    ``list[str] -> vectors`` callable."""
    if hasattr(embedder, "get_query_embedding"):
        from llama_index_deepmemory.embeddings import embed_queries

        return embed_queries(queries, embedder, show_progress=len(queries) >= 64)
    if hasattr(embedder, "embed_query"):  # a LangChain Embeddings: queries embed in query mode
        return [embedder.embed_query(query) for query in queries]
    if callable(embedder):
        return embedder(queries)  # checked and converted by the caller
    raise TypeError(
        f"embedding_function must be a LlamaIndex BaseEmbedding, a LangChain Embeddings or a callable "
        f"list[str] -> vectors, got {type(embedder).__name__}"
    )


def _saved_copy(model: DeepMemoryModel) -> DeepMemoryModel:
    """The model as it will be loaded back: a state round trip, checked to be JSON + finite arrays."""
    meta, arrays = model.to_state()
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the trained model's metadata cannot be saved as JSON: {exc}") from exc
    copies: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise ValueError(f"the trained model's array {key!r} cannot be saved: {type(value).__name__}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"the trained model's array {key!r} holds NaN or infinite values")
        copies[key] = np.ascontiguousarray(value).copy()
    return model_from_state(json.loads(meta_json), copies)


def _check_top_k(top_k: Sequence[int] | int) -> list[int]:
    values = [top_k] if isinstance(top_k, (int, np.integer)) else list(top_k)
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values):
        raise ValueError(f"top_k must be positive integers, e.g. (1, 3, 5, 10), got {top_k!r}")
    return sorted({int(k) for k in values})


def _float_dict(values: dict[str, Any]) -> dict[str, float]:
    return {str(key): float(value) for key, value in values.items()}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    """Values as JSON types (tuples to lists; anything else unusual as its repr)."""
    return json.loads(json.dumps(values, default=repr))


def _not_improved_note(result: "TrainResult", model_name: str) -> str:
    before, after = result.val_before.get("ndcg@10"), result.val_after.get("ndcg@10")
    scores = ""
    if before is not None and after is not None:
        scores = f" (nDCG@10 {before:.3f} -> {after:.3f}, not above two standard errors)"
    return (
        f"The model did not beat the plain store on validation{scores}; kept as {model_name} but not activated "
        f"(activate anyway with store.deep_memory.set_model({model_name!r}))"
    )
