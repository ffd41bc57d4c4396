"""Time and peak extra memory of EmpiricalMarginal.velocity for n queries against n data points in 2D.

Each size runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
Usage: python benchmarks/marginal.py [--sizes 1000 10000 100000] [--dtype float32] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import resource, sys, time, json, torch, fmlib
n, dtype = int(sys.argv[1]), getattr(torch, sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
g = torch.Generator().manual_seed(0)
data = fmlib.two_moons(n, generator=g, dtype=dtype)
x = torch.randn(n, 2, generator=g, dtype=dtype)
m = fmlib.EmpiricalMarginal(data, fmlib.GaussianPath())
m.velocity(x[:8], 0.5)  # warm-up: caches the data in this dtype
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
with torch.no_grad():
    v = m.velocity(x, 0.5)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert torch.isfinite(v).all()
print(json.dumps({"n": n, "seconds": seconds, "extra_peak_mb": (after - before) / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), args.dtype, str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    import torch

    meta = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "dtype": args.dtype,
    }
    print(f"EmpiricalMarginal.velocity, n queries x n data points, 2D, {args.dtype}, {args.threads} threads")
    print("| n | time (s) | extra peak memory (MB) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['seconds']:.3f} | {r['extra_peak_mb']:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
