""".pre-commit-config.yaml is valid, and the repository passes its hooks.

pre-commit downloads its hook repositories from GitHub, which CI can do (ci.yml runs `pre-commit run
--all-files`) and this project's own machines cannot. So here each hook is run as the same tool from .venv, at
the version the hook pins, on the files the hook would get: `ruff check`, `ruff format --check` and
`nbstripout --verify`.
"""

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".pre-commit-config.yaml"
BIN = Path(sys.executable).parent
OFFLINE = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}

# hook id -> (the command that checks without changing anything, the PyPI package, the file extensions it takes)
EQUIVALENT = {
    "ruff-check": (["ruff", "check", "--force-exclude"], "ruff", (".py", ".pyi", ".ipynb")),
    "ruff-format": (["ruff", "format", "--check", "--force-exclude"], "ruff", (".py", ".pyi", ".ipynb")),
    "nbstripout": (["nbstripout", "--verify"], "nbstripout", (".ipynb",)),
}


def hooks() -> list[tuple[str, dict]]:
    config = yaml.safe_load(CONFIG.read_text())
    return [(repo["rev"], hook) for repo in config["repos"] for hook in repo["hooks"]]


def repository_files() -> list[str]:
    """What `pre-commit run --all-files` sees: the tracked files (here also new ones that git does not ignore)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but build outputs
        return [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return sorted(f for f in out.splitlines() if (ROOT / f).is_file())


def test_config_is_valid():
    result = subprocess.run(
        [str(BIN / "pre-commit"), "validate-config", str(CONFIG)], capture_output=True, text=True, env=OFFLINE
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hooks_are_ruff_ruff_format_and_nbstripout_at_the_installed_versions():
    assert {hook["id"] for _, hook in hooks()} == set(EQUIVALENT)
    for rev, hook in hooks():
        package = EQUIVALENT[hook["id"]][1]
        assert rev.removeprefix("v") == version(package), (hook["id"], rev, version(package))


@pytest.mark.parametrize("hook_id", sorted(EQUIVALENT))
def test_repository_passes_the_hook(hook_id):
    ((_, hook),) = [(rev, h) for rev, h in hooks() if h["id"] == hook_id]
    command, _, extensions = EQUIVALENT[hook_id]
    pattern = re.compile(hook.get("files", ""))
    files = [f for f in repository_files() if f.endswith(extensions) and pattern.search(f)]
    assert files, f"{hook_id} gets no files"
    result = subprocess.run([str(BIN / command[0]), *command[1:], *files], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} fails:\n{result.stdout}{result.stderr}"
