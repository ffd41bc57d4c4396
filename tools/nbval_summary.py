"""Per-notebook execution times from the JUnit XML of an nbval run, as a Markdown table.

    pytest --nbval-lax --nbval-current-env book/ -o junit_family=xunit1 --junitxml=_build/nbval.xml
    python tools/nbval_summary.py _build/nbval.xml >> "$GITHUB_STEP_SUMMARY"

nbval makes one test per cell; this adds the cells' times (setup, call and teardown, as pytest's JUnit report
does) per notebook. A notebook's name comes from the testcase's ``file`` attribute (junit_family=xunit1) or,
failing that, from its ``classname`` (``book.01_x.ipynb``).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass
class NotebookTimes:
    cells: int = 0
    seconds: float = 0.0
    failed: int = 0
    skipped: int = 0

    @property
    def status(self) -> str:
        if self.failed:
            return f"failed ({self.failed} cell{'s' if self.failed > 1 else ''})"
        return "passed" if self.cells > self.skipped else "skipped"


def _notebook(case: ET.Element) -> str:
    file = case.get("file")
    if file:
        return file
    classname = case.get("classname", "")
    if classname.endswith(".ipynb"):
        *folders, stem, _ = classname.split(".")
        return "/".join([*folders, f"{stem}.ipynb"])
    return classname or "?"


def collect(xml_path: str | Path) -> dict[str, NotebookTimes]:
    """Per-notebook totals, in the order the notebooks ran."""
    root = ET.parse(xml_path).getroot()
    out: dict[str, NotebookTimes] = {}
    for case in root.iter("testcase"):
        nb = out.setdefault(_notebook(case), NotebookTimes())
        nb.cells += 1
        nb.seconds += float(case.get("time") or 0.0)
        if case.find("failure") is not None or case.find("error") is not None:
            nb.failed += 1
        elif case.find("skipped") is not None:
            nb.skipped += 1
    return out


def markdown(times: dict[str, NotebookTimes], title: str = "Notebook execution times") -> str:
    lines = [f"### {title}", "", "| notebook | cells | time (s) | result |", "| --- | ---: | ---: | --- |"]
    for name, nb in sorted(times.items()):
        lines.append(f"| `{name}` | {nb.cells} | {nb.seconds:.1f} | {nb.status} |")
    total = sum(nb.seconds for nb in times.values())
    cells = sum(nb.cells for nb in times.values())
    failed = sum(1 for nb in times.values() if nb.failed)
    lines.append(f"| **total** | {cells} | {total:.1f} | {failed} notebook(s) failed |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("junit_xml", help="JUnit XML written by pytest --junitxml")
    parser.add_argument("--title", default="Notebook execution times")
    args = parser.parse_args(argv)
    times = collect(args.junit_xml)
    if not times:
        print(f"no test cases in {args.junit_xml}", file=sys.stderr)
        return 1
    sys.stdout.write(markdown(times, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
