"""Packaging metadata stays consistent: environment.yml and binder/ mirror pyproject.toml; the public API is exported;
the chapter template is a valid, stripped notebook in the book's pattern."""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import tomllib
import yaml

import fmlib

ROOT = Path(__file__).resolve().parents[2]


def _normalise(req: str) -> str:
    return req.replace(" ", "").lower()


def test_environment_yml_lists_the_same_requirements_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted |= set(extra)
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {r for r in pip if not r.startswith("-e")}
    assert {_normalise(r) for r in listed} == {_normalise(r) for r in wanted}
    assert "-e ." in pip  # the package itself


def test_citation_cff_has_the_required_fields():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    for key in ("cff-version", "message", "title", "authors", "version", "license"):
        assert key in cff, key
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # one version: pyproject reads fmlib.__version__; CITATION.cff and the CHANGELOG's latest release repeat it
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fmlib.__version__"}
    assert str(cff["version"]) == fmlib.__version__
    releases = re.findall(r"^## (\d+\.\d+\.\d+)\b", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases and releases[0] == fmlib.__version__, releases


def test_fmlib_ships_its_type_hints():
    assert (ROOT / "fmlib" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["fmlib"]


def test_design_api_names_are_importable_from_fmlib():
    names = [
        "PathSample",
        "ProbPath",
        "LinearPath",
        "GaussianPath",
        "cfm_loss",
        "euler_step",
        "midpoint_step",
        "heun_step",
        "rk4_step",
        "integrate",
        "EmpiricalMarginal",
    ]
    for name in names:
        assert name in fmlib.__all__ and hasattr(fmlib, name), name
    assert all(hasattr(fmlib, name) for name in fmlib.__all__)


# ------------------------------------------------------------------------------------------------ Binder
BINDER = ROOT / "binder"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _binder_requirements() -> tuple[list[str], list[str]]:
    """(pip options, requirements) of binder/requirements.txt, comments dropped."""
    lines = [line.split("#")[0].strip() for line in (BINDER / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    return [x for x in lines if x.startswith("-")], [x for x in lines if not x.startswith("-")]


def _is_torch(req: str) -> bool:
    return re.split(r"[<>=!~ ]", req, maxsplit=1)[0] == "torch"


def test_binder_takes_the_cpu_build_of_the_pinned_torch():
    options, reqs = _binder_requirements()
    assert options == [f"--extra-index-url {CPU_INDEX}"]
    (torch_pin,) = [r for r in reqs if _is_torch(r)]
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", makefile, re.M).group(1)
    assert torch_pin == f"torch=={pinned}+cpu"  # the version make installs, in its CPU build
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_spec,) = [r for r in project["dependencies"] if _is_torch(r)]
    minimum = torch_spec.split(">=")[1]
    assert tuple(map(int, pinned.split("."))) >= tuple(map(int, minimum.split(".")))


def test_binder_lists_fmlibs_dependencies_and_jupyterlab_as_pyproject_does():
    _, reqs = _binder_requirements()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {r for r in project["dependencies"] if not _is_torch(r)}
    wanted |= {r for r in project["optional-dependencies"]["book"] if r.split(">")[0] in ("jupyterlab", "ipykernel")}
    listed = {r for r in reqs if not _is_torch(r)}
    assert {_normalise(r) for r in listed} == {_normalise(r) for r in wanted}


def test_binder_installs_fmlib_without_its_dependencies_on_a_supported_python():
    post = (BINDER / "postBuild").read_text()
    assert post.startswith("#!/bin/bash") and os.access(BINDER / "postBuild", os.X_OK)
    assert "pip install --no-cache-dir --no-deps -e ." in post
    runtime = (BINDER / "runtime.txt").read_text().strip()
    major, minor = map(int, runtime.removeprefix("python-").split("."))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    low = tuple(map(int, project["requires-python"].removeprefix(">=").split(".")))
    assert (major, minor) >= low
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert any(str(d).startswith(f"python={major}.{minor}") for d in env["dependencies"])  # same Python as conda's


# ------------------------------------------------------------------------------------------------ chapter template
TEMPLATE = ROOT / "templates" / "chapter.ipynb"


def test_chapter_template_is_valid_stripped_and_starts_with_the_colab_cell():
    nb = nbformat.read(TEMPLATE, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    verify = subprocess.run(
        [str(Path(sys.executable).parent / "nbstripout"), "--verify", str(TEMPLATE)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    sys.path.insert(0, str(ROOT / "tools"))
    import colab_cell

    assert colab_cell.SOURCE == nb.cells[0].source and colab_cell.TAG in nb.cells[0].metadata.tags


def test_chapter_template_follows_the_book_pattern():
    nb = nbformat.read(TEMPLATE, as_version=4)
    text = [c.source for c in nb.cells]
    setup = next(c for c in nb.cells[1:] if c.cell_type == "code")
    assert "use_book_style()" in setup.source and "set_num_threads(1)" in setup.source
    assert "torch.cuda.is_available()" in setup.source
    assert any("**Goals.**" in t for t in text) and any("## Summary" in t for t in text)
    assert any("{cite}`" in t for t in text)
    checks = [c for c in nb.cells if c.metadata.get("tags") == ["hide-input", "remove-output"]]
    assert checks and all("assert" in c.source and "print(" not in c.source for c in checks)
    # the exercise pattern: an {exercise} with a label and a difficulty mark, then a gated dropdown solution
    # (solution-start, the answer in Markdown, code with asserts, solution-end)
    exercises = [i for i, c in enumerate(nb.cells) if c.source.startswith("````{exercise}")]
    assert exercises
    for i in exercises:
        label = nb.cells[i].source.split(":label:")[1].split()[0]
        assert "★" in nb.cells[i].source.splitlines()[0]
        start, code, end = nb.cells[i + 1 : i + 4]
        assert start.source.startswith(f"```{{solution-start}} {label}\n:class: dropdown")
        assert code.cell_type == "code" and "assert" in code.source and not code.metadata.get("tags")
        assert end.source.strip() == "```{solution-end}\n```"
    for cell in nb.cells[1:]:
        if cell.cell_type == "code":
            assert max(len(line) for line in cell.source.splitlines()) <= 80


def test_chapter_template_runs(tmp_path):
    # every code cell but the Colab one (an IPython magic), in order, in one namespace, as the kernel would
    nb = nbformat.read(TEMPLATE, as_version=4)
    script = "import matplotlib\nmatplotlib.use('Agg')\n" + "\n".join(
        c.source for c in nb.cells[1:] if c.cell_type == "code"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the finite difference equals x1 - x0" in result.stdout


def test_chapter_template_is_outside_the_book_and_its_tests():
    toc = (ROOT / "_toc.yml").read_text()
    assert "template" not in toc
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["only_build_toc_files"] is True  # so the build skips templates/
    assert TEMPLATE.parent.name == "templates" and not list((ROOT / "book").glob("*template*"))
    assert "templates/*.ipynb" in (ROOT / "Makefile").read_text()  # but `make test` checks that it is stripped
