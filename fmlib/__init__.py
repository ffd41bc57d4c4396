"""fmlib: the small flow matching library of the book *Flow Matching, Executed*.

Conventions: t = 0 is the source N(0, I), t = 1 is the data; batch first;
a velocity field is a callable ``v(x, t)`` with x of shape ``(B, *D)`` and t of
shape (B,).

Every public name is written once, in its module's ``__all__``, and the package exports them all.
:mod:`fmlib.plotting` is a namespace of its own (``fmlib.plotting.plot_samples``, ...), apart from
:func:`~fmlib.plotting.image_grid`, which the image chapters use beside the data.
"""

from . import (
    autoencoder,
    conventions,
    couplings,
    data,
    discrete,
    dit,
    ema,
    few_step,
    guidance,
    likelihood,
    losses,
    marginal,
    metrics,
    models,
    paths,
    schedulers,
    sde,
    solvers,
    training,
)
from .autoencoder import *  # noqa: F403
from .conventions import *  # noqa: F403
from .couplings import *  # noqa: F403
from .data import *  # noqa: F403
from .discrete import *  # noqa: F403
from .dit import *  # noqa: F403
from .ema import *  # noqa: F403
from .few_step import *  # noqa: F403
from .guidance import *  # noqa: F403
from .likelihood import *  # noqa: F403
from .losses import *  # noqa: F403
from .marginal import *  # noqa: F403
from .metrics import *  # noqa: F403
from .models import *  # noqa: F403
from .paths import *  # noqa: F403
from .plotting import image_grid
from .schedulers import *  # noqa: F403
from .sde import *  # noqa: F403
from .solvers import *  # noqa: F403
from .training import *  # noqa: F403

__version__ = "0.1.0"

__all__: list[str] = []
__all__ += paths.__all__
__all__ += schedulers.__all__
__all__ += losses.__all__
__all__ += solvers.__all__
__all__ += sde.__all__
__all__ += likelihood.__all__
__all__ += marginal.__all__
__all__ += couplings.__all__
__all__ += metrics.__all__
__all__ += models.__all__
__all__ += dit.__all__
__all__ += autoencoder.__all__
__all__ += training.__all__
__all__ += ema.__all__
__all__ += guidance.__all__
__all__ += data.__all__
__all__ += conventions.__all__
__all__ += discrete.__all__
__all__ += few_step.__all__
__all__ += ["image_grid"]
