"""Check that the student edition holds no solution: search its built HTML for solution text.

    python tools/student_check.py _build/student/html [--toc _toc.yml]

`make browser-test-student` runs it after `make book-student` (it needs no browser). It reads every text file of the
built edition (the pages, the search index, the notebook and source copies under _sources/; not _static/ or
_images/) and fails when it finds

- an element of sphinx-exercise's solution class (``class="solution ..."``, also ``solution-start``);
- the text "Solution to Exercise" (the title of a solution box);
- a link to labs/solutions/ (the labs' reference solutions are not part of the edition);
- one of the distinctive strings of the solutions: from every notebook of the table of contents, the lines between
  a ``{solution-start}`` cell and its ``{solution-end}`` cell that are longer than 30 characters (code lines, and
  Markdown lines without maths or markup), except those that also occur outside the solutions (an exercise's
  signature, a line the chapter repeats), which prove nothing; and the code lines of the labs' reference solutions
  (labs/solutions/*.ipynb) longer than 30 characters that neither their scaffolds (labs/*.ipynb) nor the chapters
  have.

Pages are compared as text: tags removed, entities decoded, whitespace collapsed (syntax highlighting splits a
code line into many elements). It prints a FAIL line per finding and exits with 1 if there is any.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MIN_LENGTH = 30
SOLUTION_TITLE = "Solution to Exercise"
# a class attribute with a token "solution" or "solution-...", in single or double quotes
SOLUTION_CLASS = re.compile(r"""class\s*=\s*["'](?:[^"']*\s)?solution(?:-[\w-]*)?(?:\s[^"']*)?["']""")
LAB_SOLUTIONS_LINK = re.compile(r"""(?:href|src)\s*=\s*["'][^"']*labs/solutions/""")
TEXT_SUFFIXES = {".html", ".js", ".txt", ".ipynb", ".md", ".json"}
MARKUP = set("$`{}[]*\\<>|")


def normalise(text: str) -> str:
    return " ".join(text.split())


def page_text(markup: str) -> str:
    """The text of an HTML page (or any text file): scripts and styles dropped, tags removed, entities decoded."""
    markup = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", markup, flags=re.S | re.I)
    return normalise(html.unescape(re.sub(r"<[^>]+>", "", markup)))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def solution_strings(notebooks: list[Path], min_length: int = MIN_LENGTH) -> set[str]:
    """Distinctive lines of the gated solutions of these notebooks (normalised)."""
    inside_lines, outside_text = set(), []
    for path in notebooks:
        inside = False
        for cell in json.loads(path.read_text())["cells"]:
            text = _source(cell)
            markdown = cell["cell_type"] == "markdown"
            if markdown and "{solution-start}" in text:
                inside = True
            if inside:
                for line in text.splitlines():
                    line = normalise(line)
                    if len(line) <= min_length:
                        continue
                    if markdown and (MARKUP & set(line) or line.startswith(("#", ":", "-", "```"))):
                        continue  # rendered differently from its source
                    inside_lines.add(line)
            else:
                outside_text.append(normalise(text))
            if markdown and "{solution-end}" in text:
                inside = False
    outside = "\n".join(outside_text)
    return {line for line in inside_lines if line not in outside}


def lab_solution_strings(root: Path = ROOT, min_length: int = MIN_LENGTH) -> set[str]:
    """Code lines of the labs' reference solutions that neither their scaffolds nor the chapters have (normalised)."""
    others = [*(root / "labs").glob("*.ipynb"), *(root / "book").glob("*.ipynb")]
    scaffolds = "\n".join(normalise(_source(cell)) for path in others for cell in json.loads(path.read_text())["cells"])
    found = set()
    for path in (root / "labs" / "solutions").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                found |= {normalise(line) for line in _source(cell).splitlines() if len(normalise(line)) > min_length}
    return {line for line in found if line not in scaffolds}


def find_solution_text(pages: dict[str, str], strings: set[str]) -> list[str]:
    """FAIL messages for every page (name -> raw content) holding a solution."""
    failures = []
    for name, raw in sorted(pages.items()):
        if SOLUTION_CLASS.search(raw):
            failures.append(f"{name}: an element of the solution class")
        if LAB_SOLUTIONS_LINK.search(raw):
            failures.append(f"{name}: a link to labs/solutions/")
        text = page_text(raw)
        if SOLUTION_TITLE in text or SOLUTION_TITLE in raw:
            failures.append(f"{name}: '{SOLUTION_TITLE}'")
        for line in sorted(strings):
            if line in text:
                failures.append(f"{name}: solution text {line!r}")
    return failures


def built_pages(html_dir: Path) -> dict[str, str]:
    pages = {}
    for path in sorted(html_dir.rglob("*")):
        rel = path.relative_to(html_dir)
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES or rel.parts[0] in ("_static", "_images"):
            continue
        pages[str(rel)] = path.read_text(errors="replace")
    return pages


def toc_notebooks(toc_file: Path, root: Path = ROOT) -> list[Path]:
    """The notebooks of a table of contents whose paths are relative to root (the book's root)."""
    sys.path.insert(0, str(ROOT / "tools"))
    from student_edition import toc_files

    entries = toc_files(yaml.safe_load(toc_file.read_text()))
    found = []
    for entry in entries:
        for candidate in (root / entry, root / f"{entry}.ipynb"):
            if candidate.suffix == ".ipynb" and candidate.is_file():
                found.append(candidate)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", help="the student edition's HTML folder, e.g. _build/student/html")
    parser.add_argument("--toc", default=str(ROOT / "_toc.yml"), help="the table of contents of the notebooks")
    args = parser.parse_args(argv)
    html_dir = Path(args.html)
    if not (html_dir / "index.html").is_file():
        print(f"no {html_dir / 'index.html'}: run make book-student first", file=sys.stderr)
        return 2
    notebooks = toc_notebooks(Path(args.toc).resolve())
    strings = solution_strings(notebooks) | lab_solution_strings()
    pages = built_pages(html_dir)
    failures = find_solution_text(pages, strings)
    for failure in failures:
        print(f"FAIL {failure}")
    print(
        f"{len(pages)} files of {html_dir} searched for {len(strings)} solution strings (from {len(notebooks)} "
        f"notebooks and the labs' solutions): {'no solution text' if not failures else f'{len(failures)} findings'}"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
