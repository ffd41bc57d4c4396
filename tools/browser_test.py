"""Open every page of the built book in headless Chromium and check what a reader sees.

    python tools/browser_test.py _build/html [--chromium /usr/bin/chromium] [--screenshots _build/screenshots]

The book is served from 127.0.0.1 by Python's http.server (in a thread), and Playwright drives the system's
Chromium (it downloads no browser). For every .html page (but _static/, _sources/, genindex and search,
which are handled apart) it checks that

- math is rendered: where the page has math, MathJax produced ``mjx-container`` elements, none of them a
  TeX error (``mjx-merror``, or an undefined macro, which MathJax shows as red text), and no ``$$``, ``\\[``
  or ``\\begin{`` is left in the visible text outside code;
- every <img> loaded (naturalWidth > 0);
- no cell output contains "Traceback";
- the page threw no JavaScript error and every request it made to the server succeeded (known, harmless errors
  of the toolchain, KNOWN_JS_ERRORS, are warnings; so are requests for anything outside the book, which are
  blocked, so that a page that needs a CDN fails the checks above);
- every link of the table of contents (the sidebar) resolves to an existing page (HTTP 200);

then that the search page (``search.html?q=continuity``) lists at least one result. A full-page screenshot of
each page goes to the screenshots folder. Exit status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urldefrag, urljoin, urlparse

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "reports", "jupyter_execute"}
SKIP_PAGES = {"genindex.html", "search.html", "py-modindex.html"}
SEARCH_QUERY = "continuity"
TIMEOUT_MS = 60_000

# Math that Sphinx/MyST emits for MathJax, before it is typeset.
JS_PAGE_STATE = r"""
() => {
  const main = document.querySelector('main') || document.body;
  // Visible text outside code, scripts and typeset math: where untypeset TeX would show.
  const skip = 'pre, code, script, style, mjx-container, .highlight, textarea';
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  let text = '';
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip) || el.getClientRects().length === 0) continue;
    text += n.textContent + '\n';
  }
  return {
    mathSources: document.querySelectorAll('.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    // TeX errors: mjx-merror, or (MathJax's noundefined extension) an undefined macro shown as red text
    mathErrors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error')
                                                                         || e.textContent)
        .concat(Array.from(document.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]'))
                .map(e => e.textContent).filter(t => t.startsWith('\\')))
        .slice(0, 5),
    rawTex: (text.match(/\$\$|\\\[|\\begin\{/g) || []).length,
    rawSample: (text.match(/.{0,40}(\$\$|\\\[|\\begin\{).{0,40}/) || [''])[0],
    mathjaxLoaded: typeof window.MathJax === 'object' && !!window.MathJax.startup,
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth,
                                                   complete: i.complete})),
    outputsWithTraceback: Array.from(document.querySelectorAll('.cell_output, .output'))
        .filter(o => o.innerText.includes('Traceback')).length,
    tocLinks: Array.from(document.querySelectorAll('.bd-sidebar-primary nav.bd-docs-nav a[href]'))
        .map(a => a.href),
  };
}
"""


# Known, harmless console errors of the toolchain (not of the book): sphinx-thebe 0.3.1 under Sphinx 7.4 puts its
# inline `const THEBE_JS_URL = ...` script twice in every page, and the second one throws.
KNOWN_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


@dataclass
class Report:
    pages: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def fail(self, page: str, what: str) -> None:
        self.problems.append(f"{page}: {what}")

    def warn(self, page: str, what: str) -> None:
        self.warnings.append(f"{page}: {what}")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the browser dropped a connection: fine
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``root`` on a free port of 127.0.0.1 in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def book_pages(root: Path) -> list[str]:
    """Every .html page of the book, relative to ``root``, in a stable order."""
    pages = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or rel.as_posix() in SKIP_PAGES:
            continue
        pages.append(rel.as_posix())
    return pages


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_for_math(page: Page) -> None:
    """Wait until MathJax has typeset the page (or for a page without math, until it has loaded)."""
    page.wait_for_load_state("load")
    page.wait_for_function(
        "() => !document.querySelector('.math') || "
        "(window.MathJax && MathJax.startup && MathJax.startup.promise && "
        "document.querySelector('mjx-container') !== null)",
        timeout=TIMEOUT_MS,
    )
    page.evaluate("() => window.MathJax && MathJax.startup && MathJax.startup.promise")


REDIRECT = re.compile(r'<meta http-equiv="refresh" content="\d+;\s*url=([^"]+)"', re.IGNORECASE)


def check_page(page: Page, base: str, rel: str, report: Report, shots: Path | None, seen_toc: set[str]) -> None:
    errors: list[str] = []
    bad_requests: list[str] = []
    external: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: bad_requests.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
    page.on(
        "requestfailed",
        lambda req: (bad_requests if req.url.startswith(base) else external).append(f"{req.url} ({req.failure})"),
    )
    response = page.goto(base + rel, wait_until="load", timeout=TIMEOUT_MS)
    if response is None or response.status != 200:
        report.fail(rel, f"HTTP {None if response is None else response.status}")
        return
    try:
        wait_for_math(page)
    except Exception as exc:  # a timeout: the counts below say what is missing
        report.fail(rel, f"MathJax did not finish: {type(exc).__name__}")
    page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    state = page.evaluate(JS_PAGE_STATE)
    report.pages += 1
    if state["mathSources"]:
        if not state["mathjaxLoaded"]:
            report.fail(rel, "the page has math but MathJax did not load")
        if state["mjx"] == 0:
            report.fail(rel, f"{state['mathSources']} math elements, no mjx-container: math not rendered")
    if state["mathErrors"]:
        report.fail(rel, f"MathJax errors: {state['mathErrors']}")
    if state["rawTex"]:
        report.fail(rel, f"{state['rawTex']} raw $$ / \\[ / \\begin left in the visible text: {state['rawSample']!r}")
    for img in state["images"]:
        if not img["complete"] or img["w"] == 0:
            report.fail(rel, f"image not loaded: {img['src'][:120]}")
    if state["outputsWithTraceback"]:
        report.fail(rel, f"{state['outputsWithTraceback']} cell output(s) contain a Traceback")
    if not state["tocLinks"]:
        report.fail(rel, "no table-of-contents links found in the sidebar")
    for href in state["tocLinks"]:
        url, _ = urldefrag(href)
        if url.startswith(base) and url not in seen_toc:
            seen_toc.add(url)
            status = http_status(url)
            if status != 200:
                report.fail(rel, f"table-of-contents link {url} gives HTTP {status}")
    for err in errors:
        if any(known in err for known in KNOWN_JS_ERRORS):
            report.warn(rel, f"known JavaScript error of the toolchain: {err[:200]}")
        else:
            report.fail(rel, f"JavaScript error: {err[:200]}")
    for req in bad_requests:
        report.fail(rel, f"request failed: {req[:200]}")
    for req in external:  # blocked; what the page needs from outside is checked above (math, images)
        report.warn(rel, f"asks for a resource outside the book (blocked): {req[:200]}")
    if shots is not None:
        out = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
        page.screenshot(path=str(out), full_page=True)
    print(f"ok {rel}: {state['mjx']} formulas, {len(state['images'])} images, {len(state['tocLinks'])} toc links")


def check_redirect(html: Path, base: str, rel: str, report: Report) -> bool:
    """A redirect stub (the root index.html): its target must exist. Return whether ``rel`` is one."""
    match = REDIRECT.search((html / rel).read_text(encoding="utf-8", errors="replace"))
    if match is None:
        return False
    target = urljoin(base + rel, match.group(1))
    status = http_status(target)
    if status != 200:
        report.fail(rel, f"redirects to {target}, which gives HTTP {status}")
    print(f"ok {rel}: redirects to {target}")
    return True


def check_search(page: Page, base: str, report: Report, shots: Path | None) -> None:
    page.goto(f"{base}search.html?q={SEARCH_QUERY}", wait_until="load", timeout=TIMEOUT_MS)
    try:
        page.wait_for_selector("#search-results ul.search li, ul.search li", timeout=TIMEOUT_MS)
    except Exception:
        report.fail("search.html", f"no result for {SEARCH_QUERY!r}")
        return
    hits = page.locator("ul.search li").count()
    if hits < 1:
        report.fail("search.html", f"no result for {SEARCH_QUERY!r}")
    print(f"search.html?q={SEARCH_QUERY}: {hits} result(s)")
    if shots is not None:
        page.screenshot(path=str(shots / "search.png"), full_page=True)


def run(html: Path, chromium: str, shots: Path | None) -> Report:
    from playwright.sync_api import sync_playwright

    report = Report()
    pages = book_pages(html)
    if not pages:
        report.fail(str(html), "no .html pages")
        return report
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    server, base = serve(html)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            # Nothing outside the served book: a CDN left in a page shows up as a failed request.
            context.route(lambda url: urlparse(url).hostname not in ("127.0.0.1", None), lambda route: route.abort())
            seen_toc: set[str] = set()
            for rel in pages:
                if check_redirect(html, base, rel, report):
                    continue
                page = context.new_page()
                try:
                    check_page(page, base, rel, report, shots, seen_toc)
                except Exception as exc:
                    report.fail(rel, f"{type(exc).__name__}: {exc}")
                finally:
                    page.close()
            page = context.new_page()
            check_search(page, base, report, shots)
            page.close()
            browser.close()
    finally:
        server.shutdown()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, nargs="?", default=Path("_build/html"), help="the built book")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium (or Chrome) executable")
    parser.add_argument("--screenshots", type=Path, default=Path("_build/screenshots"))
    parser.add_argument("--no-screenshots", action="store_true")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(f"{args.html}/index.html not found: build the book first (make book)", file=sys.stderr)
        return 1
    report = run(args.html, args.chromium, None if args.no_screenshots else args.screenshots)
    for warning in report.warnings:
        print("WARN", warning)
    for problem in report.problems:
        print("FAIL", problem)
    print(f"{report.pages} pages checked, {len(report.problems)} problem(s), {len(report.warnings)} warning(s)")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
