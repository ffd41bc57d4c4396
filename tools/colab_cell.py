"""Put the Colab set-up cell first in every chapter: ``python tools/colab_cell.py [--check] [NOTEBOOK ...]``.

On Google Colab (the book's "launch" button) the cell clones the repository, installs fmlib from the clone and
makes its ``book/`` folder the working folder, so that the chapters which read the stored benchmark results and
checkpoints find them as in a local checkout; anywhere else it does nothing. It is tagged ``remove-cell``, so the
built book does not show it. The script is idempotent: it inserts the cell where it is missing, replaces an
outdated version of it, removes copies of it further down, and leaves a notebook that already starts with it byte
for byte unchanged. Notebooks stay stripped (no outputs, no execution counts; cell ids renumbered 0, 1, 2, ... as
nbstripout does).

Without arguments it treats ``book/*.ipynb`` and the labs (``labs/*.ipynb``, ``labs/solutions/*.ipynb``). With
``--check`` it changes nothing and exits 1 if any notebook lacks the cell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/flow-matching-book/flow-matching-book"
TAG = "remove-cell"
MARKER = '"google.colab" in sys.modules'
DEFAULT_DIRS = ("book", "labs", "labs/solutions")
CLONE = "/content/flow-matching-book"
# Formatted as ruff formats the chapters (book/ruff.toml), so that `ruff format --check` leaves it alone.
SOURCE = (
    "import sys\n"
    "\n"
    "# on Colab: the repository (fmlib, and the stored results and checkpoints\n"
    "# that some chapters read), installed and made the working folder\n"
    f"if {MARKER}:\n"
    f'    repo = "{REPOSITORY}"\n'
    f'    clone = "{CLONE}"\n'
    "    !test -d {clone} || git clone -q --depth 1 {repo} {clone}\n"
    "    %pip install -q {clone}\n"
    "    %cd {clone}/book"
)


def is_colab_cell(cell: dict) -> bool:
    """A code cell that is some version of the Colab set-up cell."""
    return cell.get("cell_type") == "code" and MARKER in "".join(cell.get("source", ""))


def has_colab_cell(nb: dict) -> bool:
    """The notebook starts with the current Colab cell, tagged, stripped, and has no other copy of it."""
    cells = nb.get("cells", [])
    if not cells:
        return False
    first = cells[0]
    return (
        is_colab_cell(first)
        and "".join(first["source"]) == SOURCE
        and TAG in first.get("metadata", {}).get("tags", [])
        and not first.get("outputs")
        and first.get("execution_count") is None
        and not any(is_colab_cell(c) for c in cells[1:])
    )


def _new_cell() -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source=SOURCE, metadata={"tags": [TAG]})
    cell.outputs = []
    cell.execution_count = None
    return cell


def add_colab_cell(nb: nbformat.NotebookNode) -> bool:
    """Make ``nb`` start with the Colab cell; return whether anything changed."""
    if has_colab_cell(nb):
        return False
    old = [c for c in nb.cells if is_colab_cell(c)]
    cell = _new_cell()
    if old:  # keep the first copy's other tags and metadata
        meta = dict(old[0].get("metadata", {}))
        meta["tags"] = [TAG] + [t for t in meta.get("tags", []) if t != TAG]
        cell.metadata = nbformat.from_dict(meta)
    nb.cells = [cell] + [c for c in nb.cells if not is_colab_cell(c)]
    if nb.nbformat > 4 or (nb.nbformat == 4 and nb.nbformat_minor >= 5):
        for i, c in enumerate(nb.cells):
            c["id"] = str(i)  # nbstripout's numbering of stripped notebooks
    else:
        for c in nb.cells:
            c.pop("id", None)
    return True


def process(path: Path, check: bool = False) -> bool:
    """Update one notebook in place (or only look, with ``check``); return whether it lacked the cell."""
    raw = path.read_text(encoding="utf-8")
    nb = nbformat.reads(raw, as_version=nbformat.NO_CONVERT)
    if check:
        return not has_colab_cell(nb)
    changed = add_colab_cell(nb)
    if changed:
        text = nbformat.writes(nb)
        path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: book/*.ipynb and the labs")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook lacks the cell")
    args = parser.parse_args(argv)
    paths = args.notebooks or [p for d in DEFAULT_DIRS for p in sorted((ROOT / d).glob("*.ipynb"))]
    touched = [p for p in paths if process(p, check=args.check)]
    for p in touched:
        print(f"{'missing' if args.check else 'updated'}: {p}")
    if not touched:
        print(f"all {len(paths)} notebooks start with the Colab cell")
    return 1 if args.check and touched else 0


if __name__ == "__main__":
    sys.exit(main())
