"""Real HTTP servers on 127.0.0.1 for tests: a fixture website and a small OpenAI-compatible API.

Both are :class:`LocalServer` instances: a route table ``(method, path) -> handler`` served by a
threaded ``http.server`` on an ephemeral port. Every server shuts itself down after
``max_lifetime_s`` even if a test forgets to stop it, slow handlers sleep in short bounded steps
and give up when the server stops, and nothing binds anywhere but 127.0.0.1.

Extending for new tests (hostile input, odd status codes, ...)::

    with fixture_site_server() as site:
        site.add_route("GET", "/docs/evil.html", lambda req: Response(raw=b"HTTP/1.0 200 OK\\r\\n..."))
        load_html_documents(site.url("/docs/"))
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import parse_qs, urlsplit

FIXTURES = Path(__file__).parent / "fixtures"
SITE_ROOT = FIXTURES / "site"


@dataclass
class Request:
    """What a handler sees of one request."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body.decode("utf-8"))


@dataclass
class Response:
    """What a handler returns.

    ``body`` is sent in ``chunks`` pieces with ``chunk_delay_s`` between them (a trickling page);
    ``delay_s`` waits before the status line (a slow server). ``raw`` bypasses everything and is
    written to the socket as is (malformed responses). ``content_length`` overrides the header
    (``None``: the true length, ``-1``: no header, body ends when the connection closes).
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunks: int = 1
    chunk_delay_s: float = 0.0
    content_length: int | None = None
    raw: bytes | None = None


Handler = Callable[[Request], Response]


def html_response(text: str, status: int = 200, charset: str = "utf-8") -> Response:
    return Response(status, text.encode(charset), {"Content-Type": f"text/html; charset={charset}"})


def json_response(payload: object, status: int = 200) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), {"Content-Type": "application/json"})


def redirect_response(location: str, status: int = 302) -> Response:
    return Response(status, b"", {"Location": location})


class LocalServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 with a mutable route table; use as a context manager."""

    def __init__(self, routes: dict[tuple[str, str], Handler] | None = None, max_lifetime_s: float = 60.0) -> None:
        self.routes: dict[tuple[str, str], Handler] = dict(routes or {})
        self.requests: list[Request] = []
        self.max_lifetime_s = max_lifetime_s
        self._stopped = threading.Event()
        self._started = False
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, 10_000_000)) if length > 0 else b""
                request = Request(
                    self.command, split.path, parse_qs(split.query), dict(self.headers.items()), body
                )
                with server._lock:
                    server.requests.append(request)
                handler = server.routes.get((self.command, split.path))
                response = handler(request) if handler else Response(404, b"not found", {"Content-Type": "text/plain"})
                server._write(self, response)

            do_GET = do_POST = do_HEAD = _serve

        self._server = _QuietThreadingServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "LocalServer":
        self._started = True
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._timer.cancel()
        if self._started:
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- routes ----------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method.upper(), path)] = handler

    def add_page(self, path: str, html: str, charset: str = "utf-8") -> None:
        self.add_route("GET", path, lambda _req: html_response(html, charset=charset))

    def paths_requested(self, method: str = "GET") -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if r.method == method]

    # -- writing ---------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> bool:
        """Sleep in short steps; False when the server stopped meanwhile (bounded by ``seconds``)."""
        return not self._stopped.wait(seconds) if seconds > 0 else True

    def _write(self, handler: BaseHTTPRequestHandler, response: Response) -> None:
        try:
            if not self._sleep(response.delay_s):
                return
            if response.raw is not None:
                handler.wfile.write(response.raw)
                return
            handler.send_response(response.status)
            for name, value in response.headers.items():
                handler.send_header(name, value)
            length = len(response.body) if response.content_length is None else response.content_length
            if length >= 0:
                handler.send_header("Content-Length", str(length))
            handler.end_headers()
            if handler.command == "HEAD":
                return
            pieces = _split(response.body, max(1, response.chunks))
            for i, piece in enumerate(pieces):
                if i and not self._sleep(response.chunk_delay_s):
                    return
                handler.wfile.write(piece)
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts, size caps)
            pass


class _QuietThreadingServer(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops connections of a concurrent crawler
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-response is normal in these tests


def _split(data: bytes, parts: int) -> list[bytes]:
    size = max(1, -(-len(data) // parts))
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


# ---------------------------------------------------------------------------------------------
# The fixture website
# ---------------------------------------------------------------------------------------------

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css", ".png": "image/png"}


def static_routes(root: Path, prefix: str = "/") -> dict[tuple[str, str], Handler]:
    """GET routes serving every file under ``root`` at ``prefix + relative path``."""
    routes: dict[tuple[str, str], Handler] = {}
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        data = file.read_bytes()
        ctype = CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        routes[("GET", prefix + file.relative_to(root).as_posix())] = (
            lambda _req, data=data, ctype=ctype: Response(200, data, {"Content-Type": ctype})
        )
    return routes


SLOW_PAGE_DELAY_S = 8.0
NESTING_DEPTH = 3000
HUGE_PAGE_BYTES = 3_000_000


def fixture_site_routes() -> dict[tuple[str, str], Handler]:
    """The fixture site: static pages from ``tests/fixtures/site`` plus dynamic edge cases.

    Dynamic routes: ``/docs/`` (the index), a redirect into scope, a redirect loop, a redirect to
    another host, a binary file, a slow page (sleeps ``SLOW_PAGE_DELAY_S``) and a 500.
    Missing pages (``/docs/missing.html``) are 404s.
    """
    routes = static_routes(SITE_ROOT)
    routes[("GET", "/docs/")] = routes[("GET", "/docs/index.html")]
    redirects = {
        "/docs/old-page": "/docs/moved.html",
        "/docs/loop-a": "/docs/loop-b",
        "/docs/loop-b": "/docs/loop-a",
        "/docs/offsite": "http://elsewhere.invalid/docs/stolen.html",
        "/docs/to-ftp": "ftp://127.0.0.1/docs/file.html",
    }
    for path, target in redirects.items():
        routes[("GET", path)] = lambda _req, target=target: redirect_response(target)
    routes[("GET", "/docs/manual.pdf")] = lambda _req: Response(
        200, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 4, {"Content-Type": "application/pdf"}
    )
    routes[("GET", "/docs/slow.html")] = lambda _req: Response(
        200, b"<html><body><p>too slow</p></body></html>", {"Content-Type": "text/html"}, delay_s=SLOW_PAGE_DELAY_S
    )
    routes[("GET", "/docs/broken.html")] = lambda _req: Response(500, b"boom", {"Content-Type": "text/plain"})
    latin1 = (
        '<html><head><meta charset="windows-1252"><title>Caf\u00e9 menu</title></head>'
        "<body><p>Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \u2014 LATIN1_MARKER</p></body></html>"
    ).encode("cp1252")
    routes[("GET", "/docs/latin1.html")] = lambda _req: Response(200, latin1, {"Content-Type": "text/html"})
    nested = (
        "<html><head><title>Nested</title></head><body>"
        + "<div><span>" * NESTING_DEPTH
        + "<p>NESTED_MARKER <b>unclosed <i>tags"
        + "</table></li>"
        + "</body></html>"
    ).encode("utf-8")
    routes[("GET", "/docs/nested.html")] = lambda _req: Response(200, nested, {"Content-Type": "text/html"})
    huge = b"<html><body>" + b"<p>filler text</p>" * (HUGE_PAGE_BYTES // 18) + b"</body></html>"
    routes[("GET", "/docs/huge.html")] = lambda _req: Response(200, huge, {"Content-Type": "text/html"})
    routes[("GET", "/docs/huge-stream.html")] = lambda _req: Response(
        200, huge, {"Content-Type": "text/html"}, content_length=-1, chunks=20
    )
    return routes


def fixture_site_server(max_lifetime_s: float = 60.0) -> LocalServer:
    """A not yet started :class:`LocalServer` serving :func:`fixture_site_routes`."""
    return LocalServer(fixture_site_routes(), max_lifetime_s=max_lifetime_s)


# ---------------------------------------------------------------------------------------------
# A small OpenAI-compatible chat completions API
# ---------------------------------------------------------------------------------------------

ChatResponder = Callable[[list[dict]], "str | Response"]


def chat_completion_payload(content: str, model: str = "gpt-test") -> dict:
    """The JSON body of a successful ``POST /v1/chat/completions``."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def openai_chat_server(responder: ChatResponder, max_lifetime_s: float = 60.0) -> LocalServer:
    """A not yet started server answering ``POST /v1/chat/completions`` with ``responder(messages)``.

    ``responder`` returns the assistant's text, or a :class:`Response` to send instead (an error
    status, garbage, a delay). Use with ``OpenAI(api_base=server.url("/v1"), api_key="test")``.
    Streaming requests are not supported (the tests use ``complete``/``chat``).
    """

    def chat(request: Request) -> Response:
        payload = request.json()
        assert isinstance(payload, dict)
        answer = responder(list(payload.get("messages", [])))
        if isinstance(answer, Response):
            return answer
        return json_response(chat_completion_payload(answer, model=str(payload.get("model", "gpt-test"))))

    return LocalServer({("POST", "/v1/chat/completions"): chat}, max_lifetime_s=max_lifetime_s)


def last_user_message(messages: Iterable[dict]) -> str:
    """The text of the last user message (content may be a string or a list of parts)."""
    for message in reversed(list(messages)):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return str(content)
    return ""
