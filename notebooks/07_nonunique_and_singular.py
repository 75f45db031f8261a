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
# # 07 — Non-unique solutions and singular Hessians
#
# **What and why.** Prop. 4.4 assumed the solution is isolated (`H` non-singular). Two things
# can go wrong (§4.7.4). (1) The problem has several isolated minimisers: each has its own
# `Dy`, and the gradient of a loss can *flip sign* depending on which one the solver returned
# (Eq. 49–50) — so the backward pass must use exactly the forward pass's `y`. (2) The
# minimisers form a continuum: `H` is singular and `Dy` is not defined at all until we choose a
# remedy — reparametrise/normalise, add a proximal term, or use a pseudo-inverse (Eq. 51–56).
# This notebook shows both and compares the three remedies side by side.

# %%
# %matplotlib inline
import autograd.numpy as anp
import numpy as np
from autograd import grad, hessian, jacobian

from ddn import DDNError
from ddn.reference import (DirectionAlignmentNode, NormalizedDirectionAlignmentNode,
                           TwoSolutionNode, upper_gradient)
from ddn.viz.singular import SingularRemediesView, TwoSolutionView, alignment_remedies


def central_differences(fn, x, eps=1e-6):
    cols = [(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in np.eye(len(x))]
    return np.column_stack(cols)


# %% [markdown]
# ## Part 1 — two solutions, two gradients (Eq. 49–50)
#
# $y(x) \in \arg\min_u (x u^2 - 1)^2$ for $x > 0$ has the two minimisers $y = \pm 1/\sqrt{x}$.
# With $D_Y f = 4xu(xu^2 - 1)$, at either minimiser (where $xy^2 = 1$)
# $H = D^2_{YY} f = 8x^2y^2 = 8x \ne 0$ and $B = D^2_{XY} f = 4xy^3 = 4y = \pm 4/\sqrt{x}$, so
# Prop. 4.4 gives $Dy = -B/H = \mp 1/(2x^{3/2})$ — different signs on the two branches.
# `TwoSolutionNode(sign=±1)` is a deterministic solver for each branch.

# %%
x = np.array([0.5])
f2 = lambda x, u: (x * u**2 - 1.0) ** 2                                        # noqa: E731
for sign in (+1, -1):                 # H and B as stated above, checked with autograd
    y1 = sign / np.sqrt(x[0])
    assert np.isclose(grad(grad(f2, 1), 1)(x[0], y1), 8 * x[0])                 # H = 8x
    assert np.isclose(grad(grad(f2, 1), 0)(x[0], y1), 4 * y1)                   # B = 4y
J = lambda x, y: 0.5 * anp.sum((y - 2.0) ** 2)    # a downstream loss  # noqa: E731
for sign in (+1, -1):
    node = TwoSolutionNode(sign=sign)
    y, ctx = node.solve(x)
    Dy = node.jacobian(x, y, ctx)
    assert np.isclose(Dy[0, 0], -sign / (2 * x[0] ** 1.5))                       # closed form
    assert np.allclose(Dy, central_differences(lambda z: node.solve(z)[0], x), atol=1e-7)
    dJ = upper_gradient(J, node, x, y, ctx)
    print(f"branch {sign:+d}: y = {y[0]:+.4f}, Dy = {Dy[0, 0]:+.4f}, dJ/dx = {dJ[0]:+.4f}")
    if sign == 1:
        dJ_plus = dJ
assert np.sign(dJ[0]) != np.sign(dJ_plus[0])       # the loss gradient flips with the branch

# %% [markdown]
# **Use the forward pass's `y`.** Passing `y` and `ctx` from `solve` into `jacobian`/`vjp`
# guarantees the backward pass differentiates the solution actually used. Pairing a node
# with the *other* solution silently gives the other branch's gradient:

# %%
node = TwoSolutionNode(sign=+1)
y_other = np.array([-1 / np.sqrt(x[0])])
print("Dy at the returned y:", node.jacobian(x)[0, 0], " at the other y:",
      node.jacobian(x, y_other, {})[0, 0])
assert np.isclose(node.jacobian(x, y_other, {})[0, 0], -node.jacobian(x)[0, 0])

# %%
# NBVAL_IGNORE_OUTPUT
two = TwoSolutionView()
two.interact(x=(0.3, 3.0, 0.05), branch=[1, -1]);

# %%
two.update(x=0.5, branch=-1)

# %% [markdown]
# ## Part 2 — a singular Hessian (Eq. 52–56)
#
# $f(x, u) = -x^\top u / \|u\|$ rewards aligning `u` with `x` and ignores $\|u\|$: every
# $y = \beta x$ with $\beta > 0$ minimises it. At the representative $y = x/\|x\|$:
#
# $$ H = \|x\|\,(I - yy^\top), \qquad B = -(I - yy^\top), $$
#
# and `H` is singular along `y` — the direction in which the solution set extends. Three
# remedies:
#
# 1. **Normalise** (Eq. 55): minimise $-x^\top u$ subject to $\|u\|^2 = 1$. Now the Lagrangian
#    Hessian is $\|x\| I$, and Cor. 4.7 gives $Dy = (I - yy^\top)/\|x\|$.
# 2. **Pseudo-inverse** (Eq. 56): $Dy = -H^+B = (I - yy^\top)/\|x\|$ — the same answer here,
#    and the minimum-norm member of the family $-H^+B + (I - H^+H)Z$ (Eq. 51).
# 3. **Proximal term**: add $\tfrac{\delta}{2}\|u - y\|^2$, so $H \to H + \delta I$ and
#    $Dy = (I - yy^\top)/(\|x\| + \delta)$: well defined, but biased by `δ`.
#
# First check the formulas for `H` and `B` with autograd:

# %%
rng = np.random.default_rng(3)
x = rng.normal(size=3) * 1.5
y = x / np.linalg.norm(x)
P = np.eye(3) - np.outer(y, y)
f = lambda x, u: -anp.dot(x, u) / anp.sqrt(anp.dot(u, u))   # noqa: E731
H = hessian(lambda u: f(x, u))(y)
B = jacobian(lambda z: grad(f, 1)(z, y))(x)
assert np.allclose(H, np.linalg.norm(x) * P) and np.allclose(B, -P)
print("eigenvalues of H:", np.linalg.eigvalsh(H).round(6), " (one is zero: singular)")

# %% [markdown]
# Now the library: by default it refuses a singular `H`; each remedy is an explicit option.

# %%
try:
    DirectionAlignmentNode(3).jacobian(x)
    raised = False
except DDNError as err:
    raised = True
    print("default:", str(err)[:200], "...")
assert raised

delta = 0.5
Dy_pinv = DirectionAlignmentNode(3, singular="pinv").jacobian(x)
Dy_prox = DirectionAlignmentNode(3, singular="proximal", proximal_delta=delta).jacobian(x)
Dy_norm = NormalizedDirectionAlignmentNode(3).jacobian(x)
ref = alignment_remedies(x, delta)
Dy_fd = central_differences(lambda z: z / np.linalg.norm(z), x)   # d(x/||x||)/dx

assert np.allclose(Dy_pinv, P / np.linalg.norm(x), atol=1e-10) and np.allclose(Dy_pinv, Dy_fd, atol=1e-7)
assert np.allclose(Dy_norm, Dy_pinv, atol=1e-7)
assert np.allclose(Dy_prox, P / (np.linalg.norm(x) + delta), atol=1e-10)
for name, mine in (("pinv", Dy_pinv), ("normalised", Dy_norm), ("proximal", Dy_prox)):
    assert np.allclose(mine, ref[name], atol=1e-7)
    print(f"{name:10s}: max |Dy - d(x/||x||)/dx| = {np.abs(mine - Dy_fd).max():.2e}")

# %% [markdown]
# **Eq. 51: a family of valid answers.** When the solution set is a continuum, different
# *solution maps* pass through the same `y`, and each has its own derivative. At
# $\|x\| = 1$, both $y_1(x) = x/\|x\|$ and $y_2(x) = x$ pick a minimiser for every `x` and agree
# at `x`; their Jacobians are `P` and `I`. Both lie in the family
# $-H^+B + (I - H^+H)Z$, with $I - H^+H = yy^\top$ (take $Z = 0$ and $Z = I$):

# %%
x1 = x / np.linalg.norm(x)
H1, B1 = hessian(lambda u: f(x1, u))(x1), jacobian(lambda z: grad(f, 1)(z, x1))(x1)
Hp = np.linalg.pinv(H1)
null = np.eye(3) - Hp @ H1
assert np.allclose(null, np.outer(x1, x1))
assert np.allclose(-Hp @ B1, central_differences(lambda z: z / np.linalg.norm(z), x1), atol=1e-7)
assert np.allclose(-Hp @ B1 + null @ np.eye(3), np.eye(3))      # the Jacobian of y_2(x) = x

# %% [markdown]
# ## Play with it
#
# Left: `x`, the ray of minimisers, `y`, and how `y` moves when `x` is pushed sideways under
# each remedy. Right: error of each remedy against $(I - yy^\top)/\|x\|$ as the proximal weight
# `δ` varies: the pseudo-inverse and normalisation are exact, the proximal term's bias grows
# like $\delta / \|x\|^2$.

# %%
# NBVAL_IGNORE_OUTPUT
remedies = SingularRemediesView()
remedies.interact(angle=(-3.1, 3.1, 0.05), norm=(0.2, 3.0, 0.05), delta=(0.001, 3.0, 0.01));

# %%
remedies.update(angle=0.6, norm=1.5, delta=0.5)

# %% [markdown]
# ## Summary
#
# - Several isolated solutions: each has its own `Dy`; a downstream gradient may flip sign
#   with the choice. Use a deterministic solver and back-propagate with the forward `y`.
# - A continuum of solutions makes `H` singular. Normalising the output (Eq. 55) or the
#   pseudo-inverse (Eq. 56) give the derivative of the natural solution map; a proximal term
#   always works but biases the gradient by `δ`. The library makes you choose (`singular=`).
#
# ## Exercises
#
# 1. In Part 1, with $J = \tfrac12 y^2$, does the gradient still flip? Why (look at $y\,Dy$)?
# 2. Show that $-H^+B$ is a descent direction for `J` in Part 2 whatever the solution map.
# 3. Replace $\|u\|$ by $\|u\|_1$ in `f`. Which remedy still applies, and what is the
#    normalised problem?
