"""Activeloop's LlamaIndex Deep Memory tutorial runs as written, apart from the lines README.md lists
(issue 26, finding 1), against a local OpenAI-compatible server (``tutorial_server``): LlamaIndex's
default OpenAI embedding and LLM, and LangChain's ``OpenAIEmbeddings``, all pointed at it.

``ORIGINAL`` is the tutorial's code from its section 1 (after the crawl) to the end; ``CHANGED``
are the lines README.md lists, each replaced exactly once; ``ENVIRONMENT`` swaps the crawl of
docs.deeplake.ai for local documents and sizes the sample to them (not a change of the flow).
The results are checked against the store's own ranking (a peer computation), not only run.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.embeddings.openai")
pytest.importorskip("langchain_openai")

from tutorial_server import hashed_embedding, tutorial_server  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

ORIGINAL = '''
from llama_index.core.node_parser import SimpleNodeParser
from llama_index.core import VectorStoreIndex, StorageContext
from llama_index.vector_stores.deeplake import DeepLakeVectorStore
from llama_index.llms.openai import OpenAI

vector_store = DeepLakeVectorStore(dataset_path=dataset_path, runtime={"tensor_db": True}, overwrite=True)


def create_modules(vector_store, docs=[], populate_vector_store=True):
    if populate_vector_store:
        node_parser = SimpleNodeParser.from_defaults(chunk_size=512)
        nodes = node_parser.get_nodes_from_documents(docs)
    else:
        nodes = []

    # by default, the node ids are set to random uuids. To ensure same id's per run, we manually set them.
    for idx, node in enumerate(nodes):
        node.id_ = f"node_{idx}"

    llm = OpenAI(model="gpt-4")
    storage_context = StorageContext.from_defaults(vector_store=vector_store)
    return storage_context, nodes, llm


(storage_context, nodes, llm) = create_modules(docs=docs, vector_store=vector_store)

vector_index = VectorStoreIndex(nodes, storage_context=storage_context)
deep_memory_retriever = vector_index.as_retriever(similarity_top_k=4, deep_memory=True)

from llama_index.core.evaluation import generate_question_context_pairs, EmbeddingQAFinetuneDataset
import random


def create_train_test_datasets(number_of_samples=600, llm=None, nodes=None, save=False):
    random_indices = random.sample(range(len(nodes)), number_of_samples)

    ratio = int(len(random_indices) * 0.8)

    train_indices = random_indices[:ratio]
    test_indices = random_indices[ratio:]

    train_nodes = [nodes[i] for i in train_indices]
    test_nodes = [nodes[i] for i in test_indices]

    train_qa_dataset = generate_question_context_pairs(train_nodes, llm=llm, num_questions_per_chunk=1)

    test_qa_dataset = generate_question_context_pairs(test_nodes, llm=llm, num_questions_per_chunk=1)

    # [optional] save
    if save:
        train_qa_dataset.save_json(f"deeplake_docs_{number_of_samples}_train.json")
        test_qa_dataset.save_json(f"deeplake_docs_{number_of_samples}_test.json")
    return train_qa_dataset, test_qa_dataset


train_qa_dataset, test_qa_dataset = create_train_test_datasets(number_of_samples=600, llm=llm, nodes=nodes, save=True)

train_qa_dataset = EmbeddingQAFinetuneDataset.from_json("deeplake_docs_600_train.json")
test_qa_dataset = EmbeddingQAFinetuneDataset.from_json("deeplake_docs_600_test.json")


def create_query_relevance(qa_dataset):
    """Function for converting llama-index dataset to correct format for deep memory training"""
    queries = [text for _, text in qa_dataset.queries.items()]
    relevant_docs = qa_dataset.relevant_docs
    relevance = []
    for doc in relevant_docs:
        relevance.append([(relevant_docs[doc][0], 1)])
    return queries, relevance


train_queries, train_relevance = create_query_relevance(train_qa_dataset)
test_queries, test_relevance = create_query_relevance(test_qa_dataset)

from langchain.embeddings.openai import OpenAIEmbeddings

embeddings = OpenAIEmbeddings()

job_id = vector_store.vectorstore.deep_memory.train(
    queries=train_queries,
    relevance=train_relevance,
    embedding_function=embeddings.embed_documents,
)

vector_store.vectorstore.deep_memory.status(job_id)

recalls = vector_store.vectorstore.deep_memory.evaluate(
    queries=test_queries,
    relevance=test_relevance,
    embedding_function=embeddings.embed_documents,
)

import pandas as pd


def display_results(eval_results):
    """Display results from evaluate."""
    hit_rates = []
    mrrs = []
    names = []
    for name, eval_result in eval_results.items():
        metric_dicts = []
        for er in eval_result:
            metric_dict = er.metric_vals_dict
            metric_dicts.append(metric_dict)

        full_df = pd.DataFrame(metric_dicts)

        hit_rate = full_df["hit_rate"].mean()
        mrr = full_df["mrr"].mean()

        hit_rates.append(hit_rate)
        mrrs.append(mrr)
        names.append(name)

    metric_df = pd.DataFrame(
        [{"retrievers": names[i], "hit_rate": hit_rates[i], "mrr": mrrs[i]} for i in range(2)],
    )

    return metric_df


from llama_index.core.evaluation import RetrieverEvaluator

deep_memory_retriever = vector_index.as_retriever(similarity_top_k=10, vector_store_kwargs={"deep_memory": True})
dm_retriever_evaluator = RetrieverEvaluator.from_metric_names(["mrr", "hit_rate"], retriever=deep_memory_retriever)

dm_eval_results = dm_retriever_evaluator.evaluate_dataset(test_qa_dataset, retriever=dm_retriever_evaluator)

from llama_index.core.evaluation import RetrieverEvaluator

naive_retriever = vector_index.as_retriever(similarity_top_k=10)
naive_retriever_evaluator = RetrieverEvaluator.from_metric_names(["mrr", "hit_rate"], retriever=naive_retriever)

naive_eval_results = naive_retriever_evaluator.evaluate_dataset(test_qa_dataset, retriever=naive_retriever)

eval_results = {
    f"{mode} with Deep Memory top-10 eval": eval_result
    for mode, eval_result in zip(["with", "without"], [dm_eval_results, naive_eval_results])
}

display_results(eval_results)

query_engine = vector_index.as_query_engine(vector_store_kwargs={"deep_memory": True}, llm=llm)
response = query_engine.query("How can you connect your own storage to the deeplake?")
print(response)

query_engine = vector_index.as_query_engine(vector_store_kwargs={"deep_memory": False}, llm=llm)
response = query_engine.query("How can you connect your own storage to the deeplake?")
print(response)
'''

# the tutorial's lines that change (README.md lists them): (as written, with this package)
CHANGED = [
    ("from llama_index.vector_stores.deeplake import DeepLakeVectorStore",
     "from llama_index_deepmemory import DeepMemoryVectorStore, DeepMemoryVectorStoreIndex"),
    ('vector_store = DeepLakeVectorStore(dataset_path=dataset_path, runtime={"tensor_db": True}, overwrite=True)',
     "vector_store = DeepMemoryVectorStore()"),
    ("vector_index = VectorStoreIndex(nodes, storage_context=storage_context)",
     "vector_index = DeepMemoryVectorStoreIndex(nodes, storage_context=storage_context)"),
    ("from llama_index.core.evaluation import generate_question_context_pairs, EmbeddingQAFinetuneDataset",
     "from llama_index_deepmemory import generate_question_context_pairs, EmbeddingQAFinetuneDataset"),
    ("from langchain.embeddings.openai import OpenAIEmbeddings", "from langchain_openai import OpenAIEmbeddings"),
    ("embeddings = OpenAIEmbeddings()", "embeddings = OpenAIEmbeddings(check_embedding_ctx_length=False)"),
    ("from llama_index.core.evaluation import RetrieverEvaluator", "from llama_index_deepmemory import RetrieverEvaluator"),
]
# not changes of the flow: local documents instead of the crawl, a sample that fits them
N_DOCS, N_SAMPLES = 60, 50
ENVIRONMENT = [("number_of_samples=600", f"number_of_samples={N_SAMPLES}"),
               ("deeplake_docs_600_", f"deeplake_docs_{N_SAMPLES}_")]


def tutorial_code() -> str:
    code = ORIGINAL
    for old, new in CHANGED:
        count = code.count(old)
        assert count >= 1, old
        code = code.replace(old, new)
    for old, new in ENVIRONMENT:
        code = code.replace(old, new)
    return code


def readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\n## Activeloop's LlamaIndex tutorial\n(.*?)\n## ", text, re.S)
    assert match, "README.md lost its \"## Activeloop's LlamaIndex tutorial\" section"
    return match.group(1)


def local_documents() -> list:
    """N_DOCS short documents, each about its own few topic words among shared filler."""
    from llama_index.core import Document

    rng = random.Random(7)
    syllables = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "di"]
    topics = sorted({"".join(rng.choice(syllables) for _ in range(3)) for _ in range(4 * N_DOCS)})
    filler = "storage dataset vector query index memory training cloud upload tensor".split()
    docs = []
    for i in range(N_DOCS):
        own = topics[4 * i % len(topics): 4 * i % len(topics) + 4]
        words = own * 3 + rng.sample(filler, 6) + rng.sample(topics, 4)
        rng.shuffle(words)
        docs.append(Document(text=f"Page {i}. " + " ".join(words) + ".", id_=f"doc_{i}"))
    return docs


def test_readme_lists_exactly_the_changed_lines() -> None:
    section = readme_section()
    for old, new in CHANGED:
        assert old in section and new in section, (old, new)


@pytest.mark.slow  # about 20 s on 2 loaded cores, most of it the tutorial's training with default options
def test_the_llamaindex_tutorial_runs_with_only_the_listed_lines_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from llama_index.core import Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setattr(Settings, "_embed_model", None)  # LlamaIndex's default: OpenAIEmbedding from the env
    monkeypatch.setattr(Settings, "_llm", None)
    random.seed(0)  # the tutorial samples nodes with the random module
    with tutorial_server() as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        namespace: dict = {"docs": local_documents()}
        exec(compile(tutorial_code(), "deep_memory_tutorial.py", "exec"), namespace)
        embedding_calls = sum(r.path == "/v1/embeddings" for r in server.requests)
        check_results(namespace, capsys.readouterr().out, tmp_path, embedding_calls)


def check_results(namespace: dict, out: str, tmp_path: Path, embedding_calls: int) -> None:
    """What the tutorial's run left, checked while its server still answers the index's embedding."""
    store, index = namespace["vector_store"], namespace["vector_index"]
    assert type(index._embed_model).__name__ == "OpenAIEmbedding" and embedding_calls > 0

    # question generation: one question per sampled chunk, saved and reloaded
    train, test = namespace["train_qa_dataset"], namespace["test_qa_dataset"]
    assert (len(train.queries), len(test.queries)) == (40, 10)
    assert (tmp_path / f"deeplake_docs_{N_SAMPLES}_train.json").is_file()
    assert namespace["train_relevance"][0] == [(train.relevant_docs[next(iter(train.queries))][0], 1)]

    # training (embedding_function=LangChain's embed_documents), status, evaluate
    job = store.deep_memory.status(namespace["job_id"])
    assert job["status"] == "completed", job
    model = store.deep_memory.get_model()
    assert model is not None, "the tutorial's deep_memory=True lines need an active model"
    recalls = namespace["recalls"]
    assert set(recalls) == {"with model", "without model"}

    # RetrieverEvaluator hit rate and MRR, with and without, equal the store's own top-10 rankings
    test_queries = namespace["test_queries"]
    expected = [namespace["test_relevance"][i][0][0] for i in range(len(test_queries))]
    vectors = np.stack([hashed_embedding(q) for q in test_queries])
    table = namespace["display_results"](namespace["eval_results"]).set_index("retrievers")
    for name, deep_memory in (("with with Deep Memory top-10 eval", True), ("without with Deep Memory top-10 eval", False)):
        ranked = store.deep_memory.search_ids(vectors, 10, deep_memory=deep_memory, texts=test_queries)
        ranks = [row.index(node) + 1 if node in row else None for row, node in zip(ranked, expected)]
        hit_rate = np.mean([r is not None for r in ranks])
        mrr = np.mean([1 / r if r else 0.0 for r in ranks])
        assert table.loc[name, "hit_rate"] == pytest.approx(hit_rate) and table.loc[name, "mrr"] == pytest.approx(mrr)
    assert table.loc["with with Deep Memory top-10 eval", "hit_rate"] >= table.loc["without with Deep Memory top-10 eval", "hit_rate"]

    # the tutorial's first retriever, as_retriever(similarity_top_k=4, deep_memory=True), ranks with Deep Memory
    first = index.as_retriever(similarity_top_k=4, deep_memory=True)
    plain = store.deep_memory.search_ids(vectors, 4, deep_memory=False, texts=test_queries)
    with_dm = [[n.node.node_id for n in first.retrieve(q)] for q in test_queries]
    assert with_dm == store.deep_memory.search_ids(vectors, 4, deep_memory=True, texts=test_queries)
    assert with_dm != plain, "Deep Memory changed no top 4: the check cannot tell the two apart"

    # both query engines answered from their own contexts
    answers = [line for line in out.splitlines() if line.startswith("Answer from context:")]
    assert len(answers) == 2


def test_deep_memory_keyword_is_honoured_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """``as_retriever(deep_memory=...)`` on DeepMemoryVectorStoreIndex: refused without a model, over
    a store that does not know Deep Memory, or when it contradicts ``vector_store_kwargs``."""
    from llama_index.core import StorageContext
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore

    from llama_index_deepmemory import DeepMemoryVectorStore, DeepMemoryVectorStoreIndex
    from hash_embedding import HashEmbedding

    nodes = [TextNode(id_=f"n{i}", text=f"page {i} about topic{i}") for i in range(6)]
    store = DeepMemoryVectorStore()
    embed = HashEmbedding()
    index = DeepMemoryVectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                                       embed_model=embed)
    assert store.embed_model is embed  # the index gave the store its embedding
    with pytest.raises(ValueError, match="no active Deep Memory model"):
        index.as_retriever(similarity_top_k=2, deep_memory=True).retrieve("topic3")
    assert len(index.as_retriever(similarity_top_k=2, deep_memory=False).retrieve("topic3")) == 2
    with pytest.raises(ValueError, match="conflicts"):
        index.as_retriever(deep_memory=True, vector_store_kwargs={"deep_memory": False})
    plain = DeepMemoryVectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=SimpleVectorStore()),
                                       embed_model=HashEmbedding())
    with pytest.raises(ValueError, match="needs a store that ranks with Deep Memory"):
        plain.as_retriever(deep_memory=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_langchain_tutorials_loaders_come_with_the_langchain_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """The LangChain tutorial loads pages with langchain-community's AsyncHtmlLoader and
    Html2TextTransformer: the ``langchain`` extra installs them (here over the local fixture site)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from langchain_community.document_loaders import AsyncHtmlLoader
    from langchain_community.document_transformers import Html2TextTransformer
    from servers import fixture_site_server

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"]
    assert any(req.startswith("langchain-community>=0.4") for req in extras["langchain"])
    monkeypatch.setenv("USER_AGENT", "llama-index-deepmemory-tests")
    with fixture_site_server() as site:
        pages = AsyncHtmlLoader([site.url("/docs/index.html")]).load()
    text = Html2TextTransformer().transform_documents(pages)[0].page_content
    assert len(pages) == 1 and text.strip() and "<" not in text


def test_retriever_evaluator_evaluates_a_dataset_as_llama_index_010_did() -> None:
    """``RetrieverEvaluator.(a)evaluate_dataset``: one result per query, in order, equal to
    ``aevaluate`` per query; ``retriever=`` only as the tutorial passes it; other keywords refused."""
    import asyncio

    from llama_index.core import StorageContext
    from llama_index.core.schema import TextNode

    from llama_index_deepmemory import (
        DeepMemoryVectorStore, DeepMemoryVectorStoreIndex, EmbeddingQAFinetuneDataset, RetrieverEvaluator,
    )
    from hash_embedding import HashEmbedding

    nodes = [TextNode(id_=f"n{i}", text=f"page {i} about {'x' * (i + 1)}") for i in range(8)]
    index = DeepMemoryVectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=DeepMemoryVectorStore()),
                                       embed_model=HashEmbedding())
    retriever = index.as_retriever(similarity_top_k=3)
    evaluator = RetrieverEvaluator.from_metric_names(["mrr", "hit_rate"], retriever=retriever)
    queries = {f"q{i}": f"about {'x' * (i + 1)}" for i in range(8)}
    dataset = EmbeddingQAFinetuneDataset(queries=queries, corpus={}, relevant_docs={f"q{i}": [f"n{i}"] for i in range(8)})
    results = evaluator.evaluate_dataset(dataset, retriever=evaluator)
    assert [r.query for r in results] == list(queries.values())
    for result, (qid, query) in zip(results, queries.items()):
        one = asyncio.run(evaluator.aevaluate(query=query, expected_ids=[qid.replace("q", "n")]))
        assert result.metric_vals_dict == one.metric_vals_dict
    assert asyncio.run(evaluator.aevaluate_dataset(dataset, workers=3, retriever=retriever))[0].query == queries["q0"]
    with pytest.raises(ValueError, match="another retriever"):
        evaluator.evaluate_dataset(dataset, retriever=index.as_retriever())
    with pytest.raises(TypeError, match="unexpected keyword"):
        evaluator.evaluate_dataset(dataset, top_k=3)


def test_the_index_shows_progress_when_it_embeds_many_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    from llama_index.core import StorageContext
    from llama_index.core.schema import TextNode

    from llama_index_deepmemory import DeepMemoryVectorStore, DeepMemoryVectorStoreIndex
    from llama_index_deepmemory.vector_index import PROGRESS_FROM
    from hash_embedding import HashEmbedding

    for n, shown in ((PROGRESS_FROM - 1, False), (PROGRESS_FROM, True)):
        nodes = [TextNode(id_=f"n{i}", text=f"text {i}") for i in range(n)]
        DeepMemoryVectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=DeepMemoryVectorStore()),
                                   embed_model=HashEmbedding())
        assert ("Generating embeddings" in capsys.readouterr().err) == shown
