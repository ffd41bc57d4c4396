"""The GitHub workflows and CITATION.cff are valid, and each workflow does what the README says it does.

Validation uses check-jsonschema's vendored schemas (GitHub workflows, Citation File Format): no network.
The subprocesses get a dead proxy, so a validator that tried to download a schema would fail here.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
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


def test_gpu_workflow_runs_nbval_with_cuda_on_the_self_hosted_runner():
    wf = load("gpu.yml")
    assert "workflow_dispatch" in wf["on"] and wf["on"]["schedule"][0]["cron"]
    (job,) = wf["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "gpu"]
    run = scripts(wf)
    assert "nvidia-smi" in run and "torch.cuda.is_available()" in run
    assert "--nbval-lax --nbval-current-env book/ --durations=0" in run
    assert "GITHUB_STEP_SUMMARY" in run and "tools/nbval_summary.py" in run
    assert "TORCH_SPEC=" in run


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
