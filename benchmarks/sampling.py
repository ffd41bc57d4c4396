"""What sampling and likelihoods cost: wall time and NFE at matched error, on the model of chapter 5.

Model: the two-moons model of ``book/05_sampling.ipynb``: ``fmlib.MLP(2, hidden=128, depth=3)`` trained with the CFM
loss on ``fmlib.GaussianPath()`` (sigma_min = 0), 20,000 training points, 2500 Adam steps, batch 256, lr 3e-3, seed 0.

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

Usage:
    python benchmarks/sampling.py                      # about 10 minutes on 2 shared cores
    python benchmarks/sampling.py --smoke --out /tmp/sampling_smoke.json   # < 1 minute
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

import fmlib

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIXED = ("euler", "midpoint", "heun", "rk4")
TOL_LADDER = [10 ** (-k / 2) for k in range(2, 17)]  # 1e-1 ... 1e-8

FULL = dict(
    n_samples=10_000,
    n_ref=1000,
    targets=[1e-2, 1e-3, 1e-4],
    max_steps=4096,
    ref_steps=512,
    train_steps=2500,
    ll_steps=10,
    repeats=3,
)
SMOKE = dict(
    n_samples=1000, n_ref=200, targets=[1e-2], max_steps=256, ref_steps=128, train_steps=300, ll_steps=4, repeats=1
)


def train_model(train_steps: int, device: torch.device) -> torch.nn.Module:
    """The model of chapter 5 (same data, seeds and hyper-parameters)."""
    gen = torch.Generator(device=device).manual_seed(0)
    data = fmlib.two_moons(20_000, generator=gen, device=device)
    torch.manual_seed(0)
    model = fmlib.MLP(2, hidden=128, depth=3).to(device)
    fmlib.train(
        model, fmlib.GaussianPath(), data, steps=train_steps, batch_size=256, lr=3e-3, generator=gen, progress=False
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of fn() after one warm-up run (a single timed run when one run takes over 5 s)."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    if first > 5.0 or repeats < 1:
        return first, out
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def counted(counter: fmlib.NFECounter, fn, x: torch.Tensor, **kwargs):
    """fn(counter, x, **kwargs) with the counter set back to 0 first, so that counter.nfe is that of one call.

    A ``seed`` keyword becomes a freshly seeded ``generator``, so that every timed repeat gives the same result.
    """
    counter.reset()
    if "seed" in kwargs:
        kwargs["generator"] = torch.Generator(device=x.device).manual_seed(kwargs.pop("seed"))
    return fn(counter, x, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration, to check that the script runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as in the chapter)")
    parser.add_argument("--out", default=str(RESULTS / "sampling.json"))
    args = parser.parse_args()
    cfg = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    model = train_model(cfg["train_steps"], device)
    model64 = copy.deepcopy(model).double()
    gen = torch.Generator(device=device).manual_seed(1)
    noise = torch.randn(cfg["n_samples"], 2, generator=gen, device=device)
    n_ref = cfg["n_ref"]

    with torch.no_grad():
        z64 = noise[:n_ref].double()
        ref = fmlib.integrate(model64, z64, steps=cfg["ref_steps"], method="rk4")
        ref_dopri, _ = fmlib.integrate_adaptive(model64, z64, method="dopri5", rtol=1e-10, atol=1e-10)
    ref_gap = (ref - ref_dopri).norm(dim=1).mean().item()
    print(f"reference: RK4 {cfg['ref_steps']} steps vs dopri5 tol 1e-10 (float64): mean gap {ref_gap:.1e}")

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
            if n > cfg["max_steps"]:
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
    for target in cfg["targets"]:
        for method in FIXED:
            n = smallest_steps(method, target)
            row = {"target": target, "method": method, "setting": None, "nfe": None, "error": None, "seconds": None}
            if n is not None:
                counter = fmlib.NFECounter(model)
                with torch.no_grad():
                    seconds, x = timed(
                        partial(counted, counter, fmlib.integrate, noise, steps=n, method=method), cfg["repeats"]
                    )
                assert counter.nfe == n * fmlib.NFE_PER_STEP[method], (counter.nfe, method, n)
                row.update(setting=f"N = {n}", steps=n, nfe=counter.nfe, error=error(x), seconds=seconds)
            rows.append(row)
            print(row)
        row = {"target": target, "method": "dopri5", "setting": None, "nfe": None, "error": None, "seconds": None}
        tol = next((t for t in TOL_LADDER if dopri_run(t)[0] <= target), None)
        if tol is not None and tol < TOL_LADDER[0]:
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
                seconds, (x, nfe) = timed(
                    partial(counted, counter, fmlib.integrate_adaptive, noise, method="dopri5", rtol=tol, atol=tol),
                    cfg["repeats"],
                )
            assert nfe == counter.nfe, (nfe, counter.nfe)
            row.update(setting=f"tol = {tol:.1e}", tol=tol, nfe=nfe, error=error(x), seconds=seconds)
        rows.append(row)
        print(row)

    # ---- likelihoods ----
    gen_data = torch.Generator(device=device).manual_seed(2)
    x_data = fmlib.two_moons(cfg["n_samples"], generator=gen_data, device=device)
    # the two are timed in alternation (a warm-up round, then `repeats` rounds), so that a change in the load of a
    # shared machine hits both alike
    counters = {d: fmlib.NFECounter(model) for d in ("exact", "hutchinson")}
    calls = {
        d: partial(
            counted,
            counters[d],
            fmlib.log_likelihood,
            x_data,
            steps=cfg["ll_steps"],
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
        for _ in range(max(1, cfg["repeats"]) + 1):
            for d, call in calls.items():
                start = time.perf_counter()
                outputs[d] = call()
                times[d].append(time.perf_counter() - start)
    ll = {}
    for d in calls:
        assert counters[d].nfe == 4 * cfg["ll_steps"], counters[d].nfe
        ll[d] = {
            "seconds": statistics.median(times[d][1:]),
            "nfe": counters[d].nfe,
            "mean_log_likelihood": outputs[d].mean().item(),
            "_lp": outputs[d],
        }
        print(d, times[d])
    rms = (ll["hutchinson"].pop("_lp") - ll["exact"].pop("_lp")).pow(2).mean().sqrt().item()
    ll["hutchinson"]["rms_difference_to_exact"] = rms

    # ---- report ----
    lines = [
        f"Sampling {cfg['n_samples']:,} points (float32, {device.type}, {torch.get_num_threads()} thread(s)); "
        f"error = mean distance to the reference at t = 1 over {n_ref} points.",
        "",
        "| target error | method | setting | NFE | error | wall time (s) | ms per NFE |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["nfe"] is None:
            limit = f"N > {cfg['max_steps']}" if r["method"] in FIXED else "tol < 1e-8"
            lines.append(f"| {r['target']:.0e} | {r['method']} | not reached ({limit}) | | | | |")
        else:
            lines.append(
                f"| {r['target']:.0e} | {r['method']} | {r['setting']} | {r['nfe']} | {r['error']:.1e} | "
                f"{r['seconds']:.3f} | {1000 * r['seconds'] / r['nfe']:.1f} |"
            )
    lines += [
        "",
        f"log_likelihood of {cfg['n_samples']:,} data points, RK4 with {cfg['ll_steps']} steps "
        f"({4 * cfg['ll_steps']} forward evaluations):",
        "",
        "| divergence | wall time (s) | mean log-likelihood | RMS difference to exact |",
        "|---|---|---|---|",
        f"| exact (2 backward passes per evaluation) | {ll['exact']['seconds']:.3f} | "
        f"{ll['exact']['mean_log_likelihood']:.3f} | 0 |",
        f"| Hutchinson, 1 probe (1 backward pass) | {ll['hutchinson']['seconds']:.3f} | "
        f"{ll['hutchinson']['mean_log_likelihood']:.3f} | {rms:.3f} |",
    ]
    table = "\n".join(lines)
    print()
    print(table)

    result = {
        "benchmark": "sampling",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {
            **cfg,
            "smoke": args.smoke,
            "threads": torch.get_num_threads(),
            "device": device.type,
            "tolerance_ladder": TOL_LADDER,
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "fmlib": fmlib.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "reference_gap": ref_gap,
        "sampling": rows,
        "likelihood": ll,
        "table_markdown": table,
        "total_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
