"""Where a training batch's candidates come from: the whole corpus when it is small enough (exact
softmax), otherwise each batch's relevant nodes plus hard negatives mined from the store with
``search_vectors`` (bounded memory: the corpus is never loaded into torch). torch is imported
inside functions only."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


MINE_BATCH = 1024  # queries per store search while mining
PlainMined = dict[tuple[bytes, int], list[str]]  # (query row bytes, k) -> plain hits


def _is_identity_adapter(model: DeepMemoryModel) -> bool:
    """Whether ``model`` transforms queries with the identity (an untrained adapter)."""
    weight, bias = getattr(model, "weight", None), getattr(model, "bias", None)
    if weight is None or bias is None:
        return False
    weight, bias = np.asarray(weight), np.asarray(bias)
    return (
        weight.ndim == 2
        and weight.shape[0] == weight.shape[1]
        and not bias.any()
        and np.array_equal(weight, np.eye(weight.shape[0], dtype=weight.dtype))
    )


class CandidateSource:
    """Candidate nodes and targets of a batch of training queries."""

    def __init__(
        self,
        store: StoreView,
        queries: np.ndarray,
        relevance: Sequence[Sequence[tuple[str, float]]],
        memory_index: dict[str, int],
        *,
        device: "torch.device",
        full_softmax_max_nodes: int,
        num_negatives: int,
        check_stop: Callable[[], None],
        plain_mined: PlainMined | None = None,
    ) -> None:
        import torch

        self.plain_mined = {} if plain_mined is None else plain_mined
        self.store = store
        self.queries = queries
        self.relevance = relevance
        self.memory_index = memory_index
        self.device = device
        self.num_negatives = num_negatives
        self.check_stop = check_stop
        self.full = len(store) <= full_softmax_max_nodes
        self.mined: list[list[str]] = []
        self._table: _CandidateTable | None = None  # the mined candidates' vectors, read once per mining
        if self.full:
            ids: list[str] = []
            chunks: list[np.ndarray] = []
            for batch_ids, batch_vectors in store.iter_vectors():
                ids.extend(batch_ids)
                chunks.append(np.asarray(batch_vectors, dtype=np.float32))
                check_stop()
            self.position = {node: i for i, node in enumerate(ids)}
            self.vectors = torch.from_numpy(np.concatenate(chunks)).to(device)
            self.memory_pos = torch.tensor([memory_index.get(node, -1) for node in ids], dtype=torch.long, device=device)

    def mine(self, model: DeepMemoryModel) -> None:
        """(Re-)mine hard negatives with the current adapter (large corpora only), searching the
        store in batches. With the untrained (identity) adapter the negatives are the plain hits of
        each query, which every trainer of one run shares (``plain_mined``: the folds' and the
        refit's first epochs search each query once)."""
        if self.full:
            return
        k = min(len(self.store), self.num_negatives)
        plain = _is_identity_adapter(model)
        keys = [row.tobytes() for row in self.queries] if plain else []
        if plain:
            todo = [i for i, key in enumerate(keys) if (key, k) not in self.plain_mined]
        else:
            todo = list(range(len(self.queries)))
        mined: dict[int, list[str]] = {}
        for start in range(0, len(todo), MINE_BATCH):
            rows = todo[start : start + MINE_BATCH]
            _, ids = self.store.search_vectors(model.transform_queries(self.queries[rows]), k)
            mined.update((i, list(row)) for i, row in zip(rows, ids))
            self.check_stop()
        if plain:
            self.plain_mined.update(((keys[i], k), row) for i, row in mined.items())
            self.mined = [self.plain_mined[(key, k)] for key in keys]
        else:
            self.mined = [mined[i] for i in range(len(self.queries))]
        self._table = _CandidateTable(self.store, self.relevance, self.mined, self.memory_index, self.queries.shape[1])
        logger.debug("mined %d negatives for %d queries (%d searched)", k, len(self.queries), len(todo))

    def release(self) -> None:
        """Drop the mined candidates' vectors (no more batches: the memory goes back)."""
        self._table = None

    def batch(self, rows: Sequence[int]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """Candidate vectors (c, d), their memory positions (c,) or -1, and targets (b, c)."""
        import torch

        rel = [self.relevance[i] for i in rows]
        if self.full:
            vectors, memory_pos, position = self.vectors, self.memory_pos, self.position
        else:
            if self._table is None:
                raise RuntimeError("mine() before batch(): a large corpus trains on mined negatives")
            vectors, memory_pos, position = self._table.batch(rows)
            vectors = torch.from_numpy(vectors).to(self.device)
            memory_pos = torch.from_numpy(memory_pos).to(self.device)
        targets = torch.zeros((len(rows), vectors.shape[0]), dtype=torch.float32)
        for b, pairs in enumerate(rel):
            total = sum(w for _, w in pairs if w > 0)
            for node, w in pairs:
                if w > 0:
                    targets[b, position[node]] += float(w) / total
        return vectors, memory_pos, targets.to(self.device)


class _CandidateTable:
    """Every training query's candidates (its relevant nodes, then its mined negatives) as rows of
    one table of vectors, read from the store once per mining instead of once per batch."""

    def __init__(
        self,
        store: StoreView,
        relevance: Sequence[Sequence[tuple[str, float]]],
        mined: Sequence[Sequence[str]],
        memory_index: dict[str, int],
        dim: int,
    ) -> None:
        self.local: dict[str, int] = {}  # id -> table row
        self.relevance = relevance
        self.rows_of: list[np.ndarray] = []  # per query: table rows in candidate order
        for pairs, negatives in zip(relevance, mined):
            seq = [self.local.setdefault(node, len(self.local)) for node, _ in pairs]
            seq += [self.local.setdefault(node, len(self.local)) for node in negatives]
            self.rows_of.append(np.asarray(seq, dtype=np.int64))
        ids = list(self.local)
        self.vectors = np.asarray(store.get_vectors(ids), dtype=np.float32).reshape(len(ids), dim)
        self.memory_pos = np.asarray([memory_index.get(node, -1) for node in ids], dtype=np.int64)

    def batch(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """The candidates of the queries at ``rows`` in first-seen order (as the queries list
        them): vectors (c, d), memory positions (c,), and the column of each relevant node."""
        seq = np.concatenate([self.rows_of[i] for i in rows])
        unique, first = np.unique(seq, return_index=True)
        order = unique[np.argsort(first, kind="stable")]
        column = np.empty(len(self.memory_pos), dtype=np.int64)
        column[order] = np.arange(len(order))
        local = self.local
        position = {node: int(column[local[node]]) for i in rows for node, _ in self.relevance[i]}
        return self.vectors[order], self.memory_pos[order], position
