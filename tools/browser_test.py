"""Open every page of the built book in headless Chromium and check what a reader sees.

    python tools/browser_test.py _build/html [--chromium /usr/bin/chromium] [--screenshots _build/screenshots]
                                             [--json _build/browser-report.json]

The book is served from 127.0.0.1 by Python's http.server (in a thread), and Playwright drives the system's
Chromium (it downloads no browser). For every .html page (but _static/, _sources/, genindex and search,
which are handled apart), in a 1280 x 900 window, it checks that

- math is rendered: where the page has math, MathJax produced ``mjx-container`` elements, none of them a
  TeX error (``mjx-merror``, or an undefined macro, which MathJax shows as red text);
- no raw TeX is visible in the rendered text outside code and math: no ``$``, ``$$``, ``\\[``, ``\\begin{``
  or other backslash command (``\\frac``, ``\\mathcal``, ...);
- no display equation is wider than its container (it would be cut off or scroll);
- every figure image (also those in collapsed cells, measured with every toggle open) is legible: its
  pixels per typographic point on screen,
  (dpi / 72) x (displayed width / natural width), is at least MIN_PX_PER_POINT = 1.0, so a 10 pt label
  is at least 10 px tall. The dpi is read from the PNG's pHYs chunk (matplotlib writes it), from a
  ``data-dpi`` attribute (fmlib.plotting's animations), or from an SVG's width in points;
- no visible cell output has a line that starts with "OK" or ends with "checks passed" (asserting cells
  print nothing and have their output removed);
- every <img> loaded (naturalWidth > 0);
- no cell output contains "Traceback";
- the page threw no JavaScript error and every request it made to the server succeeded (known, harmless errors
  of the toolchain, KNOWN_JS_ERRORS, are warnings); requests for anything outside the book (a CDN) are
  blocked and fail the page: the book must need nothing from outside;
- every link of the table of contents (the sidebar) resolves to an existing page (HTTP 200);
- the launch buttons (Colab, Binder) open the page's own notebook, ``.../book/NN_x.ipynb``;

- nothing is wider than its column: no code cell, cell output or table scrolls sideways or is cut;

then, in a 400 x 900 window (a phone), that every display equation fits its column (``book/css/fit-math.js``
shrinks a wide one to at most 60 %; a wider one must be broken in the chapter), and tables that scroll are
warnings; then that the search page (``search.html?q=continuity``) lists at least one result. Full-page
screenshots of each page at 1280 px and at 400 px go to the screenshots folder (``page.png``,
``page.400px.png``), and the per-figure pixel densities and the overflowing equations to the JSON report. Exit
status 0 when everything passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import re
import struct
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
VIEWPORT = {"width": 1280, "height": 900}
NARROW_VIEWPORT = {"width": 400, "height": 900}
MIN_PX_PER_POINT = 1.0
# Visible raw TeX: a backslash command or a dollar sign left in the text outside code and typeset math.
RAW_TEX = re.compile(r"\$|\\[A-Za-z]+|\\\[|\\\(")
# What an asserting cell prints when it passes; such output must not be visible.
CHECK_OUTPUT = re.compile(r"^\s*OK\b|checks passed\.?\s*$", re.MULTILINE)

# Math that Sphinx/MyST emits for MathJax, before it is typeset.
JS_PAGE_STATE = r"""
() => {
  const main = document.querySelector('main') || document.body;
  // The text of the last heading before an element: says where on the page a problem is.
  const headings = Array.from(main.querySelectorAll('h1, h2, h3'));
  const nearestHeading = (el) => {
    let last = '';
    for (const h of headings) {
      if (h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) {
        last = h.textContent.replace('#', '').trim();
      }
    }
    return last.slice(0, 60);
  };
  // Visible text outside code, scripts and typeset math: where untypeset TeX would show.
  // (API signatures, dt.sig, are code too: a default value may be a string holding TeX.)
  const skip = 'pre, code, script, style, mjx-container, .highlight, textarea, .sig';
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
    text: text,
    mathjaxLoaded: typeof window.MathJax === 'object' && !!window.MathJax.startup,
    images: Array.from(document.images).map(i => ({src: i.currentSrc || i.src, w: i.naturalWidth,
                                                   complete: i.complete})),
    outputsWithTraceback: Array.from(document.querySelectorAll('.cell_output, .output'))
        .filter(o => o.innerText.includes('Traceback')).length,
    tocLinks: Array.from(document.querySelectorAll('.bd-sidebar-primary nav.bd-docs-nav a[href]'))
        .map(a => a.href),
    // Launch buttons (Colab, Binder): where they send the reader.
    launchLinks: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"], a[href*="mybinder.org"]'))
        .map(a => a.href),
    // Figure images in the page's content (not the logo or icons): natural and displayed size, recorded dpi.
    figures: Array.from(main.querySelectorAll('img')).filter(i => i.getClientRects().length > 0).map(i => ({
        src: i.currentSrc || i.src, natural: i.naturalWidth, shown: i.getBoundingClientRect().width,
        dpi: i.getAttribute('data-dpi'), where: nearestHeading(i)})),
    // Display equations: the typeset width against the width of the box that holds them.
    equations: ((window.MathJax && MathJax.startup && MathJax.startup.document &&
                 Array.from(MathJax.startup.document.math || [])) || [])
        .filter(m => m.display && m.typesetRoot && m.typesetRoot.getClientRects().length > 0)
        .map(m => {
          const root = m.typesetRoot;
          const inner = root.querySelector('mjx-math') || root;
          const box = root.parentElement || root;
          return {tex: m.math, width: inner.getBoundingClientRect().width,
                  box: Math.min(box.clientWidth, root.getBoundingClientRect().width), where: nearestHeading(root)};
        }),
    // Visible text of cell outputs, per output block.
    outputs: Array.from(main.querySelectorAll('.cell_output .output, .cell_output > div'))
        .filter(o => o.getClientRects().length > 0 && !o.querySelector('.output'))
        .map(o => ({text: o.innerText, where: nearestHeading(o)})),
    // Code cells whose lines are wider than their box (they scroll sideways).
    scrollingCode: Array.from(main.querySelectorAll('.cell_input pre, div.highlight pre'))
        .filter(p => p.getClientRects().length > 0 && p.scrollWidth > p.clientWidth + 1)
        .map(p => ({over: p.scrollWidth - p.clientWidth, where: nearestHeading(p)})),
    // Cell outputs (text, HTML tables) wider than their box: a printed line or a table column cut or scrolling.
    wideOutputs: Array.from(main.querySelectorAll('.cell_output pre, .cell_output .output, .cell_output > div'))
        .filter(o => o.getClientRects().length > 0 && o.scrollWidth > o.clientWidth + 1)
        .map(o => ({over: o.scrollWidth - o.clientWidth, where: nearestHeading(o)})),
    // Tables of the prose and of outputs wider than the box that holds them, or reaching past the page's column.
    wideTables: Array.from(main.querySelectorAll('table'))
        .filter(t => t.getClientRects().length > 0 && !t.closest('.highlight'))
        .filter(t => t.scrollWidth > t.parentElement.clientWidth + 1 ||
                     t.getBoundingClientRect().right > main.getBoundingClientRect().right + 1)
        .map(t => ({over: Math.round(Math.max(t.scrollWidth - t.parentElement.clientWidth,
                                              t.getBoundingClientRect().right - main.getBoundingClientRect().right)),
                    where: nearestHeading(t)})),
  };
}
"""


# Open what a reader can unfold: myst-nb's hidden cells (<details>) and sphinx-togglebutton's toggles.
JS_EXPAND_TOGGLES = r"""
() => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
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
    # per page: pixels per point of every figure, and the display equations wider than their box
    figures: dict[str, list[dict]] = field(default_factory=dict)
    equations: dict[str, list[dict]] = field(default_factory=dict)

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


def png_dpi(data: bytes) -> float | None:
    """Pixels per inch from a PNG's pHYs chunk (None when it has none or gives no physical unit)."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"pHYs" and length == 9:
            per_x, _, unit = struct.unpack(">IIB", data[pos + 8 : pos + 17])
            return per_x * 0.0254 if unit == 1 else None
        if kind in (b"IDAT", b"IEND"):  # pHYs must come before the image data
            return None
        pos += 12 + length
    return None


SVG_WIDTH = re.compile(rb"<svg[^>]*?\swidth=\"([0-9.]+)(pt|px|in|cm|mm)?\"", re.DOTALL)
POINTS_PER_UNIT = {b"pt": 1.0, b"px": 0.75, b"in": 72.0, b"cm": 72 / 2.54, b"mm": 72 / 25.4, None: 0.75}


def svg_width_points(data: bytes) -> float | None:
    """Width of an SVG in typographic points, from the root element's width attribute."""
    match = SVG_WIDTH.search(data[:4000])
    return None if match is None else float(match.group(1)) * POINTS_PER_UNIT[match.group(2)]


def image_bytes(src: str) -> bytes:
    """The bytes of an image: decoded from a data: URI, or fetched from the local server."""
    if src.startswith("data:"):
        header, _, payload = src.partition(",")
        if header.endswith(";base64"):
            return base64.b64decode(payload)
        from urllib.parse import unquote_to_bytes

        return unquote_to_bytes(payload)
    with urllib.request.urlopen(src, timeout=10) as response:
        return response.read()


def px_per_point(figure: dict, data: bytes) -> tuple[float | None, str]:
    """Screen pixels per point of the figure, and where its resolution came from."""
    if figure["natural"] <= 0 or figure["shown"] <= 0:
        return None, "not shown"
    width_pt = svg_width_points(data) if data.lstrip()[:5] in (b"<?xml", b"<svg ") else None
    if width_pt:
        return figure["shown"] / width_pt, "svg"
    dpi = png_dpi(data)
    source = "pHYs"
    if dpi is None and figure.get("dpi"):
        dpi, source = float(figure["dpi"]), "data-dpi"
    if dpi is None:
        return None, "no dpi"
    return dpi / 72 * figure["shown"] / figure["natural"], source


def check_figures(figures: list[dict], rel: str, report: Report) -> None:
    measured = []
    for k, fig in enumerate(figures, start=1):
        try:
            data = image_bytes(fig["src"])
        except (OSError, ValueError) as exc:
            report.fail(rel, f"figure {k} (after '{fig['where']}'): cannot read the image: {exc}")
            continue
        density, source = px_per_point(fig, data)
        measured.append(
            {
                "figure": k,
                "where": fig["where"],
                "px_per_point": density,
                "dpi_from": source,
                "natural_px": fig["natural"],
                "shown_px": round(fig["shown"], 1),
            }
        )
        if density is None:
            report.fail(rel, f"figure {k} (after '{fig['where']}'): resolution unknown ({source})")
        elif density < MIN_PX_PER_POINT:
            report.fail(
                rel,
                f"figure {k} (after '{fig['where']}'): {density:.2f} px per point < {MIN_PX_PER_POINT} "
                f"(shown {fig['shown']:.0f} px of {fig['natural']} px): text too small",
            )
    report.figures[rel] = measured


def check_equations(equations: list[dict], rel: str, report: Report) -> None:
    wide = [e for e in equations if e["width"] > e["box"] + 1]
    report.equations[rel] = [
        {"where": e["where"], "width": round(e["width"]), "box": round(e["box"]), "tex": e["tex"].strip()[:200]}
        for e in wide
    ]
    for e in wide:
        tex = " ".join(e["tex"].split())[:80]
        report.fail(
            rel, f"display equation {e['width']:.0f} px wide in a {e['box']:.0f} px box (after '{e['where']}'): {tex}"
        )


def check_raw_tex(text: str, rel: str, report: Report) -> None:
    hits = list(RAW_TEX.finditer(text))
    if hits:
        samples = "; ".join(repr(text[max(0, m.start() - 30) : m.end() + 30].replace("\n", " ")) for m in hits[:3])
        report.fail(rel, f"{len(hits)} piece(s) of raw TeX in the visible text: {samples}")


def check_outputs(outputs: list[dict], rel: str, report: Report) -> None:
    for out in outputs:
        match = CHECK_OUTPUT.search(out["text"])
        if match:
            line = out["text"][match.start() : match.end() + 60].strip().splitlines()[0][:80]
            report.fail(rel, f"a check's output is visible (after '{out['where']}'): {line!r}")


def check_layout(state: dict, rel: str, report: Report) -> None:
    """At 1280 px nothing is wider than its column: code cells, cell outputs, tables."""
    for kind, name in (("scrollingCode", "a code cell"), ("wideOutputs", "a cell output"), ("wideTables", "a table")):
        for item in state[kind]:
            report.fail(rel, f"{name} is {item['over']} px wider than its column at 1280 px (after '{item['where']}')")


def check_narrow(state: dict, rel: str, report: Report) -> None:
    """At 400 px (a phone) every display equation fits (fit-math.js shrinks it, or the chapter breaks it);
    tables that scroll are reported as warnings."""
    for e in state["equations"]:
        if e["width"] > e["box"] + 1:
            tex = " ".join(e["tex"].split())[:80]
            report.fail(
                rel,
                f"display equation cut at 400 px: {e['width']:.0f} px in a {e['box']:.0f} px box "
                f"(after '{e['where']}'): {tex}",
            )
    for item in state["wideTables"]:
        report.warn(rel, f"a table scrolls by {item['over']} px at 400 px (after '{item['where']}')")


def screenshot_name(rel: str, suffix: str = "") -> str:
    """``book/01_x.html`` -> ``book__01_x.png`` (or ``book__01_x.400px.png`` with a suffix)."""
    return rel.replace("/", "__").removesuffix(".html") + (f".{suffix}" if suffix else "") + ".png"


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
    try:
        page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    except Exception as exc:  # a slow (shared) machine: check what has loaded; failed requests are caught below
        report.warn(rel, f"the network did not go idle: {type(exc).__name__}")
    state = page.evaluate(JS_PAGE_STATE)
    report.pages += 1
    if state["mathSources"]:
        if not state["mathjaxLoaded"]:
            report.fail(rel, "the page has math but MathJax did not load")
        if state["mjx"] == 0:
            report.fail(rel, f"{state['mathSources']} math elements, no mjx-container: math not rendered")
    if state["mathErrors"]:
        report.fail(rel, f"MathJax errors: {state['mathErrors']}")
    check_raw_tex(state["text"], rel, report)
    check_equations(state["equations"], rel, report)
    check_outputs(state["outputs"], rel, report)
    for href in state["launchLinks"]:
        # the page book/NN_x.html opens book/NN_x.ipynb of the repository (no "/./" from a "." path_to_book)
        if "/./" in href or not href.endswith(rel.removesuffix(".html") + ".ipynb"):
            report.fail(rel, f"launch button points to {href}, not to {rel.removesuffix('.html')}.ipynb")
    check_layout(state, rel, report)
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
    for req in external:  # blocked: the book must need nothing from outside (no CDN)
        report.fail(rel, f"asks for a resource outside the book (blocked): {req[:200]}")
    if shots is not None:
        out = shots / screenshot_name(rel)
        page.screenshot(path=str(out), full_page=True)
    # Figures in collapsed cells (hide-output, exercise solutions) count too: open every toggle, then measure.
    page.evaluate(JS_EXPAND_TOGGLES)
    page.wait_for_timeout(300)
    check_figures(page.evaluate(JS_PAGE_STATE)["figures"], rel, report)
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
            context = browser.new_context(viewport=VIEWPORT)
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
            # What a phone shows: display equations must fit; a screenshot of each page.
            narrow = browser.new_context(viewport=NARROW_VIEWPORT)
            narrow.route(lambda url: urlparse(url).hostname not in ("127.0.0.1", None), lambda r: r.abort())
            for rel in pages:
                if REDIRECT.search((html / rel).read_text(encoding="utf-8", errors="replace")):
                    continue
                page = narrow.new_page()
                try:
                    page.goto(base + rel, wait_until="load", timeout=TIMEOUT_MS)
                    wait_for_math(page)
                    page.wait_for_timeout(200)  # fit-math.js runs once MathJax has typeset
                    check_narrow(page.evaluate(JS_PAGE_STATE), rel, report)
                    if shots is not None:
                        page.screenshot(path=str(shots / screenshot_name(rel, "400px")), full_page=True)
                except Exception as exc:
                    report.fail(rel, f"at 400 px: {type(exc).__name__}: {exc}")
                finally:
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
    parser.add_argument("--json", type=Path, default=None, help="write pixel densities and wide equations here")
    args = parser.parse_args(argv)
    if not (args.html / "index.html").is_file():
        print(f"{args.html}/index.html not found: build the book first (make book)", file=sys.stderr)
        return 1
    report = run(args.html, args.chromium, None if args.no_screenshots else args.screenshots)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "min_px_per_point": MIN_PX_PER_POINT,
            "figures": report.figures,
            "wide_equations": report.equations,
            "problems": report.problems,
            "warnings": report.warnings,
        }
        args.json.write_text(json.dumps(summary, indent=1))
    for rel, figures in report.figures.items():
        if figures:
            densities = " ".join("?" if f["px_per_point"] is None else f"{f['px_per_point']:.2f}" for f in figures)
            print(f"px per point, {rel}: {densities}")
    for warning in report.warnings:
        print("WARN", warning)
    for problem in report.problems:
        print("FAIL", problem)
    print(f"{report.pages} pages checked, {len(report.problems)} problem(s), {len(report.warnings)} warning(s)")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
