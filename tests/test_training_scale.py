"""train at scale: checkpoints and resumption, mixed precision, compilation and many processes (gloo, CPU)."""

import copy
import math
import multiprocessing
import os
import pickle
import signal
import socket

import _ddp_workers
import pytest
import torch

import fmlib
from fmlib import MLP, GaussianPath, LinearPath, Recipe, train


def _moons_run(steps, recipe, **kw):
    data = fmlib.two_moons(1024, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MLP(2, hidden=32, depth=2)
    rec = train(
        model,
        GaussianPath(),
        data,
        steps=steps,
        batch_size=64,
        recipe=recipe,
        generator=torch.Generator().manual_seed(1),
        progress=False,
        **kw,
    )
    return model, rec


# -- checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", [Recipe(), Recipe(clip_grad_norm=0.5, time_sampler="logit_normal")])
def test_a_resumed_run_is_bitwise_the_uninterrupted_run(tmp_path, recipe):
    straight, rec = _moons_run(
        200,
        recipe,
        checkpoint_dir=tmp_path,
        checkpoint_every=100,
        eval_data=torch.randn(64, 2, generator=torch.Generator().manual_seed(3)),
        eval_every=40,
    )
    assert [c.name for c in rec.checkpoints] == ["step_00000100.pt", "step_00000200.pt"]
    # a new process would start from a freshly initialised model and a fresh generator: both are restored
    torch.manual_seed(123)
    model = MLP(2, hidden=32, depth=2)
    data = fmlib.two_moons(1024, generator=torch.Generator().manual_seed(0))
    resumed = train(
        model,
        GaussianPath(),
        data,
        steps=200,
        batch_size=64,
        recipe=recipe,
        generator=torch.Generator().manual_seed(999),
        progress=False,
        resume=rec.checkpoints[0],
        eval_data=torch.randn(64, 2, generator=torch.Generator().manual_seed(3)),
        eval_every=40,
    )
    assert list(resumed) == list(rec)
    assert resumed.lr == rec.lr and resumed.eval_steps == rec.eval_steps and resumed.eval_losses == rec.eval_losses
    assert resumed.grad_norm == rec.grad_norm
    for p, q in zip(model.parameters(), straight.parameters()):
        assert torch.equal(p, q)
    for a, b in zip(resumed.ema.shadow, rec.ema.shadow):
        assert torch.equal(a, b)


def test_a_resumed_dataset_run_is_bitwise_the_uninterrupted_run(tmp_path):
    x = fmlib.two_moons(300, generator=torch.Generator().manual_seed(0))
    ds = torch.utils.data.TensorDataset(x)

    def run(steps_dir, resume=None, seed=0):
        torch.manual_seed(seed)
        model = MLP(2, hidden=16, depth=1)
        rec = train(
            model,
            LinearPath(),
            _Items(ds),
            steps=50,
            batch_size=64,
            checkpoint_dir=steps_dir,
            checkpoint_every=23,
            resume=resume,
            generator=torch.Generator().manual_seed(1),
            progress=False,
        )
        return model, rec

    a, rec_a = run(tmp_path / "a")
    b, rec_b = run(tmp_path / "b", resume=rec_a.checkpoints[0], seed=5)  # 23 steps: in the middle of an epoch
    assert list(rec_a) == list(rec_b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


class _Items(torch.utils.data.Dataset):
    """TensorDataset yields 1-tuples; a data set of x1 alone yields the tensor."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i][0]


def test_resuming_from_a_directory_takes_its_latest_checkpoint(tmp_path):
    _, rec = _moons_run(60, Recipe.constant(1e-2), checkpoint_dir=tmp_path, checkpoint_every=25)
    assert [c.name for c in rec.checkpoints] == ["step_00000025.pt", "step_00000050.pt", "step_00000060.pt"]
    state = torch.load(tmp_path / "step_00000060.pt", weights_only=True)  # loads without unpickling code
    assert state["step"] == 60 and len(state["record"]["losses"]) == 60
    # a constant schedule may go on for more steps than planned
    model, more = _moons_run(80, Recipe.constant(1e-2), resume=tmp_path)
    assert len(more) == 80 and list(more[:60]) == list(rec)


def test_resuming_refuses_another_model_recipe_or_plan(tmp_path):
    _, rec = _moons_run(20, Recipe(), checkpoint_dir=tmp_path)
    data = torch.zeros(64, 2)
    with pytest.raises(ValueError, match=r"holds another model.*of other shapes: \[.*'net.0.weight'"):
        train(MLP(2, hidden=16, depth=2), GaussianPath(), data, steps=20, resume=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another recipe; differing fields \{'lr': '0.03'\}"):
        train(
            MLP(2, hidden=32, depth=2),
            GaussianPath(),
            data,
            steps=20,
            recipe=Recipe(lr=1e-3),
            resume=tmp_path,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"steps must equal the checkpoint's planned steps \(20\)"):
        train(MLP(2, hidden=32, depth=2), GaussianPath(), data, steps=40, resume=tmp_path, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="resume: no checkpoint step_"):
        train(MLP(2, hidden=32, depth=2), GaussianPath(), data, steps=20, resume=tmp_path / "empty", progress=False)
    with pytest.raises(ValueError, match="resume must name a checkpoint file or a checkpoint directory"):
        train(MLP(2, hidden=32, depth=2), GaussianPath(), data, steps=20, resume=tmp_path / "nothing", progress=False)


# -- precision and compilation ----------------------------------------------------------------------------------


def _held_out_loss(model):
    held = fmlib.two_moons(2000, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return float(fmlib.cfm_loss(model, GaussianPath(), held, generator=torch.Generator().manual_seed(4)))


def test_bf16_trains_within_ten_percent_of_fp32_and_keeps_float32_state():
    fp32, rec32 = _moons_run(300, Recipe(lr=1e-2))
    bf16, rec16 = _moons_run(300, Recipe(lr=1e-2), precision="bf16")
    a, b = _held_out_loss(fp32), _held_out_loss(bf16)
    assert abs(b - a) < 0.1 * a, (a, b)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(s.dtype == torch.float32 for s in rec16.ema.shadow)
    assert all(v.dtype == torch.float32 for st in rec16.optimizer.state.values() for v in st.values() if v.dim())
    assert list(rec16) != list(rec32)  # the forward pass did run in bfloat16


def test_fp16_trains_with_a_gradient_scaler():
    fp32, _ = _moons_run(300, Recipe(lr=1e-2))
    fp16, rec = _moons_run(300, Recipe(lr=1e-2), precision="fp16")
    a, b = _held_out_loss(fp32), _held_out_loss(fp16)
    assert abs(b - a) < 0.1 * a, (a, b)
    assert all(math.isfinite(v) for v in rec)


def test_autocast_around_train_would_learn_nothing_which_is_why_train_refuses_it():
    """The failure train guards against, reproduced by hand: one autocast block around a loop keeps its cached
    bfloat16 copies of the starting weights, so the forward pass never sees an update."""
    data = fmlib.two_moons(1024, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MLP(2, hidden=32, depth=2)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x, torch.full((64,), 0.5)).detach().clone()
        opt = torch.optim.Adam(model.parameters(), lr=1e-1)
        for _ in range(5):
            loss = fmlib.cfm_loss(model, GaussianPath(), data[:64])
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = model(x, torch.full((64,), 0.5)).detach()
    assert torch.equal(before, after)  # the weights changed, the cached bf16 copies did not
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="precision="):
        train(model, GaussianPath(), data, steps=2, progress=False)


def test_compiled_training_matches_eager():
    eager, rec = _moons_run(20, Recipe.constant(1e-2))
    compiled, rec_c = _moons_run(20, Recipe.constant(1e-2), compile=True)
    assert rec_c == pytest.approx(list(rec), rel=1e-4, abs=1e-5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


def test_compile_without_a_cpp_compiler_names_the_reason(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ValueError, match="compile=True on a CPU needs a C\\+\\+ compiler"):
        _moons_run(2, Recipe(), compile=True)


# -- many processes -------------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_two(out_dir, timeout=240, attempts=2):
    """Two gloo ranks on the loopback; a launch that dies by a signal (seen once: SIGABRT) is retried once."""
    for attempt in range(attempts):
        ctx = torch.multiprocessing.start_processes(
            _ddp_workers.worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=False, start_method="spawn"
        )
        try:
            while not ctx.join(timeout=timeout):
                pass
            return
        except torch.multiprocessing.ProcessExitedException as e:
            died_by_signal = e.signal_name is not None or e.exit_code in (-signal.SIGABRT, 134)
            if not died_by_signal or attempt + 1 == attempts:
                raise
        except multiprocessing.TimeoutError:
            raise
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn_two(out)
    results = []
    for r in range(2):
        with open(os.path.join(out, f"rank{r}.pkl"), "rb") as f:
            results.append(pickle.load(f))
    return out, results


def test_two_processes_take_the_steps_of_one_process_with_the_same_global_batch(two_ranks):
    _, (r0, r1) = two_ranks
    data, model, recipe = _ddp_workers.problem()
    rec = _ddp_workers.run_train(model, data, recipe)
    for a, b, ref in zip(r0["params"], r1["params"], model.parameters()):
        assert torch.equal(a, b)  # every rank ends with the same weights
        assert torch.allclose(a, ref, rtol=0, atol=1e-5)
    assert r0["losses"] == pytest.approx(list(rec), rel=1e-5)  # the record holds the global batch's loss


def test_only_rank_zero_writes_checkpoints(two_ranks):
    out, (r0, r1) = two_ranks
    assert [os.path.basename(c) for c in r0["checkpoints"]] == ["step_00000030.pt"]
    assert r1["checkpoints"] == [] and not os.path.exists(os.path.join(out, "ckpt_rank1"))


def test_calling_model_module_skips_the_gradient_all_reduce(two_ranks):
    """Pitfall: DDP averages gradients only through the wrapper's forward; .module's forward trains each rank on
    its own rows, silently."""
    _, (r0, r1) = two_ranks
    torch.manual_seed(0)
    net = MLP(2, hidden=8, depth=1)
    per_rank = []
    for r in (r0, r1):
        net.zero_grad(set_to_none=True)
        net(r["x"], r["t"]).pow(2).mean().backward()
        per_rank.append([p.grad.clone() for p in net.parameters()])
    for a, b, g0, g1 in zip(r0["module_grad"], r1["module_grad"], *per_rank):
        assert torch.allclose(a, g0, atol=1e-6) and torch.allclose(b, g1, atol=1e-6)  # local gradients only
    assert any(not torch.allclose(a, b) for a, b in zip(r0["module_grad"], r1["module_grad"]))
    for a, b, g0, g1 in zip(r0["wrapper_grad"], r1["wrapper_grad"], *per_rank):
        assert torch.allclose(a, b) and torch.allclose(a, (g0 + g1) / 2, atol=1e-6)  # the average, on both


def test_a_jvp_target_with_the_prediction_through_the_wrapper_keeps_gradients_in_sync(two_ranks):
    _, (r0, r1) = two_ranks
    torch.manual_seed(0)
    net = MLP(2, hidden=8, depth=1)
    per_rank = []
    for r in (r0, r1):
        net.zero_grad(set_to_none=True)
        _ddp_workers.jvp_target_loss(net, net, r["x"], r["t"]).backward()
        per_rank.append([p.grad.clone() for p in net.parameters()])
    for a, b, g0, g1 in zip(r0["jvp_grad"], r1["jvp_grad"], *per_rank):
        assert torch.allclose(a, b) and torch.allclose(a, (g0 + g1) / 2, atol=1e-6)


def test_a_distributed_run_needs_a_generator():
    """Checked without processes: the check reads the world size, so fake an initialised group of two."""
    import torch.distributed as dist

    model = MLP(2, hidden=4, depth=1)
    before = copy.deepcopy(model.state_dict())
    orig = (dist.is_initialized, dist.get_rank, dist.get_world_size)
    dist.is_initialized, dist.get_rank, dist.get_world_size = (lambda: True), (lambda: 0), (lambda: 2)
    try:
        with pytest.raises(ValueError, match="generator is required under torch.distributed"):
            train(model, LinearPath(), torch.zeros(32, 2), steps=3, progress=False)
        with pytest.raises(ValueError, match=r"batch_size must be divisible by the number of processes \(2\)"):
            train(
                model,
                LinearPath(),
                torch.zeros(32, 2),
                steps=3,
                batch_size=7,
                progress=False,
                generator=torch.Generator(),
            )
    finally:
        dist.is_initialized, dist.get_rank, dist.get_world_size = orig
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_jvp_taken_through_the_ddp_wrapper_fails_on_this_torch(two_ranks):
    """Pitfall: DDP's forward broadcasts the buffers in place (and rebuilds its buckets on the second step), which
    torch.func transforms refuse; hence the pattern above (JVP of the bare module for the detached target)."""
    _, (r0, r1) = two_ranks
    for r in (r0, r1):
        assert r["direct_jvp_error"] is not None and "in-place operation" in r["direct_jvp_error"]


def test_sampling_split_across_ranks_needs_a_seed_per_rank_and_a_gather(two_ranks):
    """Pitfall: every rank holds the same model; with the same seed every rank draws the same noise, so N ranks
    produce N copies of the same samples. A seed per rank (seed + rank) and all_gather give N distinct shares."""
    _, (r0, r1) = two_ranks
    assert torch.equal(r0["same_seed_noise"], r1["same_seed_noise"])
    expected = torch.cat([torch.randn(4, 2, generator=torch.Generator().manual_seed(7 + r)) for r in range(2)])
    for r in (r0, r1):
        assert torch.equal(r["gathered_noise"], expected)
    assert not torch.equal(expected[:4], expected[4:])


def test_no_checkpoint_or_callback_ever_sees_a_non_finite_loss(tmp_path):
    class Poisoned(torch.utils.data.Dataset):  # item 5 is NaN: found only when it is read
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.full((2,), float("nan") if i == 5 else 0.5)

    seen = []
    with pytest.raises(ValueError, match=r"the training loss became NaN or inf at step (\d+)") as err:
        train(
            MLP(2, hidden=8, depth=1),
            LinearPath(),
            Poisoned(),
            steps=40,
            batch_size=8,
            checkpoint_dir=tmp_path,
            checkpoint_every=1,
            eval_every=1,
            callback=lambda s, m: seen.append(s),
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
    bad = int(err.value.args[0].split("at step ")[1].split()[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step_{k:08d}.pt" for k in range(1, bad)]
    assert seen == list(range(1, bad))
    for p in tmp_path.iterdir():
        state = torch.load(p, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_recipe_with_a_function_resumes_in_another_process(tmp_path):
    """The recipe's signature names a function by module and qualified name, not by its address."""

    def flat(opt, steps):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)

    sig = Recipe(schedule=flat).signature()
    assert "0x" not in sig["schedule"] and sig["schedule"].endswith("flat")


def test_resuming_with_another_batch_size_precision_or_data_is_refused_before_loading(tmp_path):
    _moons_run(20, Recipe(), checkpoint_dir=tmp_path)
    data = fmlib.two_moons(1024, generator=torch.Generator().manual_seed(0))
    for kwargs, name in ((dict(batch_size=32), "batch_size"), (dict(precision="fp16"), "precision")):
        torch.manual_seed(0)
        model = MLP(2, hidden=32, depth=2)
        before = copy.deepcopy(model.state_dict())
        kw = {"batch_size": 64, **kwargs}
        with pytest.raises(ValueError, match=f"trained with other settings.*'{name}'"):
            train(model, GaussianPath(), data, steps=20, resume=tmp_path, progress=False, **kw)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="trained with other settings.*'data_rows'"):
        train(
            MLP(2, hidden=32, depth=2),
            GaussianPath(),
            data[:512],
            steps=20,
            batch_size=64,
            resume=tmp_path,
            progress=False,
        )


def test_held_out_data_must_match_the_training_data_before_any_step():
    model = MLP(2, hidden=4, depth=1)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 2)
    with pytest.raises(ValueError, match="eval_data must have the training data's dtype torch.float32"):
        train(model, LinearPath(), x, steps=4, eval_data=x.double(), progress=False)

    class Cond(torch.nn.Module):
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, y):
            return self.w * x

    with pytest.raises(ValueError, match=r"eval_data must be a pair \(x, y\) with labels"):
        train(Cond(), LinearPath(), x, steps=4, cond=torch.zeros(32, dtype=torch.long), eval_data=x, progress=False)
    with pytest.raises(ValueError, match="p_uncond > 0 needs labels"):
        train(Cond(), LinearPath(), x, steps=4, p_uncond=0.5, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
