"""What sampling and likelihoods cost: wall time and NFE at matched error, on the model of chapter 5.

Model: the two-moons model of ``book/05_sampling.ipynb``, built by running the chapter's own training cell (the code
cell that contains ``model = fmlib.MLP(``), so that the benchmark and the chapter cannot drift apart; ``--smoke``
runs the same cell with fewer training steps. The cell's source is stored in the result.

Sampling at matched error. n_samples noise points (default 10,000) are pushed from t = 0 to t = 1 in float32, the way a
user samples, under ``torch.no_grad()``. The error of a run is the mean Euclidean distance, over its first n_ref
points (default 1000), to a reference solution of the same starting points: RK4 with 512 steps on a float64 copy of
the network, cross-checked against dopri5 at rtol = atol = 1e-10 (the gap is reported). For each target error and
each method we find the cheapest setting that reaches it:

* euler, midpoint, heun, rk4: the smallest number of steps N (doubling from N = 1, then bisection; errors measured
  on the n_ref points), up to ``max_steps`` (4096);
* dopri5 (``fmlib.integrate_adaptive``): the loosest tolerance rtol = atol that reaches it, found on the ladder
  10^-1, 10^-1.5, ..., 10^-8 and refined by three bisections in log10(tol) (a resolution of 10^0.06). Its steps are
  shared by the whole batch, so the search runs on the full batch of n_samples points.

The chosen setting is then timed on all n_samples points (a warm-up run, then the median of ``repeats`` (3) runs; one
run when a single run takes more than 5 s); the NFE is counted with ``fmlib.NFECounter``.

Likelihood. ``fmlib.log_likelihood`` of n_samples fresh data points with RK4 and ``ll_steps`` steps, exact divergence
against Hutchinson's estimator with one Rademacher probe, timed in alternation (median of ``repeats`` rounds after a
warm-up round): wall time, forward evaluations, and the RMS difference of the two log-likelihoods.

The machine's cores may be shared with other work: the timings are medians, and the NFE, which does not depend on
the load, is reported beside them.

Usage (from the repository root):
    python benchmarks/sampling.py                      # about 5-10 minutes on 2 shared cores
    python benchmarks/sampling.py --smoke --out /tmp/sampling_smoke.json   # < 1 minute
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/sampling.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import harness  # noqa: E402

CHAPTER = harness.ROOT / "book" / "05_sampling.ipynb"
MODEL_MARKER = "model = fmlib.MLP("
FIXED = ("euler", "midpoint", "heun", "rk4")
TOL_LADDER = tuple(10 ** (-k / 2) for k in range(2, 17))  # 1e-1 ... 1e-8


@dataclass(frozen=True)
class Config:
    """A run of the sampling benchmark (the defaults are the full run; ``train_steps=None``: the chapter's own)."""

    n_samples: int = 10_000
    n_ref: int = 1000
    targets: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
    max_steps: int = 4096
    ref_steps: int = 512
    train_steps: int | None = None
    ll_steps: int = 10
    repeats: int = 3
    tolerance_ladder: tuple[float, ...] = TOL_LADDER

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run that exercises every code path (seconds, not minutes)."""
        return cls(
            n_samples=500,
            n_ref=100,
            targets=(3e-2,),
            max_steps=64,
            ref_steps=64,
            train_steps=100,
            ll_steps=2,
            repeats=1,
        )


def chapter_training_cell(notebook: Path = CHAPTER) -> str:
    """The source of the chapter's code cell that builds and trains ``model``."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    found = ["".join(c["source"]) for c in cells if c["cell_type"] == "code" and MODEL_MARKER in "".join(c["source"])]
    if len(found) != 1:
        raise ValueError(f"{notebook} must have exactly one code cell with {MODEL_MARKER!r}, found {len(found)}")
    return found[0]


class _TrainSteps(ast.NodeTransformer):
    """Set the ``steps=`` keyword of every ``fmlib.train(...)`` call."""

    def __init__(self, steps: int):
        self.steps, self.replaced = steps, 0

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == "train":
            for kw in node.keywords:
                if kw.arg == "steps":
                    kw.value = ast.Constant(self.steps)
                    self.replaced += 1
        return node


def chapter_model(device: torch.device, train_steps: int | None = None) -> tuple[torch.nn.Module, str]:
    """Run chapter 5's training cell (its prints swallowed) and return its frozen ``model`` and the cell's source.

    ``train_steps`` replaces the ``steps=`` of the cell's ``fmlib.train`` call (None: the chapter's own).
    """
    source = chapter_training_cell()
    tree = ast.parse(source)
    if train_steps is not None:
        edit = _TrainSteps(train_steps)
        tree = ast.fix_missing_locations(edit.visit(tree))
        if edit.replaced != 1:
            raise ValueError(
                f"expected one fmlib.train(..., steps=...) call in the chapter's cell, found {edit.replaced}"
            )
    # the names the chapter's set-up cell defines, gen(k) included (the book's seeding idiom)
    gen = partial(fmlib.seeded_generator, device=device)
    namespace = {"torch": torch, "np": np, "fmlib": fmlib, "device": device, "gen": gen}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(tree, f"{CHAPTER.name} (training cell)", "exec"), namespace)
    model = namespace["model"]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, source


def nfe_per_step(method: str) -> int:
    """Field evaluations per step of a fixed-step method, counted on one step of a constant field."""
    counter = fmlib.NFECounter(lambda x, t: torch.zeros_like(x))
    fmlib.integrate(counter, torch.zeros(1, 1), steps=1, method=method)
    return counter.nfe


def counted(counter: fmlib.NFECounter, fn, x: torch.Tensor, **kwargs):
    """fn(counter, x, **kwargs) with the counter set back to 0 first, so that counter.nfe is that of one call.

    A ``seed`` keyword becomes a freshly seeded ``generator``, so that every timed repeat gives the same result.
    """
    counter.reset()
    if "seed" in kwargs:
        kwargs["generator"] = torch.Generator(device=x.device).manual_seed(kwargs.pop("seed"))
    return fn(counter, x, **kwargs)


def main(argv: list[str] | None = None) -> dict:
    args = harness.parser(__doc__, default_out="sampling.json").parse_args(argv)
    if args.smoke and args.out == str(harness.RESULTS / "sampling.json"):
        args.out = str(harness.RESULTS / "sampling_smoke.json")  # a smoke run never overwrites the full results
    cfg = Config.smoke() if args.smoke else Config()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = harness.new_result("sampling", cfg, args, libraries=("torchdiffeq",), device=device.type, argv=argv)
    log = harness.logger(args.quiet)

    model, cell = chapter_model(device, cfg.train_steps)
    model64 = copy.deepcopy(model).double()
    gen = torch.Generator(device=device).manual_seed(1)
    noise = torch.randn(cfg.n_samples, 2, generator=gen, device=device)
    n_ref = cfg.n_ref

    with torch.no_grad():
        z64 = noise[:n_ref].double()
        ref = fmlib.integrate(model64, z64, steps=cfg.ref_steps, method="rk4")
        ref_dopri, _ = fmlib.integrate_adaptive(model64, z64, method="dopri5", rtol=1e-10, atol=1e-10)
    ref_gap = (ref - ref_dopri).norm(dim=1).mean().item()
    log(f"reference: RK4 {cfg.ref_steps} steps vs dopri5 tol 1e-10 (float64): mean gap {ref_gap:.1e}")

    def error(x: torch.Tensor) -> float:
        return (x[:n_ref].double() - ref).norm(dim=1).mean().item()

    # ---- fixed-step errors on the n_ref points, cached ----
    cache: dict[tuple[str, int], float] = {}

    def fixed_error(method: str, n: int) -> float:
        if (method, n) not in cache:
            with torch.no_grad():
                cache[method, n] = error(fmlib.integrate(model, noise[:n_ref], steps=n, method=method))
        return cache[method, n]

    def smallest_steps(method: str, target: float) -> int | None:
        n = 1
        while fixed_error(method, n) > target:
            n *= 2
            if n > cfg.max_steps:
                return None
        lo, hi = n // 2, n  # lo fails (or is 0), hi passes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fixed_error(method, mid) <= target:
                hi = mid
            else:
                lo = mid
        return hi

    # ---- dopri5 on the full batch, cached per tolerance ----
    dopri: dict[float, tuple[float, int]] = {}

    def dopri_run(tol: float) -> tuple[float, int]:
        if tol not in dopri:
            with torch.no_grad():
                x, nfe = fmlib.integrate_adaptive(model, noise, method="dopri5", rtol=tol, atol=tol)
            dopri[tol] = (error(x), nfe)
        return dopri[tol]

    rows = []
    for target in cfg.targets:
        for method in FIXED:
            n = smallest_steps(method, target)
            row = {"target": target, "method": method, "setting": None, "nfe": None, "error": None, "seconds": None}
            if n is not None:
                counter = fmlib.NFECounter(model)
                with torch.no_grad():
                    seconds, x = harness.timed(
                        partial(counted, counter, fmlib.integrate, noise, steps=n, method=method), cfg.repeats
                    )
                assert counter.nfe == n * nfe_per_step(method), (counter.nfe, method, n)
                row.update(setting=f"N = {n}", steps=n, nfe=counter.nfe, error=error(x), seconds=seconds)
            rows.append(row)
            log(str(row))
        row = {"target": target, "method": "dopri5", "setting": None, "nfe": None, "error": None, "seconds": None}
        tol = next((t for t in cfg.tolerance_ladder if dopri_run(t)[0] <= target), None)
        if tol is not None and tol < cfg.tolerance_ladder[0]:
            # refine between the last failing and the first passing tolerance: bisection in log10(tol)
            hi, lo = math.log10(tol * 10**0.5), math.log10(tol)  # hi fails, lo passes
            for _ in range(3):
                mid = (hi + lo) / 2
                if dopri_run(10**mid)[0] <= target:
                    lo = mid
                else:
                    hi = mid
            tol = 10**lo
        if tol is not None:
            counter = fmlib.NFECounter(model)
            with torch.no_grad():
                seconds, (x, nfe) = harness.timed(
                    partial(counted, counter, fmlib.integrate_adaptive, noise, method="dopri5", rtol=tol, atol=tol),
                    cfg.repeats,
                )
            assert nfe == counter.nfe, (nfe, counter.nfe)
            row.update(setting=f"tol = {tol:.1e}", tol=tol, nfe=nfe, error=error(x), seconds=seconds)
        rows.append(row)
        log(str(row))

    # ---- likelihoods ----
    gen_data = torch.Generator(device=device).manual_seed(2)
    x_data = fmlib.two_moons(cfg.n_samples, generator=gen_data, device=device)
    # the two are timed in alternation (a warm-up round, then `repeats` rounds), so that a change in the load of a
    # shared machine hits both alike
    counters = {d: fmlib.NFECounter(model) for d in ("exact", "hutchinson")}
    calls = {
        d: partial(
            counted,
            counters[d],
            fmlib.log_likelihood,
            x_data,
            steps=cfg.ll_steps,
            method="rk4",
            divergence=d,
            probes=1,
            seed=3,
        )
        for d in counters
    }
    times: dict[str, list[float]] = {d: [] for d in calls}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for _ in range(max(1, cfg.repeats) + 1):
            for d, call in calls.items():
                start = time.perf_counter()
                outputs[d] = call()
                times[d].append(time.perf_counter() - start)
    ll = {}
    for d in calls:
        assert counters[d].nfe == nfe_per_step("rk4") * cfg.ll_steps, counters[d].nfe
        ll[d] = {
            "seconds": statistics.median(times[d][1:]),
            "nfe": counters[d].nfe,
            "mean_log_likelihood": outputs[d].mean().item(),
            "_lp": outputs[d],
        }
        log(f"{d}: {times[d]}")
    rms = (ll["hutchinson"].pop("_lp") - ll["exact"].pop("_lp")).pow(2).mean().sqrt().item()
    ll["hutchinson"]["rms_difference_to_exact"] = rms

    # ---- report ----
    lines = [
        f"Sampling {cfg.n_samples:,} points (float32, {device.type}, {torch.get_num_threads()} thread(s)); "
        f"error = mean distance to the reference at t = 1 over {n_ref} points.",
        "",
        "| target error | method | setting | NFE | error | wall time (s) | ms per NFE |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["nfe"] is None:
            limit = f"N > {cfg.max_steps}" if r["method"] in FIXED else "tol < 1e-8"
            lines.append(f"| {r['target']:.0e} | {r['method']} | not reached ({limit}) | | | | |")
        else:
            lines.append(
                f"| {r['target']:.0e} | {r['method']} | {r['setting']} | {r['nfe']} | {r['error']:.1e} | "
                f"{r['seconds']:.3f} | {1000 * r['seconds'] / r['nfe']:.1f} |"
            )
    lines += [
        "",
        f"log_likelihood of {cfg.n_samples:,} data points, RK4 with {cfg.ll_steps} steps "
        f"({nfe_per_step('rk4') * cfg.ll_steps} forward evaluations):",
        "",
        "| divergence | wall time (s) | mean log-likelihood | RMS difference to exact |",
        "|---|---|---|---|",
        f"| exact (2 backward passes per evaluation) | {ll['exact']['seconds']:.3f} | "
        f"{ll['exact']['mean_log_likelihood']:.3f} | 0 |",
        f"| Hutchinson, 1 probe (1 backward pass) | {ll['hutchinson']['seconds']:.3f} | "
        f"{ll['hutchinson']['mean_log_likelihood']:.3f} | {rms:.3f} |",
    ]
    table = "\n".join(lines)
    log("")
    log(table)

    result["config"]["model"] = "the model of book/05_sampling.ipynb, built by its training cell (model_cell)"
    result["model_cell"] = cell
    result.update(reference_gap=ref_gap, sampling=rows, likelihood=ll, table_markdown=table)
    log(f"\nwrote {harness.save(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
