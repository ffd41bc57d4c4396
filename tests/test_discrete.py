"""Discrete flow matching (fmlib.discrete): the mixture path, the exact marginal, the loss and the jump sampler.

Every reference value is computed here from the definitions, independently of fmlib.discrete: binomial shares of
a Monte Carlo draw against kappa_t, the marginal p_t(x) and Bayes' posterior by brute force over the data, the
Kolmogorov forward equation by central finite differences over every state of a small space, the Bregman
divergence of two rate vectors written out term by term, and the installed ``flow_matching`` package
(Lipman et al. 2024), used only as a black box to compare against.
"""

import itertools
import math

import pytest
import torch

import fmlib
from fmlib import (
    CondOTScheduler,
    CosineScheduler,
    DiscreteEmpiricalMarginal,
    MixtureDiscretePath,
    PolynomialScheduler,
    TokenMLP,
    discrete_cfm_loss,
    sample_discrete,
)

SCHEDULERS = [CondOTScheduler(), PolynomialScheduler(2.0), CosineScheduler()]
DATA3 = torch.tensor([[0, 1, 2], [2, 2, 0], [1, 0, 1], [0, 1, 2], [3, 0, 3]])  # 5 sequences, L = 3, V = 4
DATA2 = torch.tensor([[0, 1], [2, 2], [1, 0], [0, 1], [2, 1]])  # L = 2, V = 3


def gen(seed=0):
    return fmlib.seeded_generator(seed)


# -- brute-force references -----------------------------------------------------------------------------------


def kappa_of(scheduler, t):
    """kappa_t from the scheduler itself (alpha_t), as a Python float."""
    return float(scheduler(torch.tensor(t, dtype=torch.float64)).alpha_t)


def p0_of(state, vocab, source):
    if source == "mask":
        return 1.0 if state == vocab else 0.0
    return 1.0 / vocab


def marginal_prob(x, data, vocab, source, kappa):
    """p_t(x) = (1/N) sum_n prod_i (kappa [x^i = x1^i] + (1 - kappa) p_0(x^i)), by loops (float64)."""
    total = 0.0
    for d in data.tolist():
        prod = 1.0
        for xi, di in zip(x, d):
            prod *= kappa * (xi == di) + (1 - kappa) * p0_of(xi, vocab, source)
        total += prod
    return total / len(data)


def bayes_posterior(x, data, vocab, source, kappa):
    """p_{1|t}(y | x) per position by Bayes' rule over the data, shape (L, V) (float64)."""
    lik = []
    for d in data.tolist():
        prod = 1.0
        for xi, di in zip(x, d):
            prod *= kappa * (xi == di) + (1 - kappa) * p0_of(xi, vocab, source)
        lik.append(prod)
    w = torch.tensor(lik, dtype=torch.float64)
    w = w / w.sum()
    return (w[:, None, None] * torch.nn.functional.one_hot(data, vocab).double()).sum(0)


def all_states(num_states, length):
    return torch.tensor(list(itertools.product(range(num_states), repeat=length)))


def tv(samples, data, vocab):
    """Total variation between the empirical laws of two sets of sequences (codes in base vocab)."""
    base = vocab ** torch.arange(data.shape[1] - 1, -1, -1)
    k = vocab ** data.shape[1]
    a = torch.bincount((samples * base).sum(1), minlength=k).double() / samples.shape[0]
    b = torch.bincount((data * base).sum(1), minlength=k).double() / data.shape[0]
    return 0.5 * float((a - b).abs().sum())


# -- the path ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=repr)
@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_sample_keeps_x1_with_probability_kappa(scheduler, source):
    # The share of positions that took x1 is kappa_t; with x0 != x1 everywhere it is observable for both
    # sources (for the mask source x0 is the mask itself: the share still masked is 1 - kappa_t).
    vocab, n = 5, 40_000
    path = MixtureDiscretePath(scheduler, vocab, source)
    x1 = torch.randint(0, vocab, (n, 5), generator=gen(1))
    x0 = path.sample_source(tuple(x1.shape), gen(2)) if source == "mask" else (x1 + 1) % vocab
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        x_t = path.sample(x0, x1, t, generator=gen(3))
        share = float((x_t == x1).double().mean())
        k = kappa_of(scheduler, t)
        se = math.sqrt(max(k * (1 - k), 1e-12) / x1.numel())
        assert abs(share - k) <= 5 * se + 1e-12, (t, share, k)
        assert bool(((x_t == x1) | (x_t == x0)).all())
        if source == "mask":
            assert abs(float((x_t == vocab).double().mean()) - (1 - k)) <= 5 * se + 1e-12


def test_path_shape_state_count_and_scheduler_check():
    assert MixtureDiscretePath(CondOTScheduler(), 17, "mask").num_states == 18
    assert MixtureDiscretePath(CondOTScheduler(), 17, "uniform").num_states == 17
    assert MixtureDiscretePath(CondOTScheduler(sigma_min=0.1), 4).kappa(0.5)[0] == 0.5  # kappa = alpha_t only
    with pytest.raises(ValueError, match="alpha_0 = 0 and alpha_1 = 1"):
        MixtureDiscretePath(fmlib.VPScheduler(), 4)
    path = MixtureDiscretePath(CondOTScheduler(), 4)
    with pytest.raises(AttributeError):
        path.vocab_size = 5


def test_velocity_matches_the_closed_form_and_flow_matching():
    # flow_matching's MixtureDiscreteProbPath.posterior_to_velocity takes logits over every state (the mask
    # included); a logit of -inf for the mask gives the same posterior over tokens.
    fm_mixture = pytest.importorskip("flow_matching.path.mixture")
    fm_scheduler = pytest.importorskip("flow_matching.path.scheduler")
    vocab, length, batch = 6, 7, 9
    for n in (1.0, 2.0):
        ours = MixtureDiscretePath(PolynomialScheduler(n), vocab, "mask")
        theirs = fm_mixture.MixtureDiscreteProbPath(fm_scheduler.PolynomialConvexScheduler(n))
        logits = torch.randn(batch, length, vocab, generator=gen(4), dtype=torch.float64)
        x = torch.randint(0, vocab + 1, (batch, length), generator=gen(5))
        t = torch.rand(batch, generator=gen(6), dtype=torch.float64) * 0.95
        u = ours.velocity(torch.softmax(logits, -1), x, t)
        padded = torch.cat([logits, torch.full((batch, length, 1), -math.inf, dtype=torch.float64)], -1)
        ref = theirs.posterior_to_velocity(padded, x, t)
        torch.testing.assert_close(u, ref, rtol=1e-12, atol=1e-12)
        # the closed form written out: rate (p - delta), rate = n t^(n-1) / (1 - t^n)
        rate = (n * t ** (n - 1) / (1 - t**n))[:, None, None]
        p = torch.cat([torch.softmax(logits, -1), torch.zeros(batch, length, 1, dtype=torch.float64)], -1)
        torch.testing.assert_close(u, rate * (p - torch.nn.functional.one_hot(x, vocab + 1)), rtol=1e-12, atol=1e-12)


def test_path_probabilities_agree_with_flow_matching():
    # P(x_t = x1) per position from flow_matching's sample and from ours, both against kappa_t = t^2.
    fm_mixture = pytest.importorskip("flow_matching.path.mixture")
    fm_scheduler = pytest.importorskip("flow_matching.path.scheduler")
    vocab, n = 4, 50_000
    theirs = fm_mixture.MixtureDiscreteProbPath(fm_scheduler.PolynomialConvexScheduler(2.0))
    ours = MixtureDiscretePath(PolynomialScheduler(2.0), vocab, "mask")
    x1 = torch.randint(0, vocab, (n, 2), generator=gen(7))
    x0 = torch.full_like(x1, vocab)
    for t in (0.3, 0.7):
        with torch.random.fork_rng():
            torch.random.manual_seed(0)  # flow_matching draws from the global generator
            fm_share = float((theirs.sample(x0, x1, torch.full((n,), t)).x_t == x1).double().mean())
        our_share = float((ours.sample(x0, x1, t, generator=gen(8)) == x1).double().mean())
        se = math.sqrt(t**2 * (1 - t**2) / x1.numel())
        assert abs(fm_share - t**2) < 5 * se and abs(our_share - t**2) < 5 * se
        assert abs(fm_share - our_share) < 5 * math.sqrt(2) * se


# -- the exact marginal ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_empirical_marginal_matches_bayes_by_brute_force(source):
    vocab = 4
    path = MixtureDiscretePath(CosineScheduler(), vocab, source)
    m = DiscreteEmpiricalMarginal(DATA3, path)
    states = all_states(path.num_states, 3)
    for t in (0.15, 0.6):
        k = kappa_of(path.scheduler, t)
        tt = torch.tensor(t, dtype=torch.float64)
        logp = m.log_prob(states, tt)
        ref = torch.tensor([marginal_prob(s, DATA3, vocab, source, k) for s in states.tolist()], dtype=torch.float64)
        torch.testing.assert_close(logp.exp(), ref, rtol=1e-12, atol=1e-15)
        assert abs(float(ref.sum()) - 1.0) < 1e-12
        possible = states[ref > 0][:40]
        post = m.posterior(possible, tt)
        for s, p in zip(possible.tolist(), post):
            torch.testing.assert_close(p, bayes_posterior(s, DATA3, vocab, source, k), rtol=1e-10, atol=1e-12)


def test_a_sequence_of_probability_zero_gets_the_nearest_data():
    # Mask source: (0, 0, mask) is impossible (no datum starts 0, 0); the posterior falls back to the data
    # with the fewest impossible positions: [0, 1, 2] (twice), [1, 0, 1] and [3, 0, 3], one mismatch each.
    path = MixtureDiscretePath(CondOTScheduler(), 4, "mask")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x = torch.tensor([[0, 0, 4]])
    assert float(m.log_prob(x, 0.5)) == -math.inf
    w = m.data_weights(x, 0.5)
    torch.testing.assert_close(w, torch.tensor([[0.25, 0.0, 0.25, 0.25, 0.25]]))
    assert bool(torch.isfinite(m.velocity(x, 0.5)).all())


def check_rate_rows(u, x):
    assert torch.allclose(u.sum(-1), torch.zeros(()).to(u), atol=1e-5)
    off = u.clone()
    off.scatter_(-1, x[..., None], 0.0)
    assert float(off.detach().min()) >= 0.0
    assert float(u.detach().gather(-1, x[..., None]).max()) <= 0.0


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_velocity_rows_sum_to_zero_with_nonnegative_rates(source):
    path = MixtureDiscretePath(PolynomialScheduler(2.0), 4, source)
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x = torch.randint(0, path.num_states, (64, 3), generator=gen(9))
    t = torch.rand(64, generator=gen(10)) * 0.99
    check_rate_rows(m.velocity(x, t), x)
    net = TokenMLP(3, 4, path.num_states, hidden=16)
    check_rate_rows(path.velocity(torch.softmax(net(x, t), -1), x, t), x)


@pytest.mark.parametrize(
    "source, length, vocab, scheduler",
    [("mask", 2, 3, CondOTScheduler()), ("uniform", 3, 4, PolynomialScheduler(2.0)), ("mask", 3, 4, CosineScheduler())],
)
def test_kolmogorov_forward_equation_by_finite_differences(source, length, vocab, scheduler):
    # d p_t(x) / dt = sum_y R_t(y -> x) p_t(y) over every state; R from velocity(), p_t by brute force.
    path = MixtureDiscretePath(scheduler, vocab, source)
    data = DATA2 if length == 2 else DATA3
    m = DiscreteEmpiricalMarginal(data, path)
    states = all_states(path.num_states, length)
    index = {tuple(s): i for i, s in enumerate(states.tolist())}

    def p(t):
        k = kappa_of(scheduler, t)
        return torch.tensor([marginal_prob(s, data, vocab, source, k) for s in states.tolist()], dtype=torch.float64)

    h = 1e-5
    for t in (0.1, 0.35, 0.6, 0.85):
        lhs = (p(t + h) - p(t - h)) / (2 * h)
        u = m.velocity(states, torch.tensor(t, dtype=torch.float64))
        pt = p(t)
        rhs = torch.zeros_like(pt)
        for j, y in enumerate(states.tolist()):
            for i in range(length):
                for z in range(path.num_states):
                    x = list(y)
                    x[i] = z
                    rhs[index[tuple(x)]] += u[j, i, z] * pt[j]
        err = float((lhs - rhs).abs().max())
        assert err < 1e-8 * max(1.0, float(lhs.abs().max())), (t, err)
        assert float(rhs.abs().max()) > 1e-3  # the equation is not trivially 0 = 0


# -- sampling -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_sampling_the_exact_marginal_converges_in_total_variation(source):
    vocab, n = 3, 20_000
    path = MixtureDiscretePath(CondOTScheduler(), vocab, source)
    m = DiscreteEmpiricalMarginal(DATA2, path)
    dist = {}
    for steps in (1, 4, 16, 64):
        x0 = path.sample_source((n, 2), gen(11))
        x = sample_discrete(m, x0, path, steps, gen(12))
        assert x.dtype == torch.long and int(x.max()) < vocab
        dist[steps] = tv(x, DATA2, vocab)
    assert dist[1] > dist[4] > dist[16] > dist[64], dist
    assert dist[64] < 0.03, dist  # Monte Carlo noise of 20,000 draws over 9 cells is about 0.01


def test_last_step_lands_every_masked_position():
    path = MixtureDiscretePath(PolynomialScheduler(3.0), 4, "mask")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x0 = path.sample_source((500, 3))
    for steps in (1, 2, 5):
        traj = sample_discrete(m, x0, path, steps, gen(13), trajectory=True)
        assert traj.shape == (steps + 1, 500, 3)
        assert bool((traj[0] == 4).all()) and int(traj[-1].max()) < 4
        # a mask source never changes a token once it is revealed
        revealed = traj[:-1] < 4
        assert bool((traj[1:][revealed] == traj[:-1][revealed]).all())


def test_sampler_is_seeded_and_follows_the_dtype():
    path = MixtureDiscretePath(CondOTScheduler(), 4, "uniform")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x0 = path.sample_source((50, 3), gen(14))
    a = sample_discrete(m, x0, path, 8, gen(15))
    b = sample_discrete(m, x0, path, 8, gen(15))
    c = sample_discrete(m, x0, path, 8, gen(15), dtype=torch.float64)
    assert torch.equal(a, b) and c.shape == a.shape
    assert torch.equal(x0, path.sample_source((50, 3), gen(14)))  # x0 untouched


def conditional_marginal(data, labels, path, num_classes):
    """model(x, t, y): the exact log-posterior of the data of class y (the null label num_classes: all data)."""
    parts = [DiscreteEmpiricalMarginal(data[labels == c], path) for c in range(num_classes)]
    everything = DiscreteEmpiricalMarginal(data, path)

    def model(x, t, y):
        out = torch.empty(*x.shape, path.vocab_size)
        for c in range(num_classes + 1):
            rows = y == c
            if bool(rows.any()):
                m = parts[c] if c < num_classes else everything
                out[rows] = m(x[rows], t[rows])
        return out

    return model


def test_guidance_with_w_one_and_zero_is_the_conditional_and_the_unconditional():
    path = MixtureDiscretePath(CondOTScheduler(), 3, "mask")
    labels = torch.tensor([0, 1, 0, 0, 1])
    model = conditional_marginal(DATA2, labels, path, 2)
    n = 5000
    x0 = path.sample_source((n, 2))
    y = torch.ones(n, dtype=torch.long)
    cond = sample_discrete(model, x0, path, 32, gen(16), cond=y, guidance=1.0, null_cond=2)
    assert tv(cond, DATA2[labels == 1], 3) < 0.04
    plain = sample_discrete(model, x0, path, 32, gen(16), cond=y)
    assert torch.equal(cond, plain)  # w = 1 is the conditional velocity, one evaluation per step
    uncond = sample_discrete(model, x0, path, 32, gen(16), cond=y, guidance=0.0, null_cond=2)
    assert tv(uncond, DATA2, 3) < 0.04
    # w > 1: extrapolated rates are clipped at 0; the samples stay in the data and favour class 1 more
    strong = sample_discrete(model, x0, path, 32, gen(16), cond=y, guidance=3.0, null_cond=2)
    assert int(strong.max()) < 3
    class1 = {tuple(r) for r in DATA2[labels == 1].tolist()}
    share = lambda s: sum(tuple(r) in class1 for r in s.tolist()) / n  # noqa: E731
    assert share(strong) >= share(cond) - 0.02


def test_infilling_holds_known_tokens_and_samples_the_conditional():
    # Data of length 3; hold the first token at 0: the conditional law is uniform over the two data rows
    # [0, 1, 2] (twice in DATA3) -> only [0, 1, 2].
    path = MixtureDiscretePath(CondOTScheduler(), 4, "mask")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    n = 4000
    x0 = path.sample_source((n, 3))
    x0[:, 0] = 2
    held = torch.tensor([True, False, False])
    x = sample_discrete(m, x0, path, 32, gen(17), held=held)
    assert bool((x[:, 0] == 2).all())
    assert tv(x, DATA3[DATA3[:, 0] == 2], 4) < 0.03  # the only datum starting with 2 is [2, 2, 0]


# -- the loss -----------------------------------------------------------------------------------------------------


def test_cross_entropy_of_uniform_logits_is_l_log_v():
    path = MixtureDiscretePath(CondOTScheduler(), 4, "uniform")
    loss = discrete_cfm_loss(lambda x, t: torch.zeros(*x.shape, 4), path, DATA3, generator=gen(18))
    assert abs(float(loss) - 3 * math.log(4)) < 1e-6
    w = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0])
    weighted = discrete_cfm_loss(lambda x, t: torch.zeros(*x.shape, 4), path, DATA3, weights=w, generator=gen(18))
    assert abs(float(weighted) - 3 * math.log(4) * float(w.mean())) < 1e-6


@pytest.mark.parametrize("source", ["mask", "uniform"])
def test_generalized_kl_is_the_bregman_divergence_of_the_rates(source):
    # sum over y != x of u log(u / v) - u + v, u the conditional rates rate * [y = x1], v = rate * p_theta(y)
    vocab = 4
    path = MixtureDiscretePath(PolynomialScheduler(2.0), vocab, source)
    logits = torch.randn(5, 3, vocab, generator=gen(19), dtype=torch.float64)
    x0 = path.sample_source((5, 3), gen(20))
    t = torch.tensor([0.2, 0.5, 0.7, 0.4, 0.9], dtype=torch.float64)
    x_t = path.sample(x0, DATA3, t, generator=gen(21))
    loss = discrete_cfm_loss(lambda x, tt: logits, path, DATA3, x0=x0, t=t, generator=gen(21), loss="generalized_kl")
    p = torch.softmax(logits, -1)
    total = 0.0
    for b in range(5):
        rate = 2 * float(t[b]) / (1 - float(t[b]) ** 2)
        for i in range(3):
            x, x1 = int(x_t[b, i]), int(DATA3[b, i])
            for y in range(vocab):
                if y == x:
                    continue
                u, v = rate * (y == x1), rate * float(p[b, i, y])
                total += (u * math.log(u / v) if u > 0 else 0.0) - u + v
    assert abs(float(loss) - total / 5) < 1e-10


def test_losses_are_smallest_at_the_exact_posterior():
    # Both losses are minimised by the true posterior: the exact marginal beats a perturbed version of it.
    path = MixtureDiscretePath(CondOTScheduler(), 4, "mask")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x1 = DATA3[torch.randint(0, 5, (4000,), generator=gen(22))]

    def noisy(x, t):
        return m(x, t).clamp_min(-30.0) + 0.5 * torch.randn(*x.shape, 4, generator=gen(23))

    for kind in ("cross_entropy", "generalized_kl"):
        args = dict(generator=gen(24), loss=kind, time_sampler=lambda n, g, d, dev: torch.rand(n, generator=g) * 0.95)
        exact = float(discrete_cfm_loss(lambda x, t: m(x, t).clamp_min(-30.0), path, x1, **args))
        worse = float(discrete_cfm_loss(noisy, path, x1, **args))
        assert exact < worse, (kind, exact, worse)


def test_bad_times_and_null_labels_raise_before_anything_runs():
    # A bool tensor is no time (True would silently mean t = 1), and True is no null label (it would mean label 1).
    path = MixtureDiscretePath(CondOTScheduler(), 4, "mask")
    x1 = DATA3[:2]
    flags = torch.tensor([True, False])
    with pytest.raises(TypeError, match="t must"):
        path.sample(None, x1, flags)
    with pytest.raises(TypeError, match="t must"):
        discrete_cfm_loss(lambda x, t: torch.zeros(*x.shape, 4), path, x1, t=flags)
    with pytest.raises(TypeError, match="t must"):
        TokenMLP(3, 4, 5, hidden=8)(x1, flags)
    with pytest.raises(TypeError, match="t must"):
        DiscreteEmpiricalMarginal(DATA3, path).posterior(x1, flags)
    net = TokenMLP(3, 4, 5, hidden=8, num_classes=2)
    x0 = path.sample_source((2, 3))
    with pytest.raises(TypeError, match="null_cond"):
        sample_discrete(net, x0, path, 4, gen(30), cond=torch.tensor([0, 1]), guidance=2.0, null_cond=True)


def test_sampler_rejects_nan_logits():
    # NaN logits used to come out as token 0 everywhere, silently.
    path = MixtureDiscretePath(CondOTScheduler(), 4, "mask")
    x0 = path.sample_source((2, 3))
    with pytest.raises(ValueError, match="model"):
        sample_discrete(lambda x, t: torch.full((*x.shape, 4), math.nan), x0, path, 4, gen(31))


def test_sampler_keeps_its_times_in_at_least_float32():
    # In bfloat16 k / steps rounds (0.998 and 1.0 are neighbours), so the times are float32 at least, as documented.
    path = MixtureDiscretePath(CondOTScheduler(), 4, "uniform")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x0 = path.sample_source((50, 3), gen(32))
    seen = []

    def model(x, t):
        seen.append(t.dtype)
        return m(x, t)

    a = sample_discrete(model, x0, path, 300, gen(33), dtype=torch.bfloat16)
    b = sample_discrete(m, x0, path, 300, gen(33), dtype=torch.float32)
    assert set(seen) == {torch.float32}
    assert torch.equal(a, b)


def test_path_helpers_reject_bad_input_clearly():
    path = MixtureDiscretePath(CondOTScheduler(), 4, "uniform")
    # a float t at kappa_t = 1 raised "'float' object is not subscriptable"
    with pytest.raises(ValueError, match="t must be below"):
        path.jump_rate(1.0)
    assert math.isclose(float(path.jump_rate(0.5)), 2.0)
    # an integer dtype truncated the uniform 1 / V to 0
    with pytest.raises(TypeError, match="dtype"):
        path.source_probs(torch.long)
    # a loss that is not a str is a TypeError, as for the other string options
    with pytest.raises(TypeError, match="loss"):
        discrete_cfm_loss(lambda x, t: torch.zeros(*x.shape, 4), path, DATA3[:2], loss=None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_marginal_runs_on_cuda_with_many_rows():
    # Over 64 rows at one time the marginal groups equal sequences by an integer code; CUDA has no int64 matmul.
    path = MixtureDiscretePath(CondOTScheduler(), 4, "mask")
    m = DiscreteEmpiricalMarginal(DATA3, path)
    x = torch.randint(0, 5, (200, 3), generator=gen(34))
    want = m.posterior(x, 0.5)
    torch.testing.assert_close(m.posterior(x.cuda(), 0.5).cpu(), want)
