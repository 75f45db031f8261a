"""Second derivatives through the pooling and projection layers (create_graph=True).

Until this was added the layers' backward was marked once-differentiable; with grad_outputs that do
not require grad, torch then returned a first derivative *without* a graph, so a loss built on it
(a gradient penalty, a hypergradient) silently lost that term. Now the backward is differentiable
in its eager form: checked by gradgradcheck (central differences, float64), against closed forms,
and against the generic torch node, on both backends (compiled kernel, eager)."""
import numpy as np
import pytest
import torch

import ddn.torch as T
from ddn.torch import DeclarativeLayer, DeclarativeNode
from ddn.torch.pooling import _phi

F64 = torch.float64
INF = float("inf")


def clustered(B=3, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.1 * torch.randn(B, n, generator=g, dtype=F64)
    x[:, :2] += torch.tensor([3.0, -2.5], dtype=F64)  # two outliers per row
    return x


@pytest.mark.parametrize("pen", ["quadratic", "pseudo-huber", "huber", "welsch",
                                 "truncated-quadratic"])
def test_pooling_gradgradcheck(pen, backend):
    x = clustered().requires_grad_()
    a = torch.tensor([0.7, 1.0, 1.3], dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, a: T.robust_pool(x, pen, a), (x, a))


def test_pooling_gradient_penalty_keeps_its_graph(backend):
    """The case that used to be silently wrong: grad_outputs without grad, create_graph=True."""
    x = clustered().requires_grad_()
    y = T.robust_pool(x, "pseudo-huber", 1.0)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert g.requires_grad and g.grad_fn is not None
    (gg,) = torch.autograd.grad((g ** 2).sum(), x)
    # central differences of x ↦ Σ (∂Σy/∂x)²
    def pen(xx):
        xx = xx.detach().requires_grad_()
        (gx,) = torch.autograd.grad(T.robust_pool(xx, "pseudo-huber", 1.0).sum(), xx)
        return float((gx ** 2).sum())
    fd = torch.zeros_like(x)
    h = 1e-6
    for idx in np.ndindex(*x.shape):
        e = torch.zeros_like(x)
        e[idx] = h
        fd[idx] = (pen(x + e) - pen(x - e)) / (2 * h)
    assert torch.allclose(gg, fd, atol=1e-7, rtol=1e-6)


def test_pooling_second_derivative_matches_generic_node(backend):
    class Pool(DeclarativeNode):
        def objective(self, x, y):
            return _phi(y[:, None] - x, "pseudo-huber", 1.0).sum(-1)

        def initial_guess(self, x):
            return x.median(-1).values

    x = clustered(B=2, n=5, seed=3)
    v = torch.randn(2, dtype=F64)
    out = []
    for f in (lambda x: T.robust_pool(x, "pseudo-huber", 1.0), DeclarativeLayer(Pool(()))):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((f(xr) * v).sum(), xr, create_graph=True)
        (gg,) = torch.autograd.grad((g * torch.linspace(-1, 1, 5, dtype=F64)).sum(), xr)
        out.append(gg)
    assert torch.allclose(out[0], out[1], atol=1e-9)


@pytest.mark.parametrize("p", [1, 2, INF])
@pytest.mark.parametrize("kind", ["sphere", "ball"])
def test_projection_gradgradcheck(p, kind, backend):
    g = torch.Generator().manual_seed(1)
    x = (2.0 * torch.randn(4, 5, generator=g, dtype=F64)).requires_grad_()
    r = torch.tensor([0.8, 1.0, 1.2, 0.9], dtype=F64, requires_grad=True)
    fn = T.project_sphere if kind == "sphere" else T.project_ball
    assert torch.autograd.gradgradcheck(lambda x, r: fn(x, p, r), (x, r))


def test_simplex_gradgradcheck(backend):
    x = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    r = torch.tensor([1.0, 0.5, 2.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, r: T.project_simplex(x, r), (x, r))


@pytest.mark.parametrize("kind", ["sphere", "ball"])
def test_l2_projection_second_derivative_closed_form(kind, backend):
    """Outside the ball both are y = r x/‖x‖: autograd on that formula is the closed form."""
    x = (3.0 * torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(4)))
    r = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    w = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(5))
    res = []
    for f in ((T.project_sphere if kind == "sphere" else T.project_ball),
              lambda x, p, r: r[:, None] * x / x.norm(dim=-1, keepdim=True)):
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad((f(xr, 2, r) * w).sum(), xr, create_graph=True)
        (gg,) = torch.autograd.grad((g ** 2).sum(), xr)
        res.append(gg)
    assert torch.allclose(res[0], res[1], atol=1e-12, rtol=1e-10)
