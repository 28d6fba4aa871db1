"""Train a Deep Memory model: query adapter + per-node memory + remembered training queries.

The method: a linear query adapter ``W q + b`` (identity-initialised, pulled toward identity) and
a learned vector per "memory" node (each node marked relevant in training; unit-norm for cosine
stores, pulled toward its stored vector) are trained with a listwise softmax cross-entropy whose
target spreads over every relevant id by weight (:mod:`.losses`). The softmax runs over the whole
corpus when it is small enough, otherwise over hard negatives mined from the store. Training
queries are also remembered as keys: a query close to a remembered one lifts that query's
relevant nodes. Early stopping and the key strength are chosen on validation queries, admitting
only candidates that do not hurt validation queries whose own nodes are forgotten by the model;
the model is then refit on all queries. Small sets are cross-validated (K folds trained in
lockstep, every query validates once, predictions pooled across folds); large sets use one
``validation_fraction`` split. A model whose validation gain is not significant is returned
with ``improved=False`` so the API never activates it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView, check_query_texts
from llama_index_deepmemory.deep_memory.losses import CandidateSource, PlainMined, listwise_loss, store_scores
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.deep_memory.ranking import rank
from llama_index_deepmemory.metrics import ndcg_at_k, recall_at_k
from llama_index_deepmemory.relevance import Relevance, validate_relevance

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

METRIC_NAMES = ("recall@1", "recall@10", "ndcg@10")


class TrainingCancelled(Exception):
    """Raised inside :func:`train_model` when ``should_stop()`` turns true."""


@dataclass
class TrainOptions:
    """Keyword options of ``store.deep_memory.train(**options)``.

    ``validation_folds`` (None: chosen from the number of queries, see :func:`_fold_count`) > 1
    cross-validates over that many folds and ignores ``validation_fraction``; 1 is the single
    ``validation_fraction`` split. ``validation_fraction=0`` with ``validation_folds=None``
    validates on the training queries (no hold-out, no refit), as before.
    """

    epochs: int = 40
    learning_rate: float = 2e-3
    seed: int = 0
    validation_fraction: float = 0.1  # only with validation_folds=1 (0: validate on the training queries)
    validation_folds: int | None = None  # None: 5 below 200 queries, 3 below 500, else 1 (one split)
    device: str | None = None
    num_threads: int | None = 1  # torch CPU threads while training; None keeps torch's setting
    batch_size: int = 64
    temperature: float = 0.02
    adapter_regularization: float = 10.0
    memory_regularization: float = 0.01
    node_memory: bool = True
    normalize_memory: bool = True
    query_memory: bool = True
    key_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    key_weights: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 1.0, 2.0)
    lexical: bool = True  # try keyword (BM25) re-scoring of the top candidates; needs query texts
    lexical_weights: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
    # above this many stored nodes no keyword index is built (~8 bytes per distinct (node, word);
    # ~9 s per 100k texts of 200 words)
    lexical_max_nodes: int = 200_000
    patience: int = 6
    min_improvement: float = 0.0
    gate_z: float = 2.0
    unseen_tolerance: float = 0.0
    full_softmax_max_nodes: int = 200_000
    num_negatives: int = 64
    remine_every: int = 5
    refit: bool = True
    # per-query gate (issue 17): a query whose cosine to every training query is below this is
    # ranked by the adapter alone (no memory, no query keys) with the plain store's keyword weight;
    # 0: no gate (the default). 0.5 won on the train-only dev protocol (benchmarks/bench_dev.py) but
    # validation does not yet judge the gated model that would be served: opt in, see benchmarks/README.md
    gate_threshold: float = 0.0
    # per-query keyword weight (issue 17, opt-in): a query whose cosine to every training query is
    # below far_keyword_cosine is re-scored with far_keyword_weight where that exceeds the chosen
    # weight: where memory knows less, keywords count more. Validation judges it (the fold's training
    # queries are the keys); models with memory only (not keywords on the plain store). 0.6 / 0.3 won
    # on the train-only dev protocol (benchmarks/bench_dev.py --variants far-weight), but it costs
    # ~0.1 ms per keyword query and did not gain on the SciFact test claims: 0 (off) by default, see
    # benchmarks/README.md, "Unseen documents"
    far_keyword_cosine: float = 0.6
    far_keyword_weight: float = 0.0

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> "TrainOptions":
        """Build from user keywords, refusing unknown names with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown Deep Memory training option(s) {unknown}; known options: {sorted(known)}")
        opts = cls(**options)
        opts.validate()
        return opts

    def validate(self) -> None:
        """ValueError naming the first out-of-range option."""
        positive_ints = (
            "epochs", "batch_size", "num_negatives", "remine_every", "full_softmax_max_nodes", "lexical_max_nodes"
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {self.patience!r}")
        for name in ("learning_rate", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("adapter_regularization", "memory_regularization", "min_improvement", "gate_z", "unseen_tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, zero in (("gate_threshold", "0: no gate"), ("far_keyword_cosine", "0: no query is far")):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a cosine in [0, 1] ({zero}), got {value!r}")
        value = self.far_keyword_weight
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"far_keyword_weight must be a finite number >= 0 (0: off), got {value!r}")
        if not (isinstance(self.validation_fraction, (int, float)) and 0.0 <= self.validation_fraction < 1.0):
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if self.validation_folds is not None and (
            isinstance(self.validation_folds, bool) or not isinstance(self.validation_folds, int)
            or self.validation_folds < 1
        ):
            raise ValueError(
                f"validation_folds must be None (chosen from the number of queries) or an integer >= 1, "
                f"got {self.validation_folds!r}"
            )
        if self.num_threads is not None and (
            isinstance(self.num_threads, bool) or not isinstance(self.num_threads, int) or self.num_threads < 1
        ):
            raise ValueError(f"num_threads must be None (torch's default) or a positive integer, got {self.num_threads!r}")
        if self.device is not None and not isinstance(self.device, str):
            raise ValueError(f"device must be None, 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not isinstance(self.lexical, bool):
            raise ValueError(f"lexical must be True or False, got {self.lexical!r}")
        if isinstance(self.lexical_weights, (str, bytes)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in self.lexical_weights
        ):
            raise ValueError(f"lexical_weights must be a sequence of finite numbers > 0, got {self.lexical_weights!r}")
        for name in ("key_thresholds", "key_weights"):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
            ):
                raise ValueError(f"{name} must be a sequence of finite numbers, got {values!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


@dataclass
class TrainResult:
    """What :func:`train_model` hands back to the API."""

    model: DeepMemoryModel
    val_before: dict[str, float]
    val_after: dict[str, float]
    improved: bool
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# metrics and evaluation through the store (the same merge the store does at query time)
# ----------------------------------------------------------------------------------------------
def ranking_metrics(ranked: list[list[str]], relevance: Relevance) -> dict[str, float]:
    """Mean recall@1, recall@10 and nDCG@10 (definitions in :mod:`llama_index_deepmemory.metrics`)."""
    return {
        "recall@1": float(recall_at_k(ranked, relevance, 1)),
        "recall@10": float(recall_at_k(ranked, relevance, 10)),
        "ndcg@10": float(ndcg_at_k(ranked, relevance, 10)),
    }


def significant_gain(before: np.ndarray, after: np.ndarray, min_improvement: float, gate_z: float) -> bool:
    """True when the mean per-query gain beats ``min_improvement`` and ``gate_z`` standard errors.

    The standard-error margin guards against a validation "gain" made of one or two lucky queries
    (early stopping picks the best of many epochs on the same split, which inflates it).
    """
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    mean = float(diff.mean())
    stderr = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return mean > min_improvement and mean > gate_z * stderr


def rank_with_model(
    store: StoreView,
    queries: np.ndarray,
    model: DeepMemoryModel | None,
    k: int = 10,
    forget: Sequence[set[str]] | None = None,
    plain_cache: dict[bytes, tuple[np.ndarray, list[list[str]], int]] | None = None,
    texts: Sequence[str | None] | None = None,
) -> list[list[str]]:
    """Top-``k`` node ids per query, plain or with ``model``: :func:`ranking.rank`, the ranking
    that serves queries (``forget`` and ``plain_cache`` as documented there)."""
    return rank(store, queries, model, k, texts=texts, forget=forget, plain_cache=plain_cache)[1]


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
@dataclass
class _Split:
    queries: np.ndarray
    relevance: Relevance
    texts: list[str] | None = None  # query strings, when known (keyword re-scoring needs them)


class _Context:
    """Shared state of one training run: options, callbacks, device, timing."""

    def __init__(self, store: StoreView, options: TrainOptions, progress, should_stop) -> None:
        import torch

        self.store = store
        self.options = options
        self.progress = progress
        self.should_stop = should_stop
        self.metric = store.metric
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.started = time.perf_counter()
        self.plain_mined: PlainMined = {}  # untrained adapters' negatives, shared by the folds and the refit

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("Deep Memory training was cancelled")

    def report(self, fraction: float, message: str) -> None:
        logger.debug("training %.0f%%: %s", 100 * fraction, message)
        if self.progress is not None:
            self.progress(float(min(1.0, max(0.0, fraction))), message)


class _Trainer:
    """Parameters (adapter + node deltas) and the epoch loop with early stopping."""

    def __init__(self, ctx: _Context, split: _Split, memory_ids: list[str]) -> None:
        import torch

        self.ctx = ctx
        self.split = split
        self.memory_ids = memory_ids
        self.memory_index = {node: i for i, node in enumerate(memory_ids)}
        d = split.queries.shape[1]
        dev = ctx.device
        self.base_memory = torch.from_numpy(
            np.asarray(ctx.store.get_vectors(memory_ids), dtype=np.float32).reshape(len(memory_ids), d)
        ).to(dev)
        self.weight = torch.nn.Parameter(torch.eye(d, device=dev))
        self.bias = torch.nn.Parameter(torch.zeros(d, device=dev))
        self.delta = torch.nn.Parameter(torch.zeros((len(memory_ids), d), device=dev))
        params = [self.weight, self.bias] + ([self.delta] if ctx.options.node_memory and memory_ids else [])
        self.optimizer = torch.optim.Adam(params, lr=ctx.options.learning_rate)
        self.queries = torch.from_numpy(np.asarray(split.queries, dtype=np.float32)).to(dev)
        self.source = CandidateSource(
            ctx.store, split.queries, split.relevance, self.memory_index, device=ctx.device,
            full_softmax_max_nodes=ctx.options.full_softmax_max_nodes,
            num_negatives=ctx.options.num_negatives, check_stop=ctx.check_stop, plain_mined=ctx.plain_mined,
        )

    def transform(self, q: "torch.Tensor") -> "torch.Tensor":
        import torch

        out = q @ self.weight.T + self.bias
        return torch.nn.functional.normalize(out, dim=1) if self.ctx.metric == "cosine" else out

    def memory_vectors(self) -> "torch.Tensor":
        import torch

        vectors = self.base_memory + self.delta
        if self.ctx.metric == "cosine" and self.ctx.options.normalize_memory:
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors

    def loss(self, rows: Sequence[int]) -> "torch.Tensor":
        import torch

        opts = self.ctx.options
        vectors, memory_pos, targets = self.source.batch(rows)
        qt = self.transform(self.queries[list(rows)])
        logits = store_scores(qt, vectors, self.ctx.metric)
        has_memory = memory_pos >= 0
        if opts.node_memory and bool(has_memory.any()):
            cols = torch.nonzero(has_memory).squeeze(1)
            mem_scores = store_scores(qt, self.memory_vectors()[memory_pos[cols]], self.ctx.metric)
            logits = logits.index_copy(1, cols, mem_scores)
        loss = listwise_loss(logits, targets, opts.temperature)
        eye = torch.eye(self.weight.shape[0], device=self.weight.device)
        loss = loss + opts.adapter_regularization * ((self.weight - eye) ** 2).sum() / self.weight.shape[0]
        loss = loss + opts.adapter_regularization * (self.bias**2).sum()
        if opts.node_memory and len(self.memory_ids):
            drift = self.memory_vectors() - self.base_memory
            loss = loss + opts.memory_regularization * (drift**2).sum(1).mean()
        return loss

    def snapshot(self) -> dict[str, np.ndarray]:
        return {
            "weight": self.weight.detach().cpu().numpy().copy(),
            "bias": self.bias.detach().cpu().numpy().copy(),
            "memory_vectors": self.memory_vectors().detach().cpu().numpy().copy(),
        }

    def model(self, snapshot: dict[str, np.ndarray] | None = None) -> AdapterMemoryModel:
        """A numpy model from the current (or a snapshot of) parameters, without query keys."""
        snap = snapshot or self.snapshot()
        use_memory = self.ctx.options.node_memory and len(self.memory_ids) > 0
        return AdapterMemoryModel(
            dim=snap["weight"].shape[0],
            metric=self.ctx.metric,
            weight=snap["weight"],
            bias=snap["bias"],
            memory_ids=self.memory_ids if use_memory else [],
            memory_vectors=snap["memory_vectors"] if use_memory else None,
        )

    def run_epoch(self, epoch: int, generator: "torch.Generator") -> float:
        import torch

        opts = self.ctx.options
        if epoch % opts.remine_every == 0:
            self.source.mine(self.model())
        order = torch.randperm(len(self.split.relevance), generator=generator).tolist()
        total, batches = 0.0, 0
        for start in range(0, len(order), opts.batch_size):
            self.ctx.check_stop()
            rows = order[start : start + opts.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(rows)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            batches += 1
        return total / max(1, batches)


def _memory_ids(relevance: Relevance) -> list[str]:
    """Relevant ids in first-seen order (deterministic)."""
    seen: dict[str, None] = {}
    for pairs in relevance:
        for node, w in pairs:
            if w > 0:
                seen.setdefault(node, None)
    return list(seen)


def _add_keys(
    store: StoreView, model: AdapterMemoryModel, split: _Split, key_weight: float, key_threshold: float
) -> AdapterMemoryModel:
    """``model`` plus the queries of ``split`` remembered as keys, each linked to its relevant
    nodes (weight scaled to at most 1 per query); nodes not yet in memory join it with their
    stored vectors."""
    memory_ids = list(model.memory_ids)
    index = {node: i for i, node in enumerate(memory_ids)}
    extra = [node for node in _memory_ids(split.relevance) if node not in index]
    vectors = [model.memory_vectors]
    if extra:
        vectors.append(np.asarray(store.get_vectors(extra), dtype=np.float32).reshape(len(extra), model.dim))
        for node in extra:
            index[node] = len(memory_ids)
            memory_ids.append(node)
    link_key, link_node, link_weight = [], [], []
    for q, pairs in enumerate(split.relevance):
        top = max((w for _, w in pairs), default=0.0)
        for node, w in pairs:
            if w > 0:
                link_key.append(q)
                link_node.append(index[node])
                link_weight.append(w / top)
    return model.replace(
        memory_ids=memory_ids,
        memory_vectors=np.concatenate(vectors),
        key_vectors=model.transform_queries(split.queries),
        link_key=np.asarray(link_key, dtype=np.int64),
        link_node=np.asarray(link_node, dtype=np.int64),
        link_weight=np.asarray(link_weight, dtype=np.float32),
        key_weight=key_weight,
        key_threshold=key_threshold,
    )


def _with_gate(model: AdapterMemoryModel, queries: np.ndarray, threshold: float, weight: float) -> AdapterMemoryModel:
    """``model`` with a per-query gate: queries far from every training query in ``queries`` (cosine
    below ``threshold``, as embedded) are ranked by the adapter alone, without memory or query
    keys, with keyword weight ``weight`` (the plain store's, chosen on validation)."""
    return model.replace(
        gate_threshold=threshold, gate_keys=queries,  # the far keywords' training queries are these too
        # the fallback re-scores only where the model does (one keyword index, one keyword_plan to update)
        fallback_lexical_weight=weight if model.lexical is not None and model.lexical_weight > 0 else 0.0,
    )


@dataclass(frozen=True)
class _FarKeywords:
    """The per-query keyword weight validation judges: at least ``weight`` for queries whose
    cosine to every one of ``queries`` (the fold's training queries) is below ``cosine``."""

    queries: np.ndarray
    cosine: float
    weight: float


def _with_lexical(
    model: AdapterMemoryModel, lexical: LexicalIndex, weight: float, far: _FarKeywords | None = None
) -> AdapterMemoryModel:
    """``model`` re-scoring its top candidates with ``weight`` times their scaled BM25 scores
    (with ``far``, and memory to be far from: ``far.weight`` for far queries where it is larger)."""
    if far is None or far.weight <= weight or not len(model.memory_ids):  # one weight serves every query
        return model.replace(lexical=lexical, lexical_weight=weight, far_lexical_weight=0.0, far_cosine=0.0)
    return model.replace(lexical=lexical, lexical_weight=weight, far_lexical_weight=far.weight, far_cosine=far.cosine,
                         gate_keys=far.queries)


def _lexical_grid(
    store: StoreView,
    folds: Sequence[_Fold],
    models: Sequence[AdapterMemoryModel],
    caches: Sequence[dict],
    lexical: LexicalIndex,
    weights: Sequence[float],
    ctx: _Context,
) -> Iterator[tuple[float, _Evaluation]]:
    """Each keyword weight with the pooled validation result of the fold ``models`` re-scoring
    with it (``caches``: each fold's plain searches, shared across the weights), far queries
    weighed as the served model will weigh them (:class:`_FarKeywords`)."""
    options = ctx.options
    fars = [_FarKeywords(f.train.queries, options.far_keyword_cosine, options.far_keyword_weight) for f in folds]
    for weight in weights:
        ctx.check_stop()
        yield weight, _pool([
            _evaluate(store, f.val, _with_lexical(model, lexical, weight, far), cache)
            for f, model, cache, far in zip(folds, models, caches, fars)
        ])


def _keywords_on_plain_store(
    store: StoreView, folds: Sequence[_Fold], lexical: LexicalIndex, weights: Sequence[float], ctx: _Context
) -> tuple[_Evaluation, float]:
    """The best validation result (and its weight) of keyword re-scoring on the plain store."""
    plain = AdapterMemoryModel(dim=folds[0].val.queries.shape[1], metric=ctx.metric)
    best, best_weight = None, 0.0
    caches: list[dict] = [{} for _ in folds]
    for weight, candidate in _lexical_grid(store, folds, [plain] * len(folds), caches, lexical, weights, ctx):
        if best is None or candidate.metrics["ndcg@10"] > best.metrics["ndcg@10"]:
            best, best_weight = candidate, weight
    return best, best_weight


def _not_clearly_better(chosen: _Evaluation, simple: _Evaluation, floor: float) -> bool:
    """One-standard-error rule: the simpler candidate wins unless ``chosen`` beats it by more than
    one standard error of the per-query differences (with few queries, picking the best of many
    trained variants on validation overrates it) and the simpler one is admissible."""
    if float(simple.per_query_unseen.mean()) < floor - 1e-9:
        return False
    diff = chosen.per_query - simple.per_query
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
    return float(diff.mean()) <= se


def _build_lexical(store: StoreView) -> LexicalIndex | None:
    """A keyword index of every stored text, or None when the store offers no texts."""
    iter_texts = getattr(store, "iter_texts", None)
    if iter_texts is None:
        return None
    text_of: dict[str, str] = {}  # by id: a node re-added between two batches is read twice, keep the last
    for batch_ids, batch_texts in iter_texts():
        text_of.update(zip(batch_ids, batch_texts))
    if not any(text.strip() for text in text_of.values()):
        return None
    return LexicalIndex(list(text_of), list(text_of.values()))


@dataclass
class _Evaluation:
    """Validation metrics, per-query nDCG@10, and per-query nDCG@10 with each query's own
    relevant nodes forgotten by the model (how it treats queries about nodes it never saw)."""

    metrics: dict[str, float]
    per_query: np.ndarray
    per_query_unseen: np.ndarray


def _evaluate(
    store: StoreView, split: _Split, model: DeepMemoryModel | None, cache: dict | None = None
) -> _Evaluation:
    cache = {} if cache is None else cache
    ranked = rank_with_model(store, split.queries, model, plain_cache=cache, texts=split.texts)
    per_query = np.asarray(ndcg_at_k(ranked, split.relevance, 10, per_query=True))
    per_query_unseen = per_query
    if model is not None:
        forget = [{node for node, _ in pairs} for pairs in split.relevance]
        ranked_unseen = rank_with_model(
            store, split.queries, model, forget=forget, plain_cache=cache, texts=split.texts
        )
        per_query_unseen = np.asarray(ndcg_at_k(ranked_unseen, split.relevance, 10, per_query=True))
    return _Evaluation(ranking_metrics(ranked, split.relevance), per_query, per_query_unseen)


SMALL_SET_QUERIES = 200  # below this many queries the default is 5 folds
SINGLE_SPLIT_QUERIES = 500  # from this many on, one validation_fraction split (>= 50 queries at 0.1)


def _fold_count(n_queries: int, options: TrainOptions) -> int:
    """Folds to cross-validate over: ``validation_folds`` or the default, at most one per query.

    The default cross-validates small sets, where one split holds too few queries for the gate
    to ever fire; on SciFact (809 queries) 3 or 5 folds scored no better than one split and
    took 3-5x longer, so large sets keep the single split.
    """
    folds = options.validation_folds
    if folds is None and options.validation_fraction == 0:
        folds = 1  # the caller asked for no held-out queries
    if folds is None:
        folds = 5 if n_queries < SMALL_SET_QUERIES else 3 if n_queries < SINGLE_SPLIT_QUERIES else 1
    return max(1, min(folds, n_queries))


@dataclass
class _Fold:
    """Training and validation queries of one fold (``held_out`` False: validation is training)."""

    train: _Split
    val: _Split
    held_out: bool


def _split_queries(
    query_vectors: np.ndarray, relevance: Relevance, options: TrainOptions, texts: list[str] | None = None
) -> list[_Fold]:
    """Seeded folds. One fold: the old (train, validation_fraction) split, validation falling back
    to the training queries when none is held out. K folds: every query validates exactly once."""
    m = len(relevance)
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(m)

    def take(idx: np.ndarray) -> _Split:
        return _Split(query_vectors[idx], [relevance[i] for i in idx], None if texts is None else [texts[i] for i in idx])

    n_folds = _fold_count(m, options)
    if n_folds > 1:
        folds = []
        for k in range(n_folds):
            val_idx = np.sort(order[k::n_folds])
            train_idx = np.sort(np.setdiff1d(order, val_idx))
            folds.append(_Fold(take(train_idx), take(val_idx), True))
        return folds
    n_val = int(round(options.validation_fraction * m))
    if options.validation_fraction > 0:
        n_val = min(max(n_val, 1), m - 1)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train = take(train_idx)
    return [_Fold(train, take(val_idx), True) if n_val else _Fold(train, train, False)]


def _check_inputs(store: StoreView, query_vectors: np.ndarray, relevance: Relevance) -> tuple[np.ndarray, Relevance]:
    """The query vectors as float32 and the relevance validated against the store."""
    if len(store) == 0:
        raise ValueError("the store is empty: add nodes before training Deep Memory")
    queries = np.asarray(query_vectors, dtype=np.float32)
    if queries.ndim != 2:
        raise ValueError(f"query_vectors must be a 2-D array (queries, dim), got shape {queries.shape}")
    if len(queries) != len(relevance):
        raise ValueError(f"got {len(queries)} query vectors but {len(relevance)} relevance lists; pass one per query")
    if len(queries) < 2:
        raise ValueError(f"Deep Memory training needs at least 2 queries, got {len(queries)}")
    if store.dim is not None and queries.shape[1] != store.dim:
        raise ValueError(f"query vectors have dim {queries.shape[1]} but the store holds dim {store.dim}")
    if not np.isfinite(queries).all():
        raise ValueError("query_vectors contain NaN or infinite values")
    _, relevance = validate_relevance(None, relevance, known_ids=store.missing_ids, n_queries=len(queries))
    return queries, relevance


class _Selection:
    """Best validation result so far.

    A candidate wins on overall nDCG@10, but only if it stays at least as good as no model
    (minus ``tolerance``) when every validation query's own relevant nodes are forgotten by the
    model: memory must not crowd out nodes it has never seen, and the adapter must not hurt.
    """

    def __init__(self, before: _Evaluation, tolerance: float) -> None:
        self.floor = float(before.per_query.mean()) - tolerance
        self.best = before
        self.score = before.metrics["ndcg@10"]

    def offer(self, candidate: _Evaluation) -> bool:
        """Keep the candidate when it is the best admissible one so far."""
        if float(candidate.per_query_unseen.mean()) < self.floor - 1e-9:
            return False
        if candidate.metrics["ndcg@10"] <= self.score:
            return False
        self.best, self.score = candidate, candidate.metrics["ndcg@10"]
        return True


def _identity_snapshot(trainer: _Trainer, dim: int) -> dict[str, np.ndarray]:
    return {
        "weight": np.eye(dim, dtype=np.float32),
        "bias": np.zeros(dim, np.float32),
        "memory_vectors": trainer.base_memory.cpu().numpy(),
    }


def _pool(evaluations: Sequence[_Evaluation]) -> _Evaluation:
    """One evaluation over the union of the folds' validation queries (means weighted by size)."""
    if len(evaluations) == 1:
        return evaluations[0]
    sizes = np.asarray([len(e.per_query) for e in evaluations], dtype=np.float64)
    metrics = {
        name: float(np.dot([e.metrics[name] for e in evaluations], sizes) / sizes.sum())
        for name in evaluations[0].metrics
    }
    return _Evaluation(
        metrics,
        np.concatenate([e.per_query for e in evaluations]),
        np.concatenate([e.per_query_unseen for e in evaluations]),
    )


def train_model(
    store: StoreView,
    query_vectors: np.ndarray,
    relevance: Relevance,
    *,
    options: TrainOptions,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    query_texts: Sequence[str] | None = None,
) -> TrainResult:
    """Train an :class:`AdapterMemoryModel` on (query vector, relevant ids with weights) pairs.

    With ``query_texts`` (and ``options.lexical``), keyword (BM25) re-scoring of the top
    candidates is tried too, with a weight chosen on validation like everything else.

    ``options.num_threads`` (when set) applies torch's process-wide CPU thread count for the
    duration of the call and restores it afterwards. The default, 1, is the fastest for these
    small matrices and does not collapse on busy machines (2 spinning OpenMP threads on 2 shared
    cores made SciFact training ~8x slower in our measurements).
    """
    import torch

    options.validate()
    previous_threads = torch.get_num_threads()
    if options.num_threads is not None:
        torch.set_num_threads(options.num_threads)
    try:
        return _train(store, query_vectors, relevance, options, progress, should_stop, query_texts)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    store: StoreView,
    query_vectors: np.ndarray,
    relevance: Relevance,
    options: TrainOptions,
    progress: Callable[[float, str], None] | None,
    should_stop: Callable[[], bool] | None,
    query_texts: Sequence[str] | None = None,
) -> TrainResult:
    import torch

    queries, relevance = _check_inputs(store, query_vectors, relevance)
    texts = check_query_texts(query_texts, len(queries))
    ctx = _Context(store, options, progress, should_stop)
    torch.manual_seed(options.seed)
    folds = _split_queries(queries, relevance, options, texts)
    held_out = folds[0].held_out
    n_val = sum(len(f.val.relevance) for f in folds) if held_out else 0
    ctx.report(0.0, f"training on {len(relevance)} queries, {len(folds)} validation fold(s), {n_val} validated")

    before = _pool([_evaluate(store, f.val, None) for f in folds])
    selection = _Selection(before, options.unseen_tolerance)

    trainers = [_Trainer(ctx, f.train, _memory_ids(f.train.relevance)) for f in folds]
    generators = [torch.Generator().manual_seed(options.seed) for _ in folds]
    best_epoch, best_snapshots, epochs_run, since_best = 0, None, 0, 0
    plain_caches: list[dict] = [{} for _ in folds]  # the selected adapters' plain searches, reused below
    for epoch in range(options.epochs):
        losses = [t.run_epoch(epoch, g) for t, g in zip(trainers, generators)]
        epochs_run = epoch + 1
        caches: list[dict] = [{} for _ in folds]
        evaluation = _pool([_evaluate(store, f.val, t.model(), c) for f, t, c in zip(folds, trainers, caches)])
        if selection.offer(evaluation):
            best_epoch, best_snapshots, since_best = epochs_run, [t.snapshot() for t in trainers], 0
            plain_caches = caches
        else:
            since_best += 1
        ctx.report(
            0.8 * epochs_run / options.epochs,
            f"epoch {epochs_run}/{options.epochs} ({len(folds)} fold(s)): loss {float(np.mean(losses)):.4f}, "
            f"val ndcg@10 {evaluation.metrics['ndcg@10']:.4f}",
        )
        if since_best > options.patience:
            break
        if selection.score >= 1.0:  # every validation query is ranked perfectly: no later epoch can win
            logger.debug("validation nDCG@10 is 1.0 after epoch %d: stopping", epochs_run)
            break
    dim = queries.shape[1]
    base_models = [
        t.model(best_snapshots[i] if best_snapshots else _identity_snapshot(t, dim)) for i, t in enumerate(trainers)
    ]

    key_weight, key_threshold = 0.0, 1.0
    if options.query_memory:
        for threshold in options.key_thresholds:
            for weight in options.key_weights:
                ctx.check_stop()
                candidate = _pool([
                    _evaluate(store, f.val, _add_keys(store, base, f.train, weight, threshold), cache)
                    for f, base, cache in zip(folds, base_models, plain_caches)
                ])
                if selection.offer(candidate):
                    key_weight, key_threshold = weight, threshold
        ctx.report(0.85, f"query memory: weight {key_weight}, threshold {key_threshold}")
    lexical, lexical_weight, keywords_only, simple_weight = None, 0.0, False, 0.0
    if options.lexical and texts is not None and len(store) <= options.lexical_max_nodes:
        lexical = _build_lexical(store)
    elif options.lexical and texts is not None:
        logger.info("no keyword index: %d stored nodes > lexical_max_nodes=%d", len(store), options.lexical_max_nodes)
    if lexical is not None:
        keyed = [
            _add_keys(store, base, f.train, key_weight, key_threshold) if key_weight > 0 else base
            for f, base in zip(folds, base_models)
        ]
        for weight, candidate in _lexical_grid(
            store, folds, keyed, plain_caches, lexical, options.lexical_weights, ctx
        ):
            if selection.offer(candidate):
                lexical_weight = weight
        simple, simple_weight = _keywords_on_plain_store(store, folds, lexical, options.lexical_weights, ctx)
        if _not_clearly_better(selection.best, simple, selection.floor):
            selection.best, lexical_weight, keywords_only = simple, simple_weight, True
        ctx.report(0.87, f"keyword re-scoring: weight {lexical_weight}{' on the plain store' if keywords_only else ''}")
    improved = significant_gain(before.per_query, selection.best.per_query, options.min_improvement, options.gate_z)

    # refit even when not improved: a kept model a user activates by hand should use every query
    refit_ok = options.refit and held_out
    final_split = _Split(queries, relevance) if refit_ok else folds[0].train
    final, refitted = base_models[0], False
    if keywords_only:  # no adapter, no memory, no query keys: the plain store plus keyword scores
        final, best_epoch, key_weight = AdapterMemoryModel(dim=queries.shape[1], metric=ctx.metric), 0, 0.0
    elif refit_ok and best_epoch > 0:
        refit = _Trainer(ctx, final_split, _memory_ids(relevance))
        generator = torch.Generator().manual_seed(options.seed)
        for epoch in range(best_epoch):
            refit.run_epoch(epoch, generator)
            ctx.report(0.85 + 0.15 * (epoch + 1) / best_epoch, f"refit epoch {epoch + 1}/{best_epoch}")
        final, refitted = refit.model(), True
    if key_weight > 0:
        final = _add_keys(store, final, final_split, key_weight, key_threshold)
    if lexical_weight > 0:
        far = _FarKeywords(final_split.queries, options.far_keyword_cosine, options.far_keyword_weight)
        final = _with_lexical(final, lexical, lexical_weight, far)
    if options.gate_threshold > 0 and len(final.memory_ids):
        final = _with_gate(final, final_split.queries, options.gate_threshold, simple_weight)

    info = {
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "n_train": len(final_split.relevance),
        "n_val": n_val,
        "validation_folds": len(folds),
        "val_ndcg@10_own_nodes_forgotten": float(selection.best.per_query_unseen.mean()),
        "validation": (
            (f"{len(folds)}-fold cross-validation" if len(folds) > 1 else "held-out")
            if held_out else "training queries (validation_fraction=0)"
        ),
        "refit_on_all_queries": refitted,
        "key_weight": key_weight,
        "key_threshold": key_threshold,
        "lexical_weight": lexical_weight,
        "far_lexical_weight": getattr(final, "far_lexical_weight", 0.0),
        "far_keyword_cosine": getattr(final, "far_cosine", 0.0),
        "keywords_only": keywords_only,
        "gate_threshold": getattr(final, "gate_threshold", 0.0),
        "memory_nodes": len(getattr(final, "memory_ids", [])),
        "softmax": "full corpus" if trainers[0].source.full else f"{options.num_negatives} mined negatives",
        "device": str(ctx.device),
        "seconds": time.perf_counter() - ctx.started,
    }
    val_before, val_after = before.metrics, selection.best.metrics
    ctx.report(1.0, f"done: val ndcg@10 {val_before['ndcg@10']:.4f} -> {val_after['ndcg@10']:.4f}")
    return TrainResult(model=final, val_before=val_before, val_after=val_after, improved=improved, info=info)
