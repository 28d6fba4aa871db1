"""One training run, step by step: :func:`train_model` and the :class:`TrainResult` it returns."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView, check_query_texts
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.deep_memory.training.grids import (
    _add_keys,
    _build_lexical,
    _FarKeywords,
    _keywords_on_plain_store,
    _lexical_grid,
    _with_gate,
    _with_lexical,
)
from llama_index_deepmemory.deep_memory.training.options import TrainOptions
from llama_index_deepmemory.deep_memory.training.selection import _evaluate, _not_clearly_better, _pool, _Selection, significant_gain
from llama_index_deepmemory.deep_memory.training.splits import _check_inputs, _memory_ids, _split_queries, _Split
from llama_index_deepmemory.deep_memory.training.trainer import _Context, _identity_snapshot, _Trainer
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
