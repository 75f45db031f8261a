"""The reference floor: numpy + autograd declarative nodes, one instance at a time, with full
Jacobians. This is the ground truth the torch floor is tested against."""
from .core import *  # noqa: F401,F403
from .examples import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .projections import *  # noqa: F401,F403
from . import core, examples, pooling, projections

__all__ = [*core.__all__, *examples.__all__, *pooling.__all__, *projections.__all__]
