"""Build the student edition of the book: every page, every exercise, no solution.

    python tools/student_edition.py [--config _config.yml] [--out _build/student]

`make book-student` runs it after `make book`. It executes nothing: it takes the notebooks that `make book` executed
(Jupyter Book writes them to _build/jupyter_execute/<page>.ipynb, with their glue values beside them in
<page>.glue.json) and writes a source tree under OUT/src/:

- every page of _toc.yml, the notebooks as executed copies with the cells of each gated solution removed (from the
  markdown cell holding ``{solution-start}`` to the one holding ``{solution-end}``, both included), and their glue
  values put back in a removed cell at the end (myst-nb reads glue from cell outputs when it does not execute);
  a page under labs/solutions/ is left out of the table of contents;
- a _config.yml derived from the book's: nothing executed (``execute_notebooks: "off"``), sphinx-exercise's
  ``hide_solutions: true`` (it drops every ungated {solution}; it cannot drop gated ones, hence the cells are
  removed here), no Colab or Binder launch buttons (they would open the repository's notebooks, solutions
  included), "(student edition)" in the title, the book's static files by absolute path.

Then it builds the HTML with Jupyter Book (warnings are errors, as in `make book`) into OUT/html. A notebook whose
cells differ from the executed copy (edited since the last `make book`) stops the build with a message: the
student edition must show the outputs of the code it prints. A page in a folder that the book never executes
(``execute.exclude_patterns``: the labs) is taken from its source as it is.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOLUTION_START = "{solution-start}"
SOLUTION_END = "{solution-end}"
LAB_SOLUTIONS = "labs/solutions/"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_solutions(nb: dict) -> tuple[dict, int]:
    """The notebook without its gated solutions (new dict), and how many were removed.

    Raises ValueError on a solution-start without its solution-end (or an end without a start)."""
    cells, removed, inside = [], 0, False
    for cell in nb["cells"]:
        text = _source(cell) if cell["cell_type"] == "markdown" else ""
        if SOLUTION_START in text:
            if inside:
                raise ValueError("a solution-start inside a solution")
            inside = True
        if not inside:
            if SOLUTION_END in text:
                raise ValueError("a solution-end without its solution-start")
            cells.append(cell)
        if inside and SOLUTION_END in text:
            inside, removed = False, removed + 1
    if inside:
        raise ValueError("a solution-start without its solution-end")
    return {**nb, "cells": cells}, removed


def restore_glue(nb: dict, glue: dict) -> dict:
    """Append a removed code cell whose outputs carry the glue values (new dict).

    myst-nb stores the values it glued in <page>.glue.json, with the mime prefix of their keys stripped; myst-nb
    strips it again when it reads them back from the outputs, so the prefix is put back here."""
    if not glue:
        return nb
    outputs = []
    for out in glue.values():
        out = json.loads(json.dumps(out))
        prefix = out.get("metadata", {}).get("scrapbook", {}).get("mime_prefix", "")
        out["data"] = {prefix + k: v for k, v in out["data"].items()}
        outputs.append(out)
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "id": "student-edition-glue",
        "metadata": {"tags": ["remove-cell"]},
        "outputs": outputs,
        "source": [],
    }
    return {**nb, "cells": [*nb["cells"], cell]}


def toc_files(toc: dict) -> list[str]:
    """Every file entry of a jb-book table of contents, the root first (without suffix, as written)."""
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def drop_lab_solutions(node):
    """The table of contents without entries under labs/solutions/ (a new structure)."""
    if isinstance(node, dict):
        return {k: drop_lab_solutions(v) for k, v in node.items()}
    if isinstance(node, list):
        return [
            drop_lab_solutions(item)
            for item in node
            if not (isinstance(item, dict) and str(item.get("file", "")).startswith(LAB_SOLUTIONS))
        ]
    return node


def student_config(config: dict, root: Path) -> dict:
    """The student edition's configuration (a new dict): nothing executed, solutions hidden, no launch buttons."""
    config = json.loads(json.dumps(config))
    config["title"] = f"{config.get('title', 'Book')} (student edition)"
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    config["launch_buttons"] = {"notebook_interface": "classic", "colab_url": "", "binderhub_url": ""}
    sphinx = config.setdefault("sphinx", {})
    settings = sphinx.setdefault("config", {})
    settings["hide_solutions"] = True
    if "html_static_path" in settings:
        settings["html_static_path"] = [str((root / p).resolve()) for p in settings["html_static_path"]]
    return config


def _page_path(root: Path, entry: str) -> Path:
    for suffix in ("", ".ipynb", ".md"):
        path = root / f"{entry}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{entry}: no .ipynb or .md in {root}")


def write_source(root: Path, config_file: Path, out: Path, toc_file: Path, executed: Path) -> tuple[Path, int]:
    """Write OUT/src (config, toc, pages); return it and the number of solutions removed."""
    config = yaml.safe_load(config_file.read_text())
    toc = drop_lab_solutions(yaml.safe_load(toc_file.read_text()))
    skip_exec = (config.get("execute") or {}).get("exclude_patterns", [])
    src = out / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    (src / "_config.yml").write_text(yaml.safe_dump(student_config(config, root), sort_keys=False, allow_unicode=True))
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False, allow_unicode=True))
    # what the pages read besides themselves: the bibliography, the stylesheet (book/ without its notebooks)
    for path in (root / "book").rglob("*"):
        if path.is_file() and path.suffix != ".ipynb" and ".ipynb_checkpoints" not in path.parts:
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    removed = 0
    for entry in toc_files(toc):
        page = _page_path(root, entry)
        rel = page.relative_to(root)
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if page.suffix != ".ipynb":
            shutil.copy2(page, target)
            continue
        source_nb = json.loads(page.read_text())
        run = executed / rel
        if any(fnmatch.fnmatch(str(rel), pattern) for pattern in skip_exec):
            nb = source_nb  # never executed by the book (the labs)
        elif not run.is_file():
            raise SystemExit(f"{rel}: no executed copy at {run}: run `make book` first")
        else:
            nb = json.loads(run.read_text())
            if [_source(c) for c in nb["cells"]] != [_source(c) for c in source_nb["cells"]]:
                raise SystemExit(f"{rel} changed since `make book` executed it: run `make book` again")
            glue_file = run.with_name(run.stem + ".glue.json")
            if glue_file.is_file():
                nb = restore_glue(nb, json.loads(glue_file.read_text()))
        try:
            nb, n = strip_solutions(nb)
        except ValueError as err:
            raise SystemExit(f"{rel}: {err}") from None
        removed += n
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return src, removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "_config.yml"), help="the book's configuration")
    parser.add_argument("--out", default=str(ROOT / "_build" / "student"), help="output folder")
    parser.add_argument("--toc", default=str(ROOT / "_toc.yml"), help="the table of contents")
    parser.add_argument(
        "--executed", default=str(ROOT / "_build" / "jupyter_execute"), help="where `make book` left the notebooks"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    start = time.perf_counter()
    src, removed = write_source(
        ROOT, Path(args.config).resolve(), out, Path(args.toc).resolve(), Path(args.executed).resolve()
    )
    jb = Path(sys.executable).parent / "jupyter-book"
    build = subprocess.run([str(jb), "build", str(src), "-W", "-n", "--keep-going"])
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    if (src / "_build" / "html" / "index.html").is_file():
        shutil.move(str(src / "_build" / "html"), html)
    status = "built" if build.returncode == 0 else f"FAILED (jupyter-book exit status {build.returncode}; see above)"
    print(
        f"student edition {status}, {removed} solutions removed, {time.perf_counter() - start:.0f} s: "
        f"{html / 'index.html'}"
    )
    return build.returncode


if __name__ == "__main__":
    sys.exit(main())
