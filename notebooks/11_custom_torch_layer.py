# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 — Your own declarative layer in `ddn.torch`
#
# **What and why.** Notebooks 09 and 10 used layers the library ships. This one writes a new
# one: a *robust, regularised least-squares fit* whose output is the vector of fitted
# coefficients. You write the objective (and, if you like, a solver); `ddn.torch` supplies the
# backward pass by implicit differentiation (Prop. 4.4), batched over dim 0. Then we check the
# gradient, learn the fit's two hyper-parameters by gradient descent *through* the fit — a
# bi-level problem (paper Eq. 10–11) — and compare the three ways the backward pass can do
# its linear algebra: a dense factorisation, matrix-free conjugate gradients, and unrolling
# the solver's iterations (paper §6.1).
#
# Vocabulary: `x` the inputs (here features `F`, targets `t` and the hyper-parameters), `y`
# the fitted coefficients (the solution), `Dy` its Jacobian, `v` the incoming gradient.

# %% [markdown]
# ## The maths
#
# For one problem of the batch: `k` samples with feature rows $F \in \mathbb{R}^{k\times m}$ and
# targets $t \in \mathbb{R}^k$. The fit is
#
# $$ y(F, t, \theta) = \arg\min_{u \in \mathbb{R}^m}\ f = \sum_{i=1}^k \rho_\alpha(F_i u - t_i)
# + \frac{\lambda}{2}\lVert u\rVert^2, \qquad \rho_\alpha(z) = \alpha^2\big(\sqrt{1 + (z/\alpha)^2} - 1\big), $$
#
# with the pseudo-Huber penalty of notebook 09 and $\theta = (\log\lambda, \log\alpha)$ (logs
# keep both positive while we learn them). The optimality condition and the Hessian are
#
# $$ \nabla_u f = F^\top \rho'_\alpha(Fy - t) + \lambda y = 0, \qquad
# H = D^2_{YY} f = F^\top W F + \lambda I,\ \ W = \operatorname{diag}\rho''_\alpha(Fy - t). $$
#
# `H` is symmetric positive definite ($\rho'' > 0$, $\lambda > 0$), so the minimiser is unique
# and Prop. 4.4 applies everywhere: $Dy = -H^{-1}B$ with $B = D^2_{XY} f$. Back-propagation
# never forms $Dy$: it solves $H w = v$ once and returns $-w^\top B$ (§6.1, Eq. 77), e.g. for
# the ridge weight $\partial L / \partial\log\lambda = -\lambda\, w^\top y$.
#
# **A closed form to test against.** As $\alpha \to \infty$, $\rho_\alpha(z) \to \tfrac12 z^2$ and
# the fit becomes ridge regression: $y = (F^\top F + \lambda I)^{-1}F^\top t$ with
# $\partial y / \partial\log\lambda = -\lambda (F^\top F + \lambda I)^{-1} y$.
#
# **Three ways to compute `w`.** *dense*: build `H` (b × m × m) and factor it (Cholesky),
# $O(m^3)$ time and $O(m^2)$ memory per problem. *cg*: conjugate gradients with
# Hessian–vector products, never forming `H` — $O(m)$ memory per product. *unroll*: forget
# implicit differentiation and let autograd record every iteration of the forward solver;
# exact at convergence, but the memory grows with the number of iterations.

# %% [markdown]
# ## Minimal code
#
# A node subclasses `ddn.torch.DeclarativeNode` and implements `objective(*xs, y) -> (b,)`.
# Everything is batched over dim 0. Without a `solve` of our own the library's batched Newton
# solver minimises the objective, starting from `initial_guess` (zeros here); the objective is
# strictly convex, so it finds the unique minimiser.

# %%
import time

import numpy as np
import torch

import ddn.torch as dt
from ddn.check import check_gradient
from ddn.utils import is_smoke
from ddn.viz.torch_layer import (RobustFitExplorer, measure, polynomial_features,
                                 solver_comparison_figure)

SMOKE = is_smoke()
# The problems here are small (m ≤ 128): hand-offs between threads cost more than they save,
# especially on a shared machine, so all timings below are single-threaded.
torch.set_num_threads(1)


class RobustRidgeFit(dt.DeclarativeNode):
    """y = argmin_u Σ_i ρ_α(F_i u − t_i) + (λ/2)‖u‖², pseudo-Huber ρ, batched over dim 0.

    Inputs: F (b, k, m), t (b, k), log_lambda (b,), log_alpha (b,). Output y (b, m).
    """

    def objective(self, F, t, log_lambda, log_alpha, y):
        lam, alpha = log_lambda.exp(), log_alpha.exp()
        r = torch.einsum("bkm,bm->bk", F, y) - t                      # residuals (b, k)
        a = alpha[:, None]
        rho = a**2 * (torch.sqrt(1 + (r / a) ** 2) - 1)               # pseudo-Huber
        return rho.sum(-1) + 0.5 * lam * (y**2).sum(-1)

    def initial_guess(self, F, t, log_lambda, log_alpha):
        # the default solver (batched Newton with a line search) starts here
        return F.new_zeros(F.shape[0], F.shape[-1])


node = RobustRidgeFit()
layer = dt.DeclarativeLayer(node)
print(layer)

# %% [markdown]
# A batch of fitting problems — degree-5 polynomials through noisy samples — and a forward
# pass. The layer returns a tensor that remembers how to back-propagate.

# %%
torch.manual_seed(0)
b, k, deg = 4, 30, 5
s = 2 * torch.rand(b, k, dtype=torch.float64) - 1
F = polynomial_features(s, deg)                                         # (b, k, m)
t = torch.sin(3 * s) + 0.1 * torch.randn(b, k, dtype=torch.float64)
log_lambda = torch.full((b,), -3.0, dtype=torch.float64, requires_grad=True)
log_alpha = torch.full((b,), -1.0, dtype=torch.float64, requires_grad=True)
y = layer(F, t, log_lambda, log_alpha)
print(y.shape, y.requires_grad)

# %% [markdown]
# ## Checks
#
# 1. `check_gradient` compares the implicit gradient with central finite differences of the
#    solver (float64) and reports the optimality residual and the conditioning of `H`.
# 2. With a huge `α` the fit is ridge regression: the solution and the gradient with respect
#    to `log λ` match the closed form.

# %%
# finite differences solve twice per input entry, so check a small problem (k = 6, m = 3)
Fc, tc = F[:1, :6, :3], t[:1, :6]
report = check_gradient(node, Fc, tc, log_lambda[:1].detach(), log_alpha[:1].detach())
print(report)
assert report.ok

# %%
big_alpha = torch.full((b,), 12.0, dtype=torch.float64)           # α = e¹² ≈ 1.6e5
ll = log_lambda.detach().clone().requires_grad_(True)
y_ridge = layer(F, t, ll, big_alpha)
m = F.shape[-1]
FtF = F.transpose(1, 2) @ F + ll.exp()[:, None, None] * torch.eye(m, dtype=F.dtype)
y_closed = torch.linalg.solve(FtF, (F.transpose(1, 2) @ t[..., None]))[..., 0]
assert torch.allclose(y_ridge, y_closed, atol=1e-6)

v = torch.randn_like(y_ridge)                                      # an incoming gradient
(g_implicit,) = torch.autograd.grad((v * y_ridge).sum(), ll)
dy_dll = -ll.exp()[:, None] * torch.linalg.solve(FtF, y_closed[..., None])[..., 0]
g_closed = (v * dy_dll.detach()).sum(-1)
assert torch.allclose(g_implicit, g_closed, atol=1e-6)
print("ridge limit: solution and d/dlog λ match the closed form")

# %% [markdown]
# ## Learning through the fit
#
# A bi-level problem: the lower level fits the coefficients on noisy samples with outliers,
# the upper level scores the fit on clean validation samples and adjusts $\theta = (\log\lambda,
# \log\alpha)$. One θ is shared by the whole batch of tasks.

# %%
def make_tasks(n_tasks, k_train, k_val, outlier_fraction=0.25, degree=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n_tasks, 1, generator=g, dtype=torch.float64) * 2 + 2     # frequencies
    ph = torch.rand(n_tasks, 1, generator=g, dtype=torch.float64) * 3        # phases
    truth = lambda s: torch.sin(a * s + ph)                                  # noqa: E731
    s_tr = 2 * torch.rand(n_tasks, k_train, generator=g, dtype=torch.float64) - 1
    s_va = 2 * torch.rand(n_tasks, k_val, generator=g, dtype=torch.float64) - 1
    t_tr = truth(s_tr) + 0.1 * torch.randn(n_tasks, k_train, generator=g, dtype=torch.float64)
    out = torch.rand(n_tasks, k_train, generator=g) < outlier_fraction
    t_tr = t_tr + out * 3.0 * torch.sign(torch.randn(n_tasks, k_train, generator=g,
                                                     dtype=torch.float64))
    return (polynomial_features(s_tr, degree), t_tr,
            polynomial_features(s_va, degree), truth(s_va))


n_tasks, steps = (8, 6) if SMOKE else (64, 60)
F_tr, t_tr, F_va, t_va = make_tasks(n_tasks, k_train=40, k_val=40)
theta = torch.tensor([-3.0, 0.5], dtype=torch.float64, requires_grad=True)  # log λ, log α
opt = torch.optim.Adam([theta], lr=0.15)
losses = []
for step in range(steps):
    ll, la = theta[0].expand(n_tasks), theta[1].expand(n_tasks)
    y = layer(F_tr, t_tr, ll, la)
    val = ((torch.einsum("bkm,bm->bk", F_va, y) - t_va) ** 2).mean()
    opt.zero_grad()
    val.backward()
    opt.step()
    losses.append(val.item())
print(f"validation MSE {losses[0]:.4f} → {losses[-1]:.4f};  learned log λ = {theta[0]:.2f}, "
      f"log α = {theta[1]:.2f}")
assert losses[-1] < losses[0]

# %% [markdown]
# ## Play with it
#
# One task, drawn big: the samples, the outliers, the plain least-squares fit and the robust
# fit computed by *our layer* at the `(log λ, log α)` you choose. The sliders start at the
# learned values; a large `α` turns the robust fit into least squares.

# %%
def fit_with_layer(F, t, log_lambda, log_alpha):
    F = torch.as_tensor(F, dtype=torch.float64)[None]
    t = torch.as_tensor(t, dtype=torch.float64)[None]
    ll = torch.tensor([log_lambda], dtype=torch.float64)
    la = torch.tensor([log_alpha], dtype=torch.float64)
    with torch.no_grad():
        return layer(F, t, ll, la)[0].numpy()


log_lambda_learned, log_alpha_learned = theta.detach().tolist()
explorer = RobustFitExplorer(fit_with_layer, degree=7,
                             log_lambda=log_lambda_learned, log_alpha=log_alpha_learned)
before = explorer.rms_error
explorer.update(log_alpha=10.0)           # α → ∞: least squares, pulled by the outliers
assert explorer.rms_error > before
explorer.update(log_alpha=log_alpha_learned)
explorer.fig

# %%
# NBVAL_IGNORE_OUTPUT
explorer.interact(log_lambda=(-8.0, 2.0, 0.1), log_alpha=(-4.0, 4.0, 0.1));

# %% [markdown]
# ## Dense, CG or unroll?
#
# The library's default forward solver builds `H` itself (Newton), which would hide the
# difference between the backward strategies. So for this comparison the node gets a `solve`
# of its own: iteratively reweighted least squares (IRLS), the classical majorise–minimise
# method for robust regression. Each iteration solves the weighted ridge problem
# $(F^\top W F + \lambda I)\,u = F^\top W t$ with weights $W = \operatorname{diag}\big(\rho'(r)/r\big)
# = \operatorname{diag}\big((1 + (r/\alpha)^2)^{-1/2}\big)$ and stops when the iterates stop moving.
# It is written in plain torch ops, so with `linear_solver="unroll"` autograd can record it.
# (Our `solve` also shows the second hook a node may implement.)

# %%
class RobustRidgeFitIRLS(RobustRidgeFit):
    """RobustRidgeFit with its own forward solver: IRLS from the ridge solution."""

    def solve(self, F, t, log_lambda, log_alpha, max_iter=500, tol=1e-12):
        lam, alpha = log_lambda.exp()[:, None, None], log_alpha.exp()[:, None]
        Ft = F.transpose(1, 2)
        eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
        w = torch.ones_like(t)                                         # first step: ridge
        y = None
        for it in range(max_iter):
            L = torch.linalg.cholesky(Ft @ (w[..., None] * F) + lam * eye)
            y_new = torch.cholesky_solve(Ft @ (w * t)[..., None], L)[..., 0]
            step = (y_new - y).abs().amax(-1) if y is not None else None
            y = y_new
            r = torch.einsum("bkm,bm->bk", F, y) - t
            w = 1 / torch.sqrt(1 + (r / alpha) ** 2)                   # ρ'(r) / r
            if step is not None and bool((step <= tol * (1 + y.abs().amax(-1))).all()):
                break
        self.iterations = it + 1
        return y, {"converged": step <= tol * (1 + y.abs().amax(-1))}


def problem(m, b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(b, 2 * m, m, generator=g, dtype=torch.float64) / m**0.5
    t = torch.randn(b, 2 * m, generator=g, dtype=torch.float64)
    return F, t, torch.full((b,), -1.0, dtype=torch.float64), torch.zeros(b, dtype=torch.float64)


# our solver finds the same minimiser as the library's Newton solver
F_, t_, ll_, la_ = problem(8)
irls = RobustRidgeFitIRLS()
with torch.no_grad():
    y_irls, _ = irls.solve(F_, t_, ll_, la_)
    y_newton, _ = RobustRidgeFit().solve(F_, t_, ll_, la_)
assert torch.allclose(y_irls, y_newton, atol=1e-9)
print(f"IRLS converged in {irls.iterations} iterations")

# %% [markdown]
# Three layers around the same node class, one per backward strategy, on random problems
# with `m` unknowns (`k = 2m` samples, batch of 8). First, all three must give the same
# gradient.

# %%
SOLVERS = ("dense", "cg", "unroll")
layers = {name: dt.DeclarativeLayer(RobustRidgeFitIRLS(), linear_solver=name)
          for name in SOLVERS}
grads = {}
for name, lay in layers.items():
    Fg = F_.clone().requires_grad_(True)
    y = lay(Fg, t_, ll_, la_)
    (grads[name],) = torch.autograd.grad(y.square().sum(), Fg)
for name in ("cg", "unroll"):
    assert torch.allclose(grads[name], grads["dense"], rtol=1e-6, atol=1e-8), name
print("dense, cg and unroll agree on the gradient")

# %% [markdown]
# Now the wall time of the forward and of the backward pass, and the peak memory of both
# (the profiler's allocation trace on the CPU, `torch.cuda.max_memory_allocated` on a GPU).

# %%
sizes = (4, 8) if SMOKE else (16, 32, 64, 128)
rows = []
for m in sizes:
    F_, t_, ll_, la_ = problem(m)
    for name, lay in layers.items():
        Fg = F_.clone().requires_grad_(True)
        r = measure(lambda: lay(Fg, t_, ll_, la_), repeats=1 if SMOKE else 5, warmup=not SMOKE)
        rows.append({"solver": name, "size": m, **r})
print(f"{'m':>4s} {'solver':>7s} {'forward':>10s} {'backward':>10s} {'peak memory':>12s}")
for r in rows:
    print(f"{r['size']:4d} {r['solver']:>7s} {1e3 * r['forward_seconds']:7.1f} ms "
          f"{1e3 * r['backward_seconds']:7.1f} ms {r['bytes'] / 2**20:8.2f} MiB")

# %%
fig = solver_comparison_figure(rows)
fig

# %% [markdown]
# What to read in these numbers (at full size; the smoke-test sizes are too small to show
# much). *cg* never forms `H`: each iteration costs one Hessian–vector product, so its memory
# grows like the data `F`, `O(b k m)`. *dense* forms `H` by `m` Hessian–vector products
# evaluated at once (a vmap over the backward pass) and factors it: fast while `m` is small,
# but the vmapped products hold `m` copies of an intermediate as large as `F` (`b × k × m`),
# so its memory grows like `b k m²` — far more than the `b m²` entries of `H` itself. *unroll* keeps the graph of every
# IRLS iteration (each with its own `m × m` system and Cholesky factor), so its memory grows
# with the iteration count times `b m²`, and its backward pass re-traverses all of them.
# Timings come from this notebook run only (one machine, one thread, shared with whatever
# else runs); `bench/` measures them properly.

# %% [markdown]
# ## Summary
#
# - A new layer is an objective (`objective(*xs, y) -> (b,)`), optionally a starting point
#   (`initial_guess`) or a solver of its own (`solve`); `DeclarativeLayer` supplies the
#   backward pass by Prop. 4.4.
# - `check_gradient` (finite differences, optimality residual, conditioning) and a closed-form
#   limit (α → ∞: ridge regression) confirm the gradient.
# - Hyper-parameters of the lower problem are just more inputs: we learned `log λ` and
#   `log α` by back-propagating a validation loss through the fit.
# - Dense, CG and unrolled backward passes agree; they differ in time and memory (§6.1).
#
# ## Exercises
#
# 1. Run `check_gradient` on `RobustRidgeFitIRLS`. Then loosen its `tol` to `1e-4`: which
#    gradients degrade — implicit or unrolled — and why?
# 2. Replace pseudo-Huber by Welsch. What does `check_gradient` report when `H` is no longer
#    positive definite?
# 3. Learn one `log α` per task instead of one shared value. Does the validation loss improve?
# 4. Make `m` large enough that *dense* runs out of memory on your machine; does *cg* still
#    run?
