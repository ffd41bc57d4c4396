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


# Exercises (issue 25): each one is a sphinx-exercise {exercise} with a label ex-... and a difficulty mark (★, ★★ or
# ★★★) in its title, in one markdown cell, followed by its gated solution: a markdown cell that opens with
# {solution-start} <label> (a dropdown), the solution's cells, and a markdown cell with {solution-end}. The solution
# checks its answer (an assert) and hides nothing itself (the dropdown does). From chapter 2 on, every chapter has an
# implementation exercise: one whose text gives a Python signature (```python ... def ...```) to implement.
EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\} *(?P<title>.*?) *\n(?P<options>(?::[\w-]+:.*\n)*)", re.M)
OLD_EXERCISE = re.compile(r"\*\*Exercise \d")
STARS = re.compile(r" (★|★★|★★★)$")
SIGNATURE = re.compile(r"```python\n(?:.*\n)*?\s*def \w+\(", re.M)
FIRST_WITH_IMPLEMENTATION = "book/02_conditional_paths"
EXERCISE_PAGES = [p for p in NOTEBOOKS if p.parent.name == "book"]


def exercises(path: Path) -> list[dict]:
    """The exercises of a notebook: title, label, text, and the cells of the gated solution that follows."""
    nb = json.loads(path.read_text())
    found = []
    for i, cell in enumerate(nb["cells"]):
        text = "".join(cell["source"])
        if cell["cell_type"] != "markdown" or "{exercise}" not in text:
            continue
        match = EXERCISE.search(text)
        assert match, f"{path.name}: cell {i}: an {{exercise}} directive that does not parse"
        label = re.search(r"^:label: *(\S+)", match.group("options"), re.M)
        solution, j = [], i + 1
        while j < len(nb["cells"]) and "{solution-end}" not in "".join(nb["cells"][j]["source"]):
            solution.append(nb["cells"][j])
            j += 1
        found.append(
            {
                "title": match.group("title"),
                "label": label.group(1) if label else None,
                "text": text,
                "solution": solution,
                "closed": j < len(nb["cells"]),
                "cell": i,
            }
        )
    return found


@pytest.mark.parametrize("path", EXERCISE_PAGES, ids=[p.stem for p in EXERCISE_PAGES])
def test_exercises_use_the_exercise_directive_with_a_mark_and_a_gated_solution(path):
    markdown = cells(path, "markdown")
    old = [text[:60] for text in markdown if OLD_EXERCISE.search(text)]
    assert not old, f"{path.name}: exercises in the old bold-text format: {old}"
    for ex in exercises(path):
        where = f"{path.name}: exercise '{ex['title']}' (cell {ex['cell']})"
        assert ex["label"] and ex["label"].startswith("ex-"), f"{where}: no :label: ex-..."
        assert STARS.search(ex["title"]), f"{where}: no difficulty mark ★, ★★ or ★★★ at the end of the title"
        assert ex["solution"] and ex["closed"], f"{where}: no gated solution (solution-start ... solution-end)"
        start = "".join(ex["solution"][0]["source"])
        assert ex["solution"][0]["cell_type"] == "markdown" and re.match(
            rf"^(`{{3,}}|:{{3,}})\{{solution-start\}} *{re.escape(ex['label'])} *\n:class: dropdown\b", start
        ), f"{where}: the next cell must open with {{solution-start}} {ex['label']} and :class: dropdown"
        inner = ex["solution"][1:]
        assert not any("{exercise}" in "".join(c["source"]) for c in inner), f"{where}: its solution is not closed"
        code = [c for c in ex["solution"] if c["cell_type"] == "code"]
        assert any("assert" in "".join(c["source"]) for c in code), f"{where}: the solution checks nothing"
        tags = {t for c in code for t in c.get("metadata", {}).get("tags", [])}
        assert not tags & {"hide-cell", "hide-input"}, f"{where}: the dropdown hides the solution; no {tags}"


def test_exercise_labels_are_unique_across_the_book():
    labels = [ex["label"] for path in EXERCISE_PAGES for ex in exercises(path)]
    assert len(labels) == len(set(labels)), sorted(lab for lab in labels if labels.count(lab) > 1)


IMPLEMENTING = CHAPTERS[
    [p.relative_to(ROOT).with_suffix("").as_posix() for p in CHAPTERS].index(FIRST_WITH_IMPLEMENTATION) :
]


@pytest.mark.parametrize("path", IMPLEMENTING, ids=[p.stem for p in IMPLEMENTING])
def test_every_chapter_from_chapter_2_on_has_an_implementation_exercise(path):
    assert any(SIGNATURE.search(ex["text"]) for ex in exercises(path)), (
        f"{path.name}: no exercise gives a signature to implement (```python ... def f(...): ...```)"
    )
