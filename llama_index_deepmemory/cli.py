"""The ``deepmemory`` command: ingest docs, generate questions, train, evaluate, query, demo.

Only the standard library is imported at module level so that ``deepmemory --help`` is fast;
each subcommand imports what it needs. User errors (bad paths, bad arguments, missing API key)
print one line and exit with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

PROG = "deepmemory"
DEFAULT_STORE = "storage/deepmemory"
SIDE_FILE = "deepmemory-cli.json"  # beside the store's manifest: which embedding model built it
SIDE_FILE_VERSION = 1
USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


# --- helpers shared by subcommands ------------------------------------------------------------
def _embed_model(spec: str) -> Any:
    """``default`` -> the bundled MiniLM; anything else -> a local folder or Hugging Face model name."""
    from llama_index_deepmemory.embeddings import default_embedding

    if spec == "default":
        return default_embedding()
    return default_embedding(model_name=spec)


def _cache_dir(args: argparse.Namespace) -> Path | None:
    from llama_index_deepmemory.embeddings import default_cache_dir

    if args.no_cache:
        return None
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _open_store(path: str) -> Any:
    """Load a persisted store with the embedding model it was built with."""
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    root = Path(path)
    if not (root / "manifest.json").is_file():
        raise UserError(f"no store at {root}: build one with `{PROG} ingest SOURCE --store {root}`")
    spec = "default"
    side = root / SIDE_FILE
    if side.is_file():
        info = json.loads(side.read_text("utf-8"))
        if not isinstance(info, dict) or info.get("format_version") != SIDE_FILE_VERSION:
            raise UserError(f"{side} is not a version {SIDE_FILE_VERSION} {PROG} settings file; upgrade the package")
        spec = str(info.get("embed_model", "default"))
    return DeepMemoryVectorStore.from_persist_path(str(root), embed_model=_embed_model(spec))


def _save_store(store: Any, path: str, embed_spec: str | None = None) -> None:
    from llama_index_deepmemory.persistence import write_json_atomic

    store.persist(persist_path=path)
    if embed_spec is not None:
        write_json_atomic(Path(path) / SIDE_FILE, {"format_version": SIDE_FILE_VERSION, "embed_model": embed_spec})


def _load_questions(path: str) -> Any:
    from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset

    if not Path(path).is_file():
        raise UserError(f"question file {path} not found: create it with `{PROG} generate` (or the demo)")
    return EmbeddingQAFinetuneDataset.from_json(path)


def _print_table(frame: Any, percent: bool = False) -> None:
    if percent:
        print((frame * 100).round(1).to_string())
    else:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- subcommands ------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> None:
    """HTML folder or URL -> chunked, embedded, persisted store."""
    from llama_index_deepmemory.data.html import load_html_documents
    from llama_index_deepmemory.demo import build_store, chunk_documents

    if (Path(args.store) / "manifest.json").exists() and not args.replace:
        raise UserError(f"a store already exists at {args.store}; pass --replace to rebuild it or choose another --store")
    start = time.perf_counter()
    documents = load_html_documents(
        args.source, max_pages=args.max_pages, max_depth=args.max_depth, exclude=args.exclude, show_progress=not args.quiet
    )
    if not documents:
        raise UserError(f"no HTML pages loaded from {args.source}")
    nodes = chunk_documents(documents, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
    store = build_store(nodes, _embed_model(args.embed_model), cache_dir=_cache_dir(args), show_progress=not args.quiet)
    _save_store(store, args.store, embed_spec=args.embed_model)
    print(f"Stored {len(store)} nodes from {len(documents)} pages in {args.store} ({time.perf_counter() - start:.1f}s).")


def cmd_generate(args: argparse.Namespace) -> None:
    """Questions for the stored nodes with an LLM -> train/test EmbeddingQAFinetuneDataset JSON."""
    from llama_index_deepmemory.data.ids import split_nodes
    from llama_index_deepmemory.data.questions import generate_question_context_pairs
    from llama_index_deepmemory.demo import openai_llm

    store = _open_store(args.store)
    nodes = sorted(store.get_nodes(), key=lambda n: n.node_id)
    if args.max_nodes:
        nodes = nodes[: args.max_nodes]
    llm = openai_llm(args.llm_model)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_nodes, test_nodes = split_nodes(nodes, train_fraction=1.0 - args.test_fraction, seed=args.seed)
    for name, part in (("train", train_nodes), ("test", test_nodes)):
        if not part:
            continue
        path = out / f"{name}_dataset.json"
        dataset = generate_question_context_pairs(
            part, llm=llm, num_questions_per_chunk=args.questions_per_chunk, num_workers=args.workers,
            output_path=path, show_progress=not args.quiet,
        )
        dataset.save_json(path)
        print(f"Wrote {len(dataset.queries)} {name} questions to {path}")


def cmd_train(args: argparse.Namespace) -> None:
    """Train Deep Memory on a question dataset or a query log and save the store."""
    from llama_index_deepmemory.data.questions import create_query_relevance

    store = _open_store(args.store)
    if args.questions:
        queries, relevance = create_query_relevance(_load_questions(args.questions))
    else:
        from llama_index_deepmemory.data.datasets import read_query_log

        queries, relevance = read_query_log(args.query_log)
    given = {"epochs": args.epochs, "learning_rate": args.learning_rate, "seed": args.seed}
    options = {name: value for name, value in given.items() if value is not None}
    store.deep_memory.train(queries, relevance, **options)
    if args.always_activate and store.deep_memory.get_model() is None:
        newest = store.deep_memory.list_models()[-1]["name"]
        store.deep_memory.set_model(newest)
        print(f"Activated {newest} although it did not beat the plain store on validation (--always-activate).")
    _save_store(store, args.store)
    print(f"Saved {args.store}; active Deep Memory model: {store.deep_memory.get_model() or 'none'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Recall@k and RetrieverEvaluator metrics with and without Deep Memory."""
    from llama_index.core import VectorStoreIndex

    from llama_index_deepmemory.evaluation import evaluate_retrievers, plot_recall_at_k, recall_curves

    store = _open_store(args.store)
    dataset = _load_questions(args.questions)
    wanted = sorted({node_id for ids in dataset.relevant_docs.values() for node_id in ids})
    missing = store.missing_ids(wanted)
    if missing:
        raise UserError(
            f"{args.questions} refers to {len(missing)} node ids that are not in {args.store} (e.g. {missing[:3]}); "
            "was it written for another store?"
        )
    index = VectorStoreIndex.from_vector_store(store, embed_model=store.embed_model)
    modes = {"without deep memory": False}
    if store.deep_memory.get_model() is not None:
        modes["with deep memory"] = True
    else:
        print("No active Deep Memory model in this store: showing the plain store only (train first).")

    def retrievers(k: int) -> dict[str, Any]:
        return {
            name: index.as_retriever(similarity_top_k=k, vector_store_kwargs={"deep_memory": dm})
            for name, dm in modes.items()
        }

    max_k = max(args.recall_k)
    curves = recall_curves(retrievers(max_k), dataset, ks=range(1, max_k + 1), workers=args.workers, show_progress=not args.quiet)
    print(f"\nRecall@k (%) on {len(dataset.queries)} questions:")
    _print_table(curves.loc[sorted(set(args.recall_k))], percent=True)
    table = evaluate_retrievers(
        retrievers(args.top_k), dataset, metrics=args.metrics, workers=args.workers, show_progress=not args.quiet
    )
    print(f"\nRetrieverEvaluator (top {args.top_k}):")
    _print_table(table)
    if args.plot:
        print(f"\nRecall@k plot: {plot_recall_at_k(curves, args.plot)}")


def cmd_query(args: argparse.Namespace) -> None:
    """Top-k nodes for a query, with Deep Memory when the store has an active model."""
    from llama_index.core import VectorStoreIndex

    store = _open_store(args.store)
    use_dm = args.deep_memory if args.deep_memory is not None else store.deep_memory.get_model() is not None
    index = VectorStoreIndex.from_vector_store(store, embed_model=store.embed_model)
    retriever = index.as_retriever(similarity_top_k=args.top_k, vector_store_kwargs={"deep_memory": use_dm})
    results = retriever.retrieve(args.text)
    print(f"Top {len(results)} for {args.text!r} ({'with' if use_dm else 'without'} Deep Memory):")
    print(f"{'rank':>4}  {'score':>6}  {'node id':<24}  text")
    for rank, scored in enumerate(results, start=1):
        print(f"{rank:>4}  {scored.score or 0.0:>6.3f}  {scored.node.node_id:<24}  {_shorten(scored.node.get_content(), 90)}")


def cmd_demo(args: argparse.Namespace) -> None:
    """The whole pipeline offline on Python's docs (or --docs)."""
    from llama_index_deepmemory.demo import run_demo

    train_options = {"epochs": args.epochs} if args.epochs else None
    run_demo(
        args.docs, questions=args.questions, max_nodes=args.max_nodes, test_fraction=args.test_fraction,
        seed=args.seed, cache_dir=args.cache_dir, use_cache=not args.no_cache, out_dir=args.out_dir,
        llm_model=args.llm_model, train_options=train_options, show_progress=not args.quiet,
    )


# --- argument parsing -------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, store: bool = True) -> None:
    if store:
        parser.add_argument("--store", default=DEFAULT_STORE, help=f"store folder (default: {DEFAULT_STORE})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="embedding cache folder (default: ~/.cache/llama_index_deepmemory)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (standard library only)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Local Deep Memory for LlamaIndex: build a FAISS store from HTML docs, train a query "
        "adapter on questions, and compare retrieval with and without it.",
        epilog=f"Start with `{PROG} demo` (offline, Python's docs) or `{PROG} ingest URL --store DIR`.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("ingest", help="load an HTML folder or URL into a persisted store", description=cmd_ingest.__doc__)
    p.add_argument("source", help="HTML folder, .html file or http(s) URL to crawl")
    _add_common(p)
    p.add_argument("--chunk-size", type=_positive_int, default=256, help="tokens per chunk (default 256, MiniLM's window)")
    p.add_argument("--chunk-overlap", type=int, default=20, help="token overlap between chunks (default 20)")
    p.add_argument("--max-pages", type=_positive_int, default=500, help="most pages loaded (default 500)")
    p.add_argument("--max-depth", type=int, default=2, help="links followed from a start URL (default 2)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out matching paths (repeatable)")
    p.add_argument("--embed-model", default="default", help="'default' (bundled MiniLM) or a local/HF model name")
    p.add_argument("--replace", action="store_true", help="rebuild an existing store")
    _add_cache(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("generate", help="write LLM-generated questions for the stored nodes", description=cmd_generate.__doc__)
    _add_common(p)
    p.add_argument("--out-dir", default=".", help="where train_dataset.json and test_dataset.json go (default: .)")
    p.add_argument("--llm-model", default="gpt-4o-mini",
                   help="OpenAI model (needs OPENAI_API_KEY; OPENAI_API_BASE for a compatible server)")
    p.add_argument("--questions-per-chunk", type=_positive_int, default=1)
    p.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="share of nodes whose questions are held out (default 0.2)")
    p.add_argument("--max-nodes", type=_positive_int, help="ask about at most this many nodes")
    p.add_argument("--workers", type=_positive_int, default=4, help="concurrent LLM requests (default 4)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train Deep Memory and save it in the store", description=cmd_train.__doc__)
    _add_common(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--questions", help="EmbeddingQAFinetuneDataset JSON (e.g. train_dataset.json)")
    source.add_argument("--query-log", help="query log (.jsonl or .csv with query and relevant_ids)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--always-activate", action="store_true",
                   help="activate the new model even if it does not beat the plain store on validation")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="compare retrieval with and without Deep Memory", description=cmd_evaluate.__doc__)
    _add_common(p)
    p.add_argument("--questions", required=True, help="EmbeddingQAFinetuneDataset JSON (e.g. test_dataset.json)")
    p.add_argument("--top-k", type=_positive_int, default=10, help="retriever top-k for the evaluator metrics (default 10)")
    p.add_argument("--metrics", nargs="+", default=["hit_rate", "mrr"], help="of hit_rate mrr precision recall ap ndcg")
    p.add_argument("--recall-k", nargs="+", type=_positive_int, default=[1, 3, 5, 10, 50, 100],
                   help="k values of the recall table")
    p.add_argument("--plot", help="write the recall@k curves (k = 1..max recall-k) to this PNG")
    p.add_argument("--workers", type=_positive_int, default=8, help="queries in flight (default 8)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("query", help="show the top nodes for a question", description=cmd_query.__doc__)
    p.add_argument("text", help="the question")
    _add_common(p)
    p.add_argument("--top-k", type=_positive_int, default=5)
    dm = p.add_mutually_exclusive_group()
    dm.add_argument("--deep-memory", dest="deep_memory", action="store_true", default=None,
                    help="use Deep Memory (default when trained)")
    dm.add_argument("--no-deep-memory", dest="deep_memory", action="store_false", help="plain vector search")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("demo", help="run the whole pipeline offline on Python's docs", description=cmd_demo.__doc__)
    p.add_argument("--docs", help="HTML folder or URL (default: /usr/share/doc/python3.11/html from python3.11-doc)")
    p.add_argument("--questions", choices=("auto", "faq", "openai"), default="auto",
                   help="faq: the docs' FAQ headings; openai: LLM questions; auto: openai when OPENAI_API_KEY is set")
    p.add_argument("--max-nodes", type=_positive_int, default=1000,
                   help="corpus size cap (default 1000: about 2 min to embed on 2 free cores)")
    p.add_argument("--test-fraction", type=_fraction, default=0.3, help="held-out share of the questions (default 0.3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=_positive_int, help="Deep Memory training epochs")
    p.add_argument("--out-dir", default="deepmemory-demo", help="plot, store and datasets go here (default: deepmemory-demo)")
    p.add_argument("--llm-model", default="gpt-4o-mini")
    _add_cache(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UserError, *USER_ERRORS) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
