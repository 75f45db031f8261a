"""batched_jacobian evaluates its vector–Jacobian products in chunks on CPU: same result as one
batch, for first and second derivatives."""
import torch

from ddn.torch import _implicit


def _objective(x, y):  # H = diag(ρ''(y − x)) + DᵀD (tridiagonal), B = −diag(ρ'')
    z = y - x
    d = y[:, 1:] - y[:, :-1]
    return (torch.sqrt(1 + z * z) - 1).sum(-1) + 0.5 * (d * d).sum(-1) + (y ** 3).sum(-1) / 30


def _hessian(x, y, chunk_elements, create_graph=False):
    old = _implicit._CPU_CHUNK_ELEMENTS
    _implicit._CPU_CHUNK_ELEMENTS = chunk_elements
    try:
        (g,) = torch.autograd.grad(_objective(x, y).sum(), y, create_graph=True)
        return _implicit.batched_hessian(g, y, create_graph=create_graph)
    finally:
        _implicit._CPU_CHUNK_ELEMENTS = old


def test_chunked_hessian_equals_one_batch_and_the_closed_form():
    b, m = 3, 7
    x = torch.randn(b, m, dtype=torch.float64)
    y = torch.randn(b, m, dtype=torch.float64, requires_grad=True)
    one = _hessian(x, y, 10 ** 9)
    for elements in (1, b * m, 3 * b * m, 5 * b * m):  # chunks of 1, 1, 3 and 5 (+2) rows
        assert torch.equal(_hessian(x, y, elements), one)
    z = (y - x).detach()
    D = torch.diff(torch.eye(m, dtype=torch.float64), dim=0)
    H = torch.diag_embed((1 + z * z) ** -1.5 + y.detach() / 5) + D.T @ D
    assert torch.allclose(one, H, atol=1e-12)


def test_chunked_hessian_keeps_the_graph_for_double_backward():
    b, m = 2, 5
    x = torch.randn(b, m, dtype=torch.float64)
    y = torch.randn(b, m, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, m, m, dtype=torch.float64)
    (d1,) = torch.autograd.grad((_hessian(x, y, 2 * b * m, create_graph=True) * v).sum(), y)
    (d0,) = torch.autograd.grad((_hessian(x, y, 10 ** 9, create_graph=True) * v).sum(), y)
    assert torch.allclose(d1, d0, atol=1e-12)
    assert torch.allclose(d0, (v.diagonal(dim1=1, dim2=2) * (1 / 5 - 3 * (y - x) * (1 + (y - x) ** 2) ** -2.5)).detach(), atol=1e-12)
