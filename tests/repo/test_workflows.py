"""The GitHub workflows and CITATION.cff are valid, and each workflow does what the README says it does.

Validation uses check-jsonschema's vendored schemas (GitHub workflows, Citation File Format): no network.
The subprocesses get a dead proxy, so a validator that tried to download a schema would fail here.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
OFFLINE = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
OFFLINE |= {k.lower(): v for k, v in OFFLINE.items() if k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}
EXPECTED = {"ci.yml", "gpu.yml", "pages.yml", "linkcheck.yml"}

sys.path.insert(0, str(ROOT / "tools"))
import nbval_summary  # noqa: E402


def check_jsonschema(schema: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        env=OFFLINE,
        timeout=120,
    )


def load(name: str) -> dict:
    wf = yaml.safe_load((WORKFLOWS / name).read_text())
    wf["on"] = wf.pop(True, wf.get("on"))  # YAML 1.1 reads the key `on` as True
    return wf


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def scripts(wf: dict) -> str:
    return "\n".join(s.get("run", "") for s in steps(wf))


def uses(wf: dict) -> list[str]:
    return [s["uses"].split("@")[0] for s in steps(wf) if "uses" in s]


def test_the_four_workflows_exist():
    assert {p.name for p in WORKFLOWS.glob("*.yml")} >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workflow_is_valid_against_the_github_schema(name):
    result = check_jsonschema("vendor.github-workflows", WORKFLOWS / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    step:\n      - run: echo\n")
    result = check_jsonschema("vendor.github-workflows", bad)
    assert result.returncode != 0 and "step" in result.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_run_script_is_valid_bash(name):
    for step in steps(load(name)):
        if "run" not in step:
            continue
        script = re.sub(r"\$\{\{.*?\}\}", "X", step["run"])  # GitHub expressions are filled in before bash runs
        result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}, step {step.get('name')!r}: {result.stderr}"


def test_ci_runs_lint_pre_commit_tests_book_and_keeps_reports():
    wf = load("ci.yml")
    assert {"push", "pull_request"} <= set(wf["on"])
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    setup = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11" and setup["with"]["cache"] == "pip"
    run = scripts(wf)
    for command in ("make lint", "make test", "make book", "pre-commit run --all-files", "make browser-test"):
        assert command in run, command
    upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert any(s["with"]["path"].rstrip("/") == "_build/html/reports" and s.get("if") == "failure()" for s in upload)


def test_gpu_workflow_runs_make_gpu_test_on_the_self_hosted_runner():
    wf = load("gpu.yml")
    assert "workflow_dispatch" in wf["on"] and wf["on"]["schedule"][0]["cron"]
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    run = scripts(wf)
    assert "nvidia-smi" in run and "make gpu-test" in run and "TORCH_SPEC=" in run
    summary = next(s for s in steps(wf) if "GITHUB_STEP_SUMMARY" in s.get("run", ""))
    assert summary.get("if") == "always()" and "_build/nbval-gpu.md" in summary["run"]


def test_pages_workflow_deploys_the_built_book():
    wf = load("pages.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    assert wf["permissions"]["pages"] == "write" and wf["permissions"]["id-token"] == "write"
    assert "make book" in scripts(wf)
    used = uses(wf)
    assert "actions/upload-pages-artifact" in used and "actions/deploy-pages" in used
    upload = next(s for s in steps(wf) if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"


def test_linkcheck_reports_but_never_blocks():
    wf = load("linkcheck.yml")
    assert "workflow_dispatch" in wf["on"] and wf["on"]["schedule"]
    check = next(s for s in steps(wf) if "--builder linkcheck" in s.get("run", ""))
    assert check["continue-on-error"] is True


def test_citation_cff_is_valid_against_the_cff_schema():
    result = check_jsonschema("vendor.citation-file-format", ROOT / "CITATION.cff")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cff_validator_rejects_a_broken_citation(tmp_path):
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    del cff["authors"]
    cff["date-released"] = "2026-13-45"
    bad = tmp_path / "CITATION.cff"
    bad.write_text(yaml.safe_dump(cff))
    result = check_jsonschema("vendor.citation-file-format", bad)
    assert result.returncode != 0 and "authors" in result.stdout and "date-released" in result.stdout


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="5">
<testcase classname="book.01_a.ipynb" name="Cell 0" file="book/01_a.ipynb" time="1.5" />
<testcase classname="book.01_a.ipynb" name="Cell 1" file="book/01_a.ipynb" time="2.25" />
<testcase classname="book.02_b.ipynb" name="Cell 0" time="0.5" />
<testcase classname="book.02_b.ipynb" name="Cell 1" time="4.0"><failure message="boom">Traceback</failure></testcase>
<testcase classname="book.02_b.ipynb" name="Cell 2" time="0"><skipped message="x" /></testcase>
</testsuite></testsuites>
"""


def test_nbval_summary_adds_cell_times_per_notebook(tmp_path, capsys):
    xml = tmp_path / "nbval.xml"
    xml.write_text(JUNIT)
    times = nbval_summary.collect(xml)
    assert list(times) == ["book/01_a.ipynb", "book/02_b.ipynb"]  # `file`, else rebuilt from `classname`
    assert times["book/01_a.ipynb"].cells == 2 and times["book/01_a.ipynb"].seconds == pytest.approx(3.75)
    assert times["book/02_b.ipynb"].failed == 1 and times["book/02_b.ipynb"].skipped == 1
    assert nbval_summary.main([str(xml), "--title", "GPU"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### GPU")
    assert "| `book/01_a.ipynb` | 2 | 3.8 | passed |" in out
    assert "| `book/02_b.ipynb` | 3 | 4.5 | failed (1 cell) |" in out
    assert "| **total** | 5 | 8.2 | 1 notebook(s) failed |" in out


# ------------------------------------------------------------------------------------------------ the Makefile
TARGETS = ("help", "book", "test", "lint", "bench", "gpu-test", "clean", "mathjax", "browser-test")


@pytest.fixture
def venv(tmp_path):
    """A stand-in .venv whose stamps are newer than pyproject.toml and the benchmark's requirements, so that a dry
    run of make prints only the target's own commands."""
    v = tmp_path / "venv"
    v.mkdir()
    for stamp in (".installed-stamp", ".bench-stamp"):
        (v / stamp).touch()
    return v


def make_dry(target: str, *assignments: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ) if path is None else {**os.environ, "PATH": path}
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, *assignments],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def path_without_npm(tmp_path: Path) -> str:
    """A PATH with every program of this one except npm (and its npx and corepack)."""
    bin_dir = tmp_path / "bin-without-npm"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            target = bin_dir / entry.name
            if entry.name not in ("npm", "npx", "corepack") and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(bin_dir)


def fake_npm_path(tmp_path: Path) -> str:
    fake = tmp_path / "fake-npm"
    fake.mkdir()
    (fake / "npm").write_text("#!/bin/sh\nexit 0\n")
    (fake / "npm").chmod(0o755)
    return f"{fake}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_documented_make_target_exists(target, venv):
    result = make_dry(target, f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    readme = (ROOT / "README.md").read_text()
    assert f"make {target}" in readme or target == "mathjax", target


def test_make_book_without_npm_falls_back_to_the_cdn(venv, tmp_path):
    result = make_dry("book", f"VENV={venv}", "MATHJAX_JS=_build/absent/tex.js", path=path_without_npm(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "npm not found" in result.stdout and "tools/mathjax_cdn_config.py" in result.stdout
    assert "--config _build/_config_cdn.yml" in result.stdout and "npm pack" not in result.stdout


def test_make_book_with_npm_fetches_the_offline_mathjax(venv, tmp_path):
    result = make_dry("book", f"VENV={venv}", "MATHJAX_JS=_build/absent/tex.js", path=fake_npm_path(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "npm pack" in result.stdout and "--config" not in result.stdout


def test_a_tiny_book_builds_strictly_without_npm(tmp_path):
    """`make book` itself, on a one-page book with the repository's _config.yml, npm absent from PATH."""
    book = tmp_path / "book"
    (book / "book").mkdir(parents=True)
    (book / "tools").mkdir()
    (book / "templates").mkdir()
    for name in ("_config.yml", "pyproject.toml", "Makefile"):
        (book / name).write_text((ROOT / name).read_text())
    (book / "tools" / "mathjax_cdn_config.py").write_text((ROOT / "tools" / "mathjax_cdn_config.py").read_text())
    (book / "templates" / "chapter.ipynb").write_text((ROOT / "templates" / "chapter.ipynb").read_text())
    (book / "book" / "references.bib").write_text((ROOT / "book" / "references.bib").read_text())
    shutil.copytree(ROOT / "book" / "css", book / "book" / "css")  # the book's stylesheet, kept without npm
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (book / "book" / "intro.md").write_text("# A tiny book\n\nThe flow solves\n\n$$\n\\dot x = v_t(x)\n$$\n")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-stamp").touch()
    result = subprocess.run(
        ["make", "book", f"VENV={venv}", f"BIN={BIN}"],
        cwd=book,
        capture_output=True,
        text=True,
        env={**OFFLINE, "PATH": path_without_npm(tmp_path)},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("npm not found") == 1
    page = (book / "_build" / "html" / "book" / "intro.html").read_text()
    assert "cdn.jsdelivr.net/npm/mathjax" in page and "_static/mathjax" not in page
    assert not list((book / "_build" / "html").rglob("chapter.html"))  # the template is not part of the book


def test_the_cdn_config_drops_only_the_offline_mathjax_settings():
    sys.path.insert(0, str(ROOT / "tools"))
    import mathjax_cdn_config

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    cdn = mathjax_cdn_config.cdn_config(config)
    settings, original = cdn["sphinx"]["config"], config["sphinx"]["config"]
    assert "mathjax_path" in original and "html_static_path" in original  # the offline copy is the default
    assert set(original) - set(settings) == {"mathjax_path"}
    # the offline MathJax folder goes, the book's own static files (its stylesheet) stay
    assert "_build/mathjax" in original["html_static_path"] and "_build/mathjax" not in settings["html_static_path"]
    assert settings["html_static_path"] == [p for p in original["html_static_path"] if p != "_build/mathjax"]
    assert settings["html_static_path"], "the stylesheet folder must survive the CDN build"
    assert settings["mathjax3_config"] == original["mathjax3_config"]  # the macros stay
    assert {k: v for k, v in cdn.items() if k != "sphinx"} == {k: v for k, v in config.items() if k != "sphinx"}


def test_gpu_test_runs_the_smoke_check_and_every_chapter_timed(venv):
    result = make_dry("gpu-test", f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"{venv}/bin/python tools/cuda_smoke.py" in out
    assert "--nbval-lax --nbval-current-env book/ --durations=0" in out and "--junitxml=_build/nbval-gpu.xml" in out
    assert "tools/nbval_summary.py _build/nbval-gpu.xml" in out and "_build/nbval-gpu.md" in out


def test_gpu_test_with_the_system_python_installs_no_torch_and_no_venv(venv, tmp_path):
    python = sys.executable
    result = make_dry("gpu-test", "PYTHON_ENV=system", f"PYTHON={python}", f"VENV={tmp_path / 'no-venv'}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-m venv" not in out and "pip install" not in out and "no-venv" not in out
    assert f"{python} tools/system_requirements.py --install" in out
    assert f"{python} tools/cuda_smoke.py" in out and f'PYTHONPATH="{ROOT}' in out
    bad = make_dry("gpu-test", "PYTHON_ENV=conda")
    assert bad.returncode != 0 and "PYTHON_ENV must be venv or system" in bad.stderr


def test_cuda_smoke_check_fails_clearly_without_a_gpu():
    import torch

    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "cuda_smoke.py")], capture_output=True, text=True, timeout=300
    )
    if torch.cuda.is_available():
        assert result.returncode == 0 and "fmlib integrates on cuda" in result.stdout, result.stderr
    else:
        assert result.returncode == 1 and "sees no CUDA device" in result.stderr


def test_system_requirements_finds_what_is_missing_or_too_old():
    sys.path.insert(0, str(ROOT / "tools"))
    import numpy
    import system_requirements as sr

    major = int(numpy.__version__.split(".")[0])
    reqs = ["numpy>=1.0", f"numpy>={major + 1}", "surely-not-an-installed-package>=1"]
    assert sr.missing(reqs) == [f"numpy>={major + 1}", "surely-not-an-installed-package>=1"]
    listed = sr.requirements()
    assert "torch>=2.2" in listed and any(r.startswith("nbval") for r in listed)
    assert sr.missing(listed) == []  # this environment runs the tests, so it has all of them
