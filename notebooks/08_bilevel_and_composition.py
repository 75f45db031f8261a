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
# # 08 — Learning through declarative nodes: bi-level optimisation and composition
#
# **What and why.** Training a network with a declarative node is a *bi-level* problem
# (paper Eq. 10–11, Fig. 2): the upper level adjusts parameters to reduce a loss `J`, the
# lower level solves the node's optimisation problem for the current parameters. The chain
# rule with the implicit `Dy` gives the upper-level gradient. Two things follow: when `J` is
# the lower problem's own objective, that gradient needs no back-propagation through the node
# at all (Eq. 12); and nodes chain like any layers, the VJPs applied right to left
# (Eq. 39–41). This notebook learns a parameter through a declarative node and checks both.

# %%
# %matplotlib inline
import autograd.numpy as anp
import numpy as np

from ddn.reference import (ComposedNode, DeclarativeNode, ImperativeNode, SoftmaxNode,
                           UnitSphereNode, shortcut_gradient, upper_gradient)
from ddn.utils import is_smoke
from ddn.viz import save_figure
from ddn.viz.bilevel import (THETA_STAR, BilevelDescent, bilevel_loss_and_grad, draw_bilevel,
                             shrinkage_data)

# %% [markdown]
# ## The maths
#
# **Bi-level learning (Eq. 10–11).**
#
# $$ \min_\theta\ J(x, y) \quad\text{subject to}\quad y \in \arg\min_u f(x, u; \theta). $$
#
# Treat θ as one more input of the node. By the chain rule,
# $\frac{dJ}{d\theta} = D_\theta J + D_Y J\; D_\theta y$, and the second term is a VJP with
# $v = D_Y J^\top$ — computed by the node without forming $D_\theta y$
# (`ddn.reference.upper_gradient`).
#
# **The shortcut (Eq. 12).** If $J(x, y) = f(x, y)$ and the lower problem is unconstrained,
# then $D_Y f(x, y) = 0$ at the minimiser, so $\frac{dJ}{dx} = D_X f(x, y)$: the gradient of
# the optimal value needs only a partial derivative of `f` (`shortcut_gradient`).
#
# **Composition (Eq. 39–41).** For $y = y_2(y_1(x))$, $Dy = Dy_2\, Dy_1$, and back-propagation
# computes $v^\top Dy_2$ first, then $(v^\top Dy_2)\,Dy_1$: one VJP per node, right to left,
# never a full Jacobian.

# %% [markdown]
# ## Minimal code: learn a shrinkage parameter
#
# Each data point $x_i$ passes through the node
# $y_i = \arg\min_u \tfrac12(u - x_i)^2 + \theta\sqrt{1 + u^2}$ (the shrinkage of notebook 02).
# The targets $t_i$ were made by the same node with $\theta^\star = 0.8$; the upper loss is
# $J = \tfrac12\sum_i (y_i - t_i)^2$. The node's input is $z = (x_1, \dots, x_N, \theta)$.

# %%
class Shrinkage(DeclarativeNode):
    def __init__(self, N):
        super().__init__(N + 1, N)

    def objective(self, z, y):
        x, theta = z[:-1], z[-1]
        return anp.sum(0.5 * (y - x) ** 2 + theta * anp.sqrt(1.0 + y * y))


data_x, data_t = shrinkage_data(n=12 if is_smoke() else 25)
node = Shrinkage(len(data_x))


def J(z, y):
    return 0.5 * anp.sum((y - data_t) ** 2)


theta = 2.5
z = np.r_[data_x, theta]
y, ctx = node.solve(z)
dJ = upper_gradient(J, node, z, y, ctx)       # (N + 1,): d J / d(x_1..x_N, theta)
print("dJ/dtheta =", dJ[-1])

# %% [markdown]
# ## Check
#
# Against the closed form of `ddn.viz.bilevel` (`dy_i/dθ = −B_i/H_i` with
# $B_i = y_i/\sqrt{1 + y_i^2}$) and a central difference of the upper loss through the solver:

# %%
def upper_loss(theta):
    zz = np.r_[data_x, theta]
    return J(zz, node.solve(zz)[0])


eps = 1e-6
dJ_fd = (upper_loss(theta + eps) - upper_loss(theta - eps)) / (2 * eps)
dJ_closed = bilevel_loss_and_grad(theta, data_x, data_t)[1]
print(f"implicit {dJ[-1]:.8f}   closed form {dJ_closed:.8f}   finite differences {dJ_fd:.8f}")
assert np.isclose(dJ[-1], dJ_closed, rtol=1e-8) and np.isclose(dJ[-1], dJ_fd, rtol=1e-6)

# %% [markdown]
# Now learn θ by gradient descent on the upper level; every step solves the lower level and
# back-propagates through it implicitly.

# %%
steps, lr = (6, 0.05) if is_smoke() else (30, 0.05)
thetas = [2.5]
for _ in range(steps):
    zz = np.r_[data_x, thetas[-1]]
    yy, cc = node.solve(zz)
    thetas.append(thetas[-1] - lr * upper_gradient(J, node, zz, yy, cc)[-1])
print("theta:", np.round(thetas, 4))
assert upper_loss(thetas[-1]) < upper_loss(thetas[0])
if not is_smoke():
    assert abs(thetas[-1] - THETA_STAR) < 1e-2

# %% [markdown]
# ## The Eq. 12 shortcut
#
# Take the lower problem's own objective as the upper loss, $J = f$ (the *optimal value*
# $\min_u f(z, u)$). Back-propagating through the node and the partial derivative $D_X f$
# agree, because $D_Y f = 0$ at the solution:

# %%
full = upper_gradient(node.objective, node, z, y, ctx)
short = shortcut_gradient(node, z, y)


def value(zz):
    return node.objective(zz, node.solve(zz)[0])


value_fd = np.array([(value(z + eps * e) - value(z - eps * e)) / (2 * eps) for e in np.eye(len(z))])
assert np.allclose(full, short, atol=1e-8) and np.allclose(short, value_fd, atol=1e-5)
print("shortcut = full back-propagation = finite differences; dJ/dtheta =", short[-1])

# %% [markdown]
# ## Composition (Eq. 39–41)
#
# A linear layer (imperative, wrapped by Prop. 4.10), then softmax (Cor. 4.9), then projection
# onto the unit sphere (Cor. 4.7), as one `ComposedNode`. Its `vjp` runs the three VJPs right
# to left; we check it against the product of the three Jacobians and finite differences.

# %%
rng = np.random.default_rng(0)
W = rng.normal(size=(3, 4))
chain = ComposedNode(ImperativeNode(lambda a: anp.dot(W, a), 4, 3), SoftmaxNode(3),
                     UnitSphereNode(3))
xc = rng.normal(size=4)
yc, ctxc = chain.solve(xc)
v = rng.normal(size=3)

stages = ctxc["stages"]                          # (input, output, ctx) of each node
Dys = [n.jacobian(zi, yi, ci) for n, (zi, yi, ci) in zip(chain.nodes, stages)]
product = Dys[2] @ Dys[1] @ Dys[0]               # Dy = Dy_3 Dy_2 Dy_1
fd = np.column_stack([(chain.solve(xc + eps * e)[0] - chain.solve(xc - eps * e)[0]) / (2 * eps)
                      for e in np.eye(4)])
assert np.allclose(chain.vjp(xc, v, yc, ctxc), v @ product, atol=1e-10)
assert np.allclose(product, fd, atol=1e-7)
print("vᵀDy (right to left) =", chain.vjp(xc, v, yc, ctxc))

# %% [markdown]
# ## Play with it
#
# Gradient descent on θ from a starting value `theta0` with step `lr`: the left panel shows
# the upper objective $J(\theta)$ and the iterates, the right panel the data and the lower
# level's solution curve before and after.

# %%
# NBVAL_IGNORE_OUTPUT
descent = BilevelDescent(data_x, data_t)
descent.interact(theta0=(0.0, 3.0, 0.05), lr=(0.005, 0.2, 0.005), steps=(0, 40));

# %%
descent.update(theta0=2.5, lr=lr, steps=steps)
assert np.allclose(descent.iterates, thetas, atol=1e-6)   # the picture runs the same descent
descent.fig

# %% [markdown]
# Paper Fig. 2 in spirit — the lower problem's landscape with its solution curve, and the upper
# objective with implicit gradients as tangents — saved to `figures/`:

# %%
fig2 = draw_bilevel(data_x, data_t)
save_figure(fig2, "fig2_bilevel")
fig2

# %% [markdown]
# ## Summary
#
# - Learning through a declarative node is bi-level optimisation; its gradient is the chain
#   rule with the implicit VJP (`upper_gradient`).
# - When the upper loss is the lower objective itself (unconstrained), the gradient is just
#   $D_X f$ (Eq. 12, `shortcut_gradient`): no back-propagation through the node.
# - Nodes compose; back-propagation applies their VJPs right to left (Eq. 39–41).
#
# ## Exercises
#
# 1. Learn θ and a scale `s` of the inputs together ($y_i = \arg\min_u \tfrac12(u - s x_i)^2 +
#    \dots$). What is the extra column of `B`?
# 2. Why does Eq. 12 fail for a constrained lower problem? Try `shortcut_gradient` on
#    `UnitSphereNode` and compare with `upper_gradient(node.objective, ...)`.
# 3. Time `chain.vjp` against forming `product` for a wider first layer (`W` of shape
#    `(3, 2000)`). Which grows faster, and why?
