"""The training objective as small torch modules, kept apart from where a batch's candidates come
from (:mod:`.mining`), as sentence-transformers keeps its losses apart from its data.

:class:`AdapterMemory` holds what is trained: a linear query adapter ``W q + b`` (identity-initialised)
and a learned delta per memory node over its stored vector. :class:`ListwiseLoss` scores a batch of
queries against its candidates (memory nodes scored through their learned vectors) and returns the
listwise softmax cross-entropy against the relevance-weighted targets, plus the pulls of the adapter
toward identity and of memory toward the stored vectors.

Shapes: ``b`` queries in the batch, ``c`` candidates, ``n`` memory nodes, ``d`` dimensions.
This module imports torch: :mod:`.trainer` imports it only when a training run starts.
"""

from __future__ import annotations

import torch
from torch import nn

from llama_index_deepmemory.scoring import scores_from_dots


def store_scores(queries: torch.Tensor, vectors: torch.Tensor, metric: str) -> torch.Tensor:
    """Store-scale scores (b, c) of ``queries`` (b, d) against ``vectors`` (c, d) through
    :func:`~llama_index_deepmemory.scoring.scores_from_dots`; for l2 the query-norm term is left
    out (constant per query: the softmax does not change)."""
    vector_sq = (vectors * vectors).sum(1)[None, :] if metric == "l2" else None
    return scores_from_dots(queries @ vectors.T, metric, vector_sq)


def listwise_loss(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy between each row's target distribution over candidates (relevance weights,
    summing to 1) and the softmax of its scores divided by ``temperature``: (b, c), (b, c) -> ()."""
    log_probs = torch.log_softmax(logits / temperature, dim=1)
    return -(targets * log_probs).sum(1).mean()


class AdapterMemory(nn.Module):
    """The trained parameters: adapter ``weight`` (d, d) and ``bias`` (d,), memory ``delta`` (n, d)
    over the stored vectors ``base_memory`` (n, d) of the memory nodes."""

    def __init__(self, base_memory: torch.Tensor, metric: str, normalize_memory: bool) -> None:
        super().__init__()
        d, device = base_memory.shape[1], base_memory.device
        self.metric = metric
        self.normalize_memory = normalize_memory
        self.register_buffer("base_memory", base_memory)
        self.weight = nn.Parameter(torch.eye(d, device=device))
        self.bias = nn.Parameter(torch.zeros(d, device=device))
        self.delta = nn.Parameter(torch.zeros(base_memory.shape, device=device))

    def transform(self, queries: torch.Tensor) -> torch.Tensor:
        """Adapted queries (b, d) -> (b, d), unit length for cosine stores."""
        out = queries @ self.weight.T + self.bias
        return nn.functional.normalize(out, dim=1) if self.metric == "cosine" else out

    def memory_vectors(self) -> torch.Tensor:
        """The memory nodes' learned vectors (n, d), unit length for cosine stores when normalised."""
        vectors = self.base_memory + self.delta
        if self.metric == "cosine" and self.normalize_memory:
            vectors = nn.functional.normalize(vectors, dim=1)
        return vectors


class ListwiseLoss(nn.Module):
    """Listwise softmax cross-entropy of ``model``'s scores plus its regularisation.

    ``adapter_regularization`` pulls ``W`` toward identity and ``b`` toward 0;
    ``memory_regularization`` pulls each memory vector toward its stored vector. With
    ``node_memory`` False, memory nodes score as their stored vectors and are not regularised.
    """

    def __init__(
        self,
        model: AdapterMemory,
        *,
        temperature: float,
        adapter_regularization: float,
        memory_regularization: float,
        node_memory: bool,
    ) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.adapter_regularization = adapter_regularization
        self.memory_regularization = memory_regularization
        self.node_memory = node_memory

    def forward(
        self, queries: torch.Tensor, vectors: torch.Tensor, memory_pos: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """``queries`` (b, d), candidate ``vectors`` (c, d), their ``memory_pos`` (c,) (-1: not in
        memory) and ``targets`` (b, c) (rows sum to 1) -> the scalar loss."""
        model, metric = self.model, self.model.metric
        adapted = model.transform(queries)  # (b, d)
        logits = store_scores(adapted, vectors, metric)  # (b, c)
        has_memory = memory_pos >= 0  # (c,)
        if self.node_memory and bool(has_memory.any()):
            cols = torch.nonzero(has_memory).squeeze(1)  # (c_mem,) candidates in memory
            memory_scores = store_scores(adapted, model.memory_vectors()[memory_pos[cols]], metric)  # (b, c_mem)
            logits = logits.index_copy(1, cols, memory_scores)
        loss = listwise_loss(logits, targets, self.temperature)
        eye = torch.eye(model.weight.shape[0], device=model.weight.device)
        loss = loss + self.adapter_regularization * ((model.weight - eye) ** 2).sum() / model.weight.shape[0]
        loss = loss + self.adapter_regularization * (model.bias**2).sum()
        if self.node_memory and model.delta.shape[0]:
            drift = model.memory_vectors() - model.base_memory  # (n, d)
            loss = loss + self.memory_regularization * (drift**2).sum(1).mean()
        return loss
