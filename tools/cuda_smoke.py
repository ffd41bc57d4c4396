"""A CUDA smoke check: torch sees a GPU, a matrix product is finite there, and fmlib integrates a field on it.

    python tools/cuda_smoke.py        # exit status 1, with the reason, where there is no usable CUDA device

The first step of `make gpu-test` and of the GPU workflow (.github/workflows/gpu.yml).
"""

from __future__ import annotations

import sys

import torch

import fmlib


def main() -> int:
    if not torch.cuda.is_available():
        print(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    print("torch", torch.__version__, "CUDA", torch.version.cuda, "on", torch.cuda.get_device_name(0))
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1024, 1024, device="cuda", generator=g)
    assert torch.isfinite(x @ x).all()
    model = fmlib.MLP(2).cuda()
    out = fmlib.integrate(model, torch.randn(256, 2, device="cuda", generator=g), steps=10, method="rk4")
    torch.cuda.synchronize()
    assert out.device.type == "cuda" and out.shape == (256, 2) and torch.isfinite(out).all()
    print("fmlib integrates on", out.device, "(fmlib from", fmlib.__file__ + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
