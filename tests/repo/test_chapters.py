"""What every chapter has in common: its shape (goals first, a summary last), prose that teaches rather than
quotes its own checks, and one seeding idiom.

The chapters are the pages in the two parts of ``_toc.yml`` that teach ("Flow matching, step by step" and
"Beyond the basics"), minus the benchmarks page, which reports measurements.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEACHING_PARTS = ("Flow matching, step by step", "Beyond the basics")
NOT_CHAPTERS = {"book/benchmarks"}


def chapter_paths() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [ch["file"] for part in toc["parts"] if part["caption"] in TEACHING_PARTS for ch in part["chapters"]]
    return [ROOT / f"{f}.ipynb" for f in files if f not in NOT_CHAPTERS]


CHAPTERS = chapter_paths()
# Every notebook a reader runs, and the template new chapters start from.
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb")) + [ROOT / "templates" / "chapter.ipynb"]


def cells(path: Path, kind: str) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == kind]


def test_the_teaching_parts_are_found():
    assert len(CHAPTERS) >= 11 and all(p.exists() for p in CHAPTERS), CHAPTERS


# What a reader should never meet in a chapter's prose: the tolerance of a check ("asserted"), the machine that
# built the page, or the date of a run.
FORBIDDEN = re.compile(
    r"\basserted\b|load average|two-core|busy machine|shared machine|\bon this machine\b"
    r"|\b20\d\d-\d\d-\d\d\b",
    re.IGNORECASE,
)
GOALS = re.compile(r"^(\*\*Goals\b|#+ *Goals\b|#+ *What you will learn|\*\*What you will learn)", re.M | re.I)
SUMMARY = re.compile(r"^## Summary\b", re.M)


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_prose_teaches(path):
    prose = cells(path, "markdown")
    found = [m.group(0) for text in prose for m in FORBIDDEN.finditer(text)]
    assert not found, f"{path.name}: prose that quotes a check or the machine: {found}"
    assert any(GOALS.search(text) for text in prose[:3]), f"{path.name}: no goals paragraph near the top"
    assert any(SUMMARY.search(text) for text in prose), f"{path.name}: no '## Summary' section"


# The book's one seeding idiom: `gen(k)` is a new torch.Generator on the device seeded with k, defined once per
# notebook as below; `fmlib.seeded_generator(k)` where a CPU generator is needed. Model weights are seeded with
# torch.manual_seed just before a model is built (nn.Module initialisers draw from the global generator).
IDIOM = "gen = functools.partial(fmlib.seeded_generator, device=device)"
OTHER_IDIOMS = re.compile(
    r"torch\.Generator\(|def gen\b|def seeded\b|np\.random\.seed|np\.random\.default_rng\(\)|random\.seed\("
    r"|^\s*gen\s*=(?!\s*functools\.partial\(fmlib\.seeded_generator, device=device\)$)",
    re.M,
)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_one_seeding_idiom(path):
    code = cells(path, "code")
    others = [m.group(0).strip() for text in code for m in OTHER_IDIOMS.finditer(text)]
    assert not others, f"{path.name}: seeds generators outside the book's idiom ({IDIOM}): {others}"
    uses_gen = any(re.search(r"\bgen\(", text) for text in code)
    defines = sum(text.count(IDIOM) for text in code)
    assert defines == (1 if uses_gen else 0), f"{path.name}: gen(k) used but defined {defines} times"


def test_the_idiom_patterns_can_fail():
    # the patterns above catch each idiom the book does not use
    for bad in [
        "gen = torch.Generator(device=device).manual_seed(0)",
        "def gen(seed):\n    return fmlib.seeded_generator(seed, device)",
        "gen = fmlib.seeded_generator(0, device)",
        "np.random.seed(0)",
    ]:
        assert OTHER_IDIOMS.search(bad), bad
    assert not OTHER_IDIOMS.search(IDIOM)
    assert FORBIDDEN.search("checked (asserted)") and FORBIDDEN.search("run on 2026-12-07")
    assert not FORBIDDEN.search("Lipman et al. (2023)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_control_characters(path):
    # a "\a" written into a notebook from a Python string becomes BEL: "\approx" then breaks MathJax
    bad = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
    text = "".join(cells(path, "markdown") + cells(path, "code"))
    assert not bad.search(text), f"{path.name}: control character {bad.search(text).group(0)!r}"
