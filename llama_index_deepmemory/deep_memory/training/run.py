"""One training run, step by step: :func:`train_model` and the :class:`TrainResult` it returns."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView, check_query_texts
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.deep_memory.training.grids import (
    _add_keys,
    _build_lexical,
    _FarKeywords,
    _key_grid,
    _keywords_on_plain_store,
    _lexical_grid,
    _with_gate,
    _with_lexical,
)
from llama_index_deepmemory.deep_memory.training.options import TrainOptions
from llama_index_deepmemory.deep_memory.training.selection import (
    _evaluate,
    _not_clearly_better,
    _pool,
    _Selection,
    significant_gain,
)
from llama_index_deepmemory.deep_memory.training.splits import _check_inputs, _Fold, _memory_ids, _split_queries, _Split
from llama_index_deepmemory.deep_memory.training.trainer import _Context, _Trainer
from llama_index_deepmemory.relevance import Relevance

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train_model` hands back to the API."""

    model: DeepMemoryModel
    val_before: dict[str, float]
    val_after: dict[str, float]
    improved: bool
    info: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class _Choices:
    """What validation chose, step by step (see :func:`_train`)."""

    epochs_run: int = 0
    best_epoch: int = 0  # 0: no epoch beat the untrained adapter
    key_weight: float = 0.0
    key_threshold: float = 1.0
    lexical: LexicalIndex | None = None
    lexical_weight: float = 0.0
    keywords_only: bool = False  # keyword re-scoring on the plain store won
    plain_keyword_weight: float = 0.0  # the best keyword weight on the plain store (the gate's fallback)


def _train(
    store: StoreView,
    query_vectors: np.ndarray,
    relevance: Relevance,
    options: TrainOptions,
    progress: Callable[[float, str], None] | None,
    should_stop: Callable[[], bool] | None,
    query_texts: Sequence[str] | None = None,
) -> TrainResult:
    """Check and split the queries, train the folds' adapters and memory, choose the query keys and
    keyword weights on validation, judge the gain, then build (and refit) the served model."""
    import torch

    queries, relevance = _check_inputs(store, query_vectors, relevance)
    texts = check_query_texts(query_texts, len(queries))
    ctx = _Context(store, options, progress, should_stop)
    torch.manual_seed(options.seed)
    folds = _split_queries(queries, relevance, options, texts)
    n_val = sum(len(f.val.relevance) for f in folds) if folds[0].held_out else 0
    ctx.report(0.0, f"training on {len(relevance)} queries, {len(folds)} validation fold(s), {n_val} validated")

    before = _pool([_evaluate(store, f.val, None) for f in folds])
    selection = _Selection(before, options.unseen_tolerance)
    choices = _Choices()
    trainers = [_Trainer(ctx, f.train, _memory_ids(f.train.relevance)) for f in folds]
    trained = _Trained(folds, *_train_epochs(ctx, folds, trainers, selection, choices), selection)
    for trainer in trainers:
        trainer.source.release()
    _choose_query_keys(ctx, trained, choices)
    _choose_keywords(ctx, trained, choices, texts)
    improved = significant_gain(before.per_query, selection.best.per_query, options.min_improvement, options.gate_z)

    final_split, final, refitted = _final_model(ctx, folds, _Split(queries, relevance), trained.models[0], choices)
    info = {
        "epochs_run": choices.epochs_run,
        "best_epoch": choices.best_epoch,
        "n_train": len(final_split.relevance),
        "n_val": n_val,
        "validation_folds": len(folds),
        "val_ndcg@10_own_nodes_forgotten": float(selection.best.per_query_unseen.mean()),
        "validation": _validation_name(folds),
        "refit_on_all_queries": refitted,
        "key_weight": choices.key_weight,
        "key_threshold": choices.key_threshold,
        "lexical_weight": choices.lexical_weight,
        "far_lexical_weight": getattr(final, "far_lexical_weight", 0.0),
        "far_keyword_cosine": getattr(final, "far_cosine", 0.0),
        "keywords_only": choices.keywords_only,
        "gate_threshold": getattr(final, "gate_threshold", 0.0),
        "memory_nodes": len(getattr(final, "memory_ids", [])),
        "softmax": "full corpus" if trainers[0].source.full else f"{options.num_negatives} mined negatives",
        "device": str(ctx.device),
        "seconds": time.perf_counter() - ctx.started,
    }
    val_before, val_after = before.metrics, selection.best.metrics
    ctx.report(1.0, f"done: val ndcg@10 {val_before['ndcg@10']:.4f} -> {val_after['ndcg@10']:.4f}")
    return TrainResult(model=final, val_before=val_before, val_after=val_after, improved=improved, info=info)


def _train_epochs(
    ctx: _Context, folds: Sequence[_Fold], trainers: Sequence[_Trainer], selection: _Selection, choices: _Choices
) -> tuple[list[AdapterMemoryModel], list[dict]]:
    """Train the folds in lockstep with early stopping on pooled validation: the folds' models at
    the best epoch (the untrained adapter when none won) and that epoch's plain searches."""
    import torch

    options = ctx.options
    generators = [torch.Generator().manual_seed(options.seed) for _ in folds]
    best_snapshots, since_best = None, 0
    plain_caches: list[dict] = [{} for _ in folds]  # the selected adapters' plain searches, reused by the grids
    for epoch in range(options.epochs):
        losses = [t.run_epoch(epoch, g) for t, g in zip(trainers, generators)]
        choices.epochs_run = epoch + 1
        caches: list[dict] = [{} for _ in folds]
        evaluation = _pool([_evaluate(ctx.store, f.val, t.model(), c) for f, t, c in zip(folds, trainers, caches)])
        if selection.offer(evaluation):
            choices.best_epoch, best_snapshots, since_best = choices.epochs_run, [t.snapshot() for t in trainers], 0
            plain_caches = caches
        else:
            since_best += 1
        ctx.report(
            0.8 * choices.epochs_run / options.epochs,
            f"epoch {choices.epochs_run}/{options.epochs} ({len(folds)} fold(s)): loss {float(np.mean(losses)):.4f}, "
            f"val ndcg@10 {evaluation.metrics['ndcg@10']:.4f}",
        )
        if since_best > options.patience:
            break
        if selection.score >= 1.0:  # every validation query is ranked perfectly: no later epoch can win
            logger.debug("validation nDCG@10 is 1.0 after epoch %d: stopping", choices.epochs_run)
            break
    models = [t.model(best_snapshots[i] if best_snapshots else t.identity_snapshot()) for i, t in enumerate(trainers)]
    return models, plain_caches


@dataclass
class _Trained:
    """What the grids after the epochs start from: the folds, their models at the best epoch, those
    models' plain searches (shared by every candidate built on them) and the selection so far."""

    folds: Sequence[_Fold]
    models: Sequence[AdapterMemoryModel]
    caches: Sequence[dict]
    selection: _Selection


def _choose_query_keys(ctx: _Context, trained: _Trained, choices: _Choices) -> None:
    """The query keys' weight and threshold (when ``query_memory``): the grid's admissible best."""
    if not ctx.options.query_memory:
        return
    for (weight, threshold), candidate in _key_grid(ctx, trained.folds, trained.models, trained.caches):
        if trained.selection.offer(candidate):
            choices.key_weight, choices.key_threshold = weight, threshold
    ctx.report(0.85, f"query memory: weight {choices.key_weight}, threshold {choices.key_threshold}")


def _choose_keywords(ctx: _Context, trained: _Trained, choices: _Choices, texts: list[str] | None) -> None:
    """The keyword (BM25) weight, on the keyed models or on the plain store (the simpler one wins
    unless the trained one is clearly better), when query texts are known and the store small enough."""
    store, options = ctx.store, ctx.options
    if not options.lexical or texts is None:
        return
    if len(store) > options.lexical_max_nodes:
        logger.info("no keyword index: %d stored nodes > lexical_max_nodes=%d", len(store), options.lexical_max_nodes)
        return
    choices.lexical = lexical = _build_lexical(store)
    if lexical is None:
        return
    folds, selection = trained.folds, trained.selection
    keyed = [
        _add_keys(store, model, f.train, choices.key_weight, choices.key_threshold) if choices.key_weight > 0 else model
        for f, model in zip(folds, trained.models)
    ]
    for weight, candidate in _lexical_grid(store, folds, keyed, trained.caches, lexical, options.lexical_weights, ctx):
        if selection.offer(candidate):
            choices.lexical_weight = weight
    simple, choices.plain_keyword_weight = _keywords_on_plain_store(store, folds, lexical, options.lexical_weights, ctx)
    if _not_clearly_better(selection.best, simple, selection.floor):
        selection.best, choices.lexical_weight, choices.keywords_only = simple, choices.plain_keyword_weight, True
    where = " on the plain store" if choices.keywords_only else ""
    ctx.report(0.87, f"keyword re-scoring: weight {choices.lexical_weight}{where}")


def _final_model(
    ctx: _Context, folds: Sequence[_Fold], everything: _Split, model: AdapterMemoryModel, choices: _Choices
) -> tuple[_Split, DeepMemoryModel, bool]:
    """The served model: refit on every query for the best epoch count (when held out; even when
    not improved, so a model a user activates by hand uses every query), then the chosen query keys,
    keywords and gate. (the queries it was fitted on, the model, whether it was refitted)."""
    import torch

    options = ctx.options
    refit_ok = options.refit and folds[0].held_out
    final_split = everything if refit_ok else folds[0].train
    final, refitted = model, False
    if choices.keywords_only:  # no adapter, no memory, no query keys: the plain store plus keyword scores
        final = AdapterMemoryModel(dim=everything.queries.shape[1], metric=ctx.metric)
        choices.best_epoch, choices.key_weight = 0, 0.0
    elif refit_ok and choices.best_epoch > 0:
        refit = _Trainer(ctx, final_split, _memory_ids(final_split.relevance))
        generator = torch.Generator().manual_seed(options.seed)
        for epoch in range(choices.best_epoch):
            refit.run_epoch(epoch, generator)
            ctx.report(0.85 + 0.15 * (epoch + 1) / choices.best_epoch, f"refit epoch {epoch + 1}/{choices.best_epoch}")
        final, refitted = refit.model(), True
    if choices.key_weight > 0:
        final = _add_keys(ctx.store, final, final_split, choices.key_weight, choices.key_threshold)
    if choices.lexical_weight > 0:
        far = _FarKeywords(final_split.queries, options.far_keyword_cosine, options.far_keyword_weight)
        final = _with_lexical(final, choices.lexical, choices.lexical_weight, far)
    if options.gate_threshold > 0 and len(final.memory_ids):
        final = _with_gate(final, final_split.queries, options.gate_threshold, choices.plain_keyword_weight)
    return final_split, final, refitted


def _validation_name(folds: Sequence[_Fold]) -> str:
    if not folds[0].held_out:
        return "training queries (validation_fraction=0)"
    return f"{len(folds)}-fold cross-validation" if len(folds) > 1 else "held-out"
