"""The ``store.deep_memory`` facade (placeholder until the Deep Memory issue fills it in)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel, StoreView
from llama_index_deepmemory.deep_memory.models import model_from_state

logger = logging.getLogger(__name__)


class DeepMemory:
    """Trains, evaluates and manages Deep Memory models for one store."""

    def __init__(self, store: StoreView) -> None:
        self._store = store
        self._models: dict[str, DeepMemoryModel] = {}
        self._active: str | None = None

    def active_model(self) -> DeepMemoryModel | None:
        """The model applied by ``query(..., deep_memory=True)``, or None."""
        return self._models.get(self._active) if self._active else None

    def require_active_model(self) -> DeepMemoryModel:
        """The active model, or a clear error saying how to get one."""
        model = self.active_model()
        if model is None:
            raise ValueError(
                "deep_memory=True was requested but this store has no active Deep Memory model. "
                "Train one with store.deep_memory.train(queries, relevance) (or activate one with "
                "store.deep_memory.set_model(name)), or query with deep_memory=False."
            )
        return model

    # --- persistence hooks used by the store --------------------------------------------
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything to persist: JSON metadata and named arrays (prefixed per model)."""
        meta: dict[str, Any] = {"active": self._active, "models": {}}
        arrays: dict[str, np.ndarray] = {}
        for name, model in self._models.items():
            m_meta, m_arrays = model.to_state()
            meta["models"][name] = m_meta
            for key, arr in m_arrays.items():
                arrays[f"{name}/{key}"] = arr
        return meta, arrays

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`to_state`."""
        self._models = {}
        for name, m_meta in meta.get("models", {}).items():
            prefix = f"{name}/"
            m_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            self._models[name] = model_from_state(m_meta, m_arrays)
        self._active = meta.get("active")
