"""examples/train.py runs as a script, in one process and under torchrun; benchmarks/training_scale.py's smoke run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "train.py"


def _run(cmd, tmp_path, timeout=300, attempts=2):
    """Run a command; a launch killed by a signal (a torchrun launch was seen to die once with SIGABRT) is retried."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(attempts):
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode >= 0 or attempt + 1 == attempts:
            return proc
    return proc


def test_the_script_trains_a_2d_set_and_reports_held_out_w2(tmp_path):
    out = tmp_path / "result.json"
    proc = _run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            "moons",
            "--steps",
            "60",
            "--n-train",
            "2000",
            "--result",
            str(out),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 1 and result["steps"] == 60 and 0 < result["w2"] < 3
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_00000060.pt"]
    # --resume continues a constant-schedule run from the checkpoint
    proc = _run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            "moons",
            "--steps",
            "80",
            "--n-train",
            "2000",
            "--schedule",
            "constant",
            "--ema",
            "0",
            "--checkpoint-dir",
            str(tmp_path / "ck2"),
            "--checkpoint-every",
            "40",
            "--result",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _run(
        [
            sys.executable,
            str(SCRIPT),
            "--data",
            "moons",
            "--steps",
            "100",
            "--n-train",
            "2000",
            "--schedule",
            "constant",
            "--ema",
            "0",
            "--resume",
            str(tmp_path / "ck2"),
            "--result",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["steps"] == 100


def test_the_script_runs_unchanged_under_torchrun(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(SCRIPT),
        "--data",
        "wine",
        "--steps",
        "40",
        "--result",
        str(out),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
    ]
    proc = _run(cmd, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["data"] == "wine" and result["w2"] > 0
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step_00000040.pt"]


@pytest.fixture(scope="module")
def scale_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "training_scale.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "training_scale.py"), "--smoke", "--quiet", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_training_scale_smoke_writes_every_section_and_the_load(scale_smoke):
    meta = scale_smoke["meta"]
    assert meta["benchmark"] == "training_scale" and meta["mode"] == "smoke" and meta["cores_used"] == 2
    assert isinstance(meta["quiet"], bool) and meta["load_start"] >= 0 and meta["load_end"] >= 0
    assert meta["quiet"] == (max(meta["load_start"], meta["load_end"]) <= 2.5)
    # the bare loop does the same work as fmlib.train: the same losses up to float rounding
    assert scale_smoke["overhead"]["losses_max_relative_difference"] < 1e-5
    assert set(scale_smoke["precision"]) == {"fp32", "bf16"}
    assert scale_smoke["precision"]["fp32"]["step_time_ratio"] == 1.0
    assert scale_smoke["ddp"]["throughput_ratio"] > 0
