"""Checks of lab 5, the capstone (``labs/lab05_capstone.ipynb``): one of three tracks, chosen by ``TRACK``.

Scoring rule: the lab has three tasks, ``track`` (1 point), ``core`` (3) and ``quality`` (4), the same for
every track. Each check reads ``TRACK`` from the notebook and checks the chosen track only; the ``track``
task's note names the tracks not chosen, which are neither checked nor counted (so a complete capstone
scores 8/8 whatever its track). An unset or unknown ``TRACK`` fails all three tasks. The rest of the
capstone (report, figures, ablation) is judged by hand with the rubric in the notebook.

* ``few_step`` (book: few_step_generation): ``sample_jumps`` against average velocities whose jumps are
  known in closed form; the trained flow map ``flow_map(x, r, t)`` sampled by ``fmlib.sample_flow_map`` at 1
  and 2 NFE, W2 to the grader's held-out eight Gaussians in units of the finite-sample floor.
* ``discrete`` (chapter 12): ``mask_tokens`` by its statistics (the share kept is t, row by row); the masked
  model ``token_model(x, t)`` sampled by ``fmlib.sample_discrete``: the share of samples that satisfy the
  data's constraint (sorted sequences) and the total variation of the token histogram to the data's.
* ``latent`` (chapter 10's latent flow matching, with a tiny autoencoder): ``encode``/``decode`` by their
  reconstruction error on held-out digits against PCA's with the same latent size (the best linear code);
  ``sample_images`` by the book's classifier: the Frechet distance of its samples to held-out digits against
  that of a Gaussian fitted to the training images, and the share of confidently classified samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._grader import CheckFailed, call, task

LAB = "lab05_capstone"
TRACKS = ("few_step", "discrete", "latent")

# few_step
MAX_W2_FEW = {1: 4.0, 2: 2.2}
"""W2 / floor of the flow map's samples at 1 and 2 NFE must be below these (the solution: about 2.9 and 1.6; I-CFM
with 1 and 2 Euler steps: about 6 and 2.3 to 3)."""
# discrete
SEQ_LEN, VOCAB = 8, 8
MIN_SORTED = 0.8
"""Share of sampled sequences that are sorted (the solution: about 0.94; uniform tokens: 0.04 %)."""
MAX_TOKEN_TV = 0.1
"""Total variation between the token histograms of samples and of sorted data (the solution: about 0.03)."""
# latent
MAX_RECON_RATIO = 1.3
"""Held-out reconstruction MSE / PCA's with the same latent size must be below this (the solution: about 0.44)."""
MAX_FD_RATIO = 0.6
"""Frechet distance of samples / that of a Gaussian fit to the training images (the solution: about 0.43)."""


def _track(ns: dict) -> str:
    track = ns.get("TRACK")
    if track not in TRACKS:
        raise CheckFailed(f"set TRACK to one of {', '.join(repr(t) for t in TRACKS)}; it is {track!r}")
    return track


@task(lab=LAB, name="track", points=1)
def check_track(ns: dict) -> str:
    """TRACK names one of the three tracks; the other two are reported as not chosen."""
    track = _track(ns)
    others = ", ".join(t for t in TRACKS if t != track)
    return f"track {track!r} chosen; not chosen (not checked, not counted): {others}"


# -- few_step ----------------------------------------------------------------------------------------


def _grid_jumps(ns: dict, u, x0: torch.Tensor, nfe: int) -> torch.Tensor:
    out = call(ns, "sample_jumps", u, x0.clone(), nfe)
    if not isinstance(out, torch.Tensor) or out.shape != x0.shape:
        raise CheckFailed(f"`sample_jumps` should return a tensor of x0's shape {tuple(x0.shape)}")
    return out.double()


def _core_few_step(ns: dict) -> str:
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0]], dtype=torch.float64)
    c = torch.tensor([2.0, -1.0], dtype=torch.float64)

    def u_sum(x, r, t):  # (t - r) u = (t^2 - r^2) c: the jumps add up to c on any grid
        return (r + t)[:, None] * c + 0 * x

    def u_lin(x, r, t):  # jumps multiply x by (1 + (t - r)): (1 + 1/n)^n on a uniform grid
        return x + 0 * (r + t)[:, None]

    for nfe in (1, 2, 4):
        out = _grid_jumps(ns, u_sum, x0, nfe)
        if not torch.allclose(out, x0 + c, atol=1e-9):
            raise CheckFailed(
                f"with u(x, r, t) = (r + t) c every grid from 0 to 1 gives x0 + c; with {nfe} jump(s) yours is off "
                f"by {(out - x0 - c).abs().max():.3g}: call u(x, r, t) with r, t of shape (B,) and jump by (t - r) u"
            )
        out = _grid_jumps(ns, u_lin, x0, nfe)
        expected = x0 * (1 + 1 / nfe) ** nfe
        if not torch.allclose(out, expected, atol=1e-9):
            raise CheckFailed(
                f"with u(x, r, t) = x, {nfe} equal jumps from t = 0 to 1 give x0 (1 + 1/{nfe})^{nfe}; yours is off by "
                f"{(out - expected).abs().max():.3g} (a uniform grid of {nfe} steps, x updated after each jump)"
            )
    return "sample_jumps exact on two average velocities with closed-form jumps, 1, 2 and 4 NFE"


def _quality_few_step(ns: dict) -> str:
    import fmlib

    model = ns.get("flow_map")
    if not isinstance(model, torch.nn.Module):
        raise CheckFailed("`flow_map` should be your trained flow-map network flow_map(x, r, t), a torch.nn.Module")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(505)
    test = fmlib.eight_gaussians(1000, generator=g)
    z = torch.randn(1000, 2, generator=g)
    floor = float(np.mean([fmlib.wasserstein2(fmlib.eight_gaussians(1000, generator=g), test) for _ in range(4)]))
    q = {}
    model.eval()
    with torch.no_grad():
        for nfe in (1, 2):
            x = fmlib.sample_flow_map(model, z.to(device), nfe).cpu().float()
            if not torch.isfinite(x).all():
                raise CheckFailed("the flow map's samples hold NaN or inf")
            q[nfe] = fmlib.wasserstein2(x, test) / floor
    for nfe, limit in MAX_W2_FEW.items():
        if q[nfe] > limit:
            raise CheckFailed(
                f"flow_map sampled by fmlib.sample_flow_map with {nfe} NFE: W2 = {q[nfe]:.2f} x the finite-sample "
                f"floor on the eight Gaussians; expected below {limit} (1 NFE: {q[1]:.2f}, 2 NFE: {q[2]:.2f})"
            )
    return f"W2 / floor at 1 NFE {q[1]:.2f}, at 2 NFE {q[2]:.2f} (limits {MAX_W2_FEW[1]}, {MAX_W2_FEW[2]})"


# -- discrete ----------------------------------------------------------------------------------------


def _core_discrete(ns: dict) -> str:
    n, length, mask = 4000, 16, 8
    g = torch.Generator().manual_seed(51)
    x1 = torch.randint(0, 8, (n, length), generator=g)
    t = torch.rand(n, generator=g)
    before = x1.clone()
    out = call(ns, "mask_tokens", x1, t.clone(), mask, torch.Generator().manual_seed(52))
    if not isinstance(out, torch.Tensor) or out.shape != x1.shape or out.dtype != torch.int64:
        raise CheckFailed(f"`mask_tokens` should return int64 tokens of x1's shape {tuple(x1.shape)}")
    if not torch.equal(x1, before):
        raise CheckFailed("`mask_tokens` changed x1 in place; return a new tensor")
    masked = out == mask
    if not torch.equal(out[~masked], x1[~masked]):
        raise CheckFailed("a position that is not masked must keep its token x1")
    kept = (~masked).double().mean(1)  # share kept in each row: its mean is t
    slope = float(np.polyfit(t.numpy(), kept.numpy(), 1)[0])
    resid = (kept - t.double()).mean().item()
    if abs(resid) > 4 * math.sqrt(0.25 / (n * length)) + 0.005 or abs(slope - 1) > 0.05:
        raise CheckFailed(
            f"each token should be kept with probability t of its row (masked otherwise): the share kept should "
            f"average t (found a mean gap of {resid:.3f}) and rise with slope 1 in t (found {slope:.3f})"
        )
    again = call(ns, "mask_tokens", x1, t.clone(), mask, torch.Generator().manual_seed(52))
    if not torch.equal(again, out):
        raise CheckFailed("two calls with generators seeded alike differ: draw with `generator`")
    return f"share kept - t: {resid:+.4f}, slope {slope:.3f}"


def sorted_sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    """The discrete track's data: n sorted sequences of 8 tokens drawn uniformly from 0..7, int64 (n, 8)."""
    return torch.randint(0, VOCAB, (n, SEQ_LEN), generator=generator).sort(dim=1).values


def _quality_discrete(ns: dict) -> str:
    import fmlib

    model = ns.get("token_model")
    if not isinstance(model, torch.nn.Module):
        raise CheckFailed("`token_model` should be your trained masked model token_model(x, t), a torch.nn.Module")
    device = next(model.parameters()).device
    path = fmlib.MixtureDiscretePath(fmlib.CondOTScheduler(), VOCAB, source="mask")
    g = torch.Generator(device=device).manual_seed(506)
    x0 = path.sample_source((2000, SEQ_LEN), g, device)
    model.eval()
    x = fmlib.sample_discrete(model, x0, path, 32, g).cpu()
    if (x >= VOCAB).any():
        raise CheckFailed("samples still hold masks after the last step")
    ok = (x[:, 1:] >= x[:, :-1]).all(1).double().mean().item()
    ref = sorted_sequences(20_000, torch.Generator().manual_seed(507))
    h_s = torch.stack([torch.bincount(x[:, i], minlength=VOCAB) for i in range(SEQ_LEN)]).double() / len(x)
    h_d = torch.stack([torch.bincount(ref[:, i], minlength=VOCAB) for i in range(SEQ_LEN)]).double() / len(ref)
    tv = (0.5 * (h_s - h_d).abs().sum(1)).max().item()
    if ok < MIN_SORTED:
        raise CheckFailed(
            f"{ok:.1%} of 2000 samples (fmlib.sample_discrete, 32 steps) are sorted; expected at least {MIN_SORTED:.0%}"
        )
    if tv > MAX_TOKEN_TV:
        raise CheckFailed(
            f"the token histogram of the samples is {tv:.3f} from the data's in total variation (worst position); "
            f"expected below {MAX_TOKEN_TV}: the samples are sorted but not distributed like the data"
        )
    return f"{ok:.1%} of samples sorted; token histogram within {tv:.3f} (total variation) of the data's"


# -- latent ------------------------------------------------------------------------------------------


def _digits():
    import fmlib

    return fmlib.load_digits_split(test_fraction=0.2, seed=0)


def _core_latent(ns: dict) -> str:
    split = _digits()
    x = split.x_test
    z = call(ns, "encode", x.clone())
    if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[0] != len(x):
        raise CheckFailed(f"`encode` should return codes of shape ({len(x)}, d) for {len(x)} images")
    d = z.shape[1]
    if d > 16:
        raise CheckFailed(f"the latent size should be at most 16 (a compression of the 64 pixels); it is {d}")
    rec = call(ns, "decode", z.detach())
    if not isinstance(rec, torch.Tensor) or tuple(rec.shape) != tuple(x.shape):
        raise CheckFailed(f"`decode` should return images of shape {tuple(x.shape)}")
    mse = (rec.detach().cpu().double() - x.double()).pow(2).flatten(1).sum(1).mean().item()
    # PCA with d components fitted on the training images: the best linear code of that size
    xt = split.x_train.flatten(1).double()
    mean = xt.mean(0)
    _, _, vh = torch.linalg.svd(xt - mean, full_matrices=False)
    basis = vh[:d]
    xc = x.flatten(1).double() - mean
    pca = ((xc @ basis.T) @ basis - xc).pow(2).sum(1).mean().item()
    if mse > MAX_RECON_RATIO * pca:
        raise CheckFailed(
            f"held-out reconstruction error {mse:.2f} (squared error summed over the pixels); PCA with the same "
            f"latent size {d} gets {pca:.2f}: expected at most {MAX_RECON_RATIO} x PCA's"
        )
    return f"latent size {d}: reconstruction error {mse:.2f}, PCA's {pca:.2f} ({mse / pca:.2f}x)"


def _quality_latent(ns: dict) -> str:
    import fmlib

    split = _digits()
    from .lab04_guidance import _classifier

    clf = _classifier(torch.device("cpu"))
    x = call(ns, "sample_images", 500, torch.Generator().manual_seed(508))
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (500, 1, 8, 8):
        raise CheckFailed("`sample_images(500, generator)` should return images of shape (500, 1, 8, 8)")
    x = x.detach().cpu().float().clamp(-1, 1)
    if not torch.isfinite(x).all():
        raise CheckFailed("the samples hold NaN or inf")
    f_test = clf.features(split.x_test)
    fd = fmlib.frechet_distance(clf.features(x), f_test)
    xt = split.x_train.flatten(1).double()  # baseline: a Gaussian fitted to the training images
    mean, cov = xt.mean(0), torch.cov(xt.T) + 1e-6 * torch.eye(64, dtype=torch.float64)
    gauss = torch.distributions.MultivariateNormal(mean, cov)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(509)
        xg = gauss.sample((500,)).view(-1, 1, 8, 8).float().clamp(-1, 1)
    fd_gauss = fmlib.frechet_distance(clf.features(xg), f_test)
    if fd > MAX_FD_RATIO * fd_gauss:
        raise CheckFailed(
            f"Frechet distance (the book's classifier's features) of 500 samples to the held-out digits: {fd:.2f}; a "
            f"Gaussian fitted to the training images gets {fd_gauss:.2f}: expected at most {MAX_FD_RATIO} x that"
        )
    return f"Frechet distance {fd:.2f}, Gaussian fit's {fd_gauss:.2f} ({fd / fd_gauss:.2f}x)"


_CORE = {"few_step": _core_few_step, "discrete": _core_discrete, "latent": _core_latent}
_QUALITY = {"few_step": _quality_few_step, "discrete": _quality_discrete, "latent": _quality_latent}


@task(lab=LAB, name="core", points=3)
def check_core(ns: dict) -> str:
    """The chosen track's own function against closed forms or statistics (sample_jumps, mask_tokens, encode/decode)."""
    track = _track(ns)
    return f"[{track}] " + _CORE[track](ns)


@task(lab=LAB, name="quality", points=4)
def check_quality(ns: dict) -> str:
    """The chosen track's trained model, sampled by the grader: W2 / floor, a constraint, or a Frechet distance."""
    track = _track(ns)
    return f"[{track}] " + _QUALITY[track](ns)
