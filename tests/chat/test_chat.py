"""The chat with long-term memory: condensed follow-ups, sources, conversations in LlamaIndex's SQL
chat store that resume in a new process (the real `deepmemory chat` in a subprocess), earlier
versions' JSON files migrated, the token budget, feedback logging. Every LLM call goes to a local
OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from llama_index.llms.openai import OpenAI

import team_docs as td
from llama_index_deepmemory import read_query_log
from llama_index_deepmemory.chat import Conversation, ConversationStore, DeepMemoryChatEngine, Source, Turn, append_feedback
from llama_index_deepmemory.chat.engine import cited_ranks
from llama_index_deepmemory.chat.history import FORMAT, FORMAT_VERSION, check_conversation_id
from scripted_llm import ScriptedLLM, scripted_server, sentences

ROOT = Path(__file__).resolve().parents[2]
FOLLOW_UP = "and how do I undo that?"
STANDALONE = "How do I undo a git commit?"


def client(server) -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_base=server.url("/v1"), api_key="test", max_retries=0, timeout=20.0)


@pytest.fixture(scope="module")
def handbook(minilm):
    return td.build_index(minilm)


# --- conversations: earlier versions' JSON files, ids ---------------------------------------
def _legacy_conversation() -> Conversation:
    return Conversation("support-1", turns=[
        Turn(user="hi?", assistant="hello [1]", standalone_question="hi?", sources=[Source(1, "git", 0.5, "To undo")],
             deep_memory=True, feedback=[{"kind": "helpful", "node_ids": ["git"]}]),
        Turn(user="and then?", assistant="then this [2]", standalone_question="What then?",
             sources=[Source(1, "git", 0.4, "To undo"), Source(2, "build", 0.3, "Recovering")]),
    ])


def test_json_conversation_of_an_earlier_version_is_migrated_on_first_use(tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    legacy = folder / "support-1.json"
    old_conversation = _legacy_conversation()
    legacy.write_text(json.dumps(old_conversation.to_dict()))
    conversations = ConversationStore(folder)
    assert conversations.list() == ["support-1"] and conversations.exists("support-1")
    loaded = conversations.load("support-1")
    expected = old_conversation.turns
    for turn, old in zip(loaded.turns, expected):
        old.turn_id = turn.turn_id
    assert loaded.turns == expected and [t.turn_id for t in loaded.turns] == ["legacy-1", "legacy-2"]
    assert not legacy.exists() and (folder / "support-1.json.migrated").is_file()  # kept, renamed once copied
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "conversations.db", "conversations.db-shm", "conversations.db-wal", "support-1.json.migrated"]
    assert len(ConversationStore(folder).load("support-1").turns) == 2  # read once, never copied twice


def test_a_migration_that_stopped_half_way_copies_only_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "support-1.json").write_text(json.dumps(_legacy_conversation().to_dict()))
    first = _legacy_conversation().turns[0]
    first.turn_id = "legacy-1"
    conversations = ConversationStore(folder)
    conversations.append_turn("support-1", first)  # as if the copy stopped after the first turn
    assert (folder / "support-1.json").is_file()
    turns = conversations.load("support-1").turns
    assert [t.user for t in turns] == ["hi?", "and then?"] and turns[0].feedback == [{"kind": "helpful", "node_ids": ["git"]}]


def test_damaged_or_newer_json_conversations_are_refused_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    path = folder / "support-1.json"
    data = _legacy_conversation().to_dict()
    assert (data["format"], data["format_version"]) == (FORMAT, FORMAT_VERSION)
    conversations = ConversationStore(folder)
    for text, error in [
        (json.dumps({**data, "format_version": FORMAT_VERSION + 1}), "upgrade llama-index-deepmemory"),
        ('{"format": "something else"}', "not a llama-index-deepmemory conversation"),
        ("{ half a file", "not valid JSON.*move it aside"),
        (json.dumps({**data, "conversation_id": "other"}), "holds conversation 'other'"),
    ]:
        path.write_text(text)
        with pytest.raises(ValueError, match=error):
            conversations.load("support-1")
        assert path.read_text() == text  # refused: the file stays as it was, nothing was copied
    assert conversations.run(conversations.chat_store.get_keys()) == []
    with pytest.raises(FileNotFoundError, match="no conversation 'other'"):
        conversations.load("other", create=False)


def test_a_damaged_store_file_is_refused_with_its_path_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    damaged = b"not an SQLite file, e.g. half a copy" * 200
    (folder / "conversations.db").write_bytes(damaged)
    conversations = ConversationStore(folder)
    for call in (lambda: conversations.load("support-1"), conversations.list,
                 lambda: conversations.append_turn("support-1", Turn(user="q", assistant="a", standalone_question="q"))):
        with pytest.raises(ValueError, match=rf"conversation store {folder / 'conversations.db'} is damaged "
                                             r"\(file is not a database\).*restore it from a backup"):
            call()
    assert (folder / "conversations.db").read_bytes() == damaged  # nothing written over it


def test_feedback_on_an_unknown_conversation_or_turn_or_not_a_dict_is_refused(tmp_path: Path) -> None:
    conversations = ConversationStore(tmp_path / "chats")
    turn = Turn(user="q", assistant="a", standalone_question="q")
    conversations.append_turn("support-1", turn)
    with pytest.raises(FileNotFoundError, match=r"no conversation 'nope' in .*list them with \.list\(\)"):
        conversations.add_feedback("nope", turn.turn_id, {"kind": "helpful", "node_ids": ["git"]})
    with pytest.raises(ValueError, match=r"no turn 'abc' in conversation 'support-1'.*" + turn.turn_id):
        conversations.add_feedback("support-1", "abc", {"kind": "helpful", "node_ids": ["git"]})
    with pytest.raises(TypeError, match=r"feedback is a dict.*got \['git'\]"):
        conversations.add_feedback("support-1", turn.turn_id, ["git"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"a turn is a Turn.*got 'hello'"):
        conversations.append_turn("support-1", "hello")  # type: ignore[arg-type]
    assert conversations.list() == ["support-1"]  # nothing written for the refused calls
    assert [t.feedback for t in conversations.load("support-1").turns] == [[]]
    conversations.add_feedback("support-1", turn.turn_id, {"kind": "helpful", "node_ids": ["git"]})
    assert [t.feedback for t in conversations.load("support-1").turns] == [[{"kind": "helpful", "node_ids": ["git"]}]]


def test_an_empty_or_blank_store_location_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for bad in ("", "  "):  # was the current folder (or a folder named '  '), silently
        with pytest.raises(ValueError, match=rf"conversation store location {bad!r} is empty; name a folder"):
            ConversationStore(bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "x" * 101, "name.json", 7, "abc\n", "x.json\n",
                                 "a\x00b", "a\\b", "\nabc", "abc\r"])
def test_conversation_ids_must_be_safe_names(tmp_path: Path, bad) -> None:
    with pytest.raises(ValueError, match="is not allowed"):
        ConversationStore(tmp_path).load(bad)
    with pytest.raises(ValueError, match="is not allowed"):
        check_conversation_id(bad)


def test_conversation_id_errors_name_the_character() -> None:
    with pytest.raises(ValueError, match=r"conversation id 'abc\\n' is not allowed: it contains a newline"):
        check_conversation_id("abc\n")
    with pytest.raises(ValueError, match="it contains a NUL character"):
        check_conversation_id("a\x00b")
    with pytest.raises(ValueError, match="it contains a path separator '/'"):
        check_conversation_id("a/b")
    assert check_conversation_id("support-2024.v2_x") == "support-2024.v2_x"


def test_feedback_rows_are_a_query_log(tmp_path: Path) -> None:
    log = tmp_path / "feedback.jsonl"
    append_feedback(log, "How do I undo a git commit?", ["git"], conversation="c", turn=1)
    append_feedback(log, "  How do I undo   a git commit? ", ["build"], weight=0.5, kind="cited")
    append_feedback(log, "What is a bluebird?", ["build", "build"])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["relevant_ids"] for r in rows] == [["git"], ["build"], ["build"]]
    assert rows[0]["conversation"] == "c" and rows[1]["kind"] == "cited"
    queries, relevance = read_query_log(log)  # same question merged, as `deepmemory train --query-log` reads it
    assert queries == ["How do I undo a git commit?", "What is a bluebird?"]
    assert relevance == [[("git", 1.0), ("build", 0.5)], [("build", 1.0)]]
    with pytest.raises(ValueError, match=r"must be a \.jsonl or \.ndjson file"):
        append_feedback(tmp_path / "log.csv", "q", ["git"])
    with pytest.raises(ValueError, match="non-empty list of node ids"):
        append_feedback(log, "q", [])
    with pytest.raises(ValueError, match="finite number > 0"):
        append_feedback(log, "q", ["git"], weight=float("nan"))
    assert len(log.read_text().splitlines()) == 3


def test_cited_ranks() -> None:
    assert cited_ranks("See [2] and [1][2], not [9] or [0].", 3) == [2, 1]


# --- the engine -----------------------------------------------------------------------------
def test_follow_up_is_condensed_before_retrieval_and_sources_are_kept(handbook, tmp_path: Path) -> None:
    store, index = handbook
    llm = ScriptedLLM(rewrites={FOLLOW_UP: STANDALONE})
    with scripted_server(llm) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="git", history_dir=tmp_path, top_k=3)
        assert engine.deep_memory is False  # no trained model: plain search, said in the log
        first = engine.chat("How do I make a git commit?")
        second = engine.chat(FOLLOW_UP)
    assert first.turn.standalone_question == "How do I make a git commit?"  # nothing to condense on turn 1
    assert llm.calls["condense"] == [{"history": llm.calls["condense"][0]["history"], "follow_up": FOLLOW_UP,
                                      "standalone": STANDALONE}]
    assert "How do I make a git commit?" in llm.calls["condense"][0]["history"]
    assert second.turn.standalone_question == STANDALONE
    assert [s.node_id for s in second.sources] == td.top_ids(index, STANDALONE, 3, False)
    assert second.sources[0].node_id == "git" and second.sources[0].rank == 1
    assert second.answer == sentences(td.PAGES["git"])[0] + " [1]" and second.cited == [1]
    # the answer step saw the earlier turn, then the user's own words
    messages = llm.calls["chat"][-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "How do I make a git commit?" and messages[-1]["content"] == FOLLOW_UP
    shown = second.format()
    assert "Sources:" in shown and " *[1] git" in shown and "[3] " in shown
    saved = ConversationStore(tmp_path).load("git").turns
    assert [t.user for t in saved] == ["How do I make a git commit?", FOLLOW_UP]
    assert saved[1].sources[0].node_id == "git" and saved[1].standalone_question == STANDALONE


def test_token_budget_trims_oldest_turns_and_says_so(handbook, tmp_path: Path) -> None:
    """LlamaIndex's Memory keeps the newest turns within the budget and archives older ones (stored still)."""
    store, _ = handbook
    llm = ScriptedLLM()
    questions = ["How do I bake sourdough?", "How do I fix a flat tire?", "How do I file my tax return?"]

    def one_token(text: str) -> list[int]:  # every message text and its turn id count 1 token: a turn is 4
        return [0]

    with scripted_server(llm) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="budget", history_dir=tmp_path, top_k=2,
                                      token_budget=4, tokenizer=one_token, long_term_memory=False)
        answers = [engine.chat(q) for q in questions]
    assert [(a.history_turns_used, a.history_turns_trimmed) for a in answers] == [(0, 0), (1, 0), (1, 1)]
    assert answers[1].notice is None
    assert answers[2].notice.startswith("History trimmed: the 1 oldest of 2 earlier turns are left out of the prompt")
    sent = [m["content"] for m in llm.calls["chat"][-1]["messages"][1:]]
    assert questions[0] not in sent and sent[0] == questions[1] and sent[-1] == questions[2]
    assert questions[0] not in llm.calls["condense"][-1]["history"]
    assert len(ConversationStore(tmp_path).load("budget").turns) == 3  # trimmed from the prompt, not from the store
    with pytest.raises(ValueError, match="token_budget must be an int >= 0"):
        DeepMemoryChatEngine(store, client(server), conversation_id="x", history_dir=tmp_path, token_budget=-1)


def test_a_budget_smaller_than_a_turn_keeps_no_earlier_turn_in_the_prompt(handbook, tmp_path: Path) -> None:
    """token_budget is the most tokens of earlier turns in the prompt: 0 (or less than the latest turn)
    means none, though LlamaIndex's Memory keeps the latest turn active whatever its size."""
    store, _ = handbook
    llm = ScriptedLLM()
    questions = ["How do I bake sourdough?", "How do I fix a flat tire?", "How do I file my tax return?"]
    with scripted_server(llm) as server:
        for budget in (0, 3):
            engine = DeepMemoryChatEngine(store, client(server), conversation_id=f"b{budget}", history_dir=tmp_path,
                                          top_k=2, token_budget=budget, tokenizer=lambda text: [0],
                                          long_term_memory=False)
            answers = [engine.chat(q) for q in questions]
            assert [a.history_turns_used for a in answers] == [0, 0, 0], budget
            sent = [m["content"] for m in llm.calls["chat"][-1]["messages"][1:]]
            assert sent == [questions[2]], budget
            assert len(ConversationStore(tmp_path).load(f"b{budget}").turns) == 3


def test_feedback_and_opt_in_citations_go_to_the_query_log(handbook, tmp_path: Path) -> None:
    store, _ = handbook
    log = tmp_path / "feedback.jsonl"
    with scripted_server(ScriptedLLM()) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="fb", history_dir=tmp_path, top_k=3,
                                      feedback_log=log, log_citations=True)
        answer = engine.chat("How do I undo a git commit?")
    cited = json.loads(log.read_text().splitlines()[0])
    assert (cited["kind"], cited["relevant_ids"], cited["weight"]) == ("cited", [answer.sources[0].node_id], 0.5)
    row = engine.mark_helpful([2])
    assert row["relevant_ids"] == [answer.sources[1].node_id] and row["query"] == "How do I undo a git commit?"
    assert engine.mark_helpful(answer.sources[2].node_id, turn=0)["relevant_ids"] == [answer.sources[2].node_id]
    with pytest.raises(ValueError, match="source 7 was not shown"):
        engine.mark_helpful([7])
    with pytest.raises(ValueError, match="node 'tax' was not among"):
        engine.mark_helpful(["tax"] if "tax" not in [s.node_id for s in answer.sources] else ["nope"])
    with pytest.raises(ValueError, match="turn 5 is out of range"):
        engine.mark_helpful([1], turn=5)
    saved = ConversationStore(tmp_path).load("fb").turns[0].feedback
    assert [f["kind"] for f in saved] == ["cited", "helpful", "helpful"]
    assert len(read_query_log(log)[0]) == 1  # one question, its ids merged


def test_an_answer_whose_citations_cannot_be_logged_is_still_returned_once(handbook, tmp_path: Path) -> None:
    """The turn is saved before its citations are logged: a log that cannot be written must not make
    chat() raise (the CLI then says "nothing was saved, try again", and the retry duplicates the turn)."""
    store, _ = handbook
    log = tmp_path / "feedback.jsonl"
    damaged = b'{"query": "q", "relevant_ids": ["git"]}\n\xff\xfe half a row'
    log.write_bytes(damaged)
    with scripted_server(ScriptedLLM()) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="fb", history_dir=tmp_path, top_k=3,
                                      feedback_log=log, log_citations=True)
        answer = engine.chat("How do I undo a git commit?")
    assert answer.cited and answer.notice is not None
    assert f"cited sources were not logged: feedback log {str(log)!r} is not UTF-8 text" in answer.notice
    assert log.read_bytes() == damaged  # left as it was
    assert [t.user for t in ConversationStore(tmp_path).load("fb").turns] == ["How do I undo a git commit?"]
    with pytest.raises(ValueError, match=rf"feedback log {re.escape(repr(str(log)))} is not UTF-8 text.*move it aside"):
        engine.mark_helpful([1])


def test_feedback_on_a_turn_named_by_a_bool_or_str_is_refused(handbook, tmp_path: Path) -> None:
    store, _ = handbook
    log = tmp_path / "feedback.jsonl"
    with scripted_server(ScriptedLLM()) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="fb", history_dir=tmp_path, top_k=2,
                                      feedback_log=log)
        engine.chat("How do I undo a git commit?")
        engine.chat("How do I bake sourdough?")
    for bad in (True, "0", 1.0):  # True was taken as turn 1, "0" said to be out of range
        with pytest.raises(TypeError, match=rf"turn is an int index .*got {re.escape(repr(bad))}"):
            engine.mark_helpful([1], turn=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sources are ranks \(ints\) or node ids \(strs\), e\.g\. \[1, 3\], got 1\.5"):
        engine.mark_helpful(1.5)  # type: ignore[arg-type]  # was "'float' object is not iterable"
    assert not log.exists()
    assert engine.mark_helpful([1], turn=0)["query"] == "How do I undo a git commit?"


def test_deep_memory_true_needs_a_model(handbook, tmp_path: Path) -> None:
    store, _ = handbook
    with scripted_server(ScriptedLLM()) as server:
        with pytest.raises(ValueError, match="no active Deep Memory model.*deep_memory=False"):
            DeepMemoryChatEngine(store, client(server), conversation_id="x", history_dir=tmp_path, deep_memory=True)
        with pytest.raises(ValueError, match="log_citations=True needs feedback_log"):
            DeepMemoryChatEngine(store, client(server), conversation_id="x", history_dir=tmp_path, log_citations=True)


def test_an_llm_that_is_not_an_llm_is_refused_naming_it(handbook, tmp_path: Path) -> None:
    """A model name where the LLM goes was accepted, then every answer failed with an AttributeError."""
    store, _ = handbook
    for bad in ("gpt-4o-mini", 42):
        with pytest.raises(TypeError, match=rf"the chat's llm must be a LlamaIndex LLM.*got {bad!r}"):
            DeepMemoryChatEngine(store, bad, conversation_id="x", history_dir=tmp_path)  # type: ignore[arg-type]


def test_bad_citation_weight_or_long_term_settings_are_refused_at_once(handbook, tmp_path: Path) -> None:
    """Were accepted; a bad citation weight then failed every cited answer after saving it."""
    store, _ = handbook
    log = tmp_path / "feedback.jsonl"
    with scripted_server(ScriptedLLM()) as server:
        for bad in (0, -1.0, float("nan"), "0.5", True):
            with pytest.raises(ValueError, match=rf"citation_weight must be a finite number > 0, got {re.escape(repr(bad))}"):
                DeepMemoryChatEngine(store, client(server), conversation_id="x", history_dir=tmp_path,
                                     feedback_log=log, log_citations=True, citation_weight=bad)
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match=rf"long_term_top_k must be a positive int, got {bad!r}"):
                DeepMemoryChatEngine(store, client(server), conversation_id="x", history_dir=tmp_path,
                                     long_term_top_k=bad)
        for bad in (float("nan"), "0.4", 1.5, -1.5):
            with pytest.raises(ValueError, match=rf"long_term_cutoff must be a cosine similarity in \[-1, 1\], "
                                                 rf"got {re.escape(repr(bad))}"):
                DeepMemoryChatEngine(store, client(server), conversation_id="x", history_dir=tmp_path,
                                     long_term_cutoff=bad)


# --- resuming in a new process, through the CLI ---------------------------------------------
@pytest.mark.slow
def test_cli_chat_resumes_the_conversation_in_a_new_process(handbook, tmp_path: Path) -> None:
    store, _ = handbook
    store.persist(str(tmp_path / "store"))
    chats = tmp_path / "chats"
    llm = ScriptedLLM(rewrites={FOLLOW_UP: STANDALONE})
    with scripted_server(llm, max_lifetime_s=300) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="team", history_dir=chats, top_k=3)
        engine.chat("How do I make a git commit?")
        del engine
        env = {**os.environ, "OPENAI_API_KEY": "test", "OPENAI_API_BASE": server.url("/v1"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(ROOT)}
        child = subprocess.run(
            [sys.executable, "-m", "llama_index_deepmemory.cli", "chat", "--store", str(tmp_path / "store"),
             "--conversation", "team", "--history-dir", str(chats), "--top-k", "3"],
            input=f"/history\n{FOLLOW_UP}\n/good 1\n/good 9\n/quit\n", capture_output=True, text=True, timeout=240,
            env=env, cwd=tmp_path,
        )
    out = child.stdout
    assert child.returncode == 0, child.stderr[-3000:]
    assert "resumed, 1 earlier turns" in out
    assert "[1] you: How do I make a git commit?" in out  # /history shows the first process's turn
    assert f"(searched: {STANDALONE})" in out  # the follow-up was condensed with the loaded history
    assert "How do I make a git commit?" in llm.calls["condense"][-1]["history"]
    assert "assistant> " + sentences(td.PAGES["git"])[0] in out and "Sources:" in out and "[1] git" in out
    assert "Thanks: logged git" in out and "source 9 was not shown" in out
    turns = ConversationStore(chats).load("team").turns
    assert [t.user for t in turns] == ["How do I make a git commit?", FOLLOW_UP]
    assert read_query_log(chats / "feedback.jsonl") == ([STANDALONE], [[("git", 1.0)]])


def test_cli_chat_reports_a_failed_answer_and_goes_on(handbook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys) -> None:
    import io

    from llama_index_deepmemory.cli import main
    from servers import Response

    store, _ = handbook
    store.persist(str(tmp_path / "store"))
    llm = ScriptedLLM()

    def responder(messages: list[dict]):
        if "espresso" in json.dumps(messages):  # a request the API refuses (not retried)
            return Response(400, b'{"error": {"message": "refused"}}', {"Content-Type": "application/json"})
        return llm(messages)

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Tell me about espresso.\n/good 1\nHow do I bake sourdough?\n/bogus\n"))
    with scripted_server(responder) as server:
        monkeypatch.setenv("OPENAI_API_BASE", server.url("/v1"))
        code = main(["chat", "--store", str(tmp_path / "store"), "--conversation", "bread",
                     "--history-dir", str(tmp_path / "chats"), "--top-k", "2", "-q"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "error: the answer failed (BadRequestError" in out and "nothing was saved" in out
    assert "feedback not logged: no answer to give feedback on yet" in out
    assert "assistant> " + sentences(td.PAGES["bread"])[0] in out and "unknown command '/bogus'" in out
    assert len(ConversationStore(tmp_path / "chats").load("bread").turns) == 1


def test_a_classic_chat_store_keeps_the_conversation(handbook, tmp_path: Path) -> None:
    """Any BaseChatStore (here the SQLite one of llama-index-storage-chat-store-sqlite): appended
    messages, Memory's archive kept as markers, the whole conversation read back."""
    sqlite_chat_store = pytest.importorskip("llama_index.storage.chat_store.sqlite")
    classic = sqlite_chat_store.SQLiteChatStore.from_params(database=str(tmp_path / "classic.db"))
    store, _ = handbook
    questions = ["How do I bake sourdough?", "How do I fix a flat tire?", "How do I file my tax return?"]
    with scripted_server(ScriptedLLM()) as server:
        engine = DeepMemoryChatEngine(store, client(server), conversation_id="classic", history_dir=classic, top_k=2,
                                      token_budget=4, tokenizer=lambda text: [0], long_term_memory=False)
        answers = [engine.chat(q) for q in questions]
    assert [(a.history_turns_used, a.history_turns_trimmed) for a in answers] == [(0, 0), (1, 0), (1, 1)]
    turns = ConversationStore(classic).load("classic").turns
    assert [t.user for t in turns] == questions and all(t.sources for t in turns)
    assert ConversationStore(classic).list() == ["classic"]
    assert len(classic.get_messages("classic")) == 6  # appended, never rewritten
