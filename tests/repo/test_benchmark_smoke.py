"""The benchmarks run end to end (each script's --smoke), write one metadata format, and the stored results and
figures stay consistent with the code.

Needs torchcfm and flow_matching: `make test` installs them with --no-deps from benchmarks/requirements.txt
(a missing install fails here, loudly). The full benchmarks (`make bench`) are not part of the tests.
"""

import ast
import dataclasses
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import flow_matching  # noqa: F401  (fail, not skip, when the benchmark's libraries are missing)
import matplotlib
import pytest
import torch
import torchcfm  # noqa: F401

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import fmlib  # noqa: E402
from benchmarks import compare_2d, couplings, figures, harness, sampling, training_recipes  # noqa: E402
from fmlib.plotting import MAX_FIGURE_WIDTH  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ("fmlib_independent", "torchcfm_independent", "flow_matching_independent", "fmlib_ot", "torchcfm_ot")
NFE = ("1", "2", "4", "8", "100")


def _numbers(obj, where="result"):
    """Yield (location, value) for every number in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


def run_smoke(script: str, out: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--smoke", "--quiet", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return harness.load(out)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return run_smoke("compare_2d", out / "smoke.json", "--figures-dir", str(out)), out


# ------------------------------------------------------------------------------------------------ compare_2d
def test_smoke_json_has_metadata_and_config(smoke):
    result, _ = smoke
    meta = result["meta"]
    assert meta["benchmark"] == "compare_2d" and meta["mode"] == "smoke"
    assert meta["wall_seconds"] > 0 and meta["torch_threads"] == 1
    assert {"python", "torch", "numpy", "fmlib", "torchcfm", "flow_matching", "ot", "scipy"} <= set(meta["versions"])
    for key in ("seeds", "tasks", "steps_independent", "steps_ot", "batch_size", "n_eval", "nfe", "lr"):
        assert key in result["config"], key
    assert result["config"]["batch_size"] == 512
    assert compare_2d.Config.from_dict(result["config"]) == compare_2d.Config.smoke()


def test_smoke_every_number_is_finite(smoke):
    result, _ = smoke
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]


def test_smoke_summary_covers_every_library_and_metric(smoke):
    result, _ = smoke
    s = result["summary"]
    assert set(s["train_step_ratio"]["independent"]) == {"fmlib/torchcfm", "fmlib/flow_matching"}
    assert set(s["train_step_ratio"]["ot"]) == {"fmlib/torchcfm"}
    for coupling in s["train_step_ratio"].values():
        for ratio in coupling.values():
            assert ratio["all_tasks"]["mean"] > 0 and ratio["all_tasks"]["n"] == len(result["config"]["seeds"])
    for nfe, d in s["sampling_ratio"].items():
        assert set(d) == {"fmlib/torchcfm", "fmlib/flow_matching"}, nfe
    assert set(s["train_ms_per_step"]) == set(VARIANTS)
    for task in result["config"]["tasks"]:
        assert s["floor_w2"][task]["mean"] > 0
        assert set(s["w2"][task]) == set(VARIANTS)
        for variant, per_step in s["w2"][task].items():
            assert per_step, variant
            for step, w2 in per_step.items():
                assert set(w2) == set(NFE), (variant, step)
                assert all(w2[n]["mean"] > 0 for n in NFE)
                assert s["npe"][task][variant][step]["mean"] >= 0
    assert result["long_reference"]
    for ref in result["long_reference"].values():
        assert set(ref["w2"]) == {"euler_100", "euler_1000", "rk4_100"}


def test_smoke_libraries_optimise_the_same_objective(smoke):
    # identical initial weights, minibatches, path and optimiser: with the independent coupling the three libraries
    # differ only by a constant loss factor (Adam ignores it up to its epsilon) and rounding, so the trained models
    # give the same W2 to ~1e-3
    result, _ = smoke
    for run in result["runs"]:
        evals = {v: run["variants"][v]["evals"] for v in VARIANTS[:3]}
        for step, ev in evals["fmlib_independent"].items():
            for other in VARIANTS[1:3]:
                for n in NFE:
                    assert math.isclose(ev["w2"][n], evals[other][step]["w2"][n], rel_tol=1e-3), (other, step, n)


def test_smoke_writes_the_figures(smoke):
    result, out = smoke
    assert result["figures"] == [f"smoke_{name}.png" for name in figures.COMPARE_2D]
    for name in result["figures"]:
        assert (out / name).stat().st_size > 1000, name


# ------------------------------------------------------------------------------------------------ the other scripts
def test_sampling_smoke_uses_chapter_5s_model_and_the_common_metadata(tmp_path):
    result = run_smoke("sampling", tmp_path / "sampling.json")
    assert result["meta"]["benchmark"] == "sampling" and result["meta"]["mode"] == "smoke"
    assert result["model_cell"] == sampling.chapter_training_cell()
    assert result["config"]["train_steps"] == sampling.Config.smoke().train_steps
    methods = {row["method"] for row in result["sampling"]}
    assert methods == {"euler", "midpoint", "heun", "rk4", "dopri5"}
    for row in result["sampling"]:
        if row["nfe"] is not None:  # a reached target: the error is at most the target
            assert row["error"] <= row["target"], row
    assert result["likelihood"]["exact"]["nfe"] == 4 * result["config"]["ll_steps"]  # RK4: 4 evaluations a step


def test_marginal_smoke_writes_the_common_metadata(tmp_path):
    result = run_smoke("marginal", tmp_path / "marginal.json")
    assert result["meta"]["benchmark"] == "marginal"
    assert [row["n"] for row in result["rows"]] == list(result["config"]["sizes"])
    assert all(row["seconds"] > 0 for row in result["rows"])


def test_stored_marginal_result_is_quiet_and_fused_at_1e5_within_15_s():
    # the reliability target: 1e5 queries x 1e5 points in 2D in at most 15 s on one core, taken alone, by the fused
    # route the code takes at that size (faster than the eager loop timed beside it, with the same velocities)
    result = harness.load(RESULTS / "marginal.json")
    assert result["meta"]["quiet"] and result["meta"]["torch_threads"] == 1
    (row,) = [r for r in result["rows"] if r["n"] == 100_000]
    assert row["fused"] == (row["n"] ** 2 >= fmlib.marginal._FUSED_MIN_PAIRS) and row["fused"]
    assert row["seconds"] <= 15 and row["seconds"] < row["eager_seconds"], row
    assert row["max_relative_difference"] < 1e-4, row


def test_chapter_cell_steps_are_replaced_in_the_fmlib_train_call():
    tree = ast.parse(
        "losses = fmlib.train(model, path, data, steps=2500, recipe=fmlib.Recipe.constant(3e-3), batch_size=256)\n"
        "other(steps=3)"
    )
    edit = sampling._TrainSteps(7)
    source = ast.unparse(edit.visit(tree))
    assert edit.replaced == 1 and "steps=7" in source and "other(steps=3)" in source
    assert "recipe=fmlib.Recipe.constant(0.003)" in source


# ------------------------------------------------------------------------------------------------ couplings
@pytest.fixture(scope="module")
def couplings_smoke(tmp_path_factory):
    return run_smoke("couplings", tmp_path_factory.mktemp("couplings") / "couplings.json")


def test_couplings_smoke_writes_the_common_format(couplings_smoke):
    result = couplings_smoke
    meta = result["meta"]
    assert meta["benchmark"] == "couplings" and meta["mode"] == "smoke" and meta["torch_threads"] == 1
    assert {"python", "torch", "numpy", "fmlib", "scipy", "ot"} <= set(meta["versions"])
    assert couplings.Config.from_dict(result["config"]) == couplings.Config.smoke()
    assert result["config"]["exact_solver"] == couplings.DESCRIPTION["exact_solver"]
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]


def test_couplings_smoke_measures_every_part(couplings_smoke):
    result, cfg = couplings_smoke, couplings.Config.smoke()
    assert list(result["assignment_time"]) == [str(n) for n in cfg.sizes]
    for row in result["assignment_time"].values():
        assert {"exact", "pot_emd", "scipy_linear_sum_assignment"} <= set(row) and min(row.values()) > 0
    tc = result["transport_cost"]
    # exact OT is the optimal assignment: it is the reference (ratio 1) and no coupling pairs shorter; independent
    # pairs are much longer (the 8 Gaussians lie on a circle far outside the bulk of N(0, I))
    assert tc["exact"] == {"mean": 1.0, "sd": 0.0, "n": cfg.cost_draws}
    assert all(d["mean"] >= 1 - 1e-9 for d in tc.values()), tc
    assert tc["independent"]["mean"] > 2
    st = result["step_time"]
    assert st["batch"] == cfg.batch and st["ratio_to_independent"]["independent"] == 1.0
    assert set(st["ms_per_step"]) == {"independent", "exact", "block_64", "block_128", "sinkhorn_0.5", "exact_prefetch"}
    assert set(result["training"]) == set(cfg.train_couplings)
    for r in result["training"].values():
        assert len(r["runs"]) == len(cfg.seeds) and r["npe"]["mean"] >= 0 and r["w2_100"]["n"] == len(cfg.seeds)
    assert result["default"] == couplings.choose_default(result)


def _tradeoff(ratio: dict, quality: dict) -> dict:
    """A made-up result for choose_default: step ratios and (W2 at 100 steps, NPE) means with sd 0.01."""
    training = {
        k: {"w2_100": {"mean": w2, "sd": 0.01}, "npe": {"mean": npe, "sd": 0.01}} for k, (w2, npe) in quality.items()
    }
    return {"step_time": {"ratio_to_independent": ratio}, "training": training}


def test_choose_default_takes_the_cheapest_coupling_that_keeps_exact_quality():
    ratio = {"independent": 1.0, "exact": 6.0, "block_64": 1.2, "block_128": 1.5}
    quality = {"independent": (0.5, 1.0), "exact": (0.4, 0.1), "block_64": (0.405, 0.105), "block_128": (0.4, 0.1)}
    assert couplings.choose_default(_tradeoff(ratio, quality))["coupling"] == "block_64"
    # blocks of 64 lose quality beyond one sd: the next cheapest that keeps it
    quality["block_64"] = (0.45, 0.105)
    assert couplings.choose_default(_tradeoff(ratio, quality))["coupling"] == "block_128"
    # nothing within 2x of the independent step: exact OT stays
    ratio.update(block_128=2.5)
    chosen = couplings.choose_default(_tradeoff(ratio, quality))
    assert chosen["coupling"] == "exact" and "no cheaper coupling" in chosen["reason"]


def test_stored_couplings_default_is_what_the_rule_gives_from_its_numbers():
    result = harness.load(RESULTS / "couplings.json")
    assert result["meta"]["benchmark"] == "couplings" and result["meta"]["mode"] == "full"
    cfg = couplings.Config.from_dict(result["config"])
    assert {**harness.config_dict(cfg), **couplings.DESCRIPTION} == result["config"]
    assert result["default"] == couplings.choose_default(result)
    for name, r in result["training"].items():  # the summaries are those of the stored runs
        assert r["npe"] == harness.mean_sd([run["npe"] for run in r["runs"]]), name
        assert r["w2_100"] == harness.mean_sd([run["w2"]["100"] for run in r["runs"]]), name


# ------------------------------------------------------------------------------------------------ training recipes
def test_training_recipes_smoke_writes_the_common_format_and_every_part(tmp_path):
    result, cfg = run_smoke("training_recipes", tmp_path / "recipes.json"), training_recipes.Config.smoke()
    assert result["meta"]["benchmark"] == "training_recipes" and result["meta"]["mode"] == "smoke"
    assert training_recipes.Config.from_dict(result["config"]) == cfg
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]
    runs = result["runs"]
    libs = training_recipes.library_runs(cfg)
    assert libs == [f"{lib}@{b}" for lib in cfg.libraries for b in ("steps", "time")]
    assert len(runs) == len(cfg.seeds) * len(cfg.tasks) * (len(cfg.recipes) + len(libs))
    for r in runs:  # the score is W2 over the floor of the same held-out draws
        assert r["w2_over_floor"] == pytest.approx(r["w2"] / r["floor_w2"], rel=1e-12) and r["floor_w2"] > 0
        if "library" not in r:
            assert len(r["curve_steps"]) == len(r["curve_w2_over_floor"]) > 0 and r["steps"] == cfg.steps
    st = result["step_time"]
    for r in runs:  # the other libraries: equal steps, or the steps that take the default recipe's time
        if "library" in r:
            default = next(d for d in runs if (d["task"], d["seed"], d["recipe"]) == (r["task"], r["seed"], "default"))
            assert r["floor_w2"] == default["floor_w2"]
            ratio = st[f"{r['library']}_loop"]["ms_per_step_median"] / st["default"]["ms_per_step_median"]
            want = cfg.steps if r["budget"] == "steps" else max(1, round(cfg.steps / ratio))
            assert r["steps"] == want
            assert r["time_over_default"] == pytest.approx(want * ratio / cfg.steps, rel=1e-12)
    assert result["summary"] == training_recipes.summarize(runs)
    assert set(st) == set(training_recipes.OPTIONS) | {f"{lib}_loop" for lib in cfg.libraries}
    assert result["step_time"]["baseline"]["relative_to_baseline"] == 1.0
    over = result["step_time_components"]["overhead_fraction"]
    assert set(over) == {"ema", "cosine", "clip", "logit_normal"} and min(over.values()) >= 0


def test_stored_training_recipes_summary_is_what_the_code_computes_from_its_runs():
    result = harness.load(RESULTS / "training_recipes.json")
    assert result["summary"] == training_recipes.summarize(result["runs"])
    cfg = training_recipes.Config.from_dict(result["config"])
    assert {r["seed"] for r in result["runs"]} == set(cfg.seeds)
    recipes = [r["recipe"] for r in result["runs"]]
    assert list(dict.fromkeys(recipes)) == list(cfg.recipes) + training_recipes.library_runs(cfg)


# ------------------------------------------------------------------------------------------------ harness
def test_w2_floor_is_the_mean_w2_of_independent_draws():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 2, generator=gen)
    draws = [torch.randn(200, 2, generator=gen) for _ in range(3)]
    it = iter(draws)
    want = sum(fmlib.wasserstein2(d, ref) for d in draws) / 3
    assert harness.w2_floor(ref, lambda: next(it), draws=3) == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        harness.w2_floor(ref, lambda: ref, draws=0)


def test_mean_sd_is_the_sample_mean_and_the_n_minus_1_deviation():
    d = harness.mean_sd([1, 2, 3, 4])
    # sum of squared deviations from 2.5 is 5, over n - 1 = 3
    assert d == {"mean": 2.5, "sd": pytest.approx(math.sqrt(5 / 3)), "n": 4}
    assert harness.mean_sd([7.0]) == {"mean": 7.0, "sd": 0.0, "n": 1}
    with pytest.raises(ValueError, match="at least one"):
        harness.mean_sd([])
    assert harness.format_mean_sd({"mean": 1.23456, "sd": 0.0012}, 2) == "1.23 ± 0.00"


def test_write_json_round_trips_and_refuses_nan(tmp_path):
    obj = {"a": [1, 2.5, [3, 4]], "b": {"c": "x", "d": [{"e": 1}]}, "f": []}
    path = tmp_path / "x.json"
    harness.write_json(path, obj)
    assert json.loads(path.read_text()) == obj
    assert '"a": [1,2.5,[3,4]]' in path.read_text()  # number lists on one line
    with pytest.raises(ValueError, match="non-finite"):
        harness.write_json(path, {"a": [1.0, float("nan")]})


def test_timed_returns_the_median_after_a_warm_up():
    calls = []
    seconds, out = harness.timed(lambda: calls.append(1) or len(calls), repeats=3)
    assert len(calls) == 4 and out == 4 and seconds >= 0  # one warm-up, three timed runs


def test_save_fills_the_wall_time_and_load_checks_the_metadata(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Config:
        n: tuple[int, ...] = (1, 2)

    args = harness.parser(None, "x.json").parse_args(["--smoke"])
    result = harness.new_result("unit", Config(), args, argv=["--smoke"])
    assert set(result["meta"]) >= set(harness.META_KEYS) and result["config"] == {"n": [1, 2]}
    path = harness.save(result, tmp_path / "unit.json")
    loaded = harness.load(path)
    assert loaded["meta"]["mode"] == "smoke" and loaded["meta"]["wall_seconds"] >= 0
    assert "_start" not in loaded["meta"] and loaded["meta"]["command"] == "benchmarks/unit.py --smoke"
    del loaded["meta"]["git_commit"]
    harness.write_json(path, loaded)
    with pytest.raises(ValueError, match="git_commit"):
        harness.load(path)
    with pytest.raises(TypeError, match="dataclass"):
        harness.config_dict({"n": 1})


# ------------------------------------------------------------------------------------------------ stored results
@pytest.mark.parametrize("name", ["compare_2d", "sampling", "marginal", "couplings", "training_recipes"])
def test_stored_results_share_the_metadata_format(name):
    result = harness.load(RESULTS / f"{name}.json")
    assert result["meta"]["benchmark"] == name and result["meta"]["mode"] == "full"


def test_stored_compare_2d_summary_is_what_the_code_computes_from_its_runs():
    result = harness.load(RESULTS / "compare_2d.json")
    cfg = compare_2d.Config.from_dict(result["config"])
    assert result["summary"] == compare_2d.summarize(result["runs"], cfg)
    # one entry checked by hand: the all-task training ratio of the first seed, from the raw per-task seconds
    by_seed = [r for r in result["runs"] if r["seed"] == cfg.seeds[0]]
    ratio = sum(r["variants"]["fmlib_ot"]["seconds"] for r in by_seed) / sum(
        r["variants"]["torchcfm_ot"]["seconds"] for r in by_seed
    )
    per_seed = [
        sum(r["variants"]["fmlib_ot"]["seconds"] for r in result["runs"] if r["seed"] == s)
        / sum(r["variants"]["torchcfm_ot"]["seconds"] for r in result["runs"] if r["seed"] == s)
        for s in cfg.seeds
    ]
    assert per_seed[0] == ratio
    assert result["summary"]["train_step_ratio"]["ot"]["fmlib/torchcfm"]["all_tasks"]["mean"] == pytest.approx(
        statistics.fmean(per_seed), rel=1e-12
    )


def test_stored_results_describe_minibatch_ot_as_the_code_does():
    result = harness.load(RESULTS / "compare_2d.json")
    described = result["config"]["ot"]["fmlib"]
    assert "ot.emd" in described and "fallback" in described
    import fmlib

    # minibatch_ot pairs by ot_assignment, which solves batches above 256 rows (the benchmark's 512) with POT's
    # network simplex, SciPy taking over only when the simplex does not return a proven optimal permutation
    assert "ot_assignment" in fmlib.minibatch_ot.__doc__ and result["config"]["batch_size"] > 256
    doc = " ".join(fmlib.ot_assignment.__doc__.split())
    assert "up to 256 rows" in doc and "larger ones by POT's network simplex (``ot.emd``)" in doc
    assert "SciPy taking over" in doc


FIGURES = [("compare_2d", name, fn) for name, fn in figures.COMPARE_2D.items()]
FIGURES += [("couplings", name, fn) for name, fn in figures.COUPLINGS.items()]
FIGURES += [("training_recipes", name, fn) for name, fn in figures.TRAINING_RECIPES.items()]


@pytest.mark.parametrize(("benchmark", "name", "draw"), FIGURES, ids=[f"{b}-{n}" for b, n, _ in FIGURES])
def test_figures_follow_the_book_style(benchmark, name, draw):
    figures.use_style()
    fig = draw(harness.load(RESULTS / f"{benchmark}.json"))
    try:
        assert fig.get_figwidth() <= MAX_FIGURE_WIDTH + 1e-9
        columns = {round(ax.get_position().x0, 3) for ax in fig.axes if ax.get_visible()}
        assert len(columns) <= 3  # at most three panels per row
        fig.canvas.draw()
        sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_visible()]
        assert min(sizes) >= 9, min(sizes)
        for ax in fig.axes:
            assert ax.get_legend() is None  # legends go outside the panels (figure legends)
    finally:
        plt.close(fig)


def test_discrete_smoke_compares_fmlib_and_flow_matching(tmp_path):
    from benchmarks import discrete

    result = run_smoke("discrete", tmp_path / "discrete_smoke.json")
    cfg = discrete.Config.smoke()
    meta = result["meta"]
    assert meta["benchmark"] == "discrete" and meta["mode"] == "smoke" and meta["torch_threads"] == 1
    assert {"flow_matching", "sklearn", "fmlib", "torch"} <= set(meta["versions"])
    assert "load_start" in meta and "quiet" in meta  # the machine's load is recorded beside the timings
    assert discrete.Config.from_dict(result["config"]) == cfg
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]
    pc = result["path_check"]
    # both libraries draw P(x_t = x1) = kappa_t (within 5 standard errors) and give the same velocity
    assert len(pc["rows"]) == 2 * len(cfg.path_times) and pc["max_abs_z"] < 5
    assert pc["max_velocity_difference"] < 1e-12
    digits = result["digits"]
    assert list(digits["rows"]) == [str(s) for s in cfg.steps]
    for row in digits["rows"].values():
        assert set(row["accuracy"]) == {"fmlib", "flow_matching", "fmlib_guided"}
        assert all(0 <= a <= 1 for a in row["accuracy"].values())
        assert min(row["seconds"].values()) > 0 and row["time_ratio"] > 0
        assert row["masked_left"] == {"fmlib": 0, "flow_matching": 0}  # every mask lands on a grey level
    grid = result["grid2d"]
    assert grid["floor"] > 0 and all(r["ratio_to_floor"] > 0 for r in grid["rows"].values())


# ------------------------------------------------------------------------------------------------ few_step
def test_few_step_smoke_measures_every_method_at_every_nfe(tmp_path):
    from benchmarks import few_step

    result = run_smoke("few_step", tmp_path / "few_step.json")
    cfg = few_step.Config.smoke()
    meta = result["meta"]
    assert meta["benchmark"] == "few_step" and meta["mode"] == "smoke" and meta["torch_threads"] == 1
    assert few_step.Config.from_dict(result["config"]) == cfg
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]
    assert set(result["datasets"]) == set(cfg.datasets)
    for d in result["datasets"].values():
        assert d["floor"]["mean"] > 0
        assert set(d["methods"]) == set(few_step.METHODS)
        for name, m in d["methods"].items():
            want = {str(n) for n in cfg.nfes}
            if name == "distilled":  # one student per halving: 1, 2, 4, ... up to half the teacher's steps
                want = {str(n) for n in cfg.nfes if n < cfg.teacher_steps}
            assert set(m["w2_over_floor"]) == want, (name, m["w2_over_floor"].keys())
            assert all(q["mean"] > 0 and q["n"] == len(cfg.seeds) for q in m["w2_over_floor"].values())
            assert m["train_seconds"]["mean"] > 0 and m["train_steps"] >= cfg.steps
        # the best one-step method is named among the few-step methods, and its ratio is the stored one
        best = d["best_one_step"]
        assert best["method"] != "icfm_euler"
        assert best["w2_over_floor"] == d["methods"][best["method"]]["w2_over_floor"]["1"]["mean"]
    assert set(result["targets"]) == {"one_step_within_1.5x", "two_steps_within_1.3x"}


# ------------------------------------------------------------------------------------------------ few_step_digits
def test_few_step_digits_smoke_evaluates_every_method_and_writes_no_checkpoint(tmp_path):
    from benchmarks import few_step_digits

    before = sorted((ROOT / "benchmarks" / "checkpoints").glob("few_step_digits_*"))
    stamps = [p.stat().st_mtime_ns for p in before]
    result = run_smoke("few_step_digits", tmp_path / "few_step_digits.json")
    cfg = few_step_digits.Config.smoke()
    meta = result["meta"]
    assert meta["benchmark"] == "few_step_digits" and meta["mode"] == "smoke" and meta["torch_threads"] == 1
    assert few_step_digits.Config.from_dict(result["config"]) == cfg
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]
    assert set(result["methods"]) == set(few_step_digits.METHODS)
    floor = result["reference"]["fd_floor"]
    for name, m in result["methods"].items():
        want = {str(n) for n in cfg.nfes}
        if name == "distilled":  # one student per halving of the teacher's steps
            want = {str(n) for n in cfg.nfes if n < cfg.teacher_steps}
        assert set(m["quality"]) == want, (name, m["quality"].keys())
        for q in m["quality"].values():
            assert 0.0 <= q["accuracy"] <= 1.0 and math.isclose(q["fd_over_floor"], q["fd"] / floor)
        assert m["train_seconds"] > 0 and m["train_steps"] >= cfg.steps
    for key, nfe in (("best_one_step", "1"), ("best_two_steps", "2")):
        best = result[key]
        assert best["method"] != "teacher"
        assert best["fd_over_floor"] == result["methods"][best["method"]]["quality"][nfe]["fd_over_floor"]
    assert "checkpoints" not in result
    after = sorted((ROOT / "benchmarks" / "checkpoints").glob("few_step_digits_*"))
    assert after == before and [p.stat().st_mtime_ns for p in after] == stamps


# ------------------------------------------------------------------------------------------------ images
def test_images_smoke_trains_every_model_and_evaluates_it(tmp_path):
    from benchmarks import images

    result = run_smoke("images", tmp_path / "images.json")
    cfg = images.Config.smoke()
    meta = result["meta"]
    assert meta["benchmark"] == "images" and meta["mode"] == "smoke" and meta["torch_threads"] == 1
    assert images.Config.from_dict(result["config"]) == cfg
    bad = [(where, v) for where, v in _numbers(result) if not math.isfinite(v)]
    assert not bad, bad[:10]
    assert set(result["models"]) == set(images.MODELS)
    for name, row in result["models"].items():
        assert row["steps"] == cfg.steps[name]
        assert math.isclose(row["train_minutes_at_step_time"], row["steps"] * row["step_ms"] / 6e4)
        ws = {"torchcfm_unet": {"w=1"}, "unet": {"w=1", f"w={cfg.w:g}"}}.get(name, {f"w={cfg.w:g}"})
        assert ws == {k for k in row if k.startswith("w=")}, (name, row.keys())
        floor = result["reference"]["fd_floor"][str(row["n_eval"])]
        for w in ws:
            assert 0.0 <= row[w]["accuracy"] <= 1.0 and row[w]["fd_over_floor"] > 0
            assert math.isclose(row[w]["fd_over_floor"], row[w]["fd"] / floor)
        assert "checkpoint" not in row  # a smoke run writes no checkpoints
    assert result["autoencoder"]["latent_shape"] == [4, 7, 7]
    assert result["autoencoder"]["compression"] == 784 / 196
    assert 0.0 < result["reference"]["classifier_test_accuracy"] <= 1.0
    assert set(result["targets"]) >= {"best_accuracy_at_least_0.95", "best_fd_within_3x_floor"}


def test_images_guidance_sweep_samples_the_stored_checkpoints(monkeypatch):
    # the sweep on the repository's checkpoints with small evaluation sizes: every model at each w, and the
    # best (model, w) is the smallest FD among the rows with accuracy >= 0.95
    from benchmarks import images

    stored = harness.load(RESULTS / "images.json")
    cfg = dataclasses.replace(
        images.Config.from_dict(stored["config"]),
        n_eval=20,
        n_eval_torchcfm=20,
        classifier_hidden=16,
        sampler_steps=2,
    )
    monkeypatch.setattr(images, "SWEEP_WS", (1.0, 3.0))
    result = {}
    images.guidance_sweep(result, cfg, fmlib.load_mnist_5k(), lambda s: None)
    sweep = result["guidance_sweep"]["models"]
    assert set(sweep) == {"unet", "dit", "latent_dit"}
    for rows in sweep.values():
        assert set(rows) == {"w=1", "w=3"}
        assert all(0.0 <= q["accuracy"] <= 1.0 and q["fd_over_floor"] > 0 for q in rows.values())
    accurate = [
        (q["fd_over_floor"], n, w) for n, rows in sweep.items() for w, q in rows.items() if q["accuracy"] >= 0.95
    ]
    if accurate:
        _, name, w = min(accurate)
        assert (result["best_swept"]["model"], f"w={result['best_swept']['w']:g}") == (name, w)
    else:
        assert result["best_swept"] is None


def test_save_checkpoint_writes_float16_weights_and_what_made_them(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "CHECKPOINTS", tmp_path)
    monkeypatch.setattr(harness, "ROOT", tmp_path.parent)
    torch.manual_seed(0)
    model = fmlib.DigitUNet(channels=8, emb_dim=16)
    meta = {"command": "benchmarks/x.py", "git_commit": "abc"}
    info = harness.save_checkpoint("x.pt", model, meta, kwargs={"channels": 8}, steps=3)
    assert info == {"file": f"{tmp_path.name}/x.pt", "bytes": (tmp_path / "x.pt").stat().st_size}
    ckpt = torch.load(tmp_path / "x.pt")
    assert (ckpt["class"], ckpt["command"], ckpt["git_commit"]) == ("DigitUNet", "benchmarks/x.py", "abc")
    assert ckpt["kwargs"] == {"channels": 8} and ckpt["steps"] == 3
    for k, v in model.state_dict().items():
        got = ckpt["state_dict"][k]
        if v.is_floating_point():  # float16 rounding: relative error at most 2^-11
            assert got.dtype == torch.float16
            assert torch.allclose(got.float(), v, rtol=2**-11, atol=2**-24)
        else:
            assert torch.equal(got, v)
