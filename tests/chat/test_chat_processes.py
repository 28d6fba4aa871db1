"""No turn lost: several real processes chat into one conversation at once (SQLite file and
PostgreSQL), every turn is kept in each process's order, and a process resuming the conversation
sees every process's turns. Answers come from the scripted local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llama_index_deepmemory.chat import ConversationStore
from scripted_llm import ScriptedLLM, scripted_server

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).resolve().parents[1] / "chat_writer.py"
WRITERS, TURNS = 3, 5


def _locations(tmp_path: Path, request: pytest.FixtureRequest) -> list[str]:
    """A SQLite folder, and the PostgreSQL server where pgserver and asyncpg are installed."""
    locations = [str(tmp_path / "chats")]
    try:
        import asyncpg  # noqa: F401
        import pgserver  # noqa: F401
    except ImportError:
        return locations
    return locations + [request.getfixturevalue("postgres_server")]


@pytest.mark.slow
def test_processes_writing_one_conversation_keep_every_turn(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    locations = _locations(tmp_path, request)
    names = [f"w{i}" for i in range(WRITERS)]
    start = tmp_path / "start"
    llm = ScriptedLLM()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "HF_HUB_OFFLINE": "1"}
    with scripted_server(llm, max_lifetime_s=300) as server:
        children = [
            subprocess.Popen([sys.executable, str(WRITER), "|".join(locations), "shared", name, str(TURNS),
                              server.url("/v1"), str(start), str(WRITERS)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
            for name in names
        ]
        start.touch()  # every writer waits for this file, so their turns overlap in time
        results = []
        for child in children:
            out, err = child.communicate(timeout=240)
            assert child.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    total = WRITERS * TURNS
    assert len(llm.calls["chat"]) == total * len(locations)
    # every process, once all were done, saw every process's turns in every store
    assert [r["after"] for r in results] == [[total] * len(locations)] * WRITERS
    for location in locations:
        turns = ConversationStore(location).load("shared").turns
        assert len(turns) == total, location
        for name in names:  # every turn, in the writer's own order, each answer with its question's note
            mine = [t for t in turns if t.user.startswith(f"{name} ")]
            assert [t.user for t in mine] == [f"{name} question {i}" for i in range(TURNS)], location
        assert all(t.standalone_question == t.user and t.assistant and t.sources for t in turns), location
        assert len({t.turn_id for t in turns}) == total
        owners = [t.user.split()[0] for t in turns]  # the writers overlapped: their turns interleave
        assert sum(a != b for a, b in zip(owners, owners[1:])) > WRITERS - 1, location
    assert (tmp_path / "chats" / "conversations.db").is_file()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_processes_forked_after_the_store_was_used_keep_every_turn(tmp_path: Path) -> None:
    """A store used before a fork (an app preloaded, then its workers forked) works in every child:
    the parent's pooled connection (its aiosqlite thread gone in the child) used to hang them."""
    import time
    import warnings

    from llama_index_deepmemory.chat import Turn

    conversations = ConversationStore(tmp_path / "chats")
    conversations.append_turn("shared", Turn(user="parent question", assistant="a", standalone_question="q"))
    children = []
    for number in range(3):
        with warnings.catch_warnings():  # Python 3.12+: forking a process with threads (the store's loop) warns
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                conversations.append_turn("shared", Turn(user=f"child {number}", assistant="a", standalone_question="q"))
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    deadline, codes = time.monotonic() + 15, {}
    while len(codes) < len(children) and time.monotonic() < deadline:
        for pid in children:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    for pid in children:
        if pid not in codes:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert len(codes) == len(children), "forked children hung on the parent's chat store connection"
    assert list(codes.values()) == [0] * len(children)
    turns = ConversationStore(tmp_path / "chats").load("shared").turns
    assert sorted(t.user for t in turns) == ["child 0", "child 1", "child 2", "parent question"]
    assert [t.user for t in conversations.load("shared").turns][0] == "parent question"  # the parent goes on too
