"""The labs and their autograder, end to end: every solution grades 100 %, every scaffold fails each task.

Each grading executes a notebook in a fresh kernel (``python -m fmlib.labs grade``), so these tests are slow
(tests/repo/ is marked slow). A notebook that passes some tasks and not others, one whose cell raises, a
wrong signature, a TODO left, a kernel that dies, a cell past the timeout, an instructor's ``--checks``
file and a notebook reading a file beside it are each graded here. The lab notebooks themselves follow
the chapters' rules: stripped, the Colab cell first, a ``fmlib_lab`` id, and scaffold and solution alike
except in the cells the student writes.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fmlib import labs

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCAFFOLDS = sorted((ROOT / "labs").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "labs" / "solutions").glob("*.ipynb"))

sys.path.insert(0, str(ROOT / "tools"))
import colab_cell  # noqa: E402


def grade_json(path, tmp_path, *extra, timeout=300):
    out = tmp_path / f"{Path(path).stem}.json"
    cmd = [sys.executable, "-m", "fmlib.labs", "grade", str(path), "--json", str(out), *map(str, extra)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    (report,) = json.loads(out.read_text())
    return proc.returncode, text, report


def by_name(report):
    return {r["name"]: r for r in report["results"]}


def read(path):
    return nbformat.read(path, as_version=4)


def test_every_lab_has_a_scaffold_and_a_solution():
    assert [p.name for p in SCAFFOLDS] == [p.name for p in SOLUTIONS]
    assert {"lab01_odes_sdes.ipynb", "lab02_flow_matching_2d.ipynb"} <= {p.name for p in SCAFFOLDS}


@pytest.mark.parametrize("path", SCAFFOLDS + SOLUTIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lab_notebook_is_stripped_with_the_colab_cell_and_a_lab_id(path):
    nb = read(path)
    assert colab_cell.has_colab_cell(nb), f"run python tools/colab_cell.py {path}"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata[labs.LAB_KEY] == path.stem and path.stem in labs.lab_ids()
    result = subprocess.run([str(BIN / "nbstripout"), "--verify", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("scaffold", SCAFFOLDS, ids=lambda p: p.name)
def test_scaffold_and_solution_differ_only_in_the_task_cells(scaffold):
    nb, sol = read(scaffold), read(ROOT / "labs" / "solutions" / scaffold.name)
    assert nb.metadata == sol.metadata
    assert len(nb.cells) == len(sol.cells)
    lab = nb.metadata[labs.LAB_KEY]
    names = {t.name for t in labs.tasks(lab)}
    marked = set()
    for a, b in zip(nb.cells, sol.cells):
        assert a.cell_type == b.cell_type and a.metadata == b.metadata
        task = a.metadata.get("fmlib_task")
        if task is None:
            assert a.source == b.source
        else:
            marked.add(task)
            assert "TODO" in a.source and a.source != b.source, task
    checked = {name for name in names if any(f'labs.check("{name}")' in c.source for c in nb.cells)}
    assert checked == names, "every task of the lab has a check cell"
    assert marked <= names


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.name)
def test_solution_grades_100_percent(path, tmp_path):
    status, text, report = grade_json(path, tmp_path)
    assert status == 0, text
    assert report["passed"] and report["score"] == report["total"] > 0, text
    assert "score: " in text and "(100 %)" in text
    assert report["seconds"] < 120 * 1.5, f"{path.name} took {report['seconds']:.0f} s"  # 120 s, some slack
    assert not report["notes"], report["notes"]  # no cell raised


@pytest.mark.parametrize("path", SCAFFOLDS, ids=lambda p: p.name)
def test_untouched_scaffold_fails_every_task(path, tmp_path):
    status, text, report = grade_json(path, tmp_path)
    assert status == 1, text
    assert report["score"] == 0 and report["total"] > 0, text
    assert [r["name"] for r in report["results"]] == [t.name for t in labs.tasks(path.stem)]
    for r in report["results"]:
        assert not r["passed"] and r["message"], r


def _replace_task(nb, name, source):
    (cell,) = [c for c in nb.cells if c.metadata.get("fmlib_task") == name]
    cell.source = source


def test_partly_done_lab_scores_the_tasks_that_pass(tmp_path):
    """Lab 1's solution with heun_step left as the TODO, euler_step with a wrong signature, a raising cell."""
    nb = read(ROOT / "labs" / "solutions" / "lab01_odes_sdes.ipynb")
    scaffold = read(ROOT / "labs" / "lab01_odes_sdes.ipynb")
    (todo,) = [c for c in scaffold.cells if c.metadata.get("fmlib_task") == "heun_step"]
    _replace_task(nb, "heun_step", todo.source)
    _replace_task(nb, "euler_step", "def euler_step(v, x, dt):\n    return x + dt * v(x, 0.0)\n")
    nb.cells.insert(3, nbformat.v4.new_code_cell('raise ValueError("a student\'s bug")'))
    path = tmp_path / "partly.ipynb"
    nbformat.write(nb, path)
    status, text, report = grade_json(path, tmp_path)
    assert status == 1, text
    results = by_name(report)
    assert not results["heun_step"]["passed"]
    assert "still raises NotImplementedError (TODO: one Heun step)" in results["heun_step"]["message"]
    assert not results["euler_step"]["passed"]
    assert "cannot be called with 4 positional argument(s)" in results["euler_step"]["message"]
    passed = {n for n, r in results.items() if r["passed"]}
    assert passed == {"fit_order", "euler_maruyama_step", "simulate_ou"}, text
    assert (report["score"], report["total"]) == (6, 10)
    assert "score: 6/10 (60 %)" in text
    assert any("ValueError: a student's bug" in n for n in report["notes"]), report["notes"]


def _small_lab(tmp_path, *cells, name="small.ipynb"):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata[labs.LAB_KEY] = "lab01_odes_sdes"
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


FIT_ORDER = (
    "import math\n"
    "def fit_order(steps, errors):\n"
    "    a, b = [math.log(n) for n in steps], [math.log(e) for e in errors]\n"
    "    ma, mb = sum(a) / len(a), sum(b) / len(b)\n"
    "    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))\n"
    "    return -num / sum((x - ma) ** 2 for x in a)\n"
)


def test_a_cell_past_the_timeout_is_interrupted_and_the_rest_graded(tmp_path):
    path = _small_lab(tmp_path, "import time\ntime.sleep(60)", FIT_ORDER)
    status, text, report = grade_json(path, tmp_path, "--timeout", "5", timeout=120)
    assert status == 1 and report["error"] is None, text
    results = by_name(report)
    assert results["fit_order"]["passed"], text
    assert "not defined" in results["euler_step"]["message"]
    assert any("ran past the timeout" in n for n in report["notes"]), report["notes"]
    assert report["seconds"] < 60


def test_a_kernel_that_dies_is_reported(tmp_path):
    path = _small_lab(tmp_path, FIT_ORDER, "import os\nos._exit(1)")
    status, text, report = grade_json(path, tmp_path, timeout=180)
    assert status == 1 and "kernel died" in report["error"], text
    assert all(not r["passed"] for r in report["results"]) and report["total"] == 10


def test_instructor_checks_and_the_notebooks_folder(tmp_path):
    (tmp_path / "answer.txt").write_text("42\n", encoding="utf-8")
    path = _small_lab(tmp_path, FIT_ORDER, "ANSWER = open('answer.txt').read().strip()")
    extra = tmp_path / "extra_checks.py"
    extra.write_text(
        "from fmlib.labs import CheckFailed, task\n\n\n"
        "@task(lab='lab01_odes_sdes', name='fit_order', points=4, needs=('fit_order',))\n"
        "def strict(ns):\n"
        "    raise CheckFailed('the instructor wants more')\n\n\n"
        "@task(lab='lab01_odes_sdes', name='reads_a_file', points=1, needs=('ANSWER',))\n"
        "def reads(ns):\n"
        "    if ns['ANSWER'] != '42':\n"
        "        raise CheckFailed(f'ANSWER should be 42; got {ns[\"ANSWER\"]!r}')\n",
        encoding="utf-8",
    )
    status, text, report = grade_json(path, tmp_path, "--checks", extra)
    assert status == 1, text
    results = by_name(report)
    assert results["fit_order"]["points"] == 4 and results["fit_order"]["message"] == "the instructor wants more"
    assert results["reads_a_file"]["passed"], text  # executed in the notebook's folder
    assert list(results)[-1] == "reads_a_file" and report["total"] == 9 + 4 + 1


def test_a_folder_of_submissions(tmp_path):
    _small_lab(tmp_path, FIT_ORDER, name="b_student.ipynb")
    (tmp_path / "a_broken.ipynb").write_text("not json", encoding="utf-8")
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(plain, tmp_path / "c_plain.ipynb")
    cmd = [sys.executable, "-m", "fmlib.labs", "grade", str(tmp_path), "--json", str(tmp_path / "out.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text, text
    reports = json.loads((tmp_path / "out.json").read_text())
    assert [Path(r["notebook"]).name for r in reports] == ["a_broken.ipynb", "b_student.ipynb", "c_plain.ipynb"]
    assert "cannot read" in reports[0]["error"] and "not an fmlib lab" in reports[2]["error"]
    assert reports[1]["score"] == 1 and "score: 1/10 (10 %)" in text
    assert "0 of 3 notebooks passed every check" in text
