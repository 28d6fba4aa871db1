"""The whole Deep Memory pipeline, offline: docs -> nodes -> store -> training -> evaluation.

By default it uses Python's own HTML docs (Debian's ``python3.11-doc``): the FAQ answers plus
chunks of the tutorial and how-to pages (up to ``max_nodes``, so that embedding stays a couple
of minutes on two CPU cores), embedded with the bundled MiniLM. The queries are the FAQ's real
questions, whose text is not in the corpus, split into training and held-out test questions.
It never calls an LLM unless asked: with ``questions="openai"`` (``deepmemory demo --llm``) an LLM
(``OPENAI_API_KEY``) writes synthetic questions for the chunks instead, as the seed tutorial does;
that is also how other folders or URLs (``docs=``) get questions. ``OPENAI_API_KEY`` being set
changes nothing by itself. Embeddings are cached by content hash, so a second run skips re-embedding.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode

    from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset
    from llama_index_deepmemory.store import DeepMemoryVectorStore

logger = logging.getLogger(__name__)

DEFAULT_MAX_NODES = 1000
DEFAULT_DISTRACTOR_DIRS = ("tutorial", "howto")
DEFAULT_OUT_DIR = "deepmemory-demo"
DEFAULT_LLM_MODEL = "gpt-4o-mini"
REPORT_KS = (1, 3, 5, 10, 50, 100)
QUESTION_SOURCES = ("faq", "openai", "auto")  # "auto": the old default, now the same as "faq"
MIN_FAQ_QUESTIONS = 10


@dataclass
class DemoResult:
    """What one demo run produced."""

    question_source: str
    num_nodes: int
    num_train_queries: int
    num_test_queries: int
    recall: "pd.DataFrame"  # index k, columns "without deep memory" / "with deep memory"
    retrievers: "pd.DataFrame"  # display_results layout: retrievers, hit_rate, mrr
    plot_path: Path
    store_path: Path
    timings: dict[str, float] = field(default_factory=dict)


class _Stopwatch:
    """Named stage timings (seconds), printed at the end."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.timings[name] = now - self._start
        self._start = now
        return self.timings[name]


def chunk_documents(
    documents: Sequence[Any], chunk_size: int = 256, chunk_overlap: int = 20, show_progress: bool = False
) -> list["BaseNode"]:
    """Split documents with ``SentenceSplitter`` and give the chunks stable ids ``node_0``..."""
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index_deepmemory.data.ids import assign_stable_ids

    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    nodes = splitter.get_nodes_from_documents(documents, show_progress=show_progress)
    nodes = [node for node in nodes if node.get_content().strip()]
    return assign_stable_ids(nodes, prefix="node_")


def build_store(
    nodes: Sequence["BaseNode"],
    embed_model: "BaseEmbedding",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
) -> "DeepMemoryVectorStore":
    """Embed the nodes (reusing cached vectors) and add them to a new ``DeepMemoryVectorStore``."""
    from llama_index_deepmemory.embeddings import embed_nodes
    from llama_index_deepmemory.store import DeepMemoryVectorStore

    if not nodes:
        raise ValueError("no nodes to store: the documents produced no text")
    embed_nodes(nodes, embed_model, cache_dir=cache_dir, show_progress=show_progress)
    store = DeepMemoryVectorStore(embed_model=embed_model)
    store.add(list(nodes))
    return store


DEMO_WITHOUT_KEY = "or run the demo offline on the Python docs' FAQ questions (deepmemory demo, without --llm)"
GENERATE_WITHOUT_KEY = (
    "or, with no LLM at all, train on questions you already have: `deepmemory train --query-log FILE` "
    "(.jsonl or .csv) or `--beir FOLDER` (see the README's 'No API key' section)"
)


def openai_llm(model: str, without_key: str = "", *, purpose: str = "this", max_retries: int | None = None) -> Any:
    """LlamaIndex ``OpenAI`` LLM (``OPENAI_API_BASE`` for a compatible server); without a key a
    ValueError saying ``purpose`` needs an LLM, ending with ``without_key`` (what to do instead).
    ``max_retries``: the client's own retries (default: LlamaIndex's); callers that retry
    themselves (question generation) pass a small number so a dead server is noticed in seconds."""
    if not os.environ.get("OPENAI_API_KEY"):
        instead = f", {without_key}" if without_key else ""
        raise ValueError(
            f"{purpose} needs an LLM: set OPENAI_API_KEY (and OPENAI_API_BASE for an OpenAI-compatible server){instead}"
        )
    from llama_index.llms.openai import OpenAI

    retries = {} if max_retries is None else {"max_retries": max_retries}
    return OpenAI(model=model, api_base=os.environ.get("OPENAI_API_BASE") or None, **retries)


QUESTION_LLM_RETRIES = 1  # generate_question_context_pairs retries (and counts dead connections) itself


def _generate_datasets(
    nodes: Sequence["BaseNode"], test_fraction: float, seed: int, out_dir: Path, llm_model: str, show_progress: bool
) -> tuple["EmbeddingQAFinetuneDataset", "EmbeddingQAFinetuneDataset"]:
    """Seed-style synthetic questions: split the nodes, one LLM question per node on each side."""
    from llama_index_deepmemory.data.ids import split_nodes
    from llama_index_deepmemory.data.questions import generate_question_context_pairs

    llm = openai_llm(llm_model, DEMO_WITHOUT_KEY, purpose="questions written by an LLM (--llm)",
                     max_retries=QUESTION_LLM_RETRIES)
    train_nodes, test_nodes = split_nodes(nodes, train_fraction=1.0 - test_fraction, seed=seed)
    datasets = []
    for name, part in (("train", train_nodes), ("test", test_nodes)):
        datasets.append(
            generate_question_context_pairs(
                part, llm=llm, num_questions_per_chunk=1, num_workers=4, show_progress=show_progress,
                output_path=out_dir / f"{name}_dataset.json",
            )
        )
    return datasets[0], datasets[1]


def load_demo_data(
    docs: str | os.PathLike[str] | None,
    *,
    questions: str = "faq",
    max_nodes: int = DEFAULT_MAX_NODES,
    test_fraction: float = 0.3,
    seed: int = 0,
    out_dir: Path = Path(DEFAULT_OUT_DIR),
    llm_model: str = DEFAULT_LLM_MODEL,
    show_progress: bool = True,
) -> tuple[list["BaseNode"], "EmbeddingQAFinetuneDataset", "EmbeddingQAFinetuneDataset", str]:
    """The corpus nodes, train and test question datasets, and where the questions came from.

    ``questions="faq"`` (``"auto"`` is the same) takes the docs' FAQ questions, offline;
    ``"openai"`` asks an LLM, whether or not the folder has a FAQ."""
    if questions not in QUESTION_SOURCES:
        raise ValueError(f"questions must be one of {QUESTION_SOURCES}, got {questions!r}")
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 10:
        raise ValueError(f"max_nodes must be an int >= 10, got {max_nodes!r}")
    use_llm = questions == "openai"
    faq = _load_faq_if_any(docs, max_nodes)
    if faq is not None:
        nodes = faq.nodes
        if not use_llm:
            train, test = faq.split(test_fraction=test_fraction, seed=seed)
            return nodes, train.to_qa_dataset(), test.to_qa_dataset(), "Python FAQ questions"
    elif not use_llm:
        raise ValueError(
            f"{docs} has no FAQ pages (section headings ending with '?') to take questions from; "
            "ask an LLM to write questions for it with `deepmemory demo --llm` (questions='openai'; needs OPENAI_API_KEY)"
        )
    else:
        from llama_index_deepmemory.data.html import load_html_documents

        documents = load_html_documents(docs, show_progress=show_progress)
        if not documents:
            raise ValueError(f"no HTML pages could be loaded from {docs}; check the folder or URL")
        nodes = chunk_documents(documents)[:max_nodes]
    train_ds, test_ds = _generate_datasets(nodes, test_fraction, seed, out_dir, llm_model, show_progress)
    return nodes, train_ds, test_ds, f"synthetic questions from {llm_model}"


def _load_faq_if_any(docs: str | os.PathLike[str] | None, max_nodes: int) -> Any:
    """The FAQ questions, answers and distractor chunks (``max_nodes`` in all) of a docs folder,
    or None when ``docs`` is a URL or a folder without FAQ pages. ``docs=None`` needs the Python docs."""
    from llama_index_deepmemory.data.python_faq import find_faq_dir, load_distractor_nodes, load_python_faq

    if docs is not None and str(docs).startswith(("http://", "https://")):
        return None
    if docs is not None and not Path(docs).exists():
        raise FileNotFoundError(f"docs folder {docs} does not exist; pass an HTML folder or an http(s) URL")
    try:
        faq_dir = find_faq_dir(docs)
        faq = load_python_faq(faq_dir)
    except (FileNotFoundError, ValueError):
        if docs is None:
            raise
        return None
    if len(faq.queries) < MIN_FAQ_QUESTIONS:
        return None
    if len(faq.nodes) >= max_nodes:
        raise ValueError(f"max_nodes={max_nodes} leaves no room for distractors beside {len(faq.nodes)} FAQ answers; raise it")
    if faq_dir.name == "faq":
        folders = [d for d in DEFAULT_DISTRACTOR_DIRS if (faq_dir.parent / d).is_dir()]
        faq.nodes = faq.nodes + load_distractor_nodes(faq_dir.parent, folders, max_nodes=max_nodes - len(faq.nodes))
    return faq


def recall_verdict(shown: "pd.DataFrame", without: str = "without deep memory", with_dm: str = "with deep memory") -> str:
    """One line: Deep Memory's recall gain at each k, in points, and where it wins or loses."""
    gains = {int(k): 100.0 * float(shown.at[k, with_dm] - shown.at[k, without]) for k in shown.index}
    listed = ", ".join(f"@{k} {gain:+.1f}" for k, gain in gains.items())
    losses = [str(k) for k, gain in gains.items() if gain < -0.05]
    wins = [str(k) for k, gain in gains.items() if gain > 0.05]
    if losses and wins:
        story = f"it helps at k={', '.join(wins)} and loses at k={', '.join(losses)}"
    elif losses:
        story = f"it loses at k={', '.join(losses)} and never helps"
    elif wins:
        story = f"it helps at k={', '.join(wins)} and loses nowhere"
    else:
        story = "no change at any k"
    return f"Deep Memory minus plain store, recall points: {listed}; {story}."


def run_demo(
    docs: str | os.PathLike[str] | None = None,
    *,
    questions: str = "faq",
    max_nodes: int = DEFAULT_MAX_NODES,
    test_fraction: float = 0.3,
    seed: int = 0,
    top_k: int = 10,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR,
    llm_model: str = DEFAULT_LLM_MODEL,
    train_options: dict[str, Any] | None = None,
    show_progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the pipeline end to end, print tables and timings, and return them.

    Writes ``out_dir/recall_at_k.png``, ``out_dir/store`` (the trained store, loadable with
    ``DeepMemoryVectorStore.from_persist_path``) and the question datasets
    ``out_dir/train_dataset.json`` / ``test_dataset.json``.
    """
    from llama_index.core import VectorStoreIndex

    from llama_index_deepmemory.data.questions import create_query_relevance
    from llama_index_deepmemory.embeddings import default_cache_dir, default_embedding, embed_queries
    from llama_index_deepmemory.evaluation import evaluate_retrievers, plot_recall_at_k, recall_curves

    watch = _Stopwatch()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if use_cache else None
    echo(f"Loading documents from {docs or 'the Python docs (python3.11-doc)'} ...")
    nodes, train_ds, test_ds, source = load_demo_data(
        docs, questions=questions, max_nodes=max_nodes, test_fraction=test_fraction, seed=seed,
        out_dir=out, llm_model=llm_model, show_progress=show_progress,
    )
    train_ds.save_json(out / "train_dataset.json")
    test_ds.save_json(out / "test_dataset.json")
    echo(f"{len(nodes)} nodes; {source}: {len(train_ds.queries)} for training, {len(test_ds.queries)} held out for testing")
    watch.lap("load documents and questions")

    embed_model = default_embedding()
    echo(f"Embedding with the bundled all-MiniLM-L6-v2 (cache: {cache or 'off'}) ...")
    store = build_store(nodes, embed_model, cache_dir=cache, show_progress=show_progress)
    watch.lap("embed nodes and build the store")

    queries, relevance = create_query_relevance(train_ds)
    query_vectors = embed_queries(queries, embed_model, cache_dir=cache, show_progress=show_progress)
    store.deep_memory.train(queries, relevance, embedding=query_vectors, **(train_options or {}))
    if store.deep_memory.get_model() is None:
        kept = store.deep_memory.list_models()[-1]["name"]
        echo(f"The model did not beat the plain store significantly on validation, so the gate keeps it off; evaluating it anyway ({kept}).")
        store.deep_memory.set_model(kept)
    store.persist(persist_path=str(out / "store"))
    watch.lap("train Deep Memory")

    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    names = ("without deep memory", "with deep memory")

    def retrievers(k: int) -> dict[str, Any]:
        return {
            name: index.as_retriever(similarity_top_k=k, vector_store_kwargs={"deep_memory": dm})
            for name, dm in zip(names, (False, True))
        }

    curves = recall_curves(retrievers(100), test_ds, ks=range(1, 101), show_progress=show_progress)
    table = evaluate_retrievers(retrievers(top_k), test_ds, metrics=("hit_rate", "mrr"), show_progress=show_progress)
    plot = plot_recall_at_k(curves, out / "recall_at_k.png", title=f"Recall@k on {len(test_ds.queries)} held-out questions")
    watch.lap("evaluate")

    shown = curves.loc[[k for k in REPORT_KS if k in curves.index]]
    echo(f"\nRecall@k on {len(test_ds.queries)} held-out questions ({len(nodes)} nodes):")
    echo((shown * 100).round(1).to_string())
    echo(recall_verdict(shown))
    echo(f"\nLlamaIndex RetrieverEvaluator (top {top_k}):")
    echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    echo(f"\nRecall@k plot: {plot}")
    echo(f"Trained store: {out / 'store'}  (try: deepmemory query --store {out / 'store'} \"How do I sort a dict?\")")
    total = sum(watch.timings.values())
    echo("\nTimes: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in watch.timings.items()) + f"; total {total:.1f}s")
    echo("Use your own docs: deepmemory demo --docs PATH_OR_URL "
         "(add --llm, with OPENAI_API_KEY, unless the folder has a Python-style FAQ).")
    return DemoResult(
        question_source=source, num_nodes=len(nodes), num_train_queries=len(train_ds.queries),
        num_test_queries=len(test_ds.queries), recall=curves, retrievers=table, plot_path=plot,
        store_path=out / "store", timings={**watch.timings, "total": total},
    )
