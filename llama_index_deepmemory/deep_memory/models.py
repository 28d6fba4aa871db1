"""Deep Memory model classes (numpy at query time) and their safe state round trip."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from llama_index_deepmemory.deep_memory.base import DeepMemoryModel

logger = logging.getLogger(__name__)

# kind -> class; every persisted model names its kind in its metadata
MODEL_KINDS: dict[str, type[DeepMemoryModel]] = {DeepMemoryModel.kind: DeepMemoryModel}


def register_model(cls: type[DeepMemoryModel]) -> type[DeepMemoryModel]:
    """Class decorator: make a model kind loadable by :func:`model_from_state`."""
    MODEL_KINDS[cls.kind] = cls
    return cls


def model_from_state(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DeepMemoryModel:
    """Rebuild a model from :meth:`DeepMemoryModel.to_state` output, refusing unknown kinds."""
    kind = meta.get("kind")
    cls = MODEL_KINDS.get(str(kind))
    if cls is None:
        raise ValueError(
            f"unknown Deep Memory model kind {kind!r}; known kinds: {sorted(MODEL_KINDS)}. "
            "The store was probably written by a newer llama-index-deepmemory: upgrade the package."
        )
    return cls.from_state(meta, arrays)
