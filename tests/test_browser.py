"""The built book in a real browser: headless Chromium, with no network.

Chromium (Debian's `chromium`, installed by `make test` through tools/ensure-browser.sh)
is driven by Playwright over `_build/html`, served from 127.0.0.1. Every request that
leaves 127.0.0.1 is blocked and recorded, so a page that still needs a CDN fails here
exactly as it would for a reader without internet. One crawl visits every page and
records what it saw; each test below checks one property of that record:

- every page loads with no console error and no failed request;
- no request goes to a host other than the local server;
- every math element is typeset by MathJax, and no raw TeX is left in the visible text;
- every <img> has loaded (naturalWidth > 0);
- the search page finds three course terms, one of them Chinese;
- every internal link and anchor resolves;
- every chapter offers its notebook (.ipynb) for download, and the file is a valid notebook.

It also saves a full-page screenshot of every chapter in `_build/screenshots/`, for review.
The book comes from tests/test_book.py's build (run just before this module); when that
build is missing or older than its sources, it is built here. SEQCOURSE_BOOK_HTML points
the test at another built `html` folder instead (that folder is not rebuilt).
"""

import functools
import http.server
import json
import os
import re
import shutil
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import nbformat
import pytest
import yaml

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # reported, loudly, by the `browser` fixture
    sync_playwright = None

from .test_book import REPO, book_is_fresh, build_book

pytestmark = [pytest.mark.book, pytest.mark.slow]

# Flags that let Chromium run headless as root in a container and keep it from
# calling home (updates, sync, field trials). Playwright adds --headless itself.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Search terms a reader of this course would type, each with a page it must find.
SEARCH_TERMS = {
    "perplexity": "book/language-models-and-perplexity.html",
    "attention": "book/attention.html",
    "循环神经网络": "book/glossary.html",  # recurrent neural network, in the glossary
}
RAW_TEX = ["\\(", "\\)", "\\[", "\\]", "$$", "\\begin{"]
SETTLE_S = 30  # the longest a late request (a font, a MathJax extension) may take


def _chromium() -> str | None:
    for candidate in [os.environ.get("SEQCOURSE_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"]:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def _missing(reason: str):
    """No browser: fail under CI=true, otherwise skip, and say so loudly either way."""
    message = (f"BROWSER TEST NOT RUN: {reason}. Run `make test` as root to install Debian's "
               "chromium and fonts-noto-cjk (tools/ensure-browser.sh), or set SEQCOURSE_CHROMIUM.")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    warnings.warn(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def html_dir() -> Path:
    """The built book: SEQCOURSE_BOOK_HTML, or _build/html, rebuilt when stale."""
    if os.environ.get("SEQCOURSE_BOOK_HTML"):
        return Path(os.environ["SEQCOURSE_BOOK_HTML"]).resolve()
    if not book_is_fresh():
        proc = build_book()
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return REPO / "_build" / "html"


@pytest.fixture(scope="module")
def server(html_dir):
    """Serve the built book on 127.0.0.1 at a free port; yield its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(html_dir))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A Chromium context with a fresh profile that can reach only 127.0.0.1."""
    chromium = _chromium()
    if chromium is None:
        _missing("no Chromium executable found")
    if sync_playwright is None:
        _missing("the playwright Python package is not installed (see requirements.lock)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900}, locale="en-US",
        )
        context.set_default_timeout(60_000)
        external = []

        def only_local(route):
            host = urlsplit(route.request.url).hostname
            if host == "127.0.0.1":
                route.continue_()
            else:  # would need the network: block it and remember who asked
                external.append(route.request.url)
                route.abort("blockedbyclient")

        context.route("**/*", only_local)
        context.external_requests = external
        yield context
        context.close()


# In-page scripts. Each returns plain data for the record.
WAIT_UNTIL_RENDERED = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  for (const img of document.images) img.loading = 'eager';   // lazy images load too
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.addEventListener('load', done); img.addEventListener('error', done); })));
  await document.fonts.ready;
}"""
INSPECT_PAGE = """(rawTex) => {
  const maths = [...document.querySelectorAll('.math')];
  const skip = 'pre, code, script, style, textarea, mjx-container, .highlight';
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip) || !parent.checkVisibility()) continue;
    for (const tex of rawTex) {
      if (node.textContent.includes(tex)) raw.push(node.textContent.trim().slice(0, 80));
    }
  }
  return {
    math: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60)),
    mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 60)),
    rawTex: raw,
    images: [...document.images].map(img => ({src: img.currentSrc || img.src, width: img.naturalWidth,
                                             alt: img.getAttribute('alt')})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
    notebook: (document.querySelector('a.btn-download-notebook-button') || {}).href || null,
  };
}"""


def _pages(html_dir: Path) -> list[str]:
    """Every HTML page of the book, relative to html_dir (assets folders excluded)."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir)
        if not rel.parts[0].startswith(("_", ".")):
            pages.append(rel.as_posix())
    return pages


def _chapters() -> list[str]:
    """The pages listed in _toc.yml (root first), as paths of their HTML files."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [toc["root"]] + [ch["file"] for part in toc["parts"] for ch in part["chapters"]]
    return [f"{f}.html" for f in files]


def _is_notebook_chapter(page: str) -> bool:
    """A chapter written as a MyST notebook (jupytext front matter), as opposed to plain Markdown."""
    source = REPO / page.replace(".html", ".md")
    return source.exists() and "jupytext:" in source.read_text(encoding="utf-8")[:600]


def _settle(page, pending: set, quiet_ms: int = 300):
    """Wait until no request of `page` is in flight, and none starts for `quiet_ms`."""
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        if not pending:
            page.wait_for_timeout(quiet_ms)  # pumps events: a late request shows up here
            if not pending:
                return
        page.wait_for_timeout(50)


@pytest.fixture(scope="module")
def crawl(html_dir, server, browser):
    """Visit every page once; record what each one loaded, showed and linked to."""
    shots = html_dir.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    for old in shots.glob("*.png"):  # no stale picture of a renamed chapter
        old.unlink()
    chapters = set(_chapters())
    record = {}
    for rel in _pages(html_dir):
        text = (html_dir / rel).read_text(encoding="utf-8", errors="replace")
        redirect = re.search(r'http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', text, flags=re.I)
        if redirect:  # the root index.html only forwards to the first page
            record[rel] = dict(console_errors=[], failed=[], math=0, untypeset=[], mathErrors=[], rawTex=[],
                               images=[], links=[server + redirect.group(1)], ids=[], notebook=None)
            continue
        page = browser.new_page()
        seen = {"console_errors": [], "failed": []}
        page.on("console", lambda m, s=seen: m.type == "error" and s["console_errors"].append(m.text))
        page.on("pageerror", lambda e, s=seen: s["console_errors"].append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r, s=seen: urlsplit(r.url).hostname == "127.0.0.1"
                and s["failed"].append(f"{r.url} ({r.failure})"))
        page.on("response", lambda r, s=seen: r.status >= 400 and s["failed"].append(f"{r.url} ({r.status})"))
        pending = set()  # requests sent and not yet answered
        page.on("request", lambda r, q=pending: q.add(r.url))
        page.on("requestfinished", lambda r, q=pending: q.discard(r.url))
        page.on("requestfailed", lambda r, q=pending: q.discard(r.url))
        page.goto(server + rel, wait_until="load")
        page.evaluate(WAIT_UNTIL_RENDERED)
        _settle(page, pending)
        seen["failed"] += [f"{url} (no answer after {SETTLE_S} s)" for url in sorted(pending)]
        seen.update(page.evaluate(INSPECT_PAGE, RAW_TEX))
        if rel in chapters:
            stem = Path(rel).stem
            page.screenshot(path=str(shots / f"{stem}.png"), full_page=True)
            seen["notebook_bytes"] = page.request.get(seen["notebook"]).body() if seen["notebook"] else None
        record[rel] = seen
        page.close()
    return record


@pytest.fixture(scope="module")
def search_results(server, browser):
    """The result links the search page lists for each of SEARCH_TERMS."""
    results = {}
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    for term in SEARCH_TERMS:
        page.goto(f"{server}search.html?q={quote(term)}", wait_until="load")
        page.wait_for_function(
            "() => /found|did not match/.test((document.querySelector('#search-results .search-summary')"
            " || {}).textContent || '')")
        results[term] = page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
    page.close()
    assert not errors, errors
    return results


def test_every_page_loads_without_console_errors_or_failed_requests(crawl):
    bad = {p: r["console_errors"] + r["failed"] for p, r in crawl.items() if r["console_errors"] or r["failed"]}
    assert not bad, json.dumps(bad, indent=1, ensure_ascii=False)[:4000]
    assert set(_chapters()) <= set(crawl), "a chapter of _toc.yml was not built"


def test_no_request_leaves_the_local_server(browser, crawl):
    assert not browser.external_requests, sorted(set(browser.external_requests))


def test_every_math_element_is_typeset_and_no_raw_tex_is_visible(crawl):
    assert sum(r["math"] for r in crawl.values()) > 0, "no math found: is MathJax configured?"
    for name in ["untypeset", "mathErrors", "rawTex"]:
        bad = {p: r[name][:5] for p, r in crawl.items() if r[name]}
        assert not bad, f"{name}: {json.dumps(bad, indent=1, ensure_ascii=False)[:4000]}"


def test_every_image_has_loaded(crawl):
    bad = {p: [i["src"] for i in r["images"] if i["width"] == 0] for p, r in crawl.items()}
    bad = {p: srcs for p, srcs in bad.items() if srcs}
    assert not bad, bad
    assert sum(len(r["images"]) for r in crawl.values()) > 0, "the book shows no image"


def test_search_finds_course_terms_in_english_and_chinese(search_results, server):
    for term, expected in SEARCH_TERMS.items():
        hits = search_results[term]
        assert hits, f"search for {term!r} found nothing"
        assert any(urlsplit(h).path == f"/{expected}" for h in hits), (term, expected, hits)


def test_every_internal_link_and_anchor_resolves(crawl, html_dir, server):
    broken = []
    for page, r in crawl.items():
        for href in r["links"]:
            if not href.startswith(server):
                continue  # external (shown to the reader, never requested) or javascript:
            url = urlsplit(href)
            target = unquote(url.path).lstrip("/") or "index.html"
            if target.endswith("/"):
                target += "index.html"
            if not (html_dir / target).is_file():
                broken.append(f"{page}: {href} (no such file)")
            elif url.fragment and target in crawl and unquote(url.fragment) not in crawl[target]["ids"]:
                broken.append(f"{page}: {href} (no such anchor)")
    assert not broken, "\n".join(broken[:50])


def test_every_notebook_chapter_downloads_as_a_valid_notebook(crawl):
    notebook_chapters = [p for p in _chapters() if _is_notebook_chapter(p)]
    assert notebook_chapters, "no notebook chapter found"
    for page in notebook_chapters:
        r = crawl[page]
        assert r["notebook"], f"{page} has no .ipynb download button"
        assert r["notebook"].endswith(".ipynb"), r["notebook"]
        nb = nbformat.reads(r["notebook_bytes"].decode("utf-8"), as_version=4)
        nbformat.validate(nb)
        assert any(c.cell_type == "code" for c in nb.cells), f"{page}: notebook without code"
        assert nb.metadata["kernelspec"]["language"] == "python", page


def test_report_counts_and_screenshots(crawl, html_dir, search_results, capsys):
    """Write _build/browser-report.json and print the counts in the test log."""
    shots = sorted((html_dir.parent / "screenshots").glob("*.png"))
    assert len(shots) >= len(_chapters())
    counts = {
        "pages": len(crawl),
        "images": sum(len(r["images"]) for r in crawl.values()),
        "math_elements": sum(r["math"] for r in crawl.values()),
        "links": sum(len(r["links"]) for r in crawl.values()),
        "internal_links": sum(sum(h.startswith("http://127.0.0.1") for h in r["links"]) for r in crawl.values()),
        "notebooks": sum(1 for r in crawl.values() if r.get("notebook_bytes")),
        "screenshots": len(shots),
        "search_hits": {t: len(h) for t, h in search_results.items()},
    }
    (html_dir.parent / "browser-report.json").write_text(json.dumps(counts, indent=1, ensure_ascii=False))
    with capsys.disabled():
        print(f"\nbrowser test: {json.dumps(counts, ensure_ascii=False)}")
    assert counts["pages"] >= len(_chapters()) and counts["math_elements"] > 0 and counts["links"] > 0
