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
# # 01 — Declarative versus imperative nodes
#
# **What and why.** A layer of a deep network is usually *imperative*: it says how to compute
# its output, `y = f̃(x)`, and back-propagation differentiates that recipe step by step. A
# *declarative* node says instead what its output is: the solution of an optimisation problem
# in which `x` appears as data (paper Def. 4.1–4.2, Fig. 1). How the problem is solved is left
# open — any solver will do — and the gradient comes from the optimality conditions by
# implicit differentiation, not from the solver's code.
#
# This notebook works one example three ways: the implicit gradient of the declarative node,
# central finite differences, and automatic differentiation through the iterations of a
# gradient-descent solver ("unrolling"). It ends with Prop. 4.10: every imperative node is
# also a declarative one.
#
# Vocabulary used in every notebook: `x` the input, `y` the solution, `Dy` its Jacobian
# (`m × n`), `v` the gradient arriving from the layers above.

# %%
# %matplotlib inline
import autograd.numpy as anp
import matplotlib.pyplot as plt
import numpy as np
from autograd import jacobian

import ddn
from ddn.reference import DeclarativeNode, ImperativeNode
from ddn.utils import is_smoke
from ddn.viz import save_figure
from ddn.viz.declarative import UnrollingExplorer, draw_node_schematic, logsumexp_gd_iterates

print("ddn", ddn.__version__, "| smoke run:", is_smoke())

# %% [markdown]
# ## The maths
#
# **Imperative node (Def. 4.1).** `y = f̃(x; θ)`, an explicit function.
#
# **Declarative node (Def. 4.2).** $y(x) \in \arg\min_{u \in C(x)} f(x, u; \theta)$: the output
# is *defined* as a minimiser. Parameters θ are treated as extra inputs, so below we only
# talk about `x`.
#
# **A first example.** Take
#
# $$ f(x, u) = \sum_{i=1}^n e^{x_i - u} + u, \qquad x \in \mathbb{R}^n,\ u \in \mathbb{R}. $$
#
# It is strictly convex in `u`, and setting its derivative to zero,
# $D_Y f = 1 - \sum_i e^{x_i - u} = 0$, gives $y = \log \sum_i e^{x_i}$: the log-sum-exp,
# defined declaratively. Differentiating the optimality condition $D_Y f(x, y(x)) = 0$ with
# respect to `x` (Prop. 4.4, derived in notebook 02) gives $Dy = -H^{-1} B$ with
#
# $$ H = D^2_{YY} f = \sum_i e^{x_i - y} = 1, \qquad B = D^2_{XY} f = -\big(e^{x_1 - y}, \dots,
# e^{x_n - y}\big), $$
#
# so $Dy = \mathrm{softmax}(x)$ — the closed form we check against.

# %% [markdown]
# ## Minimal code
#
# A declarative node is a subclass that states the objective (written with `autograd.numpy`)
# and, optionally, a solver. Here we let the library's default damped Newton solver find `y`
# from a sensible starting point; the gradient never looks at how `y` was found.

# %%
class LogSumExpNode(DeclarativeNode):
    """y(x) = argmin_u sum_i exp(x_i - u) + u = log sum_i exp(x_i)."""

    def __init__(self, n):
        super().__init__(n, 1)

    def objective(self, x, y):
        return anp.sum(anp.exp(x - y[0])) + y[0]

    def initial_guess(self, x):
        return np.array([np.max(x)])


x = np.array([0.3, -1.0, 2.0, 0.5])
node = LogSumExpNode(len(x))
y, ctx = node.solve(x)
Dy = node.jacobian(x, y, ctx)       # (m, n) = (1, 4), by Prop. 4.4
print("y  =", y, " log-sum-exp:", np.logaddexp.reduce(x))
print("Dy =", Dy, "\nsoftmax(x) =", np.exp(x - np.logaddexp.reduce(x)))

# %% [markdown]
# ## Check: closed form and finite differences
#
# Three oracles agree: the closed form (`softmax`), central finite differences of the solver's
# output, and the implicit gradient.

# %%
def central_differences(fn, x, eps=1e-6):
    """(m, n) Jacobian of fn at x by central differences, one input at a time."""
    cols = [(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in np.eye(len(x))]
    return np.column_stack(cols)


softmax = np.exp(x - np.logaddexp.reduce(x))
Dy_fd = central_differences(lambda z: node.solve(z)[0], x)
assert np.allclose(y, np.logaddexp.reduce(x), atol=1e-10)
assert np.allclose(Dy, softmax[None, :], atol=1e-10)
assert np.allclose(Dy, Dy_fd, atol=1e-7)
print("max |implicit - finite differences| =", np.abs(Dy - Dy_fd).max())

# %% [markdown]
# ## The unrolled alternative
#
# Instead of a Newton solver, run gradient descent on `f(x, ·)`,
# $u_{k+1} = u_k - \eta\,(1 - \sum_i e^{x_i - u_k})$, and differentiate the whole loop with
# autograd. `ddn.viz.declarative.logsumexp_gd_iterates` is exactly that loop (five lines; read
# it with `logsumexp_gd_iterates??`). Its derivative `d u_k / dx` only approaches `Dy` as the
# iterates converge, and it costs memory and time proportional to the number of steps; the
# implicit gradient needs only the final `y`.

# %%
steps = 30 if is_smoke() else 60
for lr in (0.3, 1.0):
    u = logsumexp_gd_iterates(x, steps, lr)
    du = jacobian(lambda z: logsumexp_gd_iterates(z, steps, lr)[-1])(x)
    print(f"lr={lr}: |u_K - y| = {abs(u[-1] - y[0]):.1e}, "
          f"|d u_K/dx - Dy| = {np.abs(du - Dy[0]).max():.1e}")
assert np.allclose(du, Dy[0], atol=1e-8)   # with lr = 1 the unrolled gradient converges

# %% [markdown]
# For this objective, `−H⁻¹B = exp(x − u) / Σ exp(x − u)` equals `softmax(x)` at *any* `u`, so
# the implicit formula is exact even before the solver converges; that is a coincidence of
# this example (for other problems its error shrinks in proportion to `|u_k − y|`). The
# unrolled gradient, by contrast, is only as good as the iterations it went through.
#
# ## Play with it
#
# Move the number of steps and the step size: the left panel shows the iterates, the right
# panel the error of both gradients (log scale).

# %%
# NBVAL_IGNORE_OUTPUT
explorer = UnrollingExplorer(x, steps=20, lr=0.5)
explorer.interact(steps=(0, 60), lr=(0.05, 1.0, 0.05));

# %% [markdown]
# The same picture without a kernel (20 steps with `lr = 0.5`), and the schematic of the two
# kinds of node (paper Fig. 1 in spirit). Both are saved to `figures/`.

# %%
explorer.update(steps=20, lr=0.5)
_, err_unrolled, err_implicit = explorer.compute()
assert err_implicit.max() < 1e-12    # -H⁻¹B at u_k is softmax(x) at every iterate (see above)
assert err_unrolled[-1] > 1e-7       # after 20 slow steps the unrolled gradient still lags behind
explorer.fig

# %%
fig1 = draw_node_schematic()
save_figure(fig1, "fig1_declarative_vs_imperative")
fig1

# %% [markdown]
# ## Prop. 4.10 — imperative nodes are declarative
#
# Any explicit layer `f̃` is the minimiser of $\tfrac12 \|u - \tilde f(x)\|^2$. There $H = I$
# and $B = -D\tilde f(x)$, so $Dy = -H^{-1}B = D\tilde f(x)$: the declarative machinery
# reproduces ordinary back-propagation. `ImperativeNode(fn, n, m)` wraps any autograd-traceable
# function this way.

# %%
rng = np.random.default_rng(1)
W = rng.normal(size=(3, 4))


def layer(z):
    return anp.tanh(anp.dot(W, z))


wrapped = ImperativeNode(layer, n=4, m=3)
y_imp, ctx_imp = wrapped.solve(x)
assert np.allclose(y_imp, layer(x))
assert np.allclose(wrapped.jacobian(x, y_imp, ctx_imp), jacobian(layer)(x), atol=1e-10)
v = rng.normal(size=3)
assert np.allclose(wrapped.vjp(x, v, y_imp, ctx_imp), v @ jacobian(layer)(x), atol=1e-10)
print("ImperativeNode reproduces the layer's Jacobian and VJP")

# %% [markdown]
# ## Summary
#
# - A declarative node defines `y` as a minimiser; the forward pass may use any solver.
# - Its gradient comes from the optimality condition: here `Dy = −H⁻¹B = softmax(x)`, checked
#   against finite differences and a closed form.
# - Unrolling a solver gives a gradient only as accurate as the iterations run, at a memory
#   cost that grows with them; the implicit gradient needs only `y`.
# - Every imperative layer is a declarative node with `H = I` (Prop. 4.10).
#
# ## Exercises
#
# 1. Replace the objective by $\sum_i e^{(x_i - u)/T} + u/T$ (a temperature `T`). What are `y`
#    and `Dy`? Check your answer with `central_differences`.
# 2. Run `logsumexp_gd_iterates` with `lr = 1.5`. What happens to the iterates and to the
#    unrolled gradient? Does the implicit gradient care?
# 3. Wrap `anp.sort` (or `anp.maximum(z, 0)`) in an `ImperativeNode`. Where is its Jacobian
#    undefined, and what does the node return there?
