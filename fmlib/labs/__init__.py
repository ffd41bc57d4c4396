"""Labs: scaffolded notebooks that students complete, and the autograder that checks them.

Import it explicitly (``from fmlib import labs``); its names are not exported by ``fmlib`` itself.

In a lab notebook, the cell after each task runs its check on the notebook's variables::

    from fmlib import labs

    labs.check("euler_step")  # prints "PASS euler_step (2/2)" or "FAIL euler_step: <hint>"

An instructor grades notebooks or folders of them from the command line::

    python -m fmlib.labs grade submissions/ [--checks my_checks.py] [--timeout 600] [--json grades.json]

or from Python with :func:`grade`. A check is a function ``check(ns) -> str | None`` registered with
:func:`task`; it raises :class:`CheckFailed` with a hint when the student's code misbehaves. The checks
of each lab live in a module ``fmlib/labs/labNN_*.py``, imported here automatically; ``labs/README.md``
in the repository says how to add a lab or a check.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._grader import (
    LAB_KEY,
    CheckFailed,
    GradeReport,
    Task,
    TaskResult,
    call,
    check,
    grade,
    lab_ids,
    load_checks,
    run_task,
    task,
    tasks,
)

__all__ = [
    "check",
    "grade",
    "GradeReport",
    "TaskResult",
    "task",
    "CheckFailed",
    "Task",
    "tasks",
    "lab_ids",
    "call",
    "run_task",
    "load_checks",
    "LAB_KEY",
]

# every module labNN_*.py of this package registers its lab's checks when imported
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module.startswith("lab"):
        importlib.import_module(f"{__name__}.{_module}")
del _module
