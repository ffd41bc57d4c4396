"""fmlib: the small flow matching library of the book *Flow Matching, Executed*.

Conventions: t = 0 is the source N(0, I), t = 1 is the data; batch first;
a velocity field is a callable ``v(x, t)`` with x of shape ``(B, *D)`` and t of
shape (B,).
"""

from .couplings import minibatch_ot, ot_assignment, reflow_pairs, sinkhorn_coupling
from .data import (
    DATASETS,
    DigitsSplit,
    checkerboard,
    eight_gaussians,
    load_digits_split,
    s_curve,
    sample_data,
    seeded_generator,
    spirals,
    two_moons,
)
from .ema import EMA
from .guidance import cfg_combine, drop_labels, guided_velocity
from .likelihood import divergence, log_likelihood
from .losses import cfm_loss, logit_normal
from .marginal import EmpiricalMarginal
from .metrics import (
    DigitClassifier,
    frechet_distance,
    frechet_distance_gaussians,
    nearest_distances,
    normalized_path_energy,
    path_energy,
    straightness,
    wasserstein2,
)
from .models import MLP, DigitUNet
from .paths import (
    AffinePath,
    CondOTScheduler,
    CosineScheduler,
    GaussianPath,
    LinearPath,
    PathSample,
    PolynomialScheduler,
    ProbPath,
    Scheduler,
    SchedulerOutput,
    SchrodingerBridgePath,
    VPScheduler,
    change_scheduler,
)
from .plotting import image_grid
from .sde import euler_maruyama, integrate_sde
from .solvers import (
    ADAPTIVE_METHODS,
    METHODS,
    NFE_PER_STEP,
    SOLVERS,
    FixedStepMethod,
    NFECounter,
    euler_step,
    heun_step,
    integrate,
    integrate_adaptive,
    midpoint_step,
    register_solver,
    rk4_step,
    time_grid,
)
from .training import PRECISIONS, Recipe, TrainingRecord, lr_schedule, train

__version__ = "0.1.0"

__all__ = [
    "PathSample",
    "ProbPath",
    "LinearPath",
    "GaussianPath",
    "Scheduler",
    "SchedulerOutput",
    "CondOTScheduler",
    "CosineScheduler",
    "PolynomialScheduler",
    "VPScheduler",
    "AffinePath",
    "change_scheduler",
    "integrate_sde",
    "euler_maruyama",
    "cfm_loss",
    "logit_normal",
    "EmpiricalMarginal",
    "euler_step",
    "midpoint_step",
    "heun_step",
    "rk4_step",
    "integrate",
    "time_grid",
    "METHODS",
    "NFE_PER_STEP",
    "FixedStepMethod",
    "SOLVERS",
    "register_solver",
    "NFECounter",
    "integrate_adaptive",
    "log_likelihood",
    "ADAPTIVE_METHODS",
    "divergence",
    "minibatch_ot",
    "ot_assignment",
    "sinkhorn_coupling",
    "reflow_pairs",
    "SchrodingerBridgePath",
    "wasserstein2",
    "path_energy",
    "normalized_path_energy",
    "straightness",
    "MLP",
    "train",
    "Recipe",
    "PRECISIONS",
    "TrainingRecord",
    "lr_schedule",
    "EMA",
    "load_digits_split",
    "DigitsSplit",
    "DigitUNet",
    "drop_labels",
    "cfg_combine",
    "guided_velocity",
    "DigitClassifier",
    "frechet_distance",
    "frechet_distance_gaussians",
    "nearest_distances",
    "image_grid",
    "two_moons",
    "eight_gaussians",
    "checkerboard",
    "spirals",
    "s_curve",
    "sample_data",
    "DATASETS",
    "seeded_generator",
]
