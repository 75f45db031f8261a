"""ddn: deep declarative networks.

Floors (each imports only from those below it):
``ddn.reference`` (numpy + autograd, full Jacobians, the ground truth),
``ddn.torch`` (batched PyTorch nodes and layers), ``ddn.experiments``.
``ddn.check`` checks gradients of nodes from either floor.

``ddn.torch`` is not imported here, so that the reference floor works without torch.
"""

__version__ = "0.1.0"


class DDNWarning(UserWarning):
    """Warning raised by ddn for degenerate points (singular H, weakly active
    constraints, non-converged solves, ...). Tests turn it into an error."""


class DDNError(ValueError):
    """Error raised by ddn for bad input or a degenerate point with no remedy chosen."""


__all__ = ["DDNWarning", "DDNError", "__version__"]
