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
# # 02 — Unconstrained nodes, and why the order of evaluation matters
#
# **What and why.** The simplest declarative node has no constraints:
# $y(x) \in \arg\min_u f(x, u)$. Its gradient is one line, Prop. 4.4: $Dy = -H^{-1}B$. But
# back-propagation never needs `Dy` itself, only the vector–Jacobian product $v^\top Dy$ with
# the incoming gradient `v`. Computing it as $-(v^\top H^{-1})B$ — one linear solve, then one
# product — instead of $-v^\top(H^{-1}B)$ is the difference between a cheap and an expensive
# backward pass (paper §6.1). This notebook derives Prop. 4.4, checks it, and times both orders.

# %%
# %matplotlib inline
import time

import autograd.numpy as anp
import matplotlib.pyplot as plt
import numpy as np

from ddn.check import check_gradient
from ddn.reference import DeclarativeNode, implicit_vjp
from ddn.utils import is_smoke
from ddn.viz.unconstrained import ImplicitTangent, shrinkage_derivative, shrinkage_solve

# %% [markdown]
# ## The maths (Prop. 4.4)
#
# Let $f: \mathbb{R}^n \times \mathbb{R}^m \to \mathbb{R}$ be twice differentiable near
# $(x, y(x))$ with $y(x)$ a minimiser (any stationary point will do). Then
# $D_Y f(x, y(x)) = 0$ for every `x` near the current one, so its total derivative vanishes:
#
# $$ 0 = \frac{d}{dx} D_Y f(x, y(x))^\top = D^2_{XY} f + D^2_{YY} f \; Dy
#    \quad\Longrightarrow\quad Dy(x) = -H^{-1} B, $$
#
# with $H = D^2_{YY} f$ (`m × m`) and $B = D^2_{XY} f$ (`m × n`), whenever `H` is non-singular.
#
# **The backward pass (§6.1).** With the incoming gradient `v` (`m`), back-propagation needs
# $v^\top Dy = -v^\top H^{-1} B$. Two ways to bracket it:
#
# - $-v^\top (H^{-1} B)$: solve `H` against all `n` columns of `B` — $O(m^2 n)$ after
#   factoring, plus an `m × n` intermediate;
# - $-(v^\top H^{-1}) B$: solve $H^\top w = v$ once, then $-w^\top B$ — $O(m^2 + mn)$ after
#   factoring, and `B` need never be formed (it is a vector–Jacobian product of $D_Y f$).
#
# `ddn.reference.implicit_vjp(v, H, pullback)` is exactly the second: `pullback(w, μ)` returns
# $w^\top B$ (a VJP of the first-order condition with respect to `x`).

# %% [markdown]
# ## Minimal code: a smooth regression node
#
# $$ y(x) = \arg\min_u \tfrac12 \|M u - x\|^2 + \lambda \sum_j \sqrt{1 + u_j^2}, $$
#
# a least-squares fit with a pseudo-Huber penalty on the coefficients, `x ∈ R^n`, `u ∈ R^m`.
# Here $H = M^\top M + \lambda\,\mathrm{diag}\big((1 + y_j^2)^{-3/2}\big)$ and $B = -M^\top$,
# so $Dy = H^{-1} M^\top$ in closed form.

# %%
class SmoothRegression(DeclarativeNode):
    def __init__(self, M, lam=0.5):
        self.M, self.lam = np.asarray(M, float), float(lam)
        super().__init__(self.M.shape[0], self.M.shape[1])

    def objective(self, x, y):
        r = anp.dot(self.M, y) - x
        return 0.5 * anp.dot(r, r) + self.lam * anp.sum(anp.sqrt(1.0 + y * y))


rng = np.random.default_rng(0)
n, m = 6, 3
M = rng.normal(size=(n, m))
node = SmoothRegression(M)
x = rng.normal(size=n)
y, ctx = node.solve(x)          # default: damped Newton
Dy = node.jacobian(x, y, ctx)   # (m, n), Prop. 4.4
print("y =", y)

# %% [markdown]
# ## Check
#
# Against the closed form, against central finite differences (via `ddn.check.check_gradient`,
# which also reports the optimality residual and the condition of `H`), and the two orders of
# the VJP against each other.

# %%
H = M.T @ M + node.lam * np.diag((1 + y * y) ** -1.5)   # H = D²_YY f
B = -M.T                                                 # B = D²_XY f
assert np.allclose(Dy, np.linalg.solve(H, M.T), atol=1e-9)

report = check_gradient(node, x)
print(report)
assert report.ok

v = rng.normal(size=m)
vjp_first_Dy = v @ (-np.linalg.solve(H, B))                          # vᵀ(H⁻¹B)
vjp_solve_first = implicit_vjp(v, H, pullback=lambda w, mu: w @ B)   # (vᵀH⁻¹)B
assert np.allclose(vjp_first_Dy, vjp_solve_first)
assert np.allclose(node.vjp(x, v, y, ctx), vjp_solve_first)

# %% [markdown]
# ## A picture of Prop. 4.4
#
# For a scalar input and output, `Dy` is the slope of the solution curve `y(x)`. With the same
# penalty, $f(x, u) = \tfrac12 (u - x)^2 + \lambda\sqrt{1 + u^2}$ has $H = 1 + \lambda(1 +
# y^2)^{-3/2}$ and $B = -1$: the tangent drawn on the right has slope $-B/H$. Move `x` and
# `λ`.

# %%
# NBVAL_IGNORE_OUTPUT
tangent = ImplicitTangent(x=1.5, lam=1.0)
tangent.interact(x=(-3.5, 3.5, 0.05), lam=(0.0, 3.0, 0.05));

# %%
xs, lam, eps = 1.5, 1.0, 1e-6
slope_fd = (shrinkage_solve(xs + eps, lam) - shrinkage_solve(xs - eps, lam)) / (2 * eps)
assert abs(shrinkage_derivative(xs, lam) - slope_fd) < 1e-8
tangent.update(x=xs, lam=lam)

# %% [markdown]
# ## Timing the two orders
#
# Random SPD `H` (`m × m`) and `B` (`m × n`) with `m = n`; the median of a few runs of each
# bracketing. `H` is factored once (Cholesky) outside the timings, so what is timed is the
# solve against `n` right-hand sides and the product, versus one solve and one product. (Timings are illustrative and machine dependent; the
# benchmarks in `bench/` measure speed properly.)

# %%
from scipy.linalg import cho_factor, cho_solve

sizes = [25, 50, 100, 200] if is_smoke() else [50, 100, 200, 400, 800, 1200]
repeats = 3 if is_smoke() else 5


def median_time(fn):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


rows = []
for size in sizes:
    R = rng.normal(size=(size, size))
    Hs = R @ R.T / size + np.eye(size)
    Bs = rng.normal(size=(size, size))
    vs = rng.normal(size=size)
    factor = cho_factor(Hs)
    a = -vs @ cho_solve(factor, Bs)       # vᵀ(H⁻¹B): n right-hand sides
    b = -cho_solve(factor, vs) @ Bs       # (vᵀH⁻¹)B: one right-hand side
    assert np.allclose(a, b, rtol=1e-6, atol=1e-8)
    rows.append((size,
                 median_time(lambda: -vs @ cho_solve(factor, Bs)),
                 median_time(lambda: -cho_solve(factor, vs) @ Bs)))
    print(f"m = n = {size:5d}: vᵀ(H⁻¹B) {rows[-1][1] * 1e3:8.2f} ms   "
          f"(vᵀH⁻¹)B {rows[-1][2] * 1e3:8.2f} ms")

# %%
t = np.array(rows)
fig, ax = plt.subplots(figsize=(5.5, 4))
ax.loglog(t[:, 0], t[:, 1] * 1e3, "o-", label=r"$v^\top (H^{-1} B)$: solve, then multiply")
ax.loglog(t[:, 0], t[:, 2] * 1e3, "s-", label=r"$(v^\top H^{-1}) B$: one solve (a VJP)")
ax.set_xlabel("m = n")
ax.set_ylabel("time [ms]")
ax.set_title("same number, different cost (§6.1)")
ax.legend()
plt.show()

# %% [markdown]
# The gap grows like `n`: $O(m^2 n)$ against $O(m^2 + mn)$. Factoring `H` ($O(m^3)$, left out
# above) is shared by both orders; what the VJP order removes is the solve against every
# column of `B` and the `m × n` intermediate. When `H` is never formed (conjugate gradients with Hessian–vector products),
# the VJP order is the only one available.
#
# ## Summary
#
# - Prop. 4.4: differentiating $D_Y f(x, y(x)) = 0$ gives $Dy = -H^{-1}B$.
# - Back-propagate $v^\top Dy$ as $-(v^\top H^{-1})B$: one solve with `H`, one vector–Jacobian
#   product with the first-order condition. Never form `Dy`.
# - `implicit_vjp` is that step on its own; `node.vjp` uses it.
#
# ## Exercises
#
# 1. Show that for `λ = 0` the node is least squares and $Dy = (M^\top M)^{-1} M^\top = M^+$.
# 2. Replace $\sqrt{1 + u^2}$ by $|u|$ (the lasso). Away from $u_j = 0$, $H = M^\top M$: is it
#    ever singular there? Where is `f` not twice differentiable, how often does the lasso
#    solution land exactly there, and what does `node.jacobian` return at such a point?
# 3. Write `pullback` for `SmoothRegression` without forming `B` (hint: $w^\top B = -(M w)^\top$).
