"""The torch floor: batched declarative nodes and layers (CPU and CUDA) that back-propagate by
implicit differentiation with vector-Jacobian products."""
from .nodes import *  # noqa: F401,F403
from .pooling import *  # noqa: F401,F403
from .projections import *  # noqa: F401,F403
from . import nodes, pooling, projections

__all__ = [*nodes.__all__, *pooling.__all__, *projections.__all__]
