"""Deep Memory models kept in a folder of their own (for stores whose vectors live in an engine).

The folder is a snapshot like a persisted store's (see :mod:`llama_index_deepmemory.persistence`):
versioned manifest, sha256 checksums, atomic generation switch, safetensors arrays, no pickle.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index_deepmemory import persistence

if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.api import DeepMemory

logger = logging.getLogger(__name__)

FOLDER_KIND = "llama-index-deepmemory/models"
FILES = ("models.json", "deep_memory.json", "deep_memory.safetensors")


def save(folder: str | os.PathLike, manager: "DeepMemory", engine: str) -> None:
    """Write ``manager``'s models, active model and job history to ``folder`` (atomically)."""
    meta, arrays = manager.to_state()
    persistence.write_generation(folder, {
        "models.json": lambda p: persistence.write_json(p, {"kind": FOLDER_KIND, "engine": engine}),
        "deep_memory.json": lambda p: persistence.write_json(p, meta),
        "deep_memory.safetensors": lambda p: persistence.write_arrays(p, arrays),
    })
    logger.info("saved Deep Memory models to %s", folder)


def load(folder: str | os.PathLike, manager: "DeepMemory") -> bool:
    """Load the models saved in ``folder`` into ``manager``; False when the folder holds none yet."""
    root = Path(folder)
    if not (root / persistence.MANIFEST).is_file():
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ValueError(
                f"model_dir {str(root)!r} exists but holds no Deep Memory models (no {persistence.MANIFEST}); "
                "name an empty or new folder, or the folder a previous run saved its models to"
            )
        return False
    with persistence.reading(root):
        gen, _ = persistence.open_generation(root, FILES)
        kind = persistence.read_json(gen / "models.json")
        if not isinstance(kind, dict) or kind.get("kind") != FOLDER_KIND:
            raise ValueError(
                f"{str(root)!r} is not a Deep Memory model folder (it may be a persisted store: load that "
                "with DeepMemoryVectorStore.from_persist_path)"
            )
        meta = persistence.read_json(gen / "deep_memory.json")
        arrays = persistence.read_arrays(gen / "deep_memory.safetensors")
    try:
        manager.load_state(meta, arrays)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise persistence.CorruptStoreError(
            f"{str(gen)!r} holds an invalid Deep Memory state: {type(exc).__name__}: {exc}"
        ) from None
    return True
