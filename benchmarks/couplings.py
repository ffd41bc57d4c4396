"""What a minibatch coupling costs and what it buys: exact OT, sub-batch OT, Sinkhorn and prefetching.

Four measurements, all on one CPU thread (``torch.set_num_threads(1)``), written to
``benchmarks/results/couplings.json`` with the machine's description:

1. ``assignment_time``: seconds per coupling of a batch of B noise points (N(0, I)) and B points of the
   8-Gaussians set, B = 64 ... 2048: ``fmlib.ot_assignment`` (POT's network simplex ``ot.emd`` on the
   rescaled cost), SciPy's ``linear_sum_assignment`` on the same cost (up to B = 1024; it grows faster),
   sub-batch exact OT (``ot_assignment(..., block_size=b)``) and ``fmlib.sinkhorn_coupling(reg)``.
   ``exact`` is fmlib's choice of solver (SciPy up to 256 rows, the simplex above).
2. ``transport_cost``: the mean squared length of the pairs of each coupling at B = 512, relative to the
   exact assignment's (1 = exact; the independent coupling is the other end).
3. ``step_time``: milliseconds per training step at B = 512 (``fmlib.MLP(2, hidden=64, depth=3)``, Adam,
   ``LinearPath()``), each coupling against the independent one, timed in interleaved rounds so that a
   change in the load of the machine hits all alike; ``exact_prefetch`` computes the next batch's exact
   coupling in a DataLoader worker process while the current step trains (POT's ``emd`` holds Python's
   GIL, so a thread cannot overlap it: measured in ``gil_overlap``).
4. ``training``: after ``steps`` steps at B = 512 on N(0, I) -> 8 Gaussians, for a few seeds: W2 between
   generated and held-out points after 1 and 100 Euler steps, and the normalised path energy (NPE) of the
   learned flow (Tong et al. 2024), for each coupling.

Each step pairs explicitly, ``pi = coupling(x0, x1)`` then ``cfm_loss(model, path, x1[pi], x0=x0, t=t)``,
which is what ``cfm_loss(..., coupling=...)`` does. The default coupling is chosen by :func:`choose_default`
from the numbers: the cheapest coupling whose step is within 2x of the independent step and whose W2 at 100
steps and NPE are within one standard deviation (over seeds) of exact OT's; the reason is written beside it.

The result has the common ``meta`` and ``config`` entries of :mod:`benchmarks.harness` (the configuration is
:class:`Config`; a description of the exact solver is stored beside it), the four measurements above, the load
average of the machine when the run started (``machine_load``), and the ``default`` chosen from them.

Usage (from the repository root):
    python benchmarks/couplings.py            # about 10 minutes on one idle core (23 on 2 shared cores)
    python benchmarks/couplings.py --smoke --out /tmp/couplings_smoke.json   # about a minute
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/couplings.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fmlib  # noqa: E402
from benchmarks import harness  # noqa: E402

TARGET = "8gaussians"


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (the defaults are the full benchmark)."""

    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    scipy_max: int = 1024
    blocks: tuple[int, ...] = (32, 64, 128, 256)
    regs: tuple[float, ...] = (0.1, 0.5, 2.0)
    batch: int = 512
    cost_draws: int = 5
    step_rounds: int = 6
    step_block: int = 15
    steps: int = 600
    seeds: tuple[int, ...] = (0, 1, 2)
    n_eval: int = 1000
    train_couplings: tuple[str, ...] = ("independent", "exact", "block_64", "block_128", "sinkhorn_0.5")

    @classmethod
    def smoke(cls) -> Config:
        """A tiny run of every part (about a minute on a shared machine)."""
        return cls(
            sizes=(64, 128),
            scipy_max=128,
            blocks=(32,),
            regs=(0.5,),
            batch=128,
            cost_draws=2,
            step_rounds=2,
            step_block=3,
            steps=20,
            seeds=(0,),
            n_eval=200,
            train_couplings=("independent", "exact", "block_64"),
        )

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """The Config stored in a result's ``config`` (its descriptive entries are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


DESCRIPTION = {
    "exact_solver": (
        "fmlib.ot_assignment: the cost divided by its maximum, then SciPy linear_sum_assignment up to 256 rows "
        "and POT ot.emd (network simplex) above"
    ),
}


def couplings(cfg: Config, generator: torch.Generator) -> dict[str, Callable | None]:
    out: dict[str, Callable | None] = {"independent": None, "exact": fmlib.ot_assignment}
    for b in sorted(set(cfg.blocks) | {64, 128}):
        out[f"block_{b}"] = functools.partial(fmlib.ot_assignment, block_size=b)
    for reg in cfg.regs:
        out[f"sinkhorn_{reg:g}"] = fmlib.sinkhorn_coupling(reg, generator=generator)
    return out


def draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 2, generator=gen), fmlib.sample_data(TARGET, n, generator=gen)


def pair_cost(x0: torch.Tensor, x1: torch.Tensor, pi: torch.Tensor | None) -> float:
    y = x1 if pi is None else x1[pi]
    return float((x0.double() - y.double()).pow(2).sum(1).mean())


# ------------------------------------------------------------------------------------------------ 1 and 2
def assignment_time(cfg: Config, log) -> dict:
    import ot
    from scipy.optimize import linear_sum_assignment

    gen = torch.Generator().manual_seed(0)
    cps = couplings(cfg, gen)
    out: dict = {}
    for n in cfg.sizes:
        reps = max(1, min(5, 1024 // n))
        x0, x1 = draw(n, gen)
        row: dict = {}

        def timed(fn, reps=reps) -> float:  # median of reps runs after a warm-up, however long a run takes
            return harness.timed(fn, reps, long_run=float("inf"))[0]

        row["exact"] = timed(lambda x0=x0, x1=x1: fmlib.ot_assignment(x0, x1))
        if n <= cfg.scipy_max:
            cost = torch.cdist(x0.double(), x1.double()).pow(2).numpy()
            row["scipy_linear_sum_assignment"] = timed(lambda cost=cost: linear_sum_assignment(cost))
        cost = torch.cdist(x0.double(), x1.double()).pow(2).numpy()
        cost /= cost.max()
        row["pot_emd"] = timed(lambda cost=cost, n=n: ot.emd(np.ones(n), np.ones(n), cost, numItermax=10**8))
        for name, c in cps.items():
            if name.startswith(("block_", "sinkhorn_")) and c is not None:
                if name.startswith("block_") and int(name.split("_")[1]) >= n:
                    continue
                row[name] = timed(lambda c=c, x0=x0, x1=x1: c(x0, x1))
        out[str(n)] = row
        log(f"assignment B={n}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row.items()))
    return out


def transport_cost(cfg: Config, log) -> dict:
    gen = torch.Generator().manual_seed(1)
    cps = couplings(cfg, gen)
    ratios: dict[str, list[float]] = {k: [] for k in cps}
    for _ in range(cfg.cost_draws):
        x0, x1 = draw(cfg.batch, gen)
        exact = pair_cost(x0, x1, fmlib.ot_assignment(x0, x1))
        for name, c in cps.items():
            ratios[name].append(pair_cost(x0, x1, None if c is None else c(x0, x1)) / exact)
    out = {k: harness.mean_sd(v) for k, v in ratios.items()}
    log("transport cost / exact: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in out.items()))
    return out


# ------------------------------------------------------------------------------------------------ 3
def gil_overlap() -> dict:
    """Whether ot.emd in a thread overlaps torch work in the main thread (it would if emd released the GIL)."""
    import ot

    rng = np.random.default_rng(0)
    m = rng.random((400, 400))
    x, w = torch.randn(512, 64), torch.randn(64, 64)

    def emd():
        ot.emd(np.ones(400), np.ones(400), m)

    def work():
        for _ in range(1500):
            (x @ w).relu().sum()

    t = time.perf_counter()
    emd()
    t_emd = time.perf_counter() - t
    t = time.perf_counter()
    work()
    t_work = time.perf_counter() - t
    th = threading.Thread(target=emd)
    t = time.perf_counter()
    th.start()
    work()
    th.join()
    t_both = time.perf_counter() - t
    return {"emd_s": t_emd, "torch_s": t_work, "both_in_threads_s": t_both, "serial_sum_s": t_emd + t_work}


class PairedBatches(torch.utils.data.IterableDataset):
    """Endless (x0, x1[pi], t) batches with the exact OT coupling, computed where the DataLoader runs it."""

    def __init__(self, data: torch.Tensor, batch: int, seed: int) -> None:
        self.data, self.batch, self.seed = data, batch, seed

    def __iter__(self):
        torch.set_num_threads(1)
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            idx = torch.randint(0, self.data.shape[0], (self.batch,), generator=gen)
            x0, x1 = torch.randn(self.batch, 2, generator=gen), self.data[idx]
            yield x0, x1[fmlib.ot_assignment(x0, x1)], torch.rand(self.batch, generator=gen)


def make_step(model, opt, path):
    def step(x0, x1, t):
        loss = fmlib.cfm_loss(model, path, x1, x0=x0, t=t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_time(cfg: Config, log) -> dict:
    b = cfg.batch
    gen = torch.Generator().manual_seed(2)
    data = fmlib.sample_data(TARGET, 20_000, generator=gen)
    cps = couplings(cfg, gen)
    names = ["independent", "exact", "block_64", "block_128", f"sinkhorn_{cfg.regs[0]:g}"]
    path = fmlib.LinearPath()
    steps = {}
    for name in names + ["exact_prefetch"]:
        model = fmlib.MLP(2, hidden=64, depth=3)
        steps[name] = make_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), path)
    loader = torch.utils.data.DataLoader(PairedBatches(data, b, 3), batch_size=None, num_workers=1, prefetch_factor=2)
    prefetched = iter(loader)
    next(prefetched)  # start the worker before timing
    watches = {k: harness.Stopwatch() for k in steps}  # one lap per round: a block of step_block steps
    for r in range(cfg.step_rounds):
        order = names + ["exact_prefetch"]
        order = order[r % len(order) :] + order[: r % len(order)]
        for name in order:
            with watches[name]:
                for _ in range(cfg.step_block):
                    if name == "exact_prefetch":
                        x0, x1, t = next(prefetched)
                    else:
                        idx = torch.randint(0, data.shape[0], (b,), generator=gen)
                        x0, x1, t = torch.randn(b, 2, generator=gen), data[idx], torch.rand(b, generator=gen)
                        c = cps[name]
                        if c is not None:
                            x1 = x1[c(x0, x1)]
                    steps[name](x0, x1, t)
    del prefetched, loader
    ms = {k: 1e3 * statistics.median(w.laps) / cfg.step_block for k, w in watches.items()}
    ratio = {k: v / ms["independent"] for k, v in ms.items()}
    log(f"step ms at B={b}: " + ", ".join(f"{k} {v:.1f} ({ratio[k]:.1f}x)" for k, v in ms.items()))
    return {"batch": b, "ms_per_step": ms, "ratio_to_independent": ratio, "gil_overlap": gil_overlap()}


# ------------------------------------------------------------------------------------------------ 4
def train_and_evaluate(cfg: Config, name: str, seed: int) -> dict:
    gen = torch.Generator().manual_seed(100 + seed)
    torch.manual_seed(seed)
    model = fmlib.MLP(2, hidden=64, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_step(model, opt, fmlib.LinearPath())
    coupling = couplings(cfg, gen)[name]
    data = fmlib.sample_data(TARGET, 20_000, generator=gen)
    b = cfg.batch
    watch = harness.Stopwatch()
    with watch:
        for _ in range(cfg.steps):
            idx = torch.randint(0, data.shape[0], (b,), generator=gen)
            x0, x1, t = torch.randn(b, 2, generator=gen), data[idx], torch.rand(b, generator=gen)
            if coupling is not None:
                x1 = x1[coupling(x0, x1)]
            step(x0, x1, t)
    train_s = watch.seconds
    model.eval()
    x0_eval = torch.randn(cfg.n_eval, 2, generator=gen)
    held_out = fmlib.sample_data(TARGET, cfg.n_eval, generator=gen)
    with torch.no_grad():
        w2 = {str(k): fmlib.wasserstein2(fmlib.integrate(model, x0_eval, steps=k), held_out) for k in (1, 100)}
    npe = fmlib.normalized_path_energy(model, x0_eval, held_out, steps=100)
    return {"w2": w2, "npe": npe, "train_s": train_s}


def training(cfg: Config, log) -> dict:
    runs: dict[str, list[dict]] = {}
    for name in cfg.train_couplings:
        runs[name] = [train_and_evaluate(cfg, name, s) for s in cfg.seeds]
        summary = {
            "w2_1": harness.mean_sd([r["w2"]["1"] for r in runs[name]]),
            "w2_100": harness.mean_sd([r["w2"]["100"] for r in runs[name]]),
            "npe": harness.mean_sd([r["npe"] for r in runs[name]]),
        }
        log(
            f"train {name}: W2@1 {summary['w2_1']['mean']:.3f}, W2@100 {summary['w2_100']['mean']:.3f}, "
            f"NPE {summary['npe']['mean']:.3f}, {statistics.fmean(r['train_s'] for r in runs[name]):.1f} s"
        )
    return {
        name: {
            "runs": rs,
            "w2_1": harness.mean_sd([r["w2"]["1"] for r in rs]),
            "w2_100": harness.mean_sd([r["w2"]["100"] for r in rs]),
            "npe": harness.mean_sd([r["npe"] for r in rs]),
        }
        for name, rs in runs.items()
    }


def choose_default(result: dict) -> dict:
    """The cheapest trained coupling within 2x of the independent step and within 1 sd of exact OT's quality."""
    ratio = result["step_time"]["ratio_to_independent"]
    tr = result["training"]
    exact = tr["exact"]
    candidates = []
    for name, r in tr.items():
        if name == "independent" or name not in ratio:
            continue
        ok_w2 = r["w2_100"]["mean"] <= exact["w2_100"]["mean"] + max(exact["w2_100"]["sd"], r["w2_100"]["sd"])
        ok_npe = r["npe"]["mean"] <= exact["npe"]["mean"] + max(exact["npe"]["sd"], r["npe"]["sd"])
        candidates.append((name, ratio[name], ok_w2 and ok_npe and ratio[name] <= 2.0))
    good = sorted([c for c in candidates if c[2]], key=lambda c: c[1])
    if good:
        name = good[0][0]
        reason = (
            f"{name}: its step costs {ratio[name]:.2f}x the independent step (exact OT {ratio['exact']:.1f}x), "
            f"and after training W2 at 100 Euler steps ({tr[name]['w2_100']['mean']:.3f}) and NPE "
            f"({tr[name]['npe']['mean']:.3f}) are within one standard deviation of exact OT's "
            f"({exact['w2_100']['mean']:.3f}, {exact['npe']['mean']:.3f})"
        )
    else:
        name = "exact"
        reason = "no cheaper coupling met both the 2x step target and exact OT's quality; exact OT stays"
    return {"coupling": name, "reason": reason, "candidates": {c[0]: c[2] for c in candidates}}


def load_average() -> float | None:
    """The 1-minute load average of the machine (None where the platform does not report it)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="couplings.json")
    args = parser.parse_args(argv)
    if args.smoke and args.out == parser.get_default("out"):
        args.out = str(harness.RESULTS / "couplings_smoke.json")  # a smoke run never overwrites the full results
    cfg = Config.smoke() if args.smoke else Config()
    result = harness.new_result("couplings", cfg, args, libraries=("scipy", "ot"), argv=argv)
    result["config"].update(DESCRIPTION)
    result["machine_load"] = {"load_average_1min_at_start": load_average()}
    begin = time.perf_counter()
    quiet = harness.logger(args.quiet)

    def log(msg: str) -> None:
        quiet(f"[{time.perf_counter() - begin:6.0f} s] {msg}")

    result["assignment_time"] = assignment_time(cfg, log)
    result["transport_cost"] = transport_cost(cfg, log)
    result["step_time"] = step_time(cfg, log)
    result["training"] = training(cfg, log)
    result["default"] = choose_default(result)
    log("default: " + result["default"]["reason"])
    log(f"wrote {harness.save(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
