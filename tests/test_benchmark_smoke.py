"""The 2D library comparison runs end to end (benchmarks/compare_2d.py --smoke) and writes a complete JSON.

Needs torchcfm and flow_matching: `make test` installs them with --no-deps from benchmarks/requirements.txt
(a missing install fails here, loudly). The full benchmark (`make bench`) is not part of the tests.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import flow_matching  # noqa: F401  (fail, not skip, when the benchmark's libraries are missing)
import pytest
import torchcfm  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
LIBS = ("fmlib", "torchcfm", "flow_matching")
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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "compare_2d.py"),
            "--smoke",
            "--quiet",
            "--out",
            str(out / "smoke.json"),
            "--figures-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "smoke.json").read_text()), out


def test_smoke_json_has_metadata_and_config(smoke):
    result, _ = smoke
    for key in (
        "cpu",
        "date",
        "python",
        "torch",
        "fmlib",
        "torchcfm",
        "flow_matching",
        "pot",
        "scipy",
        "torch_threads",
        "wall_seconds",
    ):
        assert key in result["meta"], key
    assert result["meta"]["mode"] == "smoke"
    for key in ("seeds", "tasks", "steps_independent", "steps_ot", "batch_size", "n_eval", "nfe", "lr"):
        assert key in result["config"], key
    assert result["config"]["batch_size"] == 512


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
    assert result["figures"]
    for name in result["figures"]:
        assert (out / name).stat().st_size > 1000, name
