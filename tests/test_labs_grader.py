"""The autograder's pieces (fmlib.labs), without a kernel: registry, run_task, check, reports, the CLI's errors.

The checks of the labs are exercised on right and wrong functions written here (a wrong answer must fail
with a hint that says what was expected); executing whole notebooks is tested in tests/repo/test_labs.py.
"""

import json
import math
import random

import nbformat
import pytest
import torch

from fmlib import labs
from fmlib.labs import _grader
from fmlib.labs.__main__ import main


@pytest.fixture
def registry():
    """Restore the registry after a test that adds or replaces tasks."""
    saved = {lab: dict(table) for lab, table in _grader._REGISTRY.items()}
    yield _grader._REGISTRY
    _grader._REGISTRY.clear()
    _grader._REGISTRY.update(saved)


def test_labs_are_not_exported_by_fmlib():
    import fmlib

    assert "check" not in fmlib.__all__ and "grade" not in fmlib.__all__
    assert not hasattr(fmlib, "check")
    assert set(labs.__all__) >= {"check", "grade", "GradeReport", "TaskResult", "task", "CheckFailed"}


def test_built_in_labs_are_registered():
    assert {"lab01_odes_sdes", "lab02_flow_matching_2d"} <= set(labs.lab_ids())
    assert [t.name for t in labs.tasks("lab01_odes_sdes")] == [
        "euler_step",
        "heun_step",
        "fit_order",
        "euler_maruyama_step",
        "simulate_ou",
    ]
    for lab in ("lab01_odes_sdes", "lab02_flow_matching_2d"):
        assert sum(t.points for t in labs.tasks(lab)) == 10
        assert all(t.doc for t in labs.tasks(lab))


def test_task_validates_its_arguments():
    with pytest.raises(TypeError, match="lab"):
        labs.task(lab="", name="x")
    with pytest.raises(TypeError, match="name"):
        labs.task(lab="l", name=3)
    with pytest.raises(TypeError, match="points"):
        labs.task(lab="l", name="x", points=1.5)
    with pytest.raises(ValueError, match="points"):
        labs.task(lab="l", name="x", points=0)
    with pytest.raises(TypeError, match="needs"):
        labs.task(lab="l", name="x", needs="f")
    with pytest.raises(ValueError, match="unknown lab"):
        labs.tasks("no_such_lab")


def test_a_later_task_replaces_one_of_the_same_name(registry):
    @labs.task(lab="t_lab", name="a", points=2)
    def first(ns):
        raise labs.CheckFailed("first")

    @labs.task(lab="t_lab", name="b")
    def other(ns):
        return None

    @labs.task(lab="t_lab", name="a", points=3)
    def second(ns):
        return "second"

    ts = labs.tasks("t_lab")
    assert [(t.name, t.points) for t in ts] == [("a", 3), ("b", 1)]  # replaced in place, order kept
    assert labs.run_task(ts[0], {}).message == "second"


def _result(check, ns, needs=()):
    t = _grader.Task("t_lab", "t", 2, tuple(needs), check)
    return labs.run_task(t, ns)


def test_run_task_pass_and_fail_lines():
    ok = _result(lambda ns: None, {})
    assert ok.passed and ok.earned == 2 and ok.line() == "PASS t (2/2)"
    noted = _result(lambda ns: "order 1.01", {})
    assert noted.line() == "PASS t (2/2): order 1.01"

    def failing(ns):
        raise labs.CheckFailed("expected shape (3, 2); got (3,)")

    bad = _result(failing, {})
    assert not bad.passed and bad.earned == 0 and not bad
    assert bad.line() == "FAIL t: expected shape (3, 2); got (3,)"


def test_run_task_missing_name():
    res = _result(lambda ns: None, {}, needs=("euler_step",))
    assert not res.passed and "`euler_step` not defined" in res.message


def _calls(name):
    return lambda ns: labs.call(ns, name, 1.0, 2.0)


def test_call_reports_the_todo_the_signature_and_exceptions():
    def todo(x, y):
        raise NotImplementedError("TODO: one Euler step")

    res = _result(_calls("f"), {"f": todo})
    assert not res.passed and "still raises NotImplementedError (TODO: one Euler step)" in res.message

    def one_arg(x):
        return x

    res = _result(_calls("f"), {"f": one_arg})
    assert "`f(x)` cannot be called with 2 positional argument(s)" in res.message

    def broken(x, y):
        return [x][y]

    res = _result(_calls("f"), {"f": broken})
    assert "`f` raised TypeError: list indices must be integers" in res.message
    assert "return [x][y]" in res.message  # the student's line, not a traceback

    res = _result(_calls("f"), {"f": 3})
    assert "should be a function" in res.message
    res = _result(_calls("f"), {})
    assert "`f` is not defined" in res.message


def test_run_task_survives_a_broken_check_and_a_direct_todo():
    res = _result(lambda ns: 1 / 0, {})
    assert not res.passed and res.message.startswith("the check stopped on ZeroDivisionError")

    def direct(ns):
        ns["f"]()

    def todo():
        raise NotImplementedError("TODO")

    res = _result(direct, {"f": todo})
    assert "NotImplementedError" in res.message


def test_checks_are_seeded_and_leave_the_students_random_state_alone():
    seen = []

    def draws(ns):
        seen.append((torch.rand(3), random.random()))

    torch.manual_seed(123)
    random.seed(5)
    _result(draws, {})
    _result(draws, {})
    after = (torch.rand(2), random.random())
    torch.manual_seed(123)
    random.seed(5)
    assert torch.equal(torch.rand(2), after[0]) and random.random() == after[1]
    assert torch.equal(seen[0][0], seen[1][0]) and seen[0][1] == seen[1][1]


def test_check_reads_the_callers_globals_and_never_raises(capsys, registry):
    @labs.task(lab="t_lab", name="has_answer", needs=("answer",))
    def has_answer(ns):
        if ns["answer"] != 42:
            raise labs.CheckFailed(f"answer should be 42; got {ns['answer']}")

    ns = {"labs": labs, "answer": 41}
    exec("ok = labs.check('has_answer')", ns)
    assert ns["ok"] is False
    assert capsys.readouterr().out == "FAIL has_answer: answer should be 42; got 41\n"
    assert labs.check("has_answer", {"answer": 42}) is True
    assert capsys.readouterr().out == "PASS has_answer (1/1)\n"
    assert labs.check("no_such_task") is False
    assert "no lab has a task 'no_such_task'" in capsys.readouterr().out

    @labs.task(lab="t_lab2", name="has_answer")
    def other(ns):
        return None

    assert labs.check("has_answer", {"answer": 42}) is False
    assert "several labs" in capsys.readouterr().out
    assert labs.check("has_answer", {}, lab="t_lab2") is True


def test_report_score_line_and_passed():
    rs = [
        labs.TaskResult("l", "a", 3, 3, True),
        labs.TaskResult("l", "b", 4, 4, True),
        labs.TaskResult("l", "c", 3, 0, False, "hint"),
    ]
    rep = labs.GradeReport("nb.ipynb", "l", rs)
    assert (rep.score, rep.total, rep.passed) == (7, 10, False)
    assert rep.score_line() == "score: 7/10 (70 %)"
    assert rep.lines()[-2:] == ["FAIL c: hint", "score: 7/10 (70 %)"]
    assert labs.GradeReport("nb.ipynb", "l", rs[:2]).passed
    assert not labs.GradeReport("nb.ipynb", "l", []).passed
    d = rep.to_dict()
    assert json.loads(json.dumps(d))["score"] == 7


def test_report_function_prints_one_marker_line(capsys):
    ns = {"linear_path": lambda x0, x1, t: (x0, x1)}
    _grader._report("lab02_flow_matching_2d", ns=ns)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(_grader.MARKER)
    data = json.loads(out[0][len(_grader.MARKER) :])
    assert data["error"] is None
    assert [r["name"] for r in data["results"]] == [t.name for t in labs.tasks("lab02_flow_matching_2d")]
    assert not any(r["passed"] for r in data["results"])


# -- the graded pieces of the labs, on right and wrong answers -------------------------------------------


def _euler(v, x, t, dt):
    return x + dt * v(x, t)


def _heun(v, x, t, dt):
    k1 = v(x, t)
    return x + dt / 2 * (k1 + v(x + dt * k1, t + dt))


def _lab1(name, ns):
    return labs.run_task(_grader._find_task(name, "lab01_odes_sdes"), ns)


def test_lab01_steps_and_orders():
    assert _lab1("euler_step", {"euler_step": _euler}).passed
    assert _lab1("heun_step", {"heun_step": _heun}).passed
    # Heun written as Euler: right shape, order 1, caught at the point value
    res = _lab1("heun_step", {"heun_step": _euler})
    assert not res.passed and "expected x + dt/2 (k1 + k2)" in res.message

    def heun_wrong_time(v, x, t, dt):
        k1 = v(x, t)
        return x + dt / 2 * (k1 + v(x + dt * k1, t))

    assert not _lab1("heun_step", {"heun_step": heun_wrong_time}).passed
    res = _lab1("euler_step", {"euler_step": lambda v, x, t, dt: x[:, :1]})
    assert "shape (2, 2)" in res.message


def test_lab01_fit_order():
    def fit(steps, errors):
        a, b = [math.log(n) for n in steps], [math.log(e) for e in errors]
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        return -sum((x - ma) * (y - mb) for x, y in zip(a, b)) / sum((x - ma) ** 2 for x in a)

    def two_points(steps, errors):
        return -math.log(errors[-1] / errors[0]) / math.log(steps[-1] / steps[0])

    assert _lab1("fit_order", {"fit_order": fit}).passed
    res = _lab1("fit_order", {"fit_order": two_points})
    assert not res.passed and "least-squares" in res.message


def _lab2(name, ns):
    return labs.run_task(_grader._find_task(name, "lab02_flow_matching_2d"), ns)


def test_lab02_path_loss_and_sampler():
    def path(x0, x1, t):
        return (1 - t[:, None]) * x0 + t[:, None] * x1, x1 - x0

    def loss(model, x0, x1, t):
        x_t, u_t = path(x0, x1, t)
        return (model(x_t, t) - u_t).pow(2).sum(1).mean()

    def sample(v, x0, steps):
        x = x0
        for k in range(steps):
            x = x + v(x, torch.full((len(x),), k / steps, dtype=x.dtype)) / steps
        return x

    assert _lab2("linear_path", {"linear_path": path}).passed
    res = _lab2("linear_path", {"linear_path": lambda x0, x1, t: path(x1, x0, t)})
    assert not res.passed and "x_t = (1 - t) x0 + t x1" in res.message
    assert _lab2("cfm_loss", {"cfm_loss": loss}).passed
    res = _lab2("cfm_loss", {"cfm_loss": lambda m, x0, x1, t: loss(m, x0, x1, t) / 2})
    assert not res.passed and "mean over the batch" in res.message
    res = _lab2("cfm_loss", {"cfm_loss": lambda m, x0, x1, t: loss(m, x0, x1, t).detach()})
    assert not res.passed and "gradient" in res.message
    assert _lab2("sample", {"sample": sample}).passed

    def right_endpoints(v, x0, steps):
        x = x0
        for k in range(steps):
            x = x + v(x, torch.full((len(x),), (k + 1) / steps, dtype=x.dtype)) / steps
        return x

    res = _lab2("sample", {"sample": right_endpoints})
    assert not res.passed and "t_k = k / 8" in res.message
    res = _lab2("sample", {"sample": lambda v, x0, steps: x0 + v(x0, 0.0)})
    assert not res.passed and "shape (B,)" in res.message


# -- grade() and the command line on notebooks that cannot run --------------------------------------------


def _write_nb(path, metadata=None, cells=()):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata.update(metadata or {})
    nbformat.write(nb, path)
    return path


def test_grade_rejects_a_notebook_that_is_not_a_lab(tmp_path):
    rep = labs.grade(_write_nb(tmp_path / "plain.ipynb", cells=["x = 1"]))
    assert not rep.passed and rep.lab is None and "not an fmlib lab" in rep.error
    assert rep.lines()[-1] == "score: 0/0 (0 %)"


def test_grade_reports_invalid_json_and_an_unknown_lab(tmp_path):
    bad = tmp_path / "bad.ipynb"
    bad.write_text("{ not json", encoding="utf-8")
    rep = labs.grade(bad)
    assert not rep.passed and "cannot read" in rep.error
    rep = labs.grade(_write_nb(tmp_path / "u.ipynb", {"fmlib_lab": "lab99"}))
    assert "unknown lab 'lab99'" in rep.error


def test_grade_validates_timeout(tmp_path):
    with pytest.raises(TypeError, match="timeout"):
        labs.grade(tmp_path / "x.ipynb", timeout=1.5)
    with pytest.raises(ValueError, match="timeout"):
        labs.grade(tmp_path / "x.ipynb", timeout=0)


def test_cli_reports_per_notebook_and_exits_non_zero(tmp_path, capsys):
    _write_nb(tmp_path / "a.ipynb")
    (tmp_path / "b.ipynb").write_text("[]", encoding="utf-8")
    out_json = tmp_path / "out.json"
    assert main(["grade", str(tmp_path), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "a.ipynb" in out and "b.ipynb" in out and out.count("ERROR") == 2
    assert "Traceback" not in out
    assert [r["passed"] for r in json.loads(out_json.read_text())] == [False, False]
    assert main(["grade", str(tmp_path / "missing.ipynb")]) == 1
    assert "no such file" in capsys.readouterr().out


def test_cli_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "lab01_odes_sdes (10 points)" in out and "  euler_step (2):" in out


def test_load_checks_adds_and_replaces(tmp_path, registry):
    extra = tmp_path / "extra.py"
    extra.write_text(
        "from fmlib.labs import task, CheckFailed\n"
        "@task(lab='lab01_odes_sdes', name='fit_order', points=1)\n"
        "def always(ns):\n"
        "    return 'replaced'\n"
        "@task(lab='lab01_odes_sdes', name='extra_task', points=5)\n"
        "def extra(ns):\n"
        "    raise CheckFailed('an instructor check')\n",
        encoding="utf-8",
    )
    labs.load_checks(extra)
    ts = {t.name: t for t in labs.tasks("lab01_odes_sdes")}
    assert labs.run_task(ts["fit_order"], {}).message == "replaced"
    assert ts["extra_task"].points == 5 and list(ts)[-1] == "extra_task"
    with pytest.raises(FileNotFoundError):
        labs.load_checks(tmp_path / "none.py")
