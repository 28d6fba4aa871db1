"""The ``deepmemory`` command: ingest docs, generate questions, train, evaluate, query, manage models, demo.

Only the standard library is imported at module level so that ``deepmemory --help`` is fast;
each subcommand imports what it needs, and checks its inputs (the store folder, query files, the
embedding model's name) before it loads the embedding model, which takes seconds. User errors
(bad paths, bad arguments, missing API key, a damaged store) print one line naming the value and
the fix and exit with code 2; ``--debug`` shows the traceback instead.

Adding a subcommand: write ``cmd_NAME(args)`` and ``_add_NAME(sub)`` (which calls
``sub.add_parser`` and ``set_defaults(func=cmd_NAME)``), and append ``_add_NAME`` to
:data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from llama_index_deepmemory.cli_common import (  # shared with chat/cli.py (stdlib only at import)
    MANIFEST,
    PROG,
    UserError,
)
from llama_index_deepmemory.cli_common import LOG_HELP  # shared with cli_models and train_sources
from llama_index_deepmemory.cli_common import non_negative_int as _non_negative_int
from llama_index_deepmemory.cli_common import save_store as _save_store
from llama_index_deepmemory.cli_common import save_models as _save_models
from llama_index_deepmemory.cli_common import read_relevance as _read_relevance
from llama_index_deepmemory.cli_common import describe_job as _describe_job
from llama_index_deepmemory.cli_common import for_cli as _for_cli
from llama_index_deepmemory.cli_common import captured_stdout as _captured_stdout
from llama_index_deepmemory.cli_common import add_common as _add_common
from llama_index_deepmemory.cli_common import add_embed_model_override as _add_embed_model_override
from llama_index_deepmemory.cli_common import attach_embedding as _attach_embedding
from llama_index_deepmemory.cli_common import check_store_folder as _check_store_folder
from llama_index_deepmemory.cli_common import damage_message as _damage_message
from llama_index_deepmemory.cli_common import embed_model as _embed_model
from llama_index_deepmemory.cli_common import fraction as _fraction
from llama_index_deepmemory.cli_common import open_store as _open_store
from llama_index_deepmemory.cli_common import positive_float as _positive_float
from llama_index_deepmemory.cli_common import positive_int as _positive_int

logger = logging.getLogger(__name__)

USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
# defaults of TrainOptions shown in --help (tests/cli/test_cli.py checks they match the library)
TRAIN_DEFAULTS = {"epochs": 40, "learning_rate": 2e-3, "seed": 0}



def _cache_dir(args: argparse.Namespace) -> Path | None:
    from llama_index_deepmemory.embeddings import default_cache_dir

    if args.no_cache:
        return None
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _check_ids_in_store(store: Any, relevance: Sequence[Sequence[tuple[str, float]]], source: str, store_path: str) -> None:
    wanted = sorted({node_id for pairs in relevance for node_id, _ in pairs})
    missing = store.missing_ids(wanted)
    if missing:
        raise UserError(
            f"{source} refers to {len(missing)} node ids that are not in {store_path} (e.g. {missing[:3]}); "
            f"was it written for another store? `{PROG} query` shows the stored ids"
        )


# --- output helpers ---------------------------------------------------------------------------
def _print_table(frame: Any, percent: bool = False) -> None:
    if percent:
        print((frame * 100).round(1).to_string())
    else:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _shorten(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _source_of(node: Any) -> str:
    """Where a node came from: its page title and URL/path (whatever its metadata has)."""
    meta = getattr(node, "metadata", None) or {}
    where = next((str(meta[k]) for k in ("url", "path", "source", "file_name", "file_path") if meta.get(k)), "")
    title = str(meta.get("title") or "")
    if title and where:
        return f"{title} ({where})"
    return title or where or "-"


def _format_results(results: Sequence[Any], width: int = 100) -> list[str]:
    """Rows of rank, score, node id and source, each followed by an indented text excerpt;
    columns sized to the longest id/source so long ids never push the others out of line."""
    rows = [(str(rank), f"{scored.score or 0.0:.3f}", scored.node.node_id, _shorten(_source_of(scored.node), 60))
            for rank, scored in enumerate(results, start=1)]
    headers = ("rank", "score", "node id", "source")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i < 2 else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))).rstrip()]
    for row, scored in zip(rows, results):
        lines.append("  ".join(c.rjust(w) if i < 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        lines.append(" " * (widths[0] + 2) + _shorten(scored.node.get_content(), width))
    return lines


# --- subcommands ------------------------------------------------------------------------------
def _is_beir_folder(source: str) -> bool:
    """A folder with ``corpus.jsonl`` is meant as BEIR (``load_beir`` then names any file it lacks)."""
    folder = Path(source)
    return folder.is_dir() and (folder / "corpus.jsonl").is_file()


def _check_new_store_path(path: str, replace: bool) -> None:
    """Refuse to overwrite anything at ``path`` unless ``--replace`` was given."""
    root = Path(path)
    if replace or not root.exists():
        return
    if not root.is_dir():
        raise UserError(f"--store {root} is a file; choose another --store")
    if (root / MANIFEST).exists():
        raise UserError(f"a store already exists at {root}; pass --replace to rebuild it or choose another --store")
    if any(root.iterdir()):
        raise UserError(_damage_message(root))


def _drop_orphan_snapshots(path: str) -> None:
    """``--replace`` over a damaged store (snapshot folders but no manifest): delete its snapshots,
    which the library refuses to write over, once the new store is built and ready to persist."""
    import shutil

    root = Path(path)
    if root.is_dir() and not (root / MANIFEST).exists():
        for snapshot in [*root.glob("gen-*"), *root.glob("dm-*")]:  # nodes, and the models beside them
            if snapshot.is_dir():
                logger.info("--replace: deleting %s of the damaged store", snapshot)
                shutil.rmtree(snapshot)


def cmd_ingest(args: argparse.Namespace) -> None:
    """HTML folder or URL (or a BEIR folder: one node per document) -> embedded, persisted store."""
    from llama_index_deepmemory.embeddings import check_embedding_spec

    _check_new_store_path(args.store, args.replace)
    check_embedding_spec(args.embed_model)
    remote = args.source.startswith(("http://", "https://"))
    if not remote and not Path(args.source).exists():
        raise UserError(f"source {args.source} does not exist; pass an HTML folder, an .html file, a BEIR folder or an http(s) URL")
    start = time.perf_counter()
    if _is_beir_folder(args.source):
        from llama_index_deepmemory.data.datasets import load_beir

        nodes = load_beir(args.source, splits=[]).nodes()
        what = f"{len(nodes)} documents of the BEIR folder {args.source}"
    else:
        from llama_index_deepmemory.data.html import load_html_documents
        from llama_index_deepmemory.demo import chunk_documents

        documents = load_html_documents(
            args.source, max_pages=args.max_pages, max_depth=args.max_depth, exclude=args.exclude, show_progress=not args.quiet
        )
        if not documents:
            raise UserError(f"no HTML pages loaded from {args.source}")
        nodes = chunk_documents(documents, chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap)
        what = f"{len(documents)} pages"
    from llama_index_deepmemory.demo import build_store

    store = build_store(nodes, _embed_model(args.embed_model), cache_dir=_cache_dir(args), show_progress=not args.quiet)
    if args.replace:
        _drop_orphan_snapshots(args.store)
    _save_store(store, args.store, embed_spec=args.embed_model)
    print(f"Stored {len(store)} nodes from {what} in {args.store} ({time.perf_counter() - start:.1f}s).")


def cmd_generate(args: argparse.Namespace) -> None:
    """Questions for the stored nodes with an LLM -> train/test EmbeddingQAFinetuneDataset JSON."""
    from llama_index_deepmemory.demo import GENERATE_WITHOUT_KEY, QUESTION_LLM_RETRIES, openai_llm

    _check_store_folder(args.store)
    llm = openai_llm(args.llm_model, GENERATE_WITHOUT_KEY, purpose="`generate` (questions written by an LLM)",
                     max_retries=QUESTION_LLM_RETRIES)
    store, _ = _open_store(args.store)
    from llama_index_deepmemory.data.ids import split_nodes
    from llama_index_deepmemory.data.questions import QuestionGenerationError, generate_question_context_pairs

    nodes = sorted(store.get_nodes(), key=lambda n: n.node_id)
    if args.max_nodes:
        nodes = nodes[: args.max_nodes]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_nodes, test_nodes = split_nodes(nodes, train_fraction=1.0 - args.test_fraction, seed=args.seed)
    unanswered: list[str] = []
    for name, part in (("train", train_nodes), ("test", test_nodes)):
        if not part:
            continue
        path = out / f"{name}_dataset.json"
        try:
            dataset = generate_question_context_pairs(
                part, llm=llm, num_questions_per_chunk=args.questions_per_chunk, num_workers=args.workers,
                output_path=path, show_progress=not args.quiet,
            )
        except QuestionGenerationError as exc:  # the questions so far are saved in `path`
            raise UserError(f"{exc} (questions so far are kept in {path}; the same command resumes)") from exc
        dataset.save_json(path)
        print(f"Wrote {len(dataset.queries)} {name} questions to {path}")
        answered = {node_id for ids in dataset.relevant_docs.values() for node_id in ids}
        missing = [node.node_id for node in part if node.node_id not in answered and dataset.corpus[node.node_id].strip()]
        if missing:
            unanswered.append(f"{len(missing)} of {len(part)} {name} nodes (e.g. {', '.join(missing[:3])})")
    if unanswered:  # exit 0 would claim a complete dataset; the saved files let the same command resume
        raise UserError(
            f"the LLM gave no questions for {'; '.join(unanswered)} after every retry; the questions so far are "
            f"saved in {out}, and the same command asks again for the missing nodes only"
        )


def cmd_train(args: argparse.Namespace) -> None:
    """Train Deep Memory on question datasets, query logs and/or a BEIR split (merged), plus the data the
    active model was trained on (unless --fresh), and save the store."""
    from llama_index_deepmemory import train_sources

    _check_store_folder(args.store)
    sources = train_sources.read_sources(args)
    store, spec = _open_store(args.store)
    for source, _, relevance in sources:
        _check_ids_in_store(store, relevance, source, args.store)
    previous = train_sources.previous_data(store, args.fresh)
    queries, relevance, source = train_sources.merged(sources + ([previous] if previous else []))
    print(f"Training on {source}.")
    _attach_embedding(store, spec)
    given = {"epochs": args.epochs, "learning_rate": args.learning_rate, "seed": args.seed}
    options = {name: value for name, value in given.items() if value is not None}
    from llama_index_deepmemory.deep_memory.api import DeepMemoryTrainingError

    with _captured_stdout() as summary:
        try:
            job_id = store.deep_memory.train(queries, relevance, **options)
        except DeepMemoryTrainingError as exc:  # the store on disk is unchanged
            raise UserError(f"{exc} {args.store} was not changed.") from exc
    with _captured_stdout():
        job = store.deep_memory.status(job_id)
    model = job.get("model_name")
    if args.always_activate and model and store.deep_memory.get_model() != model:
        store.deep_memory.set_model(model)
        print(f"Deep Memory job {job_id} completed: {model} did not beat the plain store on validation, "
              "activated anyway (--always-activate).")
    else:
        print(_for_cli(summary.getvalue().strip()))
    if model:
        print(f"{model}: {_describe_job(job)}")
    _save_models(store, args.store)
    print(f"Saved {args.store}; active Deep Memory model: {store.deep_memory.get_model() or 'none'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Recall@k and RetrieverEvaluator metrics with and without Deep Memory."""
    from llama_index_deepmemory.evaluation import check_metrics

    check_metrics(args.metrics)
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UserError(f"--plot {args.plot} must end with .png")
    _check_store_folder(args.store)
    queries, relevance, source = _read_relevance(args)
    store, spec = _open_store(args.store)
    _check_ids_in_store(store, relevance, source, args.store)

    from llama_index.core import VectorStoreIndex

    from llama_index_deepmemory.data.questions import dataset_from_query_relevance
    from llama_index_deepmemory.evaluation import evaluate_retrievers, plot_recall_at_k, recall_curves

    dataset = dataset_from_query_relevance(queries, relevance)
    _attach_embedding(store, spec)
    index = VectorStoreIndex.from_vector_store(store, embed_model=store.embed_model)
    modes = {"without deep memory": False}
    if store.deep_memory.get_model() is not None:
        modes["with deep memory"] = True
    else:
        print(f"No active Deep Memory model in this store: showing the plain store only (`{PROG} models` lists kept ones).")

    def retrievers(k: int) -> dict[str, Any]:
        return {
            name: index.as_retriever(similarity_top_k=k, vector_store_kwargs={"deep_memory": dm})
            for name, dm in modes.items()
        }

    asked = sorted(set(args.recall_k))
    depth = max(1, min(asked[-1], len(store)))  # a list never holds more than the store: k above that adds nothing
    curve_ks = sorted(set(range(1, depth + 1)) | set(asked))
    curves = recall_curves(retrievers(depth), dataset, ks=curve_ks, workers=args.workers, show_progress=not args.quiet)
    print(f"\nRecall@k (%) on {len(dataset.queries)} queries from {source}:")
    _print_table(curves.loc[asked], percent=True)
    if asked[-1] > depth:
        print(f"(the store holds {len(store)} nodes: recall@k for k >= {len(store)} is recall@{len(store)})")
    table = evaluate_retrievers(
        retrievers(args.top_k), dataset, metrics=args.metrics, workers=args.workers, show_progress=not args.quiet
    )
    print(f"\nRetrieverEvaluator (top {args.top_k}):")
    _print_table(table)
    if args.plot:
        print(f"\nRecall@k plot: {plot_recall_at_k(curves, args.plot)}")


def _query_texts(args: argparse.Namespace) -> Iterator[str] | None:
    """The queries to answer: the positional text, the lines of ``--file`` (``-``: stdin), or
    stdin's lines when it is not a terminal; None means interactive."""
    if args.text is not None and args.file is not None:
        raise UserError("give a query text or --file, not both")
    if args.text is not None:
        if not args.text.strip():
            raise UserError("the query text is empty")
        return iter([args.text])
    if args.file == "-" or (args.file is None and not sys.stdin.isatty()):
        return (line.strip() for line in sys.stdin if line.strip())
    if args.file is not None:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"query file {path} not found (one query per line; `-` reads stdin)")
        lines = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
        if not lines:
            raise UserError(f"query file {path} has no queries (one query per line)")
        return iter(lines)
    return None


def _interactive() -> Iterator[str]:
    print("Type a question and press Enter; an empty line or Ctrl-D quits.", file=sys.stderr)
    while True:
        try:
            line = input("query> ").strip()
        except EOFError:
            return
        if not line:
            return
        yield line


def cmd_query(args: argparse.Namespace) -> None:
    """Top-k nodes for one query, each line of a file or stdin, or interactively; with Deep Memory
    when the store has an active model. The embedding model loads once for all queries."""
    _check_store_folder(args.store)
    texts = _query_texts(args)
    store, spec = _open_store(args.store)
    active = store.deep_memory.get_model()
    if args.deep_memory and active is None:
        raise UserError(f"--deep-memory: {args.store} has no active Deep Memory model; train one or `{PROG} activate MODEL`")
    use_dm = args.deep_memory if args.deep_memory is not None else active is not None
    _attach_embedding(store, args.embed_model or spec)
    from llama_index.core import VectorStoreIndex

    index = VectorStoreIndex.from_vector_store(store, embed_model=store.embed_model)
    retriever = index.as_retriever(similarity_top_k=args.top_k, vector_store_kwargs={"deep_memory": use_dm})
    answered = 0
    for text in texts if texts is not None else _interactive():
        results = retriever.retrieve(text)
        mode = f"with Deep Memory ({active})" if use_dm else "without Deep Memory"
        print(("\n" if answered else "") + f"Top {len(results)} for {text!r} ({mode}):")
        print("\n".join(_format_results(results)), flush=True)
        answered += 1
    if texts is not None and not answered:
        raise UserError("no queries on stdin: pipe one query per line, pass the question, or use --file")


def cmd_demo(args: argparse.Namespace) -> None:
    """The whole pipeline offline on Python's docs (or --docs); an LLM writes the questions only with --llm."""
    from llama_index_deepmemory.data.questions import QuestionGenerationError
    from llama_index_deepmemory.demo import run_demo

    if args.llm and args.questions in ("faq", "auto"):
        raise UserError(f"--llm asks an LLM for the questions and --questions {args.questions} takes the FAQ's: give one of them")

    train_options = {"epochs": args.epochs} if args.epochs else None
    try:
        run_demo(
            args.docs, questions="openai" if args.llm else args.questions or "faq", max_nodes=args.max_nodes,
            test_fraction=args.test_fraction, seed=args.seed, cache_dir=args.cache_dir, use_cache=not args.no_cache,
            out_dir=args.out_dir, llm_model=args.llm_model, train_options=train_options, show_progress=not args.quiet,
        )
    except QuestionGenerationError as exc:  # --llm: a rejected key or an unreachable server
        raise UserError(str(exc)) from exc


# --- argument parsing -------------------------------------------------------------------------
def _add_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="embedding cache folder (default: $LLAMA_INDEX_DEEPMEMORY_CACHE or "
                        "~/.cache/llama_index_deepmemory)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache (default: use it)")


def _add_relevance_source(parser: argparse.ArgumentParser, split: str) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--questions", help="EmbeddingQAFinetuneDataset JSON (from `generate` or the demo)")
    source.add_argument("--query-log", action="append", metavar="LOG",
                        help=f"{LOG_HELP}; repeat it to read several logs as one (a query in two logs counts once)")
    source.add_argument("--beir", metavar="FOLDER", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv); "
                        "the store must have been built from it with `ingest FOLDER`")
    parser.add_argument("--split", default=split, help=f"qrels split read with --beir (default: {split})")


def _add_ingest(sub: Any) -> None:
    p = sub.add_parser("ingest", help="load an HTML folder, URL or BEIR folder into a persisted store", description=cmd_ingest.__doc__)
    p.add_argument("source", help="HTML folder, .html file, http(s) URL to crawl, or BEIR folder (with corpus.jsonl)")
    _add_common(p)
    p.add_argument("--chunk-size", type=_positive_int, default=256, help="tokens per chunk (default: 256, MiniLM's window)")
    p.add_argument("--chunk-overlap", type=_non_negative_int, default=20, help="token overlap between chunks (default: 20)")
    p.add_argument("--max-pages", type=_positive_int, default=500, help="most pages loaded (default: 500)")
    p.add_argument("--max-depth", type=int, default=2, help="links followed from a start URL (default: 2)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out matching paths (repeatable; default: none)")
    p.add_argument("--embed-model", default="default",
                   help="'default' (the bundled all-MiniLM-L6-v2), a local model folder, or a Hugging Face model "
                   "name already in the local cache (default: default)")
    p.add_argument("--replace", action="store_true", help="overwrite whatever is at --store (default: refuse)")
    _add_cache(p)
    p.set_defaults(func=cmd_ingest)


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="write LLM-generated questions for the stored nodes (needs an API key)",
                       description=cmd_generate.__doc__)
    _add_common(p)
    p.add_argument("--out-dir", default=".", help="where train_dataset.json and test_dataset.json go (default: .)")
    p.add_argument("--llm-model", default="gpt-4o-mini",
                   help="OpenAI model; needs OPENAI_API_KEY, and OPENAI_API_BASE for a compatible server (default: gpt-4o-mini)")
    p.add_argument("--questions-per-chunk", type=_positive_int, default=1, help="questions asked per node (default: 1)")
    p.add_argument("--test-fraction", type=_fraction, default=0.2,
                   help="share of nodes whose questions are held out (default: 0.2)")
    p.add_argument("--max-nodes", type=_positive_int, help="ask about at most this many nodes (default: all)")
    p.add_argument("--workers", type=_positive_int, default=4, help="concurrent LLM requests (default: 4)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/test split of the nodes (default: 42)")
    p.set_defaults(func=cmd_generate)


def _add_train(sub: Any) -> None:
    from llama_index_deepmemory.train_sources import add_arguments

    p = sub.add_parser("train", help="train Deep Memory and save it in the store", description=cmd_train.__doc__)
    _add_common(p)
    add_arguments(p, LOG_HELP, "train")
    p.add_argument("--epochs", type=_positive_int, help=f"most training epochs (default: {TRAIN_DEFAULTS['epochs']}, early stopping)")
    p.add_argument("--learning-rate", type=_positive_float, help=f"Adam learning rate (default: {TRAIN_DEFAULTS['learning_rate']})")
    p.add_argument("--seed", type=int, help=f"random seed of splits and initialisation (default: {TRAIN_DEFAULTS['seed']})")
    p.add_argument("--always-activate", action="store_true",
                   help="activate the new model even if it does not beat the plain store on validation (default: off)")
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="compare retrieval with and without Deep Memory", description=cmd_evaluate.__doc__)
    _add_common(p)
    _add_relevance_source(p, "test")
    p.add_argument("--top-k", type=_positive_int, default=10, help="retriever top-k for the evaluator metrics (default: 10)")
    p.add_argument("--metrics", nargs="+", default=["hit_rate", "mrr"],
                   help="any of hit_rate mrr precision recall ap ndcg (default: hit_rate mrr)")
    p.add_argument("--recall-k", nargs="+", type=_positive_int, default=[1, 3, 5, 10, 50, 100],
                   help="k values of the recall table (default: 1 3 5 10 50 100)")
    p.add_argument("--plot", help="write the recall@k curves (k = 1..max recall-k) to this PNG (default: no plot)")
    p.add_argument("--workers", type=_positive_int, default=8, help="queries in flight (default: 8)")
    p.set_defaults(func=cmd_evaluate)


def _add_query(sub: Any) -> None:
    p = sub.add_parser("query", help="show the top nodes for questions (one, a file, stdin or interactive)",
                       description=cmd_query.__doc__)
    p.add_argument("text", nargs="?", help="the question (default: read --file, piped stdin, or ask interactively)")
    _add_common(p)
    p.add_argument("--file", help="answer every line of this file (`-`: stdin) (default: none)")
    p.add_argument("--top-k", type=_positive_int, default=5, help="nodes shown per query (default: 5)")
    _add_embed_model_override(p)
    dm = p.add_mutually_exclusive_group()
    dm.add_argument("--deep-memory", dest="deep_memory", action="store_true", default=None,
                    help="use Deep Memory (default: when the store has an active model)")
    dm.add_argument("--no-deep-memory", dest="deep_memory", action="store_false", help="plain vector search")
    p.set_defaults(func=cmd_query)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline offline on Python's docs", description=cmd_demo.__doc__)
    p.add_argument("--docs", help="HTML folder or URL (default: /usr/share/doc/python3.11/html from python3.11-doc)")
    p.add_argument("--llm", action="store_true",
                   help="have an LLM write the questions (needs OPENAI_API_KEY, and OPENAI_API_BASE for a compatible "
                   "server); same as --questions openai (default: off: the docs' FAQ questions, offline, "
                   "even when OPENAI_API_KEY is set)")
    p.add_argument("--questions", choices=("faq", "openai", "auto"),
                   help="faq: the docs' FAQ headings, offline; openai: LLM questions (= --llm); auto: same as faq "
                   "(default: faq)")
    p.add_argument("--max-nodes", type=_positive_int, default=1000,
                   help="corpus size cap (default: 1000, about 2-3 min to embed on 2 cores)")
    p.add_argument("--test-fraction", type=_fraction, default=0.3, help="held-out share of the questions (default: 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the question split and of training (default: 0)")
    p.add_argument("--epochs", type=_positive_int, help=f"most Deep Memory training epochs (default: {TRAIN_DEFAULTS['epochs']})")
    p.add_argument("--out-dir", default="deepmemory-demo", help="plot, store and datasets go here (default: deepmemory-demo)")
    p.add_argument("--llm-model", default="gpt-4o-mini", help="OpenAI model for --llm (default: gpt-4o-mini)")
    _add_cache(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (default: shown)")
    p.set_defaults(func=cmd_demo)


def _add_model_commands(sub: Any) -> None:
    """``status``, ``models`` and ``activate`` (in :mod:`llama_index_deepmemory.cli_models`, stdlib-only at import)."""
    from llama_index_deepmemory.cli_models import register

    register(sub)


def _add_chat(sub: Any) -> None:
    """``chat``, and ``evaluate --answers`` (both in :mod:`llama_index_deepmemory.chat.cli`, stdlib-only at import)."""
    from llama_index_deepmemory.chat.cli import register

    register(sub)


# Each adds one subcommand; --help lists them in this order.
SUBCOMMANDS: list[Callable[[Any], None]] = [
    _add_ingest, _add_generate, _add_train, _add_evaluate, _add_query, _add_model_commands, _add_demo,
    _add_chat,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (standard library only)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Local Deep Memory for LlamaIndex: build a FAISS store from HTML docs or a BEIR folder, train a "
        "query adapter on questions or query logs, and compare retrieval with and without it.",
        epilog=f"Start with `{PROG} demo` (offline, Python's docs) or `{PROG} ingest SOURCE --store DIR`.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs (default: off)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _quiet_environment() -> None:
    """Silence every progress bar, including the embedding model's weight-loading bar."""
    from llama_index_deepmemory.embeddings import quiet_model_loading

    os.environ["TQDM_DISABLE"] = "1"
    quiet_model_loading()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    func: Callable[[argparse.Namespace], None] = args.func
    saved_tqdm = os.environ.get("TQDM_DISABLE")
    if getattr(args, "quiet", False):
        _quiet_environment()
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
    finally:
        if saved_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_tqdm
    return 0


if __name__ == "__main__":
    sys.exit(main())
