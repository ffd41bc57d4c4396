"""Time and peak extra memory of EmpiricalMarginal.velocity for n queries against n data points in 2D.

From n * n >= 2^33 pairs on the CPU (``fused``), velocity runs torch.compile's fused kernel; there the same
process also times the eager loop (``eager_seconds``, the route below that size), and ``first_call_seconds``
includes compiling the kernel (``seconds`` is the next call). ``extra_peak_mb``: the peak resident memory added
by the eager call (compiling adds about 150 MB of its own).

Each size runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.

Usage (from the repository root):
    python benchmarks/marginal.py                       # sizes 1e3, 1e4, 1e5 (about two minutes on one thread)
    python benchmarks/marginal.py --smoke --out /tmp/marginal_smoke.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/marginal.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness  # noqa: E402

CHILD = r"""
import resource, sys, time, json, torch, fmlib
from fmlib import marginal
n, dtype = int(sys.argv[1]), getattr(torch, sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
g = torch.Generator().manual_seed(0)
data = fmlib.two_moons(n, generator=g, dtype=dtype)
x = torch.randn(n, 2, generator=g, dtype=dtype)
m = fmlib.EmpiricalMarginal(data, fmlib.GaussianPath())
m.velocity(x[:8], 0.5)  # caches the data in this dtype


def timed():
    start = time.perf_counter()
    with torch.no_grad():
        v = m.velocity(x, 0.5)
    assert torch.isfinite(v).all()
    return time.perf_counter() - start, v


fused = n * n >= marginal._FUSED_MIN_PAIRS
threshold, marginal._FUSED_MIN_PAIRS = marginal._FUSED_MIN_PAIRS, 2**62  # the eager loop
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
eager, v_eager = timed()
row = {"n": n, "fused": fused, "extra_peak_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024}
if fused:
    marginal._FUSED_MIN_PAIRS = threshold
    first, _ = timed()
    seconds, v = timed()
    assert not marginal._fused_failed, marginal._fused_failed
    scale = v_eager.norm(dim=1).clamp_min(1.0)
    row.update(seconds=seconds, first_call_seconds=first, eager_seconds=eager,
               max_relative_difference=float(((v - v_eager).norm(dim=1) / scale).max()))
else:
    row.update(seconds=eager)
print(json.dumps(row))
"""


@dataclass(frozen=True)
class Config:
    sizes: tuple[int, ...] = (1000, 10_000, 100_000)
    dtype: str = "float32"

    @classmethod
    def smoke(cls) -> Config:
        return cls(sizes=(100, 1000))


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(__doc__, default_out="marginal.json")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="override the sizes")
    parser.add_argument("--dtype", default=None, help="float32 (default) or float64")
    args = parser.parse_args(argv)
    if args.smoke and args.out == str(harness.RESULTS / "marginal.json"):
        args.out = str(harness.RESULTS / "marginal_smoke.json")  # a smoke run never overwrites the full results
    cfg = Config.smoke() if args.smoke else Config()
    cfg = Config(sizes=tuple(args.sizes or cfg.sizes), dtype=args.dtype or cfg.dtype)
    log = harness.logger(args.quiet)
    result = harness.new_result("marginal", cfg, args, argv=argv)
    rows = []
    for n in cfg.sizes:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), cfg.dtype, str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    result["rows"] = rows
    log(f"EmpiricalMarginal.velocity, n queries x n data points, 2D, {cfg.dtype}, {args.threads} thread(s)")
    log("| n | time (s) | eager loop (s) | first call (s) | extra peak memory (MB) |\n|---|---|---|---|---|")
    for r in rows:
        eager, first = (f"{r[k]:.3f}" if k in r else "-" for k in ("eager_seconds", "first_call_seconds"))
        log(f"| {r['n']:,} | {r['seconds']:.3f} | {eager} | {first} | {r['extra_peak_mb']:.0f} |")
    log(f"wrote {harness.save(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
