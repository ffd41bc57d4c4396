"""What every benchmark script shares: metadata, timing, mean and standard deviation, and the JSON it writes.

Every result file has the same two top-level entries, written by :func:`new_result` and completed by :func:`save`:

* ``"meta"``: where and how the numbers were measured (:data:`META_KEYS`): the benchmark's name, ``"full"`` or
  ``"smoke"``, the UTC date, the command line, the git commit (and whether fmlib had uncommitted changes), the CPU,
  the number of logical CPUs, the platform, the device, torch's thread count, the versions of Python and of every
  library involved, and the wall time of the whole run;
* ``"config"``: the benchmark's configuration, a frozen dataclass turned into a dict (:func:`config_dict`).

Everything else (measurements, summaries, figures) is the benchmark's own. A new benchmark plugs in like this::

    from dataclasses import dataclass

    from benchmarks import harness

    @dataclass(frozen=True)
    class Config:
        n: int = 10_000
        repeats: int = 5

        @classmethod
        def smoke(cls):  # seconds, not minutes: the smoke test of `make test` runs it
            return cls(n=100, repeats=1)

    def main(argv=None):
        args = harness.parser(__doc__, default_out="my_benchmark.json").parse_args(argv)
        cfg = Config.smoke() if args.smoke else Config()
        result = harness.new_result("my_benchmark", cfg, args, libraries=("scipy",))
        result["rows"] = [...]
        harness.save(result, args.out)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = ROOT / "benchmarks" / "checkpoints"

META_KEYS = (
    "benchmark",
    "mode",
    "date",
    "command",
    "git_commit",
    "fmlib_uncommitted_changes",
    "cpu",
    "logical_cpus",
    "platform",
    "device",
    "torch_threads",
    "versions",
    "wall_seconds",
)
"""The keys of every result's ``"meta"`` entry (``versions`` maps each library's import name to its version).

Results also carry ``load_start`` and ``load_end`` (the 1-minute load
average), ``cores_used`` and ``quiet`` (see :func:`is_quiet`)."""
BASE_LIBRARIES = ("torch", "numpy", "fmlib")


# ------------------------------------------------------------------------------------------------ metadata
def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git_state() -> tuple[str | None, bool | None]:
    """(commit of HEAD, whether fmlib/ has uncommitted changes), or (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "fmlib"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if not commit or status.returncode != 0:
        return None, None
    return commit, bool(status.stdout.strip())


def versions(libraries: Iterable[str] = ()) -> dict[str, str]:
    """Python's version and ``__version__`` of torch, numpy, fmlib and each named library (import names)."""
    out = {"python": platform.python_version()}
    for name in (*BASE_LIBRARIES, *libraries):
        if name not in out:
            out[name] = str(getattr(importlib.import_module(name), "__version__", "unknown"))
    return out


def metadata(
    benchmark: str,
    mode: str,
    *,
    libraries: Iterable[str] = (),
    device: str = "cpu",
    threads: int | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The ``"meta"`` entry of a result: every key of :data:`META_KEYS` (``wall_seconds`` is None until saved).

    ``threads`` defaults to ``torch.get_num_threads()``; ``argv`` to ``sys.argv[1:]``.
    """
    import torch

    if mode not in ("full", "smoke"):
        raise ValueError(f"mode must be 'full' or 'smoke', got {mode!r}")
    commit, dirty = git_state()
    args = sys.argv[1:] if argv is None else list(argv)
    return {
        "benchmark": benchmark,
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([f"benchmarks/{benchmark}.py", *args]),
        "git_commit": commit,
        "fmlib_uncommitted_changes": dirty,
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads() if threads is None else threads,
        "versions": versions(libraries),
        "wall_seconds": None,
        "load_start": load_average(),
        "cores_used": torch.get_num_threads() if threads is None else threads,
    }


def load_average() -> float:
    """The 1-minute load average of the machine (runnable processes, averaged)."""
    return os.getloadavg()[0]


def is_quiet(meta: dict[str, Any]) -> bool:
    """A run was quiet when the load, at its start and its end, stayed within the cores it used plus 0.5.

    The load includes the run itself, so a one-thread run on an otherwise idle machine reads about 1. Under more
    load the timings (and every ratio of timings) are distorted, not just noisy: such results are not shown.
    """
    return max(meta["load_start"], meta["load_end"]) <= meta["cores_used"] + 0.5


def config_dict(cfg: Any) -> dict[str, Any]:
    """A frozen dataclass configuration as a plain dict (tuples become lists), for the JSON."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"cfg must be a dataclass instance, got {type(cfg).__name__}")

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


# ------------------------------------------------------------------------------------------------ a run
def parser(description: str | None, default_out: str) -> argparse.ArgumentParser:
    """The command line every benchmark accepts: --smoke, --threads, --out, --quiet (add your own)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny configuration that exercises every code path")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on the CPU (default 1)")
    p.add_argument("--out", default=str(RESULTS / default_out), help=f"JSON path (default results/{default_out})")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def new_result(
    benchmark: str,
    cfg: Any,
    args: argparse.Namespace,
    *,
    libraries: Iterable[str] = (),
    device: str = "cpu",
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """Start a result: set torch's threads from ``args.threads``, start the clock, fill ``meta`` and ``config``."""
    import torch

    if device == "cpu":
        torch.set_num_threads(args.threads)
    result = {
        "meta": metadata(benchmark, "smoke" if args.smoke else "full", libraries=libraries, device=device, argv=argv),
        "config": config_dict(cfg),
    }
    result["meta"]["_start"] = time.perf_counter()
    return result


def save(result: dict[str, Any], out: str | Path) -> Path:
    """Set ``meta.wall_seconds`` (seconds since :func:`new_result`) and write the JSON; returns its path.

    May be called again later (after the figures, say): the clock keeps running from :func:`new_result`.
    """
    meta = result["meta"]
    if "_start" in meta:
        meta["wall_seconds"] = time.perf_counter() - meta["_start"]
    if "load_start" in meta:
        meta["load_end"] = load_average()
        meta["quiet"] = is_quiet(meta)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise ValueError(f"result['meta'] lacks {missing}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {**result, "meta": {k: v for k, v in meta.items() if k != "_start"}})
    return out


def load(path: str | Path) -> dict[str, Any]:
    """Read a result file and check that its metadata has every key of :data:`META_KEYS`."""
    result = json.loads(Path(path).read_text())
    missing = [k for k in META_KEYS if k not in result.get("meta", {})]
    if missing:
        raise ValueError(f"{path}: meta lacks {missing}")
    return result


def save_checkpoint(filename: str, model: Any, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Write ``CHECKPOINTS / filename`` with ``torch.save``: the network's class name, its state dict with the
    floating tensors in float16 (load them with ``.float()``), the run's command and git commit (from ``meta``)
    and ``extra``; returns the file's path relative to the repository and its size in bytes."""
    import torch

    CHECKPOINTS.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = CHECKPOINTS / filename
    record = {"class": type(model).__name__, "state_dict": state, "command": meta["command"]}
    torch.save({**record, "git_commit": meta["git_commit"], **extra}, path)
    return {"file": str(path.relative_to(ROOT)), "bytes": path.stat().st_size}


def logger(quiet: bool) -> Callable[[str], None]:
    """print, flushed, or nothing."""
    return (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))


# ------------------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], Any], repeats: int, *, long_run: float = 5.0) -> tuple[float, Any]:
    """Median wall time (perf_counter) of ``fn()`` over ``repeats`` runs after one warm-up run, and its last output.

    When the warm-up run alone takes more than ``long_run`` seconds (or ``repeats < 1``), that single run is
    returned: repeating it would cost minutes for a median that moves little.
    """
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    if first > long_run or repeats < 1:
        return first, out
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


class Stopwatch:
    """Accumulates the wall time of the ``with`` blocks it guards: ``with sw: ...``; ``sw.seconds``, ``sw.laps``."""

    def __init__(self) -> None:
        self.laps: list[float] = []

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.laps.append(time.perf_counter() - self._start)

    @property
    def seconds(self) -> float:
        return sum(self.laps)


# ------------------------------------------------------------------------------------------------ statistics
def mean_sd(values: Iterable[float]) -> dict[str, float | int]:
    """``{"mean", "sd", "n"}``: the sample mean and the sample standard deviation (n - 1; 0 for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_sd needs at least one value, got none")
    return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def w2_floor(reference: Any, draw: Callable[[], Any], draws: int = 8) -> float:
    """The finite-sample W2 floor of an evaluation set: the mean W2 between ``reference`` and ``draws``
    independent samples of the same distribution and size (``draw()`` returns one).

    A perfect sampler's W2 against ``reference`` has this expectation, so W2 / floor is about 1 for it. One
    draw alone is a noisy estimate (on the 2D sets at 1000 points its standard deviation is 20-40 % of the
    mean); the mean of 8 is 3x less noisy. The W2 is :func:`fmlib.wasserstein2` (exact).
    """
    import fmlib

    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    return statistics.fmean(fmlib.wasserstein2(draw(), reference) for _ in range(draws))


def format_mean_sd(d: dict[str, float], digits: int = 3) -> str:
    """``"mean ± sd"`` of a :func:`mean_sd` entry, both with ``digits`` decimals."""
    return f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"


# ------------------------------------------------------------------------------------------------ JSON
def write_json(path: str | Path, obj: Any) -> None:
    """JSON with one level of indentation per dict, and every list of numbers (or of number lists) on one line.

    Non-finite floats are refused (ValueError): a NaN in a result is a bug to fix, not a number to store.
    """

    def flat(x):
        return isinstance(x, list) and all(isinstance(e, (int, float)) or flat(e) for e in x)

    def fmt(x, depth):
        pad, inner = " " * depth, " " * (depth + 1)
        if isinstance(x, dict) and x:
            items = [f"{inner}{json.dumps(k)}: {fmt(v, depth + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(x, (list, tuple)) and x and not flat(list(x)):
            return "[\n" + ",\n".join(inner + fmt(e, depth + 1) for e in x) + "\n" + pad + "]"
        return json.dumps(x, separators=(",", ":") if isinstance(x, (list, tuple)) else None, allow_nan=False)

    def check(x, where):
        if isinstance(x, dict):
            for k, v in x.items():
                check(v, f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                check(v, f"{where}[{i}]")
        elif isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"write_json: non-finite number {x} at {where}, for {path}")

    check(obj, "result")
    Path(path).write_text(fmt(obj, 0) + "\n")
