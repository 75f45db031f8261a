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
# # 03 — Equality constraints
#
# **What and why.** Many useful layers constrain their output: a unit vector, a probability
# vector, a point on a moving plane. Adding constraints $h(x, u) = 0$ changes the optimality
# condition — the gradient of `f` no longer vanishes, it is balanced by the constraints through
# Lagrange multipliers — and so changes `Dy`. This notebook derives Prop. 4.5, recovers the
# multipliers when the solver does not return them (Eq. 32), and specialises to one fixed
# constraint (Cor. 4.7) and to fixed linear constraints (Cor. 4.9), each checked against a
# closed form and finite differences.

# %%
# %matplotlib inline
import autograd.numpy as anp
import numpy as np

from ddn import DDNError
from ddn.check import check_gradient
from ddn.reference import (EqConstrainedNode, HyperplaneProjectionNode, SoftmaxNode,
                           UnitSphereNode)
from ddn.viz.equality import SimplexSoftmaxView, softmax_jacobian


def central_differences(fn, x, eps=1e-6):
    cols = [(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in np.eye(len(x))]
    return np.column_stack(cols)


# %% [markdown]
# ## The maths (Prop. 4.5)
#
# $y(x) \in \arg\min_u f(x, u)$ subject to $h(x, u) = 0$, with $h: \mathbb{R}^n \times
# \mathbb{R}^m \to \mathbb{R}^p$ and $\mathrm{rank}\, D_Y h(x, y) = p$ (a *regular* point,
# Def. 4.3). With the Lagrangian $L = f - \lambda^\top h$ (Eq. 23), a solution satisfies
#
# $$ D_Y f(x, y) = \lambda^\top D_Y h(x, y), \qquad h(x, y) = 0. $$
#
# Differentiating both with respect to `x`, and writing
# $A = D_Y h$ (`p × m`), $B = D^2_{XY} f - \sum_i \lambda_i D^2_{XY} h_i$ (`m × n`),
# $C = D_X h$ (`p × n`), $H = D^2_{YY} f - \sum_i \lambda_i D^2_{YY} h_i$ (`m × m`):
#
# $$ H\,Dy - A^\top D\lambda = -B, \qquad A\,Dy = -C, $$
#
# and eliminating $D\lambda$:
#
# $$ Dy = H^{-1}A^\top (A H^{-1} A^\top)^{-1} (A H^{-1} B - C) - H^{-1} B. $$
#
# **Multipliers (Eq. 32).** If the solver does not return λ, the stationarity condition
# determines it: $\lambda^\top = D_Y f\, A^\top (A A^\top)^{-1}$.
#
# **One fixed constraint (Cor. 4.7).** With `h(u)` independent of `x` and $a = D_Y h^\top$:
# $C = 0$ and $Dy = \big(H^{-1} a a^\top H^{-1} / (a^\top H^{-1} a) - H^{-1}\big) B$.
# Observation 4.8: then $a^\top Dy = 0$ — `y` moves only along the constraint surface.
#
# **Fixed linear constraints (Cor. 4.9).** $Au = b$: the constraints have no curvature, so
# `H` and `B` are those of `f` alone and no multipliers are needed:
# $Dy = \big(H^{-1}A^\top (A H^{-1} A^\top)^{-1} A H^{-1} - H^{-1}\big) B$.

# %% [markdown]
# ## Minimal code 1: projection onto the unit sphere (Cor. 4.7)
#
# $y = \arg\min_u \tfrac12\|u - x\|^2$ s.t. $\|u\|^2 = 1$, so $y = x / \|x\|$ and
# $Dy = (I - y y^\top)/\|x\|$. `UnitSphereNode` uses Cor. 4.7. We also state the same problem
# as a general `EqConstrainedNode` (Prop. 4.5, SLSQP solver, multipliers by Eq. 32) to see the
# two routes agree.

# %%
class SphereAsGeneralProblem(EqConstrainedNode):
    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return anp.dot(y, y) - 1.0

    def initial_guess(self, x):
        return x / np.linalg.norm(x) + 0.1


rng = np.random.default_rng(0)
x = rng.normal(size=3) * 2
sphere = UnitSphereNode(3)
general = SphereAsGeneralProblem(3, 3)
y, ctx = sphere.solve(x)
Dy = sphere.jacobian(x, y, ctx)

closed = (np.eye(3) - np.outer(y, y)) / np.linalg.norm(x)
assert np.allclose(Dy, closed, atol=1e-10)                                  # closed form
assert np.allclose(Dy, central_differences(lambda z: sphere.solve(z)[0], x), atol=1e-7)
assert np.allclose(general.jacobian(x), Dy, atol=1e-7)                     # Prop. 4.5 route
assert np.allclose(2 * y @ Dy, 0, atol=1e-10)                              # Obs. 4.8: a^T Dy = 0
print("Dy =\n", Dy)

# %% [markdown]
# **Eq. 32 by hand.** With $A = 2y^\top$ and $D_Y f = (y - x)^\top$:
# $\lambda = (y - x)^\top 2y / (4 y^\top y) = (1 - \|x\|)/2$. The general node found it from its
# own solution:

# %%
A = 2 * y[None, :]
lam_eq32 = (y - x) @ A.T @ np.linalg.inv(A @ A.T)
opt = general.optimality(x)
print("λ by Eq. 32:", lam_eq32, " closed form:", (1 - np.linalg.norm(x)) / 2,
      " node:", opt.multipliers)
assert np.allclose(lam_eq32, (1 - np.linalg.norm(x)) / 2)
assert np.allclose(opt.multipliers, lam_eq32, atol=1e-6)

# %% [markdown]
# **Do not merge constraints.** The observation after Cor. 4.7 warns against writing several
# constraints as one, $\sum_i h_i^2 = 0$: at a feasible point its gradient is zero, so
# `A = D_Y h` has rank 0 and the Lagrange conditions break down (Eq. 32 would produce an absurd
# multiplier). The library checks for a vanishing constraint gradient and refuses with a `DDNError` rather than
# returning a wrong gradient:

# %%
class MergedConstraints(EqConstrainedNode):
    """u on the unit sphere AND on the plane u_3 = 0, merged into one squared constraint."""

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def equality_constraints(self, x, y):
        return (anp.dot(y, y) - 1.0) ** 2 + y[2] ** 2


merged = MergedConstraints(3, 3)
y_circle = np.r_[x[:2] / np.linalg.norm(x[:2]), 0.0]     # the true solution
try:
    merged.jacobian(x, y_circle, {})
    raised = False
except DDNError as err:
    raised = True
    print("DDNError:", str(err)[:200], "...")
    assert "vanishes" in str(err)
assert raised

# %% [markdown]
# ## Minimal code 2: softmax as a declarative node (Cor. 4.9)
#
# $y = \arg\min_u \sum_i u_i \log u_i - x^\top u$ s.t. $\mathbf{1}^\top u = 1$. Stationarity
# gives $\log y_i + 1 - x_i = \lambda$, so $y = \mathrm{softmax}(x)$. Here
# $H = \mathrm{diag}(1/y)$, $B = -I$, $A = \mathbf{1}^\top$, and Cor. 4.9 gives
# $Dy = \mathrm{diag}(y) - y y^\top$ (Exercise 1).

# %%
sm = SoftmaxNode(3)
xs = np.array([0.5, 0.0, -0.3])
ys, ctxs = sm.solve(xs)
Dys = sm.jacobian(xs, ys, ctxs)
y_closed, Dy_closed = softmax_jacobian(xs)
assert np.allclose(ys, y_closed) and np.allclose(Dys, Dy_closed, atol=1e-10)
assert np.allclose(np.ones(3) @ Dys, 0, atol=1e-12)     # Obs. 4.8: stays on the simplex
print(check_gradient(sm, xs))

# %% [markdown]
# ## Play with it
#
# The solution on the probability simplex, with the three columns of `Dy` as arrows: they lie
# in the simplex because $\mathbf{1}^\top Dy = 0$. The temperature `T` solves
# $\arg\min_u T\sum_i u_i\log u_i - x^\top u$, i.e. `softmax(x / T)`.

# %%
# NBVAL_IGNORE_OUTPUT
simplex = SimplexSoftmaxView()
simplex.interact(x1=(-3.0, 3.0), x2=(-3.0, 3.0), x3=(-3.0, 3.0), temperature=(0.2, 3.0));

# %%
simplex.update(x1=0.5, x2=0.0, x3=-0.3, temperature=1.0)

# %% [markdown]
# ## Minimal code 3: a constraint that moves with the input (`C ≠ 0`)
#
# Project a fixed point `z` onto the hyperplane $a^\top u = b$ with $x = (a, b)$ as the input:
# now `h` depends on `x`, $C = D_X h = (y^\top, -1)$, and the bias term $-C$ in Prop. 4.5
# accounts for the surface moving. Closed form:
# $y = z - \frac{a^\top z - b}{\|a\|^2} a$.

# %%
z = np.array([1.0, 2.0, -0.5])
plane = HyperplaneProjectionNode(z)
xh = np.array([0.3, -1.0, 0.8, 0.4])        # a = xh[:3], b = xh[3]


def projection_closed_form(xx):
    a, b = xx[:3], xx[3]
    return z - (a @ z - b) / (a @ a) * a


yh, ctxh = plane.solve(xh)
Dyh = plane.jacobian(xh, yh, ctxh)
assert np.allclose(yh, projection_closed_form(xh), atol=1e-8)
assert np.allclose(Dyh, central_differences(projection_closed_form, xh), atol=1e-6)
print("Dy (3 x 4) =\n", Dyh.round(4))

# %% [markdown]
# ## Summary
#
# - With constraints, `Dy` is the unconstrained $-H^{-1}B$ plus a correction that keeps `y` on
#   the (possibly moving) constraint surface (Prop. 4.5); `H` and `B` include the constraint
#   curvature weighted by the multipliers.
# - Multipliers come from the solver or from Eq. 32.
# - Fixed constraints: $A\,Dy = 0$ (Obs. 4.8). One fixed constraint: Cor. 4.7. Linear ones:
#   Cor. 4.9, no multipliers needed.
# - Keep constraints separate; a merged $\sum h_i^2 = 0$ has a zero gradient and breaks the
#   conditions.
#
# ## Exercises
#
# 1. Derive $Dy = \mathrm{diag}(y) - yy^\top$ for softmax from Cor. 4.9 (use the
#    Sherman–Morrison-like structure of $H^{-1} = \mathrm{diag}(y)$).
# 2. Project onto the sphere of radius `r` instead. How do `λ` and `Dy` change? Check with
#    `central_differences`.
# 3. In `HyperplaneProjectionNode`, set $b = a^\top z$ (so `z` already lies on the plane).
#    Which terms of Prop. 4.5 vanish?
