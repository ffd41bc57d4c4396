"""Packaging metadata stays consistent: environment.yml mirrors pyproject.toml; the public API is exported."""

from pathlib import Path

import tomllib
import yaml

import fmlib

ROOT = Path(__file__).resolve().parents[1]


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
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(cff["version"]) == project["version"] == fmlib.__version__


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
