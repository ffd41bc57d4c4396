"""Check, and install, what `make gpu-test PYTHON_ENV=system` needs in an existing Python, without touching its torch.

    python3 tools/system_requirements.py            # list what is missing; exit status 1 if anything is
    python3 tools/system_requirements.py --install  # pip install what is missing, torch pinned to the one there

The requirements are fmlib's dependencies and its ``test`` extra (pyproject.toml). torch itself is never installed:
a Python without torch, or with a torch older than fmlib needs, is an error (install a CUDA build first, from
https://pytorch.org/get-started/locally/, or use the default PYTHON_ENV=venv). Everything else that is missing or
too old is installed with pip under the constraint ``torch==<the installed version>``, so pip cannot replace the
CUDA build. fmlib is not installed: `make gpu-test` imports it from the checkout (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: pip's vendored copy of the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("test",)


def requirements(pyproject: Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """fmlib's dependencies and the requirements of the given extras, as written in pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += [r for r in project["optional-dependencies"][extra] if r not in reqs]
    return reqs


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]


def missing(reqs: list[str]) -> list[str]:
    """The requirements that this Python does not satisfy (not installed, or a version outside the specifier)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without packaging, only presence is checked
        Requirement = None  # noqa: N806
    out = []
    for req in reqs:
        try:
            version = metadata.version(_name(req))
        except metadata.PackageNotFoundError:
            out.append(req)
            continue
        if Requirement is not None:
            spec = Requirement(req).specifier
            if version.split("+")[0] not in spec and version not in spec:
                out.append(req)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--install", action="store_true", help="pip install what is missing (never torch)")
    args = parser.parse_args(argv)
    todo = missing(requirements())
    torch_req = [r for r in todo if _name(r) == "torch"]
    if torch_req:
        print(
            f"{sys.executable} lacks {torch_req[0]}: install a CUDA build of torch into it first "
            "(https://pytorch.org/get-started/locally/), or run `make gpu-test` without PYTHON_ENV=system",
            file=sys.stderr,
        )
        return 1
    if not todo:
        print(f"{sys.executable} has every requirement of fmlib and its test extra")
        return 0
    print("missing:", " ".join(todo))
    if not args.install:
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pin:
        pin.write(f"torch=={metadata.version('torch')}\n")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "-c", pin.name, *todo]
    print(" ".join(cmd))
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
