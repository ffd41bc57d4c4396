"""Training loops and their recipe: EMA, learning-rate schedules, clipping, time samplers, weights, the record."""

import copy
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import fmlib
from fmlib import EMA, MLP, GaussianPath, LinearPath, TrainingRecord, lr_schedule, train, train_conditional


class Scalar(torch.nn.Module):
    """One scalar parameter w: the field v(x, t) = w x."""

    def __init__(self, w=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float(w), dtype=torch.float64))

    def forward(self, x, t):
        return self.w * x


# -- EMA -----------------------------------------------------------------------------------------------------


def _run_sequence(ema, model, thetas):
    for th in thetas:
        with torch.no_grad():
            model.w.fill_(th)
        ema.update()


def test_ema_without_warmup_is_the_closed_form_exponential_average():
    thetas = [0.3, -1.2, 2.0, 0.7, 5.0, -0.4, 1.1]
    d, s0 = 0.8, 0.25
    model = Scalar(s0)
    ema = EMA(model, decay=d, warmup=False)
    _run_sequence(ema, model, thetas)
    n = len(thetas)
    expected = d**n * s0 + (1 - d) * sum(d ** (n - k) * th for k, th in enumerate(thetas, start=1))
    assert abs(float(ema.shadow[0]) - expected) < 1e-12
    assert ema.num_updates == n


def test_ema_warmup_uses_min_decay_one_plus_n_over_ten_plus_n():
    thetas = [float(k) for k in range(1, 40)]
    d, s0 = 0.95, -3.0
    model = Scalar(s0)
    ema = EMA(model, decay=d)
    decays = []
    for th in thetas:
        decays.append(ema.current_decay())
        with torch.no_grad():
            model.w.fill_(th)
        ema.update()
    expected_decays = [min(d, (1 + n) / (10 + n)) for n in range(len(thetas))]
    assert decays == pytest.approx(expected_decays, abs=0)
    assert decays[0] == pytest.approx(0.1)  # the first update keeps 90% of the new weights
    # closed form with step-dependent decays: s_n = prod_k d_k s_0 + sum_k (1 - d_k) prod_{j > k} d_j theta_k
    s = s0 * math.prod(expected_decays)
    for k, th in enumerate(thetas):
        s += (1 - expected_decays[k]) * math.prod(expected_decays[k + 1 :]) * th
    assert abs(float(ema.shadow[0]) - s) < 1e-12
    # the warm-up reaches the decay d = 0.9 exactly when (1 + n) / (10 + n) >= 0.9, i.e. at n = 80
    ema9 = EMA(Scalar(), decay=0.9)
    ema9.num_updates = 79
    assert ema9.current_decay() < 0.9
    ema9.num_updates = 80
    assert ema9.current_decay() == 0.9


def test_evaluating_with_the_average_leaves_the_training_weights_untouched():
    torch.manual_seed(0)
    model = MLP(2, hidden=8, depth=2)
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(5, 2)
    with ema.averaged() as m:
        assert m is model
        for p, s in zip(model.parameters(), ema.shadow):
            assert torch.equal(p, s)
        inside = model(x, 0.5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.allclose(inside, model(x, 0.5))
    with pytest.raises(RuntimeError, match="boom"), ema.averaged():  # restored after an exception too
        raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_ema_state_round_trip_continues_identically():
    thetas = [0.5, 1.5, -2.0, 3.0]
    a_model = Scalar(1.0)
    a = EMA(a_model, decay=0.9)
    _run_sequence(a, a_model, thetas[:2])
    state = a.state_dict()
    b_model = Scalar(7.0)
    b = EMA(b_model, decay=0.5, warmup=False)
    b.load_state_dict(state)
    assert (b.decay, b.warmup, b.num_updates) == (0.9, True, 2)
    _run_sequence(a, a_model, thetas[2:])
    _run_sequence(b, b_model, thetas[2:])
    assert float(a.shadow[0]) == float(b.shadow[0])
    state["shadow"][0].fill_(123.0)  # the state is a copy
    assert float(a.shadow[0]) != 123.0
    with pytest.raises(ValueError, match="one average per parameter"):
        EMA(MLP(2, hidden=4, depth=1)).load_state_dict(state)


def test_ema_keeps_half_precision_averages_in_float32():
    model = torch.nn.Linear(2, 2).half()
    ema = EMA(model, 0.999)
    assert all(s.dtype == torch.float32 for s in ema.shadow)
    ema.update()
    with ema.averaged():
        assert model.weight.dtype == torch.float16


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, float("nan")])
def test_ema_rejects_a_decay_outside_zero_one(decay):
    with pytest.raises(ValueError, match=r"decay must be a float in \[0, 1\)"):
        EMA(Scalar(), decay)
    for wrong_kind in (True, "0.9"):
        with pytest.raises(TypeError, match=r"decay must be a float in \[0, 1\)"):
            EMA(Scalar(), wrong_kind)


def test_ema_rejects_a_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        EMA(lambda x, t: x, 0.9)


# -- schedules -----------------------------------------------------------------------------------------------


def _lrs(schedule, steps, warmup_steps=None, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=lr)
    sched = lr_schedule(opt, steps, schedule, warmup_steps)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_schedule_with_linear_warmup():
    steps, w, lr = 20, 4, 0.1
    got = _lrs("cosine", steps, w, lr)
    expected = [lr * (k + 1) / w for k in range(w)]
    expected += [lr * 0.5 * (1 + math.cos(math.pi * (k - w) / (steps - w))) for k in range(w, steps)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert max(got) == pytest.approx(lr) and got[-1] < 0.01 * lr
    assert len(_lrs("cosine", 100)) == 100 and _lrs("cosine", 100)[4] == pytest.approx(0.1)  # default: 5 warm-up


def test_constant_schedule_with_and_without_warmup():
    assert _lrs("constant", 6) == pytest.approx([0.1] * 6)
    assert _lrs("constant", 6, warmup_steps=2) == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.1, 0.1])


def test_train_records_the_schedule_it_used(gen):
    data = torch.randn(64, 2, generator=gen)
    rec = train(
        MLP(2, hidden=8, depth=1),
        LinearPath(),
        data,
        steps=10,
        batch_size=8,
        lr=0.02,
        warmup_steps=2,
        generator=gen,
        progress=False,
        ema=None,
    )
    expected = [0.01, 0.02] + [0.01 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert rec.lr == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(schedule="linear"), ValueError, "schedule must be 'constant', 'cosine' or a callable"),
        (dict(schedule=3), TypeError, "schedule must be 'constant', 'cosine' or a callable"),
        (dict(schedule=lambda opt, n: None), TypeError, "schedule must return a torch.optim.lr_scheduler"),
        (dict(warmup_steps=11), ValueError, "warmup_steps must be <= steps = 10"),
        (dict(warmup_steps=-1), ValueError, "warmup_steps must be an int >= 0"),
        (dict(ema=1.0), ValueError, r"ema must be None \(off\) or a decay in \[0, 1\); got 1.0"),
        (dict(ema=-0.5), ValueError, r"ema must be None \(off\) or a decay in \[0, 1\)"),
        (dict(clip_grad_norm=0.0), ValueError, "clip_grad_norm must be None"),
        (dict(clip_grad_norm=float("inf")), ValueError, "clip_grad_norm must be None"),
        (dict(eval_every=0), ValueError, "eval_every must be an int >= 1"),
        (dict(weights=-torch.ones(32)), ValueError, "weights must be >= 0"),
        (dict(weights=torch.full((32,), float("nan"))), ValueError, "weights must be finite"),
        (dict(weights=torch.ones(31)), ValueError, r"weights must have shape \(32,\), one per row of data"),
        (dict(time_sampler=lambda n, g, d, dev: torch.full((n,), 2.0)), ValueError, "time_sampler must return times"),
        (dict(time_sampler=lambda n, g, d, dev: torch.rand(3)), ValueError, "time_sampler must return a tensor of"),
        (dict(eval_data=torch.zeros(5, 3)), ValueError, "eval_data must have data's feature shape"),
        (dict(batch_size=0), ValueError, "batch_size must be an int >= 1"),
        (dict(callback=3), TypeError, "callback must be callable"),
    ],
)
def test_train_rejects_bad_recipe_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        train(MLP(2, hidden=4, depth=1), LinearPath(), torch.zeros(32, 2), steps=10, progress=False, **kwargs)


# -- clipping, weights, time samplers, evaluation --------------------------------------------------------------


def test_gradient_clipping_bounds_the_norm_the_optimiser_sees(gen):
    data = 10.0 * torch.randn(256, 2, generator=gen)  # large targets, large gradients
    seen = []

    def hook(opt, args, kwargs):
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        torch.manual_seed(0)
        rec = train(
            MLP(2, hidden=16, depth=2),
            LinearPath(),
            data,
            steps=20,
            batch_size=64,
            clip_grad_norm=0.5,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
        clipped = list(seen)
        seen.clear()
        torch.manual_seed(0)
        train(
            MLP(2, hidden=16, depth=2),
            LinearPath(),
            data,
            steps=20,
            batch_size=64,
            generator=torch.Generator().manual_seed(0),
            progress=False,
        )
    finally:
        handle.remove()
    assert len(clipped) == 20 and max(clipped) <= 0.5 * (1 + 1e-5)
    assert len(rec.grad_norm) == 20 and min(rec.grad_norm) > 0.5  # every step needed clipping ...
    assert seen[0] == pytest.approx(rec.grad_norm[0], rel=1e-5)  # ... and the first one is the unclipped norm
    assert min(seen) > 0.5


def test_weights_and_time_sampler_reach_the_loss():
    data = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))

    def run(**kw):
        torch.manual_seed(0)
        return train(
            MLP(2, hidden=8, depth=1),
            LinearPath(),
            data,
            steps=3,
            batch_size=16,
            ema=None,
            generator=torch.Generator().manual_seed(1),
            progress=False,
            **kw,
        )

    assert run(weights=torch.zeros(128)) == [0.0, 0.0, 0.0]
    plain, doubled = run(), run(weights=torch.full((128,), 2.0))
    assert doubled[0] == pytest.approx(2 * plain[0], rel=1e-6)  # same draws, the first step's loss doubles
    calls = []

    def at_half(n, g, dtype, device):
        calls.append(n)
        return torch.full((n,), 0.5, dtype=dtype, device=device)

    run(time_sampler=at_half)
    assert calls == [16, 16, 16]


def test_train_returns_a_list_compatible_record_with_evaluations():
    data = fmlib.two_moons(2000, generator=torch.Generator().manual_seed(0))
    held_out = fmlib.two_moons(500, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = MLP(2, hidden=32, depth=2)
    rec = train(
        model,
        LinearPath(0.0),
        data,
        steps=60,
        batch_size=128,
        lr=3e-3,
        eval_data=held_out,
        eval_every=25,
        callback=lambda step, m: (step, m.training),
        generator=torch.Generator().manual_seed(2),
        progress=False,
    )
    assert isinstance(rec, TrainingRecord) and isinstance(rec, list) and len(rec) == 60
    assert all(isinstance(v, float) and math.isfinite(v) for v in rec)
    assert rec.eval_steps == [25, 50, 60] and len(rec.eval_losses) == 3 and len(rec.lr) == 60
    assert rec.callback_values == [(25, False), (50, False), (60, False)]  # evaluated in eval mode
    assert rec.eval_losses[-1] < rec.eval_losses[0]
    assert rec.seconds > 0 and not model.training
    # the held-out loss is cfm_loss on the held-out data with the returned (averaged) weights
    x0 = torch.randn(held_out.shape, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    _ = torch.randn(held_out.shape, generator=g)
    t = torch.rand(held_out.shape[0], generator=g)
    with torch.no_grad():
        final = fmlib.cfm_loss(model, LinearPath(0.0), held_out, x0=x0, t=t)
    assert float(final) == pytest.approx(rec.eval_losses[-1], rel=1e-6)


def test_returned_model_carries_the_average_and_the_record_the_training_weights():
    data = fmlib.two_moons(1000, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = MLP(2, hidden=16, depth=1)
    rec = train(
        model,
        LinearPath(),
        data,
        steps=30,
        batch_size=64,
        ema=0.9,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert rec.ema is not None and rec.ema.num_updates == 30
    for (name, p), s in zip(model.named_parameters(), rec.ema.shadow):
        assert torch.equal(p, s)
        assert not torch.equal(p, rec.final_weights[name])
    torch.manual_seed(0)
    plain = MLP(2, hidden=16, depth=1)
    rec_plain = train(
        plain,
        LinearPath(),
        data,
        steps=30,
        batch_size=64,
        ema=None,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert rec_plain.ema is None and rec_plain.final_weights is None
    assert rec_plain == list(rec)  # EMA does not change the training trajectory
    for name, p in plain.named_parameters():
        assert torch.equal(p, rec.final_weights[name])


def test_progress_bar_shows_the_running_loss(capsys):
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    train(MLP(2, hidden=4, depth=1), LinearPath(), data, steps=50, batch_size=8, progress=True)
    assert "loss=" in capsys.readouterr().err


# -- the training loop itself (unconditional) ------------------------------------------------------------------


def test_training_lowers_the_loss_and_is_reproducible():
    data = fmlib.two_moons(2000, generator=torch.Generator().manual_seed(0))
    held_out = fmlib.two_moons(1000, generator=torch.Generator().manual_seed(5))

    def fixed_loss(model):  # the same draws of x0 and t before and after training
        with torch.no_grad():
            return float(fmlib.cfm_loss(model, GaussianPath(), held_out, generator=torch.Generator().manual_seed(7)))

    def run():
        torch.manual_seed(0)
        model = MLP(2, hidden=32, depth=2)
        before = fixed_loss(model)
        rec = train(
            model,
            GaussianPath(),
            data,
            steps=100,
            batch_size=128,
            lr=3e-3,
            generator=torch.Generator().manual_seed(1),
            progress=False,
        )
        return rec, before, fixed_loss(model)

    (a, before, after), (b, _, _) = run(), run()
    assert a == b and len(a) == 100
    assert after < 0.9 * before, (before, after)


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        train(MLP(2), GaussianPath(), torch.zeros(4, 2), steps=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        train(MLP(2), GaussianPath(), torch.zeros(4, 2), steps=1, lr=0.0)


def test_train_draws_x0_from_a_given_source():
    # source and data are the same single point: the CFM target x1 - x0 is 0, so the loss of a zero-output
    # model stays exactly 0 (with N(0, I) noise it could not)
    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return self.w * x

    pt = torch.ones(10, 2)
    losses = train(Zero(), fmlib.LinearPath(), pt, steps=3, source=pt, progress=False)
    assert losses == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="source must have data's feature shape"):
        train(Zero(), fmlib.LinearPath(), pt, steps=1, source=torch.ones(10, 3), progress=False)


# -- train_conditional -----------------------------------------------------------------------------------------


class LabelSpy(torch.nn.Module):
    """A conditional model that records what it is called with."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((x.detach().clone(), t.detach().clone(), y.clone()))
        return self.w * x


def test_train_conditional_keeps_labels_with_their_images_under_a_coupling():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    images = labels[:, None].float().repeat(1, 2) + 0.1 * torch.arange(8.0)[:, None]  # label = floor(image)
    reverse = lambda x0, x1: torch.arange(x1.shape[0] - 1, -1, -1)  # noqa: E731
    model = LabelSpy()
    at_one = lambda n, g, d, dev: torch.ones(n, dtype=d, device=dev)  # noqa: E731 (x_t = x1 on the straight path)
    train_conditional(
        model,
        LinearPath(0.0),
        images,
        labels,
        steps=4,
        batch_size=8,
        p_uncond=0.0,
        coupling=reverse,
        time_sampler=at_one,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(model.calls) == 4
    for x, t, y in model.calls:
        assert torch.equal(t, torch.ones(8))
        assert torch.equal(x[:, 0].floor().long(), y)  # every label sits with its own image


def test_train_conditional_records_and_evaluates():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    images = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    model = LabelSpy()
    rec = train_conditional(
        model,
        LinearPath(),
        images,
        labels,
        steps=5,
        batch_size=4,
        eval_data=(images, labels),
        eval_every=2,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert len(rec) == 5 and rec.eval_steps == [2, 4, 5] and len(rec.eval_losses) == 3
    x, t, y = model.calls[-1]  # the last call is the held-out evaluation: labels kept, none dropped
    assert torch.equal(y, labels)
    with pytest.raises(TypeError, match=r"eval_data must be a pair \(images, labels\)"):
        train_conditional(model, LinearPath(), images, labels, steps=1, eval_data=images, progress=False)
    with pytest.raises(ValueError, match="ema must be None"):
        train_conditional(model, LinearPath(), images, labels, steps=1, ema=1.0, progress=False)
