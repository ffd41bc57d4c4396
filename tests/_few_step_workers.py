"""Worker for the two-process MeanFlow test: importable by name, so torch.multiprocessing can spawn it."""

import os
import pickle

import torch
import torch.distributed as dist

import fmlib


def rank_batch(rank):
    """The rows of one rank: x1, x0, r <= t (some rows r = t), drawn from a seed per rank."""
    g = torch.Generator().manual_seed(100 + rank)
    x1 = fmlib.two_moons(32, generator=g)
    x0 = torch.randn(32, 2, generator=g)
    a, b = torch.rand(32, generator=g), torch.rand(32, generator=g)
    r, t = torch.minimum(a, b), torch.maximum(a, b)
    r[:8] = t[:8]
    return x1, x0, r, t


def model():
    torch.manual_seed(0)
    return fmlib.MLP(2, hidden=16, depth=2, two_times=True)


def meanflow_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        net = model()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        x1, x0, r, t = rank_batch(rank)
        grads = []
        for _ in range(2):  # twice: DDP rebuilds its buckets after the first step
            net.zero_grad(set_to_none=True)
            fmlib.meanflow_loss(ddp, fmlib.LinearPath(), x1, x0=x0, r=r, t=t).backward()
            grads.append([p.grad.clone() for p in net.parameters()])
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(grads, f)
    finally:
        dist.destroy_process_group()
