"""Where conversations are stored: a LlamaIndex SQL chat store, opened from a folder, a URI or a store.

- a folder (default ``deepmemory-chats``): the SQLite file ``<folder>/conversations.db``, in WAL
  mode with a busy timeout, so that many processes (app workers, terminals) append to it at once;
- a database URI: ``postgresql://user:pass@host/db`` (asyncpg) for servers, ``sqlite:///file.db``,
  or any SQLAlchemy async URI;
- a chat store: any ``AsyncDBChatStore`` (what LlamaIndex's ``Memory`` persists through, e.g. a
  ``SQLAlchemyChatStore`` with your own engine), or a classic ``BaseChatStore`` (e.g.
  ``SQLiteChatStore``, ``PostgresChatStore``) through :class:`~llama_index_deepmemory.chat.classic_store.ClassicChatStore`.

Every store keeps LlamaIndex's default table ``llama_index_memory``, so ``Memory.from_defaults(
session_id=CONVERSATION_ID, async_database_uri=...)`` reads the same conversation. The async calls
run on one event loop thread per process (asyncpg connections belong to the loop that made them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any, Coroutine, TypeVar

logger = logging.getLogger(__name__)

DB_NAME = "conversations.db"
TABLE_NAME = "llama_index_memory"  # LlamaIndex Memory's default table
BUSY_TIMEOUT_S = 30.0
T = TypeVar("T")

_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on this process's chat-store event loop (a daemon thread) and return its result."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid() or _loop[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="deepmemory-chat-store", daemon=True).start()
            _loop = (os.getpid(), loop)
        loop = _loop[1]
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def async_uri(uri: str) -> str:
    """An async SQLAlchemy URI for ``uri``: ``postgresql://`` -> asyncpg, ``sqlite://`` -> aiosqlite."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ValueError(f"database URI {uri!r} has no scheme; use e.g. postgresql://user@host/db or sqlite:///file.db")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        return f"postgresql+asyncpg://{rest}"
    if scheme == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    return uri


def describe(uri: str) -> str:
    """``uri`` without its password, for messages."""
    scheme, sep, rest = uri.partition("://")
    auth, at, host = rest.partition("@")
    if at and ":" in auth:
        auth = auth.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{auth}{at}{host}"


def _sqlite_engine(uri: str) -> Any:
    """An aiosqlite engine whose connections use WAL and wait (not fail) while another process writes."""
    from sqlalchemy import event
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(uri, connect_args={"timeout": BUSY_TIMEOUT_S})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    return engine


def open_chat_store(location: Any) -> tuple[Any, str, Path | None]:
    """``(AsyncDBChatStore, where it is in words, the folder for a default SQLite file or None)``."""
    from llama_index.core.storage.chat_store.base import BaseChatStore
    from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore
    from llama_index.core.storage.chat_store.sql import SQLAlchemyChatStore

    if isinstance(location, AsyncDBChatStore):
        return location, f"{type(location).__name__}", None
    if isinstance(location, BaseChatStore):
        from llama_index_deepmemory.chat.classic_store import ClassicChatStore

        return ClassicChatStore(store=location), f"{type(location).__name__}", None
    if not isinstance(location, (str, os.PathLike)):
        raise TypeError(f"conversations are stored in a folder, a database URI or a LlamaIndex chat store, "
                        f"got {type(location).__name__}")
    text = os.fspath(location)
    if not text.strip():
        raise ValueError(f"conversation store location {text!r} is empty; name a folder (e.g. 'deepmemory-chats') "
                         "or a database URI")
    if "://" in text:
        uri = async_uri(text)
        engine = _sqlite_engine(uri) if uri.startswith("sqlite") else None
        store = SQLAlchemyChatStore(table_name=TABLE_NAME, async_database_uri=uri, async_engine=engine)
        return store, describe(text), None
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"conversation folder {folder} is a file; name a folder (it is created if missing)")
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite+aiosqlite:///{(folder / DB_NAME).resolve()}"
    store = SQLAlchemyChatStore(table_name=TABLE_NAME, async_database_uri=uri, async_engine=_sqlite_engine(uri))
    return store, str(folder / DB_NAME), folder


def forget_connections(store: Any) -> None:
    """Drop (without closing) the pooled connections ``store`` inherited from its parent process.

    They belong to the parent: an aiosqlite connection's thread does not exist in a forked child
    (using it waits forever), and an asyncpg one is tied to the parent's event loop.
    """
    engine = getattr(store, "_async_engine", None)  # SQLAlchemyChatStore's engine (None until first used)
    if engine is not None:
        engine.sync_engine.dispose(close=False)


_DAMAGE = ("file is not a database", "database disk image is malformed")


def damage(exc: BaseException) -> str | None:
    """SQLite's words when ``exc`` says the database file is damaged (not a database, malformed), else None."""
    text = str(getattr(exc, "orig", None) or exc)
    return next((words for words in _DAMAGE if words in text.lower()), None)


async def ready(store: Any, attempts: int = 5) -> None:
    """Create the store's table if needed; processes racing to create it retry instead of failing."""
    for attempt in range(attempts):
        try:
            await store.count_messages("")
            return
        except Exception as exc:  # noqa: BLE001 - "already exists" from a racing CREATE TABLE, retried
            if attempt == attempts - 1 or "exist" not in str(exc).lower() and "duplicate" not in str(exc).lower():
                raise
            logger.debug("chat store table created by another process meanwhile (%s); retrying", exc)
            await asyncio.sleep(0.05 * (attempt + 1))
