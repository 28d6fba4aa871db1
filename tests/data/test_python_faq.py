"""The Python FAQ loader on a small Sphinx-like fixture and, when installed, the real docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_index_deepmemory.data.python_faq import DEFAULT_DOCS_DIR, find_faq_dir, load_python_faq

FAQ_PAGE = """<html><body><div class="body" role="main">
<section id="general-faq"><h1>General FAQ<a class="headerlink" href="#general-faq">¶</a></h1>
<nav class="contents" id="contents"><ul><li>Why is the sky blue?</li></ul></nav>
<section id="basics"><h2>Basics<a class="headerlink" href="#basics">¶</a></h2>
<section id="why-is-the-sky-blue"><h3>Why is the sky blue?<a class="headerlink" href="#x">¶</a></h3>
<p>Rayleigh scattering favours <code>short</code> wavelengths.</p>
</section>
<section id="what-is-python"><h3>What is Python?<a class="headerlink" href="#y">¶</a></h3>
<p>A programming language.</p><pre>print("hi")</pre>
</section>
<section id="empty"><h3>Is this empty?<a class="headerlink" href="#z">¶</a></h3></section>
</section>
<section id="not-a-question"><h2>Licensing<a class="headerlink" href="#l">¶</a></h2><p>PSF license.</p></section>
</section></div></body></html>"""

TUTORIAL_PAGE = """<html><body><div class="related">navigation junk</div>
<div class="body" role="main"><section><h1>Tutorial<a class="headerlink" href="#t">¶</a></h1>
<p>Lists are mutable sequences.</p><p>Tuples are immutable sequences.</p></section></div></body></html>"""


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    (tmp_path / "faq").mkdir()
    (tmp_path / "faq" / "general.html").write_text(FAQ_PAGE, "utf-8")
    (tmp_path / "tutorial").mkdir()
    (tmp_path / "tutorial" / "datastructures.html").write_text(TUTORIAL_PAGE, "utf-8")
    return tmp_path


def test_questions_become_queries_and_answers_become_nodes(docs: Path) -> None:
    faq = load_python_faq(docs)
    assert faq.queries == ["Why is the sky blue?", "What is Python?"]  # the empty answer is skipped
    assert [n.node_id for n in faq.nodes] == ["faq_general_000", "faq_general_001"]
    assert faq.relevance == [[("faq_general_000", 1.0)], [("faq_general_001", 1.0)]]
    first, second = (n.get_content() for n in faq.nodes)
    assert "Rayleigh scattering favours `short` wavelengths." in first
    assert 'print("hi")' in second
    for query, node in zip(faq.queries, faq.nodes):
        assert query not in node.get_content()  # the question text is removed from the corpus
        assert "¶" not in node.get_content()
        assert node.get_content(metadata_mode="embed") == node.get_content()  # no metadata embedded


def test_faq_folder_itself_is_accepted_and_ids_are_stable(docs: Path) -> None:
    first = load_python_faq(docs / "faq")
    again = load_python_faq(docs)
    assert [n.node_id for n in first.nodes] == [n.node_id for n in again.nodes]
    assert first.query_ids == again.query_ids


def test_distractors_are_chunked_main_content_only(docs: Path) -> None:
    faq = load_python_faq(docs, distractor_dirs=["tutorial"])
    distractors = [n for n in faq.nodes if n.metadata["kind"] == "doc"]
    assert [n.node_id for n in distractors] == ["doc_tutorial_datastructures_000"]
    text = distractors[0].get_content()
    assert "Lists are mutable sequences." in text and "navigation junk" not in text
    assert len(faq.answer_nodes) == 2
    assert load_python_faq(docs, distractor_dirs=["tutorial"], max_distractor_nodes=0).nodes == faq.answer_nodes


def test_split_is_disjoint_and_covers_all_questions(docs: Path) -> None:
    faq = load_python_faq(docs)
    train, test = faq.split(test_fraction=0.5, seed=3)
    assert sorted(train.queries + test.queries) == sorted(faq.queries)
    assert not set(train.queries) & set(test.queries)
    assert train.nodes is faq.nodes and test.nodes is faq.nodes
    with pytest.raises(ValueError, match="test_fraction"):
        faq.split(test_fraction=1.0)


def test_qa_dataset_round_trip(docs: Path) -> None:
    qa = load_python_faq(docs).to_qa_dataset()
    assert qa.queries == {"q_general_000": "Why is the sky blue?", "q_general_001": "What is Python?"}
    assert qa.relevant_docs == {"q_general_000": ["faq_general_000"], "q_general_001": ["faq_general_001"]}
    assert set(qa.corpus) == {"faq_general_000", "faq_general_001"}


def test_missing_docs_error_names_folder_and_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install python3.11-doc") as info:
        find_faq_dir(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    (tmp_path / "plain.html").write_text("<html><h2>No questions here</h2></html>", "utf-8")
    with pytest.raises(ValueError, match="no FAQ questions"):
        load_python_faq(tmp_path)
    (tmp_path / "faq").mkdir()
    (tmp_path / "faq" / "general.html").write_text(FAQ_PAGE, "utf-8")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_python_faq(tmp_path, distractor_dirs=["absent"])


@pytest.mark.skipif(not (DEFAULT_DOCS_DIR / "faq").is_dir(), reason="python3.11-doc not installed")
def test_real_python_faq() -> None:
    faq = load_python_faq()
    assert 150 <= len(faq.queries) <= 200
    assert len({n.node_id for n in faq.nodes}) == len(faq.nodes) == len(faq.queries)
    assert "How do I make a Python script executable on Unix?" in faq.queries
    assert all(q.endswith("?") for q in faq.queries)
    assert not any(q in n.get_content() for q, n in zip(faq.queries, faq.nodes))


def test_distractor_pages_whose_names_slug_alike_get_distinct_ids(docs: Path) -> None:
    # a-b.html and a_b.html both slug to "a_b": two pages must not share one node id
    (docs / "tutorial" / "a-b.html").write_text(TUTORIAL_PAGE.replace("Lists", "Dashes"), "utf-8")
    (docs / "tutorial" / "a_b.html").write_text(TUTORIAL_PAGE.replace("Lists", "Underscores"), "utf-8")
    faq = load_python_faq(docs, distractor_dirs=["tutorial"])
    ids = [n.node_id for n in faq.nodes]
    assert len(set(ids)) == len(ids)
    by_text = {
        next(word for word in ("Dashes", "Underscores", "Lists") if word in n.get_content()): n.node_id
        for n in faq.nodes
        if n.metadata["kind"] == "doc"
    }
    assert by_text["Dashes"] == "doc_tutorial_a_b_000" and by_text["Lists"] == "doc_tutorial_datastructures_000"
    assert by_text["Underscores"] != by_text["Dashes"]
    again = load_python_faq(docs, distractor_dirs=["tutorial"])
    assert [n.node_id for n in again.nodes] == ids  # still stable
