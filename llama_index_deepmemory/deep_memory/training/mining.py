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
        logger.debug("mined %d negatives for %d queries (%d searched)", k, len(self.queries), len(todo))

    def batch(self, rows: Sequence[int]) -> tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
        """Candidate vectors (c, d), their memory positions (c,) or -1, and targets (b, c)."""
        import torch

        rel = [self.relevance[i] for i in rows]
        if self.full:
            vectors, memory_pos, position = self.vectors, self.memory_pos, self.position
        else:
            position = {}
            for i, pairs in zip(rows, rel):
                for node, _ in pairs:
                    position.setdefault(node, len(position))
                for node in self.mined[i]:
                    position.setdefault(node, len(position))
            ids = list(position)
            vectors = torch.from_numpy(np.asarray(self.store.get_vectors(ids), dtype=np.float32)).to(self.device)
            memory_pos = torch.tensor(
                [self.memory_index.get(node, -1) for node in ids], dtype=torch.long, device=self.device
            )
        targets = torch.zeros((len(rows), vectors.shape[0]), dtype=torch.float32)
        for b, pairs in enumerate(rel):
            total = sum(w for _, w in pairs if w > 0)
            for node, w in pairs:
                if w > 0:
                    targets[b, position[node]] += float(w) / total
        return vectors, memory_pos, targets.to(self.device)
