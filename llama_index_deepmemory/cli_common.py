"""What the ``deepmemory`` command and its ``chat``/``evaluate --answers`` part share: the one-line
:class:`UserError`, opening a store folder with its recorded embedding, and the option parsers.

Only the standard library is imported here (the store and the embedding model are imported when a
store is opened), so ``deepmemory --help`` stays fast. :mod:`llama_index_deepmemory.cli` and
:mod:`llama_index_deepmemory.chat.cli` both import it; neither imports the other's module at import.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator

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


# --- shared by the subcommand modules (cli.py, cli_models.py, train_sources.py) ----------------
DEFAULT_STORE = "storage/deepmemory"
SIDE_FILE = "deepmemory-cli.json"  # beside the store's manifest: which embedding model built it
SIDE_FILE_VERSION = 1
LOG_HELP = (
    "query log: .jsonl lines {\"query\": ..., \"relevant_ids\": [...]} or .csv with columns query, "
    "relevant_ids (ids separated by ';') and optional weight"
)


def save_store(store: Any, path: str, embed_spec: str | None = None) -> None:
    from llama_index_deepmemory.persistence import write_json_atomic

    store.persist(persist_path=path)
    if embed_spec is not None:
        write_json_atomic(Path(path) / SIDE_FILE, {"format_version": SIDE_FILE_VERSION, "embed_model": embed_spec})


# --- relevance inputs (train and evaluate read the same ones) ----------------------------------
def read_relevance(args: argparse.Namespace) -> tuple[list[str], list[list[tuple[str, float]]], str]:
    """``(queries, relevance, description)`` from ``--questions``, ``--query-log`` or ``--beir``."""
    if args.questions:
        from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset, create_query_relevance

        if not Path(args.questions).is_file():
            raise UserError(f"question file {args.questions} not found: create it with `{PROG} generate` (or the demo)")
        queries, relevance = create_query_relevance(EmbeddingQAFinetuneDataset.from_json(args.questions))
        return queries, [[(i, float(w)) for i, w in pairs] for pairs in relevance], args.questions
    if args.query_log:
        from llama_index_deepmemory.data.datasets import read_query_log

        logs = args.query_log if isinstance(args.query_log, list) else [args.query_log]  # evaluate: several
        for log in logs:
            if not Path(log).is_file():
                raise UserError(f"query log {log} not found; {LOG_HELP}")
        queries, relevance = read_query_log(logs)
        return queries, relevance, " + ".join(logs)
    from llama_index_deepmemory.data.datasets import load_beir

    if not Path(args.beir).is_dir():
        raise UserError(f"BEIR folder {args.beir} not found (it holds corpus.jsonl, queries.jsonl and qrels/*.tsv)")
    beir = load_beir(args.beir)
    queries, relevance = beir.query_relevance(args.split)
    if not queries:
        raise UserError(f"split {args.split!r} of {args.beir} judges no queries; choose another --split ({beir.splits})")
    return queries, relevance, f"{args.beir} ({args.split} split)"


def describe_job(job: dict[str, Any]) -> str:
    """What a trained model contains and the validation score the gate used."""
    from llama_index_deepmemory.evaluation import gate_scores, model_contents

    scores = gate_scores(job.get("val_before") or {}, job.get("val_after") or {})
    return model_contents(job.get("info") or {}) + (f"; {scores}" if scores else "")


_SET_MODEL_HINT = re.compile(r"store\.deep_memory\.set_model\((['\"])([^'\"]+)\1\)")


def for_cli(text: str) -> str:
    """The library's hints for Python users (``store.deep_memory.set_model('model_3')``) as the
    command that does the same here (``deepmemory activate model_3``)."""
    return _SET_MODEL_HINT.sub(lambda m: f"`{PROG} activate {m.group(2)}`", text)


@contextlib.contextmanager
def captured_stdout() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


def save_models(store: Any, path: str) -> None:
    """Make the models' change durable: a store loaded from a folder records each change there as
    it happens (so commands on one store at once keep every model); a store written before that
    layout is persisted (converting it; refused if another command changed it meanwhile)."""
    if store.deep_memory.location is None:
        save_store(store, path)


def add_embed_model_override(parser: argparse.ArgumentParser) -> None:
    """``--embed-model`` for commands that open a store (``query``, ``chat``)."""
    parser.add_argument("--embed-model", default=None,
                        help="embed queries with this model instead of the one the store was built with ('default', "
                        "a local model folder, or a cached Hugging Face model name; default: the store's own)")


def add_common(parser: argparse.ArgumentParser, store: bool = True) -> None:
    if store:
        parser.add_argument("--store", default=DEFAULT_STORE, help=f"store folder (default: {DEFAULT_STORE})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (default: shown)")
