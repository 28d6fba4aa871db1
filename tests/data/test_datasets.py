"""Query log readers (JSONL/CSV) and the BEIR folder reader, checked against pandas as a peer reader."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_index_deepmemory import (
    create_query_relevance,
    load_beir,
    read_query_log,
    validate_query_relevance,
    write_query_log,
)

SCIFACT = Path(__file__).resolve().parents[3] / "shared" / "data" / "scifact"


def write_lines(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# Query logs
# ---------------------------------------------------------------------------------------------


def test_jsonl_log_accepts_every_documented_form(tmp_path: Path) -> None:
    log = write_lines(
        tmp_path / "log.jsonl",
        [
            {"query": "one id", "relevant_ids": "node_1"},
            {"query": "ids with a shared weight", "relevant_ids": ["node_2", "node_3"], "weight": 0.5},
            "",
            {"query": "pairs", "relevant_ids": [["node_4", 2], ["node_5", 0.25]]},
            {"query": "mapping", "relevant_ids": {"node_6": 3}},
            {"query": "one id", "relevant_ids": [["node_1", 4], "node_7"]},  # a repeated query merges
        ],
    )
    queries, relevance = read_query_log(log)
    assert queries == ["one id", "ids with a shared weight", "pairs", "mapping"]
    assert relevance == [
        [("node_1", 4.0), ("node_7", 1.0)],
        [("node_2", 0.5), ("node_3", 0.5)],
        [("node_4", 2.0), ("node_5", 0.25)],
        [("node_6", 3.0)],
    ]
    queries, relevance = read_query_log(log, merge_duplicates=False)
    assert queries.count("one id") == 2 and len(relevance) == 5


def test_csv_log_matches_pandas(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "query": ["how to install", "what is a widget", "how to install", "café?"],
            "relevant_ids": ["node_1;node_2", "node_3", "node_9", "node_4"],
            "weight": ["", "0.5", "2", "1;"],
        }
    )
    frame.loc[3, "weight"] = "3"
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    queries, relevance = read_query_log(path)
    # the same grouping done with pandas
    rows = pd.read_csv(path, keep_default_na=False, dtype=str)
    expected: dict[str, dict[str, float]] = {}
    for row in rows.itertuples():
        ids = row.relevant_ids.split(";")
        weight = float(row.weight) if row.weight else 1.0
        for doc_id in ids:
            expected.setdefault(row.query, {})[doc_id] = max(weight, expected.get(row.query, {}).get(doc_id, 0.0))
    assert queries == list(expected)
    assert relevance == [list(weights.items()) for weights in expected.values()]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.jsonl", '{"query": "ok", "relevant_ids": "n"}\n{"query": "x", "relevant_ids": ["n"]\n', r"a\.jsonl:2: invalid JSON"),
        ("b.jsonl", '{"query": "ok", "relevant_ids": "n"}\n\n{"relevant_ids": "n"}\n', r"b\.jsonl:3: field 'query' must be a non-empty string"),
        ("c.jsonl", '{"query": "q", "relevant_ids": []}\n', r"c\.jsonl:1: field 'relevant_ids' is empty"),
        ("d.jsonl", '{"query": "q", "relevant_ids": "n", "weight": -1}\n', r"d\.jsonl:1: field 'weight' gives the weight -1; weights must be numbers, finite and >= 0"),
        ("e.jsonl", '{"query": "q", "relevant_ids": [["n", "heavy"]]}\n', r"e\.jsonl:1: field 'relevant_ids' gives node 'n' the weight 'heavy'"),
        ("f.jsonl", '["q", "n"]\n', r"f\.jsonl:1: expected a JSON object"),
        ("g.csv", "query,ids\nq,n\n", r"g\.csv:1: missing column 'relevant_ids'"),
        ("h.csv", "query,relevant_ids,weight\nq,n,1\nq2,a;b,1;2;3\n", r"h\.csv:3: column 'weight': 3 weights for 2 ids"),
        ("i.csv", "query,relevant_ids,weight\nq,n,abc\n", r"i\.csv:2: column 'weight'.*'abc'"),
        ("j.csv", "query,relevant_ids\nq,n,extra\n", r"j\.csv:2: more cells than header"),
        ("k.csv", "query,relevant_ids\n", "no queries found"),
        ("l.txt", "q\tn\n", "unknown query log format"),
    ],
)
def test_malformed_logs_name_the_line_and_field(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_query_log(path)


def test_unknown_ids_are_errors_or_dropped(tmp_path: Path) -> None:
    log = write_lines(
        tmp_path / "log.jsonl",
        [{"query": "a", "relevant_ids": ["node_1", "gone"]}, {"query": "b", "relevant_ids": "gone_too"}],
    )
    with pytest.raises(ValueError, match=r"log\.jsonl:1: unknown ids \['gone'\]"):
        read_query_log(log, known_ids=["node_1"])
    assert read_query_log(log, known_ids={"node_1"}, on_unknown="drop") == (["a"], [[("node_1", 1.0)]])


def test_zero_weight_is_judged_not_relevant_as_everywhere(tmp_path: Path) -> None:
    """One relevance rule (relevance.py): weight 0 is accepted (judged, not relevant), a query needs
    one weight > 0; what write_query_log writes, read_query_log reads back."""
    queries, relevance = ["q", "r"], [[("a", 1.0), ("b", 0.0)], [("c", 2.0)]]
    assert validate_query_relevance(queries, relevance) == (queries, relevance)
    write_query_log(tmp_path / "log.jsonl", queries, relevance)
    assert read_query_log(tmp_path / "log.jsonl") == (queries, relevance)
    csv_log = tmp_path / "log.csv"
    csv_log.write_text("query,relevant_ids,weight\nq,a;b,1;0\nr,c,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"log\.csv:3: column 'weight' gives every id the weight 0; give at least one"):
        read_query_log(csv_log)
    zero_left = write_lines(tmp_path / "drop.jsonl", [{"query": "q", "relevant_ids": [["gone", 1], ["b", 0]]},
                                                     {"query": "r", "relevant_ids": ["c"]}])
    assert read_query_log(zero_left, known_ids={"b", "c"}, on_unknown="drop") == (["r"], [[("c", 1.0)]])


@settings(max_examples=20, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1).filter(lambda s: s.strip() == s and s.strip()),
            st.lists(st.tuples(st.text(min_size=1), st.floats(0.01, 100)), min_size=1, max_size=4, unique_by=lambda p: p[0]),
        ),
        min_size=1,
        max_size=8,
        unique_by=lambda row: row[0],
    )
)
def test_write_then_read_round_trips(rows) -> None:
    import tempfile

    queries = [q for q, _ in rows]
    relevance = [list(pairs) for _, pairs in rows]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.jsonl"
        write_query_log(path, queries, relevance)
        assert read_query_log(path) == (queries, relevance)


def test_validate_query_relevance() -> None:
    assert validate_query_relevance(["q"], [["a", ("b", 2)]]) == (["q"], [[("a", 1.0), ("b", 2.0)]])
    # the messages of llama_index_deepmemory.relevance, shared with deep_memory.train/evaluate
    with pytest.raises(ValueError, match=r"queries\[0\] is an empty string \(' '\)"):
        validate_query_relevance([" "], [["a"]])
    with pytest.raises(ValueError, match=r"relevance\[0\]\[0\] gives node 'a' the weight nan; weights must be .*finite"):
        validate_query_relevance(["q"], [[("a", float("nan"))]])
    with pytest.raises(ValueError, match=r"relevance\[0\] is \[\]; each query needs a non-empty list"):
        validate_query_relevance(["q"], [[]])
    with pytest.raises(ValueError, match=r"unknown ids \['b'\]"):
        validate_query_relevance(["q"], [["a", "b"]], known_ids={"a"})


# ---------------------------------------------------------------------------------------------
# BEIR
# ---------------------------------------------------------------------------------------------


def make_beir(folder: Path, qrels: str = "query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\td1\t2\nq2\td3\t1\nq3\td1\t0\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_lines(
        folder / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Widgets", "text": "Widgets turn sprockets into gizmos."},
            {"_id": "d2", "title": "", "text": "Sprockets are round."},
            {"_id": "d3", "title": "Gizmos", "text": "Gizmos hum."},
        ],
    )
    write_lines(folder / "queries.jsonl", [{"_id": "q1", "text": "what are widgets"}, {"_id": "q2", "text": "do gizmos hum"}, {"_id": "q3", "text": "unjudged"}])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def test_beir_reader_on_a_small_folder(tmp_path: Path) -> None:
    data = load_beir(make_beir(tmp_path))
    assert data.splits == ["test"]
    assert data.query_ids("test") == ["q1", "q2"]  # q3's only judgement has score 0
    assert data.query_relevance("test") == (["what are widgets", "do gizmos hum"], [[("d2", 1.0), ("d1", 2.0)], [("d3", 1.0)]])
    nodes = data.nodes()
    assert [n.node_id for n in nodes] == ["d1", "d2", "d3"]
    assert nodes[0].get_content() == "Widgets\nWidgets turn sprockets into gizmos."
    assert nodes[0].get_content(metadata_mode="embed") == nodes[0].get_content()  # title not embedded twice
    assert nodes[1].get_content() == "Sprockets are round."
    qa = data.qa_dataset("test")
    queries, relevance = create_query_relevance(qa)
    assert queries == data.query_relevance("test")[0]
    assert [[d for d, _ in pairs] for pairs in relevance] == [["d2", "d1"], ["d3"]]
    with pytest.raises(ValueError, match=r"unknown split 'train'.*\['test'\]"):
        data.query_relevance("train")


@pytest.mark.parametrize(
    ("qrels", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1\tnope\t1\n", r"test\.tsv:2: unknown corpus-id 'nope'"),
        ("query-id\tcorpus-id\tscore\nq9\td1\t1\n", r"test\.tsv:2: unknown query-id 'q9'"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", r"test\.tsv:2: expected 3 tab-separated cells"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"test\.tsv:2: field 'score' must be a number"),
    ],
)
def test_beir_errors_name_file_and_line(tmp_path: Path, qrels: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_beir(make_beir(tmp_path, qrels))


def test_beir_unknown_ids_can_be_dropped_and_bad_folders_fail(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "a", "query-id\tcorpus-id\tscore\nq1\tnope\t1\nq2\td3\t1\n")
    assert load_beir(folder, on_unknown="drop").query_ids("test") == ["q2"]
    with pytest.raises(ValueError, match="not a BEIR folder: corpus.jsonl is missing"):
        load_beir(tmp_path)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"corpus\.jsonl:2: duplicate _id 'd1'"):
        load_beir(folder)


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="scifact not available")
def test_scifact_matches_pandas() -> None:
    data = load_beir(SCIFACT)
    corpus = pd.read_json(SCIFACT / "corpus.jsonl", lines=True, dtype={"_id": str})
    queries = pd.read_json(SCIFACT / "queries.jsonl", lines=True, dtype={"_id": str})
    assert list(data.corpus) == corpus["_id"].tolist()
    assert [t for _, t in data.corpus.values()] == corpus["text"].tolist()
    assert data.queries == dict(zip(queries["_id"], queries["text"]))
    for split in ("train", "test"):
        qrels = pd.read_csv(SCIFACT / "qrels" / f"{split}.tsv", sep="\t", dtype=str)
        qrels = qrels[qrels["score"].astype(float) > 0]
        grouped = qrels.groupby("query-id", sort=False)["corpus-id"].apply(list)
        assert data.query_ids(split) == grouped.index.tolist()
        texts, relevance = data.query_relevance(split)
        assert [[d for d, _ in pairs] for pairs in relevance] == grouped.tolist()
        assert texts == [data.queries[q] for q in grouped.index]
    nodes = data.nodes()
    assert len(nodes) == len(corpus) and len({n.node_id for n in nodes}) == len(nodes)


def test_beir_qrels_with_a_byte_order_mark_read_like_without(tmp_path: Path) -> None:
    plain = load_beir(make_beir(tmp_path / "plain")).qrels
    folder = make_beir(tmp_path / "bom")
    (folder / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbf" + (folder / "qrels" / "test.tsv").read_bytes())
    assert load_beir(folder).qrels == plain


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_beir_non_utf8_file_is_an_error_naming_file_and_line(tmp_path: Path, name: str) -> None:
    folder = make_beir(tmp_path)
    path = folder / name
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"d", "\xe9".encode("latin-1"), 1)  # a latin-1 byte on line 2
    path.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=rf"{name.split('/')[-1]}:2: not valid UTF-8"):
        load_beir(folder)


def test_beir_duplicate_query_id_is_an_error_like_a_duplicate_doc(tmp_path: Path) -> None:
    folder = make_beir(tmp_path)
    write_lines(folder / "queries.jsonl", [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "x"}, {"_id": "q1", "text": "second"}])
    with pytest.raises(ValueError, match=r"queries\.jsonl:3: duplicate _id 'q1'"):
        load_beir(folder)


def test_beir_judgement_listed_twice_keeps_its_largest_score(tmp_path: Path) -> None:
    # the one relevance rule: an id listed twice keeps its largest weight, whatever the order
    for qrels in ("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td1\t1\n", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n"):
        data = load_beir(make_beir(tmp_path / str(len(list(tmp_path.iterdir()))), qrels))
        assert data.query_relevance("test") == (["what are widgets"], [[("d1", 2.0)]])


def test_beir_qrels_blank_lines_with_spaces_are_skipped(tmp_path: Path) -> None:
    data = load_beir(make_beir(tmp_path, "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n  \r\n\nq2\td3\t1\r\n"))
    assert data.query_relevance("test") == (["what are widgets", "do gizmos hum"], [[("d1", 1.0)], [("d3", 1.0)]])


def test_non_utf8_query_logs_name_the_file_and_line(tmp_path: Path) -> None:
    csv_log = tmp_path / "log.csv"
    csv_log.write_bytes(b"query,relevant_ids\nfine,n1\ncaf\xe9?,n1\n")
    with pytest.raises(ValueError, match=r"log\.csv:3: not valid UTF-8"):
        read_query_log(csv_log)
    jsonl_log = tmp_path / "log.jsonl"
    jsonl_log.write_bytes(b'{"query": "fine", "relevant_ids": "n1"}\n{"query": "caf\xe9?", "relevant_ids": "n1"}\n')
    with pytest.raises(ValueError, match=r"log\.jsonl:2: not valid UTF-8"):
        read_query_log(jsonl_log)
    csv_log.write_bytes(b"\xef\xbb\xbfquery,relevant_ids\r\ncaf\xc3\xa9?,n1\r\n")  # UTF-8 with a BOM and CRLF
    assert read_query_log(csv_log) == (["café?"], [[("n1", 1.0)]])


def test_beir_files_with_classic_mac_line_endings_read_like_newlines(tmp_path: Path) -> None:
    plain = load_beir(make_beir(tmp_path / "plain"))
    folder = make_beir(tmp_path / "cr")
    for path in (folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / "test.tsv"):
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    data = load_beir(folder)
    assert (data.corpus, data.queries, data.qrels) == (plain.corpus, plain.queries, plain.qrels)
