"""A coupling re-pairs x1 and every per-row tensor that belongs to x1 (labels, weights) with it.

Written against the coupling contract of ``cfm_loss``: ``coupling(x0, x1) -> pi`` (int64, shape (B,)),
``x1[pi]`` paired with ``x0``, and ``cond`` / ``weights`` permuted by the same pi.
"""

from functools import partial

import torch

from fmlib import LinearPath, cfm_loss, ot_assignment


def test_cfm_loss_with_the_ot_coupling():
    x0 = torch.tensor([[0.0], [10.0], [20.0]])
    x1 = torch.tensor([[21.0], [1.0], [11.0]])
    # with the model predicting 1 everywhere, the OT pairs (displacement 1 each) give loss 0
    model = lambda x, t: torch.ones_like(x)  # noqa: E731
    assert float(cfm_loss(model, LinearPath(), x1, x0=x0, t=0.5, coupling=ot_assignment)) == 0.0
    assert float(cfm_loss(model, LinearPath(), x1, x0=x0, t=0.5)) > 0


def test_oracle_label_model_has_zero_loss_with_the_ot_coupling(gen):
    # every data point has its own label, so the label tells the model x1; on the straight path
    # x_t = (1 - t) x0 + t x1 the target is x1 - x0 = (x1 - x_t) / (1 - t), which the oracle outputs exactly
    # when it sees the right label
    b = 16
    x1 = torch.randn(b, 2, generator=gen, dtype=torch.float64) * 10
    x0 = torch.randn(b, 2, generator=gen, dtype=torch.float64)
    labels = torch.arange(b)
    t = torch.rand(b, generator=gen, dtype=torch.float64) * 0.9
    table = x1.clone()

    def oracle(x, t, y):
        return (table[y] - x) / (1 - t[:, None])

    assert not torch.equal(ot_assignment(x0, x1), labels)  # the coupling does permute this batch
    loss = cfm_loss(oracle, LinearPath(), x1, x0=x0, t=t, coupling=ot_assignment, cond=labels)
    assert float(loss) < 1e-20
    # the same oracle with labels left in the original order is far off
    wrong = cfm_loss(lambda x, t: oracle(x, t, labels), LinearPath(), x1, x0=x0, t=t, coupling=ot_assignment)
    assert float(wrong) > 1.0


def test_class_conditional_coupling_keeps_labels(gen):
    b = 24
    labels = torch.randint(0, 3, (b,), generator=gen)
    x1 = torch.randn(b, 2, generator=gen, dtype=torch.float64) + 4 * labels[:, None].double()
    x0 = torch.randn(b, 2, generator=gen, dtype=torch.float64)
    seen = []

    def model(x, t, y):
        seen.append(y.clone())
        return torch.zeros_like(x)

    cfm_loss(model, LinearPath(), x1, x0=x0, t=0.5, coupling=partial(ot_assignment, labels=labels), cond=labels)
    # the labels the model sees for row i of x0 are the labels given to that row: pairs never cross classes
    assert torch.equal(seen[0], labels)
