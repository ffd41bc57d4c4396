"""The autograder's machinery: the task registry, running a check, and grading an executed notebook.

A *check* is a function ``check(ns: dict) -> str | None`` registered with :func:`task`. It reads the
student's names from ``ns`` (the notebook's globals), tests their behaviour against independent values
(closed forms, measured convergence orders, W2 against its finite-sample floor) and raises
:class:`CheckFailed` with a hint when they are wrong; a string it returns is a note added to the PASS
line. :func:`run_task` turns everything that can go wrong (a missing name, a TODO that still raises
``NotImplementedError``, a wrong signature, an exception inside the student's code, a broken check)
into a failed :class:`TaskResult` with the reason: nothing here raises at the student.

Grading a notebook file (:func:`grade`) executes it with nbclient in a fresh kernel running this
Python, in the notebook's own folder, then runs every check of its lab in that kernel
(:func:`_report`) and reads the results back from a marker line of JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CheckFailed",
    "Task",
    "TaskResult",
    "GradeReport",
    "task",
    "tasks",
    "lab_ids",
    "run_task",
    "check",
    "call",
    "load_checks",
    "grade",
    "LAB_KEY",
]

LAB_KEY = "fmlib_lab"
"""The key of a lab notebook's metadata that names its lab: ``metadata["fmlib_lab"] = "lab01_odes_sdes"``."""
TASK_KEY = "fmlib_task"
"""The key of a cell's metadata that marks a cell the student completes (its value: the task's name)."""
MARKER = "@@fmlib-labs-report@@"
"""Prefix of the line of JSON that :func:`_report` prints inside the kernel."""

Check = Callable[[dict], "str | None"]


class CheckFailed(Exception):
    """Raised by a check when the student's code does not behave as expected; its message is the hint.

    The hint says what was expected: a shape, a value at a point, an order, a threshold.
    """


@dataclass(frozen=True)
class Task:
    """A registered check: ``check(ns)`` for task ``name`` of lab ``lab``, worth ``points``.

    ``needs`` are the names the check reads from the notebook's globals; a missing one fails the task
    with "not defined" before the check runs.
    """

    lab: str
    name: str
    points: int
    needs: tuple[str, ...]
    check: Check
    doc: str = ""


@dataclass
class TaskResult:
    """The outcome of one task: ``passed``, ``earned`` of ``points``, and the hint or note in ``message``."""

    lab: str
    name: str
    points: int
    earned: int
    passed: bool
    message: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        """``PASS name (2/2)`` (with a note after a colon, if any) or ``FAIL name: hint``."""
        if self.passed:
            note = f": {self.message}" if self.message else ""
            return f"PASS {self.name} ({self.earned}/{self.points}){note}"
        return f"FAIL {self.name}: {self.message}"

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class GradeReport:
    """The grade of one notebook: one :class:`TaskResult` per task of its lab, in the lab's order.

    ``error`` says why the notebook could not be graded in full (not a lab, not valid JSON, the kernel
    died); ``notes`` list what went wrong while it ran (a cell that raised or ran past the timeout).
    """

    notebook: str
    lab: str | None
    results: list[TaskResult] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def score(self) -> int:
        return sum(r.earned for r in self.results)

    @property
    def total(self) -> int:
        return sum(r.points for r in self.results)

    @property
    def passed(self) -> bool:
        """Every check passed (and there was at least one) and nothing stopped the grading."""
        return self.error is None and bool(self.results) and all(r.passed for r in self.results)

    def score_line(self) -> str:
        percent = round(100 * self.score / self.total) if self.total else 0
        return f"score: {self.score}/{self.total} ({percent} %)"

    def lines(self) -> list[str]:
        """The report as printed by ``python -m fmlib.labs grade``."""
        head = f"== {self.notebook}" + (f" ({self.lab})" if self.lab else "") + f", {self.seconds:.1f} s =="
        out = [head]
        if self.error:
            out.append(f"ERROR {self.error}")
        out += [f"note: {n}" for n in self.notes]
        out += [r.line() for r in self.results]
        out.append(self.score_line())
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(score=self.score, total=self.total, passed=self.passed)
        return d


# -- the registry --------------------------------------------------------------------------------------

_REGISTRY: dict[str, dict[str, Task]] = {}


def task(lab: str, name: str, points: int = 1, needs: Sequence[str] = ()) -> Callable[[Check], Check]:
    """Register ``check`` as task ``name`` of lab ``lab``, worth ``points``; returns it unchanged.

    A task of the same lab and name registered later replaces the earlier one (this is how an
    instructor's ``--checks`` file replaces a built-in check); a new name is appended to the lab.

    Raises:
        TypeError: lab or name not a str, points not an int, needs not a sequence of str.
        ValueError: points < 1, or an empty lab or name.
    """
    if not isinstance(lab, str) or not lab:
        raise TypeError(f"lab must be a non-empty str; got {lab!r}")
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str; got {name!r}")
    if not isinstance(points, int) or isinstance(points, bool):
        raise TypeError(f"points must be an int; got {type(points).__name__}")
    if points < 1:
        raise ValueError(f"points must be >= 1; got {points}")
    if isinstance(needs, str) or not all(isinstance(n, str) for n in needs):
        raise TypeError(f"needs must be a sequence of names (str); got {needs!r}")

    def register(check: Check) -> Check:
        doc = inspect.getdoc(check) or ""
        _REGISTRY.setdefault(lab, {})[name] = Task(lab, name, points, tuple(needs), check, doc)
        return check

    return register


def tasks(lab: str) -> list[Task]:
    """The tasks of ``lab`` in the order they were registered. Raises ValueError for an unknown lab."""
    if lab not in _REGISTRY:
        raise ValueError(f"unknown lab {lab!r}; known labs: {', '.join(lab_ids()) or 'none'}")
    return list(_REGISTRY[lab].values())


def lab_ids() -> list[str]:
    """The ids of the registered labs, sorted."""
    return sorted(_REGISTRY)


def load_checks(path: str | Path) -> None:
    """Execute an instructor's Python file of ``@task`` checks, adding or replacing tasks.

    Raises:
        FileNotFoundError: no such file. Any exception of the file itself propagates.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no checks file {path}")
    name = f"fmlib_labs_extra_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


# -- running one check ---------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def call(ns: dict, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the student's ``ns[name](*args, **kwargs)`` for a check, turning failures into hints.

    Raises:
        CheckFailed: ``name`` is not defined or not callable, the arguments do not fit its signature,
            it still raises ``NotImplementedError`` (the TODO), or it raises any other exception (its
            type and message, and the line of the student's code where it happened).
    """
    if name not in ns:
        raise CheckFailed(f"`{name}` is not defined: run the cell that defines it")
    fn = ns[name]
    if not callable(fn):
        raise CheckFailed(f"`{name}` should be a function; it is a {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise CheckFailed(
                f"`{name}{sig}` cannot be called with {len(args)} positional argument(s)"
                + (f" and {', '.join(kwargs)}" if kwargs else "")
                + f" as the task asks ({exc}); keep the signature of the scaffold"
            ) from None
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as exc:
        raise CheckFailed(f"`{name}` still raises NotImplementedError ({exc}): write it") from None
    except CheckFailed:
        raise
    except Exception as exc:
        where = _student_line(exc)
        raise CheckFailed(f"`{name}` raised {_describe(exc)}{where}") from None


def _student_line(exc: BaseException) -> str:
    """`` (at line 3 of a notebook cell: x = ...)`` for the innermost frame not in fmlib or torch."""
    frames = traceback.extract_tb(exc.__traceback__)
    here = str(Path(__file__).resolve().parent.parent)
    for fr in reversed(frames):
        fname = fr.filename or ""
        if fname.startswith(here) or "site-packages" in fname or "/lib/python" in fname:
            continue
        src = (fr.line or "").strip()
        return f" (at line {fr.lineno} of {Path(fname).name or fname}: {src})" if src else ""
    return ""


@contextlib.contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Seed torch, numpy and random for a check, and restore the student's random states afterwards."""
    import random

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def run_task(t: Task, ns: dict) -> TaskResult:
    """Run task ``t`` on the namespace ``ns``; never raises (except KeyboardInterrupt and SystemExit).

    Every name of ``t.needs`` must be in ``ns``; then the check runs seeded (torch, numpy and random
    seeded with 0, the student's random states restored afterwards) and with gradients enabled.
    """
    import torch

    start = time.perf_counter()

    def result(passed: bool, message: str) -> TaskResult:
        return TaskResult(
            t.lab, t.name, t.points, t.points if passed else 0, passed, message, time.perf_counter() - start
        )

    missing = [n for n in t.needs if n not in ns]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        them = "it" if len(missing) == 1 else "them"
        return result(False, f"{names} not defined: run the cell(s) above that define {them}")
    try:
        with _seeded(), torch.enable_grad():
            note = t.check(ns)
    except CheckFailed as exc:
        return result(False, str(exc) or "the check failed")
    except NotImplementedError as exc:
        return result(False, f"still raises NotImplementedError ({exc}): write it")
    except Exception as exc:  # a student's function called directly by the check, or a broken check
        return result(False, f"the check stopped on {_describe(exc)}{_student_line(exc)}")
    return result(True, note if isinstance(note, str) else "")


def _find_task(name: str, lab: str | None) -> Task:
    if lab is not None:
        table = _REGISTRY.get(lab, {})
        if name not in table:
            raise LookupError(f"lab {lab!r} has no task {name!r}; its tasks: {', '.join(table) or 'none'}")
        return table[name]
    found = [tbl[name] for tbl in _REGISTRY.values() if name in tbl]
    if not found:
        raise LookupError(f"no lab has a task {name!r}")
    if len(found) > 1:
        raise LookupError(f"several labs have a task {name!r}: pass lab= one of {[t.lab for t in found]}")
    return found[0]


def check(name: str, ns: dict | None = None, *, lab: str | None = None, quiet: bool = False) -> bool:
    """Run the check of task ``name`` on the caller's globals, print ``PASS ...`` or ``FAIL ...: hint``.

    Call it in the cell after the task, as ``labs.check("euler_step")``: with ``ns=None`` it reads the
    globals of the calling frame (in a notebook: the notebook's variables); pass ``globals()`` or any
    dict as ``ns`` to check another namespace. ``lab`` is needed only when two labs have a task of that
    name. Never raises: an unknown task prints a FAIL line too.

    Returns:
        True when the task passed.
    """
    if ns is None:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        ns = caller.f_globals if caller is not None else {}
        del frame, caller
    try:
        t = _find_task(name, lab)
    except LookupError as exc:
        if not quiet:
            print(f"FAIL {name}: {exc}")
        return False
    res = run_task(t, ns)
    if not quiet:
        print(res.line())
    return res.passed


def _report(lab: str, extra_checks: Sequence[str] = (), ns: dict | None = None) -> None:
    """Run every task of ``lab`` on the caller's globals and print the results as one marker line of JSON.

    The grader executes this in the student's kernel after the notebook's last cell.
    """
    if ns is None:
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        ns = caller.f_globals if caller is not None else {}
        del frame, caller
    out: dict[str, Any] = {"results": [], "error": None}
    try:
        for path in extra_checks:
            load_checks(path)
        out["results"] = [asdict(run_task(t, ns)) for t in tasks(lab)]
    except Exception as exc:
        out["error"] = _describe(exc)
    print(MARKER + json.dumps(out), flush=True)


# -- grading a notebook file ---------------------------------------------------------------------------


def _kernel_manager() -> Any:
    """A kernel manager for a kernel running this very Python (so the kernel imports this fmlib)."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class _ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            return KernelSpec(
                argv=[
                    sys.executable,
                    "-m",
                    "ipykernel_launcher",
                    "-f",
                    "{connection_file}",
                    "--IPKernelApp.log_level=ERROR",
                ],
                display_name="Python 3 (the grader's)",
                language="python",
                resource_dir=str(Path(__file__).parent),
            )

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_ThisPython())


def _failed_all(lab: str, reason: str) -> list[TaskResult]:
    return [TaskResult(t.lab, t.name, t.points, 0, False, reason) for t in tasks(lab)]


def _cell_notes(cells: Iterable[Any], timeout: int | None = None) -> list[str]:
    """One line per code cell that raised: its index, its first line, and the exception (or the timeout)."""
    notes = []
    for i, cell in enumerate(cells):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                first = "".join(cell.get("source", "")).strip().splitlines()
                label = f"cell {i}" + (f" ({first[0][:60]})" if first else "")
                if out.get("ename") == "KeyboardInterrupt":
                    limit = f" of {timeout} s" if timeout else ""
                    notes.append(f"{label} ran past the timeout{limit} and was interrupted")
                else:
                    what = f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".strip().rstrip(":")
                    notes.append(f"{label} raised {what}")
    return notes


REPORT_TIMEOUT = 600
"""Seconds the checks of a lab may take together in the kernel (at least; ``timeout`` if larger)."""


def grade(path: str | Path, *, timeout: int = 600, checks: Sequence[str | Path] = ()) -> GradeReport:
    """Execute the lab notebook at ``path`` and run all the checks of its lab; never raises for a bad notebook.

    The notebook runs in a fresh kernel of this Python, in its own folder (relative paths work), every
    cell even after one raises, each cell for at most ``timeout`` seconds (then it is interrupted). The
    lab is ``metadata["fmlib_lab"]``. ``checks`` are instructors' files of ``@task`` checks loaded on
    top of the built-in ones (see :func:`load_checks`).

    Returns:
        A :class:`GradeReport`; its ``error`` is set when the file is not a valid notebook, not a lab,
        names an unknown lab, or when the kernel died.

    Raises:
        TypeError: timeout not an int. ValueError: timeout < 1.
        FileNotFoundError: a checks file that does not exist.
    """
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be an int (seconds); got {type(timeout).__name__}")
    if timeout < 1:
        raise ValueError(f"timeout must be >= 1 second; got {timeout}")
    import nbformat

    start = time.perf_counter()
    path = Path(path)
    extra = [str(Path(c).resolve()) for c in checks]
    for c in extra:
        load_checks(c)
    report = GradeReport(str(path), None)

    def done(error: str | None = None) -> GradeReport:
        report.error = error
        report.seconds = time.perf_counter() - start
        return report

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:
        return done(f"cannot read {path} as a notebook: {_describe(exc)}")
    lab = nb.get("metadata", {}).get(LAB_KEY)
    if not isinstance(lab, str):
        return done(f'not an fmlib lab: the notebook metadata has no "{LAB_KEY}" (a lab id such as "lab01_odes_sdes")')
    report.lab = lab
    if lab not in _REGISTRY:
        return done(f"unknown lab {lab!r}; known labs: {', '.join(lab_ids())}")
    try:
        from nbclient import NotebookClient
        from nbclient.exceptions import DeadKernelError
    except ImportError:
        report.results = _failed_all(lab, "not graded")
        return done("grading a notebook file needs nbclient: pip install nbclient ipykernel")

    code = f"from fmlib.labs import _grader as _fmlib_labs_grader\n_fmlib_labs_grader._report({lab!r}, {extra!r})\n"
    nb.cells.append(nbformat.v4.new_code_cell(code, metadata={"fmlib_report": True}))

    def cell_timeout(cell: Any) -> int:
        return max(timeout, REPORT_TIMEOUT) if cell.get("metadata", {}).get("fmlib_report") else timeout

    client = NotebookClient(
        nb,
        timeout=timeout,
        timeout_func=cell_timeout,
        allow_errors=True,
        interrupt_on_timeout=True,
        record_timing=False,
        km=_kernel_manager(),
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    try:
        client.execute()
    except DeadKernelError as exc:
        report.notes = _cell_notes(nb.cells[:-1], timeout)
        report.results = _failed_all(lab, "not graded: the kernel died")
        return done(f"the kernel died while running the notebook (out of memory? a crash?): {_describe(exc)}")
    except Exception as exc:
        report.notes = _cell_notes(nb.cells[:-1], timeout)
        report.results = _failed_all(lab, "not graded: the notebook could not be executed")
        return done(f"the notebook could not be executed: {_describe(exc)}")
    report.notes = _cell_notes(nb.cells[:-1], timeout)
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    lines = [ln for ln in text.splitlines() if ln.startswith(MARKER)]
    if not lines:
        errors = _cell_notes(nb.cells[-1:])
        report.results = _failed_all(lab, "not graded")
        why = errors[0] if errors else "no report was printed"
        return done(f"the checks could not run in the notebook's kernel: {why}")
    data = json.loads(lines[-1][len(MARKER) :])
    report.results = [TaskResult(**r) for r in data["results"]]
    if data["error"]:
        if not report.results:
            report.results = _failed_all(lab, "not graded")
        return done(f"the checks stopped: {data['error']}")
    return done()
