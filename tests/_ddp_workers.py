"""Worker functions for the multi-process tests: importable by name, so torch.multiprocessing can spawn them."""

import os
import pickle

import torch
import torch.distributed as dist

import fmlib


def problem():
    """The data, the initial model and the recipe every run of the DDP tests starts from."""
    data = fmlib.two_moons(1024, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = fmlib.MLP(2, hidden=32, depth=2)
    return data, model, fmlib.Recipe(lr=1e-2, ema=0.9)


def run_train(model, data, recipe, checkpoint_dir=None):
    return fmlib.train(
        model,
        fmlib.GaussianPath(),
        data,
        steps=30,
        batch_size=64,
        recipe=recipe,
        checkpoint_dir=checkpoint_dir,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )


def jvp_target_loss(module, forward, x, t):
    """A MeanFlow-shaped loss: a detached target from a JVP of the bare module (no_grad: no DDP hooks, no
    buffer broadcast inside the transform), and the prediction through ``forward`` (the DDP wrapper), so
    the gradient is all-reduced."""
    with torch.no_grad():
        _, dvdx = torch.func.jvp(lambda x_: module(x_, t), (x,), (torch.ones_like(x),))
    return (forward(x, t) - (x + 0.1 * dvdx)).pow(2).mean()


def direct_jvp_error():
    """Differentiating through the wrapper inside torch.func.jvp: the error it raises on this torch, or None."""
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(fmlib.MLP(2, hidden=8, depth=1))
    x, t = torch.randn(4, 2), torch.rand(4)
    try:
        out, _ = torch.func.jvp(lambda x_: ddp(x_, t), (x,), (torch.ones_like(x),))
        out.pow(2).mean().backward()
    except RuntimeError as e:
        return str(e)
    return None


def worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {}
        data, model, recipe = problem()
        rec = run_train(model, data, recipe, checkpoint_dir=os.path.join(out_dir, f"ckpt_rank{rank}"))
        result["params"] = [p.detach().clone() for p in model.parameters()]
        result["losses"] = list(rec)
        result["checkpoints"] = [str(c) for c in rec.checkpoints]

        # pitfalls: each rank gets its own rows of x
        g = torch.Generator().manual_seed(10 + rank)
        x = torch.randn(16, 2, generator=g)
        t = torch.rand(16, generator=g)
        # (1) calling model.module bypasses DDP's gradient all-reduce: the ranks' gradients differ
        torch.manual_seed(0)
        net = fmlib.MLP(2, hidden=8, depth=1)
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        ddp.module(x, t).pow(2).mean().backward()
        result["module_grad"] = [p.grad.clone() for p in net.parameters()]
        net.zero_grad(set_to_none=True)
        # (2) through the wrapper they are averaged over the ranks
        ddp(x, t).pow(2).mean().backward()
        result["wrapper_grad"] = [p.grad.clone() for p in net.parameters()]
        net.zero_grad(set_to_none=True)
        # (3) a JVP target from the bare module, the prediction through the wrapper: gradients synchronised
        jvp_target_loss(net, ddp, x, t).backward()
        result["jvp_grad"] = [p.grad.clone() for p in net.parameters()]
        # (4) the JVP taken through the wrapper itself
        result["direct_jvp_error"] = direct_jvp_error()
        # (5) sampling split across ranks: the same seed on every rank draws the same noise (duplicate samples);
        # a seed per rank, gathered, gives distinct samples on every rank
        result["same_seed_noise"] = torch.randn(4, 2, generator=torch.Generator().manual_seed(7))
        own = torch.randn(4, 2, generator=torch.Generator().manual_seed(7 + rank))
        gathered = [torch.empty_like(own) for _ in range(world)]
        dist.all_gather(gathered, own)
        result["gathered_noise"] = torch.cat(gathered)
        result["x"], result["t"] = x, t
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
    finally:
        dist.destroy_process_group()
