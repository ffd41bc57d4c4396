"""``python -m fmlib.labs grade PATH [PATH ...] [--checks EXTRA.py] [--timeout 600] [--json OUT]``.

Grades lab notebooks: each PATH is a notebook or a folder (every ``*.ipynb`` in it, sorted, not
recursive). Prints per notebook one PASS/FAIL line per task and ``score: 7/10 (70 %)``. Exit status 0
only when every check of every notebook passed, 1 otherwise, 2 for a usage error. ``python -m
fmlib.labs list`` prints the labs and their tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import _grader


def _notebooks(paths: list[Path]) -> tuple[list[Path], list[str]]:
    found, missing = [], []
    for p in paths:
        if p.is_dir():
            found += sorted(q for q in p.glob("*.ipynb") if q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            missing.append(str(p))
    return found, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmlib.labs", description="Grade fmlib lab notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="execute lab notebooks and run their checks")
    g.add_argument("paths", nargs="+", type=Path, help="notebooks, or folders of notebooks")
    g.add_argument(
        "--checks",
        action="append",
        default=[],
        type=Path,
        metavar="EXTRA.py",
        help="a Python file of @task checks that adds to or replaces the built-in ones (repeatable)",
    )
    g.add_argument("--timeout", type=int, default=600, help="seconds one cell may run (default 600)")
    g.add_argument("--json", type=Path, metavar="OUT", help="also write the reports as JSON to OUT")
    sub.add_parser("list", help="list the labs and their tasks")
    args = parser.parse_args(argv)

    if args.command == "list":
        for lab in _grader.lab_ids():
            ts = _grader.tasks(lab)
            print(f"{lab} ({sum(t.points for t in ts)} points)")
            for t in ts:
                print(f"  {t.name} ({t.points}): {t.doc.splitlines()[0] if t.doc else ''}")
        return 0

    if args.timeout < 1:
        parser.error(f"--timeout must be >= 1 second; got {args.timeout}")
    for c in args.checks:
        if not c.is_file():
            parser.error(f"--checks: no such file {c}")
        try:
            _grader.load_checks(c)
        except Exception as exc:
            print(f"ERROR --checks {c}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2
    notebooks, missing = _notebooks(args.paths)
    for m in missing:
        print(f"ERROR {m}: no such file or folder")
    if not notebooks and not missing:
        print("ERROR no notebooks (*.ipynb) found")
        return 1
    reports = []
    for nb in notebooks:
        report = _grader.grade(nb, timeout=args.timeout, checks=[str(c) for c in args.checks])
        reports.append(report)
        print("\n".join(report.lines()), flush=True)
    if len(reports) > 1:
        ok = sum(r.passed for r in reports)
        print(f"{ok} of {len(reports)} notebooks passed every check")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=1) + "\n", encoding="utf-8")
    return 0 if reports and not missing and all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
