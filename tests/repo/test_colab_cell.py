"""Every chapter starts with the hidden Colab set-up cell of tools/colab_cell.py; the script keeps notebooks stripped.

If the first test fails, run `python tools/colab_cell.py` (it is idempotent).
"""

import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))

sys.path.insert(0, str(ROOT / "tools"))
import colab_cell  # noqa: E402


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def stripped_notebook(cells: list) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = str(i)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def test_there_are_chapters():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_chapter_starts_with_the_colab_cell(path):
    nb = read(path)
    ok = colab_cell.has_colab_cell(nb)
    assert ok, f"{path.name} does not start with the Colab cell: run `python tools/colab_cell.py`"
    first = nb.cells[0]
    assert first.cell_type == "code" and "remove-cell" in first.metadata["tags"]
    assert "".join(first.source) == colab_cell.SOURCE


def test_the_cell_source_is_the_agreed_one():
    assert colab_cell.SOURCE == (
        "import sys\n"
        "\n"
        "# on Colab: the repository (fmlib, and the stored results and checkpoints\n"
        "# that some chapters read), installed and made the working folder\n"
        'if "google.colab" in sys.modules:\n'
        '    repo = "https://github.com/flow-matching-book/flow-matching-book"\n'
        '    clone = "/content/flow-matching-book"\n'
        "    !test -d {clone} || git clone -q --depth 1 {repo} {clone}\n"
        "    %pip install -q {clone}\n"
        "    %cd {clone}/book"
    )


def run_cell(modules: dict) -> list:
    """Run the cell's code as IPython would, with a stand-in for IPython's shell commands and magics (expanding
    {name} from the cell's variables, as IPython does); return what it ran."""
    code = TransformerManager().transform_cell(colab_cell.SOURCE)
    calls = []
    namespace: dict = {}

    def expand(line: str) -> str:
        return line.format(**namespace)

    shell = types.SimpleNamespace(
        run_line_magic=lambda name, line, *rest: calls.append((name, expand(line))),
        system=lambda command: calls.append(("!", expand(command))),
    )
    namespace["get_ipython"] = lambda: shell
    saved = dict(sys.modules)
    sys.modules.update(modules)
    try:
        exec(compile(code, "<colab cell>", "exec"), namespace)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    return calls


def test_the_cell_does_nothing_outside_colab():
    assert "google.colab" not in sys.modules
    assert run_cell({}) == []


def test_the_cell_clones_installs_and_enters_the_book_on_colab():
    # the chapters find the stored results and checkpoints by walking up from the working folder to the
    # repository root (the folder holding benchmarks/): on Colab that root is the clone
    calls = run_cell({"google.colab": types.ModuleType("google.colab")})
    repo, clone = "https://github.com/flow-matching-book/flow-matching-book", "/content/flow-matching-book"
    assert calls == [
        ("!", f"test -d {clone} || git clone -q --depth 1 {repo} {clone}"),
        ("pip", f"install -q {clone}"),
        ("cd", f"{clone}/book"),
    ]
    assert (
        (ROOT / "book").is_dir() and (ROOT / "benchmarks" / "results").is_dir() and (ROOT / "pyproject.toml").is_file()
    )


def test_script_inserts_updates_and_is_idempotent(tmp_path):
    md = nbformat.v4.new_markdown_cell("# Title")
    code = nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["hide-input"]})
    outdated = nbformat.v4.new_code_cell(
        'import sys\nif "google.colab" in sys.modules:\n    %pip install fmlib', metadata={"tags": ["remove-cell"]}
    )
    fresh, old = tmp_path / "01_fresh.ipynb", tmp_path / "02_old.ipynb"
    nbformat.write(stripped_notebook([md, code]), fresh)
    nbformat.write(stripped_notebook([md, code, outdated]), old)

    assert colab_cell.main([str(fresh), str(old)]) == 0
    for path in (fresh, old):
        nb = read(path)
        assert colab_cell.has_colab_cell(nb)
        assert [c.source for c in nb.cells[1:]] == ["# Title", "x = 1"]  # the rest kept, the old copy gone
        assert [c["id"] for c in nb.cells] == ["0", "1", "2"]
        assert nb.cells[2].metadata == {"tags": ["hide-input"]}
    before = {p: p.read_bytes() for p in (fresh, old)}
    assert colab_cell.main([str(fresh), str(old)]) == 0
    assert {p: p.read_bytes() for p in (fresh, old)} == before  # a second run changes nothing
    assert colab_cell.main(["--check", str(fresh), str(old)]) == 0

    result = subprocess.run([str(BIN / "nbstripout"), "--verify", str(fresh), str(old)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_mode_reports_a_missing_cell_and_changes_nothing(tmp_path):
    path = tmp_path / "nb.ipynb"
    nbformat.write(stripped_notebook([nbformat.v4.new_markdown_cell("# T")]), path)
    before = path.read_bytes()
    assert colab_cell.main(["--check", str(path)]) == 1
    assert path.read_bytes() == before


@pytest.mark.parametrize("path", NOTEBOOKS[:1], ids=[p.name for p in NOTEBOOKS[:1]])
def test_script_keeps_a_real_chapter_stripped(tmp_path, path):
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    colab_cell.main([str(copy)])
    nb, original = read(copy), read(path)
    assert colab_cell.has_colab_cell(nb)
    body = [c for c in original.cells if not colab_cell.is_colab_cell(c)]
    assert [c.source for c in nb.cells[1:]] == [c.source for c in body]
    result = subprocess.run([str(BIN / "nbstripout"), "--verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(copy.read_text())["cells"][0]["outputs"] == []
