"""What the ``deepmemory`` command and its ``chat``/``evaluate --answers`` part share: the one-line
:class:`UserError`, opening a store folder with its recorded embedding, and the option parsers.

Only the standard library is imported here (the store and the embedding model are imported when a
store is opened), so ``deepmemory --help`` stays fast. :mod:`llama_index_deepmemory.cli` and
:mod:`llama_index_deepmemory.chat.cli` both import it; neither imports the other's module at import.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

PROG = "deepmemory"
MANIFEST = "manifest.json"


class UserError(ValueError):
    """A problem the user can fix; printed as one line (a ValueError: bad input, like the others
    the command reports that way)."""


# --- the store folder -------------------------------------------------------------------------
def check_store_folder(path: str) -> Path:
    """The store folder, or a UserError saying why it cannot be loaded and what to do."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"no store at {root}: build one with `{PROG} ingest SOURCE --store {root}`")
    if not root.is_dir():
        raise UserError(f"--store {root} is a file, not a store folder; pass the folder given to `{PROG} ingest --store`")
    if not (root / MANIFEST).is_file():
        raise UserError(damage_message(root))
    return root


def damage_message(root: Path) -> str:
    """What is wrong with a folder that has no manifest, and the remedies."""
    snapshots = sorted(p.name for p in root.glob("gen-*") if p.is_dir())
    if snapshots:
        what = (f"{root} is a damaged store: {MANIFEST} is missing but {len(snapshots)} snapshot folder(s) "
                f"({snapshots[-1]}) with its nodes and any trained models are still there")
    elif any(root.iterdir()):
        what = f"{root} is not a store ({MANIFEST} is missing) and it is not empty"
    else:
        what = f"{root} is an empty folder, not a store"
    return (f"{what}; restore {MANIFEST} from a backup, choose another --store, or rebuild it with "
            f"`{PROG} ingest SOURCE --store {root} --replace` (deletes what is there)")


def read_settings(root: Path) -> str:
    """The embedding model spec the store was built with (``default`` when not recorded)."""
    from llama_index_deepmemory.embeddings import recorded_embedding

    try:
        return recorded_embedding(root) or "default"
    except ValueError as exc:
        raise UserError(str(exc)) from None


def open_store(path: str) -> tuple[Any, str]:
    """The persisted store (checksums verified, no embedding model yet) and its model spec."""
    root = check_store_folder(path)
    spec = read_settings(root)
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    return DeepMemoryVectorStore.from_persist_path(str(root), load_recorded_embedding=False), spec


def attach_embedding(store: Any, spec: str) -> Any:
    """Load the embedding model the store was built with and give it to the store."""
    store.embed_model = embed_model(spec)
    return store


def embed_model(spec: str) -> Any:
    """``default`` -> the bundled MiniLM; anything else -> a local folder or cached Hugging Face model."""
    from llama_index_deepmemory.embeddings import load_embedding

    return load_embedding(spec)


# --- argument parsing -------------------------------------------------------------------------
def _number(text: str, convert: Callable[[str], Any], accept: Callable[[Any], bool], expected: str,
            expected_range: str | None = None) -> Any:
    """``convert(text)`` when ``accept`` takes it, else argparse's one-line error naming the value."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected_range or expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda value: value >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda value: value >= 0, "an integer >= 0")


def fraction(text: str) -> float:
    return _number(text, float, lambda value: 0.0 < value < 1.0, "a number between 0 and 1",
                   "a number strictly between 0 and 1")


def positive_float(text: str) -> float:
    return _number(text, float, lambda value: 0.0 < value < float("inf"), "a positive number")
