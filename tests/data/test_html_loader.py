"""The HTML loader against a real HTTP server on 127.0.0.1 serving tests/fixtures/site."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from llama_index.core.schema import Document  # imported up front so crawl timings exclude it

from llama_index_deepmemory import CrawlReport, load_html_documents
from servers import SITE_ROOT, SLOW_PAGE_DELAY_S, LocalServer, Response, fixture_site_server, html_response

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")

# Pages the fixture site should yield from /docs/ with max_depth=2 (breadth-first, link order).
EXPECTED_PAGES = [
    "/docs/",
    "/docs/guide.html",
    "/docs/api/index.html",
    "/docs/moved.html",  # via the /docs/old-page redirect
    "/docs/latin1.html",
    "/docs/nested.html",
    "/docs/deep/level2.html",
    "/docs/api/functions.html",
]
# page -> words its failure reason must contain
EXPECTED_FAILURES = {
    "/docs/loop-a": "redirect loop",
    "/docs/offsite": "another site",
    "/docs/to-ftp": "unsupported scheme ftp",
    "/docs/missing.html": "HTTP 404",
    "/docs/broken.html": "HTTP 500",
    "/docs/manual.pdf": "not HTML",
    "/docs/slow.html": "timed out",
    "/docs/huge.html": "too large",
    "/docs/huge-stream.html": "too large",
}
CHROME_MARKERS = [
    "NAV_CHROME_MARKER", "FOOTER_CHROME_MARKER", "SCRIPT_SHOULD_NOT_APPEAR", "SPHINX_RELATED_CHROME",
    "SPHINX_SIDEBAR_CHROME", "SPHINX_FOOTER_CHROME", "MKDOCS_HEADER_CHROME", "MKDOCS_NAV_CHROME", "MKDOCS_FOOTER_CHROME",
]


@pytest.fixture(scope="module")
def site():
    with fixture_site_server(max_lifetime_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def crawl(site: LocalServer):
    started = time.monotonic()
    documents, report = load_html_documents(
        site.url("/docs/"), timeout=1.0, max_bytes=1_000_000, show_progress=False, return_report=True
    )
    return documents, report, time.monotonic() - started


def paths(site: LocalServer, urls: list[str]) -> list[str]:
    return [url.removeprefix(site.base_url) for url in urls]


def test_crawl_reaches_exactly_the_expected_pages(site: LocalServer, crawl) -> None:
    documents, report, _ = crawl
    assert isinstance(report, CrawlReport)
    assert all(isinstance(d, Document) for d in documents)
    assert paths(site, [d.id_ for d in documents]) == EXPECTED_PAGES
    assert paths(site, report.loaded) == EXPECTED_PAGES
    assert [d.metadata["url"] for d in documents] == [d.id_ for d in documents]


def test_crawl_reports_every_failure_with_its_reason(site: LocalServer, crawl) -> None:
    _, report, _ = crawl
    failures = {url.removeprefix(site.base_url): reason for url, reason in ((i.url, i.reason) for i in report.failed)}
    assert set(failures) == set(EXPECTED_FAILURES)
    for page, words in EXPECTED_FAILURES.items():
        assert words in failures[page], (page, failures[page])


def test_crawl_skips_links_off_site_out_of_scope_and_too_deep(site: LocalServer, crawl) -> None:
    _, report, _ = crawl
    skipped = {issue.url: issue.reason for issue in report.skipped}
    assert "outside the base path" in skipped[site.url("/outside/page.html")]
    assert "another site" in skipped["http://elsewhere.invalid/docs/x.html"]
    for link in ("javascript:alert(1)", "mailto:team@example.invalid", "file:///etc/passwd", "data:text/html,<h1>x</h1>"):
        assert "unsupported scheme" in skipped[link], link
    assert "max_depth=2" in skipped[site.url("/docs/deep/level3.html")]
    assert "same content" in skipped[site.url("/docs/index.html")]  # /docs/ and /docs/index.html
    requested = set(site.paths_requested())
    assert "/outside/page.html" not in requested and "/docs/deep/level3.html" not in requested
    assert "/docs" not in requested  # "/docs" and "/docs/" are one page
    assert not any(p.startswith("/docs/guide.html") and p != "/docs/guide.html" for p in requested)


def test_slow_page_costs_one_timeout_not_the_whole_delay(crawl) -> None:
    _, _, seconds = crawl
    assert seconds < SLOW_PAGE_DELAY_S / 2


def test_main_content_kept_and_chrome_dropped(site: LocalServer, crawl) -> None:
    documents, _, _ = crawl
    by_path = dict(zip(paths(site, [d.id_ for d in documents]), documents))
    assert "HOME_PAGE_MARKER" in by_path["/docs/"].text and "**sprockets**" in by_path["/docs/"].text
    assert "SPHINX_BODY_MARKER" in by_path["/docs/api/index.html"].text
    assert "MKDOCS_BODY_MARKER" in by_path["/docs/api/functions.html"].text
    assert "make_widget| Widget" in by_path["/docs/api/functions.html"].text  # table kept as Markdown
    assert "¶" not in by_path["/docs/api/index.html"].text  # Sphinx header links dropped
    assert "Café crème brûlée — LATIN1_MARKER" in by_path["/docs/latin1.html"].text  # meta charset honoured
    assert "NESTED_MARKER" in by_path["/docs/nested.html"].text
    for document in documents:
        for marker in CHROME_MARKERS:
            assert marker not in document.text, (document.id_, marker)
    titles = {p: d.metadata["title"] for p, d in by_path.items()}
    assert titles["/docs/"] == "Widget Docs: Home"
    assert titles["/docs/api/index.html"] == "API reference — Widgets 1.0 documentation"
    assert titles["/docs/latin1.html"] == "Café menu"


def test_crawl_is_deterministic(site: LocalServer, crawl) -> None:
    documents, _, _ = crawl
    again = load_html_documents(site.url("/docs/"), timeout=1.0, max_bytes=1_000_000, show_progress=False)
    assert [(d.id_, d.text) for d in again] == [(d.id_, d.text) for d in documents]


def test_depth_and_page_limits(site: LocalServer) -> None:
    only_start, report = load_html_documents(site.url("/docs/"), max_depth=0, show_progress=False, return_report=True)
    assert paths(site, [d.id_ for d in only_start]) == ["/docs/"]
    assert any("max_depth=0" in issue.reason for issue in report.skipped)

    before = len(site.paths_requested())
    limited, report = load_html_documents(site.url("/docs/"), max_pages=3, show_progress=False, return_report=True)
    assert len(site.paths_requested()) - before == 3
    assert paths(site, [d.id_ for d in limited]) == ["/docs/", "/docs/guide.html", "/docs/api/index.html"]
    assert sum("max_pages=3" in issue.reason for issue in report.skipped) > 5


def test_deeper_crawl_and_exclude_patterns(site: LocalServer) -> None:
    documents = load_html_documents(
        site.url("/docs/"), max_depth=3, timeout=1.0, exclude=["*/api/*", "*huge*", "*slow*"], show_progress=False
    )
    got = paths(site, [d.id_ for d in documents])
    assert "/docs/deep/level3.html" in got
    assert not any("/api/" in p for p in got)


def test_start_url_without_trailing_slash_and_keep_links(site: LocalServer) -> None:
    site.add_page("/manual", '<html><body><main><p><a href="/manual/a.html">A</a> LINKED</p></main></body></html>')
    site.add_page("/manual/a.html", "<html><body><p>PAGE_A</p></body></html>")
    documents = load_html_documents(site.url("/manual"), keep_links=True, show_progress=False)
    assert paths(site, [d.id_ for d in documents]) == ["/manual", "/manual/a.html"]
    assert f"[A]({site.url('/manual/a.html')})" in documents[0].text


def test_trickling_page_hits_the_whole_page_deadline(site: LocalServer) -> None:
    # every chunk arrives well within the read timeout; only the per-page deadline stops it
    site.add_route("GET", "/trickle/index.html", lambda _req: Response(
        200, b"<html><body>" + b"<p>drip</p>" * 200 + b"</body></html>", {"Content-Type": "text/html"},
        chunks=20, chunk_delay_s=0.25,
    ))
    started = time.monotonic()
    documents, report = load_html_documents(site.url("/trickle/index.html"), timeout=1.0, show_progress=False, return_report=True)
    assert documents == [] and "timed out" in report.failed[0].reason
    assert time.monotonic() - started < 3.0


def test_hostile_markup_and_links_do_not_stop_the_crawl(site: LocalServer) -> None:
    site.add_page("/hostile/index.html", (
        "<html><head><title>Hostile</title></head><body><p>HOSTILE_MARKER</p>"
        '<a href="http://[broken">bad host</a><a href="http://127.0.0.1:99999/x">bad port</a>'
        '<a href="garbage.html">garbage</a><a href="empty.html">empty</a></body></html>'
    ))
    site.add_route("GET", "/hostile/garbage.html", lambda _req: Response(
        200, bytes(range(256)) * 50 + b"<p>GARBAGE_MARKER</p>", {"Content-Type": "text/html; charset=utf-8"}
    ))
    site.add_route("GET", "/hostile/empty.html", lambda _req: Response(200, b"", {"Content-Type": "text/html"}))
    documents, report = load_html_documents(site.url("/hostile/index.html"), show_progress=False, return_report=True)
    assert paths(site, report.loaded)[:2] == ["/hostile/index.html", "/hostile/garbage.html"]
    assert "GARBAGE_MARKER" in documents[1].text
    assert [(paths(site, [i.url])[0], i.reason) for i in report.failed] == [("/hostile/empty.html", "no text content")]
    malformed = [i.url for i in report.skipped if i.reason.startswith("malformed URL")]
    assert malformed == ["http://[broken", "http://127.0.0.1:99999/x"]
    with pytest.raises(ValueError, match="malformed"):
        load_html_documents("http://127.0.0.1:99999/docs/")


def test_failures_are_logged(site: LocalServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llama_index_deepmemory.data.html"):
        load_html_documents(site.url("/docs/missing.html"), show_progress=False)
    assert any("missing.html" in r.getMessage() and "HTTP 404" in r.getMessage() for r in caplog.records)


def test_local_folder_reads_every_html_file(tmp_path: Path) -> None:
    documents, report = load_html_documents(SITE_ROOT, show_progress=False, return_report=True)
    expected = sorted(p.relative_to(SITE_ROOT).as_posix() for p in SITE_ROOT.rglob("*.html"))
    assert [d.id_ for d in documents] == expected == report.loaded
    by_id = {d.id_: d for d in documents}
    assert by_id["docs/api/index.html"].metadata["path"] == "docs/api/index.html"
    assert Path(by_id["docs/api/index.html"].metadata["file_path"]) == (SITE_ROOT / "docs/api/index.html").resolve()
    assert "SPHINX_SIDEBAR_CHROME" not in by_id["docs/api/index.html"].text
    # a single file, a size cap and non-UTF-8 bytes without a declared charset
    page = tmp_path / "odd.htm"
    page.write_bytes(b"<html><body><p>caf\xe9 \xff\xfe ODD_MARKER</p></body></html>")
    (documents,) = [load_html_documents(page, show_progress=False)]
    assert len(documents) == 1 and "ODD_MARKER" in documents[0].text
    (tmp_path / "big.html").write_text("<p>x</p>" * 1000)
    _, report = load_html_documents(tmp_path, max_bytes=2000, show_progress=False, return_report=True)
    assert report.loaded == ["odd.htm"] and "too large" in report.failed[0].reason


def test_unsupported_sources_are_clear_errors(tmp_path: Path) -> None:
    for source in ("ftp://127.0.0.1/docs/", "javascript:alert(1)", "file:///etc/passwd", "data:text/html,hi"):
        with pytest.raises(ValueError, match="only http"):
            load_html_documents(source)
    with pytest.raises(ValueError, match="neither an http"):
        load_html_documents(tmp_path / "missing")
    with pytest.raises(ValueError, match="no host"):
        load_html_documents("http:///docs")
    with pytest.raises(TypeError, match="source must be"):
        load_html_documents(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth"):
        load_html_documents(tmp_path, max_depth=-1)
    with pytest.raises(ValueError, match="timeout"):
        load_html_documents(tmp_path, timeout=0)


@pytest.mark.skipif(not (PYTHON_DOCS / "faq").is_dir(), reason="python3.11-doc not installed")
def test_python_sphinx_docs_keep_the_body_only() -> None:
    documents = load_html_documents(PYTHON_DOCS / "faq", show_progress=False)
    by_id = {d.id_: d for d in documents}
    general = by_id["general.html"]
    assert general.metadata["title"].startswith("General Python FAQ")
    assert general.text.startswith("# General Python FAQ")
    assert "### What is Python?" in general.text
    for chrome in ("Table of Contents", "Previous topic", "This Page", "Report a Bug", "Theme"):
        assert chrome not in general.text, chrome


def test_html_response_helper_serves_extra_routes() -> None:
    with LocalServer(max_lifetime_s=10) as server:
        server.add_route("GET", "/x.html", lambda _req: html_response("<title>X</title><p>EXTRA</p>"))
        (document,) = load_html_documents(server.url("/x.html"), show_progress=False)
    assert document.metadata["title"] == "X" and "EXTRA" in document.text


def test_encoding_comes_from_bom_header_meta_then_utf8_then_windows_1252(tmp_path: Path) -> None:
    pages = {  # file -> (bytes, text the document must contain, decoded independently with Python's codecs)
        "bom16.html": ("\ufeff<p>UTF16 \u00e9t\u00e9</p>".encode("utf-16-le"), "UTF16 \u00e9t\u00e9"),
        "meta1252.html": (b'<meta charset="iso-8859-1"><p>Q \x93quoted\x94 caf\xe9</p>',
                          b"Q \x93quoted\x94 caf\xe9".decode("cp1252")),
        "metasjis.html": (b'<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"><p>'
                          + "SJIS \u65e5\u672c".encode("shift_jis") + b"</p>", "SJIS \u65e5\u672c"),
        "nul.html": (b"<p>NUL\x00BYTES caf\xc3\xa9</p>", "NULBYTES caf\u00e9"),
        "latin.html": (b"<p>LATIN caf\xe9 na\xefve</p>", "LATIN caf\u00e9 na\u00efve"),
    }
    for name, (data, _) in pages.items():
        (tmp_path / name).write_bytes(data)
    documents = load_html_documents(tmp_path, show_progress=False)
    texts = {d.id_: d.text for d in documents}
    for name, (_, expected) in pages.items():
        assert expected in texts[name], (name, texts[name])
    # an HTTP charset beats <meta>; a declared charset keeps its valid text around an invalid byte
    from llama_index_deepmemory.data.html import decode_html

    assert decode_html(b'<meta charset="latin-1">caf\xc3\xa9', "utf-8").endswith("caf\u00e9")
    assert decode_html(b"caf\xc3\xa9 caf\xe9", "UTF-8") == "caf\u00e9 caf\ufffd"
    assert decode_html(b"caf\xe9", "x-no-such-charset") == "caf\u00e9"  # unknown label: ignored
    assert decode_html(b"caf\xe9", "zlib") == "caf\u00e9"  # not a text encoding: ignored, never decompressed


def test_page_of_several_articles_keeps_every_article(tmp_path: Path) -> None:
    # a blog index or a docs page with one <article> per section: no article is the main content
    page = tmp_path / "posts.html"
    page.write_text(
        "<html><body><nav>MENU_CHROME</nav><article><h2>First</h2><p>ALPHA_TEXT</p></article>"
        "<article><h2>Second</h2><p>BETA_TEXT</p><article><p>NESTED_TEXT</p></article></article>"
        "<footer>FOOTER_CHROME</footer></body></html>"
    )
    (document,) = load_html_documents(page, show_progress=False)
    assert all(word in document.text for word in ("ALPHA_TEXT", "BETA_TEXT", "NESTED_TEXT"))
    assert "MENU_CHROME" not in document.text and "FOOTER_CHROME" not in document.text
    # one article (with comments nested in it) is still the main content
    page.write_text("<html><body><p>INTRO_CHROME</p><article><p>ONLY_TEXT</p><article>REPLY_TEXT</article></article></body></html>")
    (document,) = load_html_documents(page, show_progress=False)
    assert "ONLY_TEXT" in document.text and "REPLY_TEXT" in document.text and "INTRO_CHROME" not in document.text
