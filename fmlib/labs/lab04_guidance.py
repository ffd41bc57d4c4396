"""Checks of lab 4, images with guidance (``labs/lab04_images_guidance.ipynb``), on scikit-learn's 8x8 digits.

Label dropout is checked by its statistics (the share of null labels against the binomial spread); the
conditional CFM loss by a probe network that records what it is given, from which the grader rebuilds
x0 = (x_t - t x1) / (1 - t) and the loss independently and tests that x0 ~ N(0, I), t ~ U[0, 1] and the
dropout share; the guided velocity against the closed form v_null + w (v_cond - v_null) on a network with
known outputs (Ho & Salimans 2022, eq. 6, in the book's convention of chapter 7); the guided sampler on a
field whose flow is known (the endpoint mean lies between Euler's and the exact one); and the trained model
by the class accuracy of its guided samples, drawn by the grader with fmlib's sampler and judged by the
book's classifier ``fmlib.DigitClassifier`` fitted on the training images (chapter 7).
"""

from __future__ import annotations

import math

import torch

from ._grader import CheckFailed, call, task

LAB = "lab04_images_guidance"
NULL = 10
W_GUIDED = 2.0
"""The guidance scale at which the trained model is judged (the lab's default)."""
MIN_ACCURACY = 0.85
"""Label accuracy of the guided samples (w = 2) must reach this (the reference solution: about 0.95)."""
MIN_GAIN = 0.03
"""Guided accuracy must exceed the unguided (w = 1) accuracy by this much (the solution: about 0.2)."""

_CLASSIFIER: dict = {}


def _labels_out(name: str, out: object, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise CheckFailed(f"`{name}` should return a torch.Tensor of labels; it returned {type(out).__name__}")
    if out.shape != like.shape or out.dtype != like.dtype:
        raise CheckFailed(
            f"`{name}` should return labels of y's shape {tuple(like.shape)} and dtype {like.dtype}; got "
            f"{tuple(out.shape)}, {out.dtype}"
        )
    return out


@task(lab=LAB, name="drop_labels", points=2, needs=("drop_labels",))
def check_drop_labels(ns: dict) -> str:
    """drop_labels: each label replaced by the null label with probability p, independently; the rest kept."""
    n = 20_000
    y = torch.arange(n) % 10
    before = y.clone()
    out = _labels_out("drop_labels", call(ns, "drop_labels", y, 0.0, NULL, torch.Generator().manual_seed(1)), y)
    if not torch.equal(out, y):
        raise CheckFailed("with p = 0 no label should change")
    out = _labels_out("drop_labels", call(ns, "drop_labels", y, 1.0, NULL, torch.Generator().manual_seed(1)), y)
    if not (out == NULL).all():
        raise CheckFailed(f"with p = 1 every label should become the null label {NULL}")
    p = 0.3
    out = _labels_out("drop_labels", call(ns, "drop_labels", y, p, NULL, torch.Generator().manual_seed(2)), y)
    if not torch.equal(y, before):
        raise CheckFailed("`drop_labels` changed y in place; return a new tensor")
    dropped = out == NULL
    share = dropped.double().mean().item()
    tol = 4 * math.sqrt(p * (1 - p) / n)
    if abs(share - p) > tol:
        raise CheckFailed(f"with p = {p} on {n} labels, {share:.3f} became null; expected {p} +- {tol:.3f}")
    if not torch.equal(out[~dropped], y[~dropped]):
        raise CheckFailed("labels that are not dropped must keep their value")
    per_class = torch.stack([dropped[y == c].double().mean() for c in range(10)])
    if (per_class - p).abs().max() > 4 * math.sqrt(p * (1 - p) / (n / 10)):
        raise CheckFailed(f"the share dropped should not depend on the class; per class: {per_class.tolist()}")
    again = call(ns, "drop_labels", y, p, NULL, torch.Generator().manual_seed(2))
    if not torch.equal(again, out):
        raise CheckFailed("two calls with generators seeded alike differ: draw the coin flips with `generator`")
    return f"{share:.3f} of {n} labels dropped at p = {p}"


class _Probe(torch.nn.Module):
    """A conditional 'network' that returns s * x and records its inputs; null label 10."""

    num_classes = 10
    null_label = NULL

    def __init__(self) -> None:
        super().__init__()
        self.s = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone(), torch.as_tensor(y).clone()))
        return self.s * x


@task(lab=LAB, name="cond_cfm_loss", points=3, needs=("cond_cfm_loss",))
def check_cond_cfm_loss(ns: dict) -> str:
    """cond_cfm_loss: x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I), t ~ U[0, 1], target x1 - x0, labels dropped."""
    n, p = 4096, 0.25
    g = torch.Generator().manual_seed(5)
    x1 = (torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1).clamp(-1, 1)
    y = torch.arange(n) % 10
    probe = _Probe()
    loss = call(ns, "cond_cfm_loss", probe, x1.clone(), y.clone(), p, torch.Generator().manual_seed(6))
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise CheckFailed(f"`cond_cfm_loss` should return a scalar tensor; got {type(loss).__name__}")
    if not loss.requires_grad:
        raise CheckFailed("the loss carries no gradient: compute it from the model's output, without torch.no_grad")
    if len(probe.calls) != 1:
        raise CheckFailed(f"the model should be called once on the whole batch; it was called {len(probe.calls)} times")
    x_t, t, yy = probe.calls[0]
    if tuple(x_t.shape) != tuple(x1.shape):
        raise CheckFailed(f"the model should get x_t of x1's shape {tuple(x1.shape)}; got {tuple(x_t.shape)}")
    if t.numel() != n:
        raise CheckFailed(f"the model should get one time per row, t of shape ({n},); got shape {tuple(t.shape)}")
    t = t.reshape(n).to(torch.float64)
    if t.min() < 0 or t.max() > 1:
        raise CheckFailed("the times should lie in [0, 1]")
    if abs(t.mean().item() - 0.5) > 4 * math.sqrt(1 / 12 / n) or abs(t.var().item() - 1 / 12) > 0.01:
        raise CheckFailed(
            f"t should be uniform on [0, 1] (mean 0.5, variance 1/12 = 0.083); got mean {t.mean():.3f}, "
            f"variance {t.var():.3f}"
        )
    if yy.shape != y.shape:
        raise CheckFailed(f"the model should get the labels as a tensor of shape ({n},); got {tuple(yy.shape)}")
    dropped = yy == NULL
    share = dropped.double().mean().item()
    if abs(share - p) > 4 * math.sqrt(p * (1 - p) / n) or not torch.equal(yy[~dropped], y[~dropped]):
        raise CheckFailed(
            f"with p_uncond = {p}, about {p} of the labels the model sees should be the null label "
            f"model.null_label = {NULL} and the others unchanged; {share:.3f} were null"
        )
    keep = t < 0.9  # x0 = (x_t - t x1) / (1 - t), well conditioned away from t = 1
    x0 = (x_t[keep].double() - t[keep, None, None, None] * x1[keep]) / (1 - t[keep, None, None, None])
    m, s = x0.mean().item(), x0.std().item()
    if abs(m) > 0.02 or abs(s - 1) > 0.03:
        raise CheckFailed(
            f"recovered x0 = (x_t - t x1) / (1 - t) should be N(0, I) noise; it has mean {m:.3f}, standard "
            f"deviation {s:.3f}: is x_t = t x1 + (1 - t) x0 (t = 1 is the data)?"
        )
    # the loss rebuilt from what the model saw: x0 = (x_t - t x1) / (1 - t) in float64
    ok = t < 1 - 1e-6
    tb = t[:, None, None, None]
    x0_all = (x_t.double() - tb * x1) / (1 - tb).clamp_min(1e-6)
    pred = 0.5 * x_t.double()
    expected = (pred - (x1 - x0_all)).flatten(1).pow(2).sum(1)[ok].mean().item()
    got = float(loss)
    if abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
        raise CheckFailed(
            f"for a model returning 0.5 x_t the loss (mean over the batch of the squared error summed over the "
            f"pixels, target x1 - x0) is {expected:.4f}; yours is {got:.4f}"
        )
    return f"loss {got:.3f} (expected {expected:.3f}); x0 mean {m:.3f}, std {s:.3f}; {share:.3f} null labels"


class _Known(torch.nn.Module):
    """model(x, t, y) = x (1 + y) + t for a label y, and -x + 2 t for the null label 10."""

    null_label = NULL
    num_classes = 10

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | int) -> torch.Tensor:
        y = torch.as_tensor(y).expand(x.shape[0]).to(x.dtype)
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        yb, tb = y.view(-1, 1, 1, 1), t.view(-1, 1, 1, 1)
        cond = x * (1 + yb) + tb
        null = -x + 2 * tb
        return torch.where(yb == NULL, null, cond)


@task(lab=LAB, name="cfg_velocity", points=2, needs=("cfg_velocity",))
def check_cfg_velocity(ns: dict) -> str:
    """cfg_velocity: v_null + w (v_cond - v_null), against a network with known outputs, for w = 0, 1, 3."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 7, 9])
    model = _Known()
    tb = t.view(-1, 1, 1, 1)
    v_c = x * (1 + y.view(-1, 1, 1, 1).double()) + tb
    v_n = -x + 2 * tb
    for w in (0.0, 1.0, 3.0):
        out = call(ns, "cfg_velocity", model, x.clone(), t.clone(), y.clone(), w)
        expected = v_n + w * (v_c - v_n)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise CheckFailed(f"`cfg_velocity` should return a tensor of x's shape {tuple(x.shape)}")
        if not torch.allclose(out.double(), expected, atol=1e-8):
            names = {0.0: "the unconditional velocity", 1.0: "the conditional velocity"}
            what = names.get(w, "v_null + w (v_cond - v_null)")
            raise CheckFailed(
                f"at w = {w:g} the guided velocity is {what}; yours differs by "
                f"{(out.double() - expected).abs().max():.3g} (the null label is model.null_label)"
            )
    return "v_null + w (v_cond - v_null) at w = 0, 1, 3"


class _Drift(torch.nn.Module):
    """v(x, t, y) = t c_y (c_y = y + 1 in every pixel), 0 for the null label: flow x1 = x0 + c_y / 2."""

    null_label = NULL
    num_classes = 10

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | int) -> torch.Tensor:
        y = torch.as_tensor(y, device=x.device).expand(x.shape[0]).to(x.dtype).view(-1, 1, 1, 1)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0]).view(-1, 1, 1, 1)
        return torch.where(y == NULL, torch.zeros_like(x), t * (y + 1) * torch.ones_like(x))


@task(lab=LAB, name="sample_guided", points=2, needs=("sample_guided",))
def check_sample_guided(ns: dict) -> str:
    """sample_guided: N(0, I) noise moved from t = 0 to 1 by the guided field (a field with a known flow)."""
    n, steps, w = 2000, 4, 2.0
    y = torch.arange(n) % 2  # c_y = 1 or 2
    model = _Drift()
    out = call(ns, "sample_guided", model, y.clone(), w, steps, torch.Generator().manual_seed(9))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, 1, 8, 8):
        raise CheckFailed(f"`sample_guided` should return images of shape ({n}, 1, 8, 8)")
    out = out.detach().double()
    # the guided field is w t c_y; its flow moves x0 by w c_y / 2; Euler's steps by w c_y (steps - 1) / (2 steps)
    low, high = (steps - 1) / (2 * steps), 0.5
    shifts = []
    for c in (1, 2):
        xs = out[y == c - 1]
        se = 4 / math.sqrt(xs.numel())
        shift = xs.mean().item() / (w * c)
        shifts.append(shift)
        if not low - se <= shift <= high + se:
            raise CheckFailed(
                f"for the field v = t c_y (0 for the null label), guided with w = {w:g}, the samples should move "
                f"by w c_y / 2 from N(0, I) noise ({w * c / 2:g} for c_y = {c}; Euler's {steps} steps: "
                f"{w * c * low:g}); their mean moved by {xs.mean().item():.3f}: integrate from t = 0 to 1"
            )
        if abs(xs.std().item() - 1) > 0.05:
            raise CheckFailed(f"the samples should start from N(0, I) noise; their spread is {xs.std().item():.3f}")
    again = call(ns, "sample_guided", model, y.clone(), w, steps, torch.Generator().manual_seed(9))
    if not torch.equal(again.detach().double(), out):
        raise CheckFailed("two calls with generators seeded alike differ: draw x0 with `generator`")
    return f"mean shift / (w c_y) = {shifts[0]:.3f}, {shifts[1]:.3f} (exact 0.5, Euler {low:.3f})"


def _classifier(device: torch.device):
    import fmlib

    if "clf" not in _CLASSIFIER:
        split = fmlib.load_digits_split(test_fraction=0.2, seed=0)
        _CLASSIFIER["clf"] = fmlib.DigitClassifier(hidden=64, seed=0).fit(split.x_train, split.y_train)
    return _CLASSIFIER["clf"]


@task(lab=LAB, name="guided_accuracy", points=4, needs=("model",))
def check_guided_accuracy(ns: dict) -> str:
    """The trained model: its guided samples (w = 2) show their label (the book's classifier) better than w = 1."""
    import fmlib

    model = ns["model"]
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "null_label"):
        raise CheckFailed("`model` should be the trained conditional network (with a null_label)")
    device = next(model.parameters()).device
    clf = _classifier(device)
    y = (torch.arange(300) % 10).to(device)
    g = torch.Generator(device=device).manual_seed(404)
    x0 = torch.randn(300, 1, 8, 8, generator=g, device=device)
    acc = {}
    model.eval()
    with torch.no_grad():
        for w in (1.0, W_GUIDED):
            x = fmlib.integrate(fmlib.guided_velocity(model, y, w), x0, steps=10, method="midpoint")
            if not torch.isfinite(x).all():
                raise CheckFailed("the model's samples hold NaN or inf")
            acc[w] = clf.accuracy(x.clamp(-1, 1), y)
    if acc[W_GUIDED] < MIN_ACCURACY:
        raise CheckFailed(
            f"the book's classifier reads the requested digit in {acc[W_GUIDED]:.1%} of 300 guided samples "
            f"(w = {W_GUIDED:g}, 10 midpoint steps); expected at least {MIN_ACCURACY:.0%} (w = 1: {acc[1.0]:.1%})"
        )
    if acc[W_GUIDED] < acc[1.0] + MIN_GAIN:
        raise CheckFailed(
            f"guidance should raise the label accuracy: w = 1 gives {acc[1.0]:.1%}, w = {W_GUIDED:g} "
            f"{acc[W_GUIDED]:.1%}; expected a gain of at least {MIN_GAIN:.0%} (is label dropout in the loss?)"
        )
    return f"label accuracy {acc[W_GUIDED]:.1%} at w = {W_GUIDED:g}, {acc[1.0]:.1%} at w = 1 (300 samples)"
