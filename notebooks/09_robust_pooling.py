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
# # 09 — Robust pooling
#
# **What and why.** Average pooling summarises a set of numbers by their mean, and one wild
# value drags the mean wherever it likes. Written as an optimisation problem the mean is the
# minimiser of a sum of squares; swap the square for a penalty that grows more slowly and
# you get a pooling operation that shrugs off outliers (paper §5.1). No closed form exists
# for the robust versions, yet their gradient is one line: Prop. 4.4 applied to a
# one-dimensional problem. This notebook derives that line, checks it, plots the five
# penalties of the paper's table, and shows what non-convexity does — two local minima, and
# why the paper starts its solver from both the mean and the median.
#
# Vocabulary: `x` the pooled values (input), `y` the pooled value (solution), `Dy` its
# Jacobian, `v` the incoming gradient.

# %% [markdown]
# ## The maths
#
# Pooling `n` numbers `x_1, …, x_n` is the declarative node (paper Eq. 60)
#
# $$ y(x) \in \arg\min_{u \in \mathbb{R}} f(x, u) = \sum_{i=1}^{n} \phi(u - x_i; \alpha). $$
#
# With $\phi(z) = \tfrac12 z^2$ (Eq. 59) the minimiser is the mean. The paper's table lists
# four more penalties, from least to most robust:
#
# | penalty | $\phi(z;\alpha)$ | $\phi''(z)$ | convex | smooth |
# |---|---|---|---|---|
# | quadratic | $\tfrac12 z^2$ | $1$ | yes | yes |
# | pseudo-Huber (Eq. 62) | $\alpha^2\big(\sqrt{1 + (z/\alpha)^2} - 1\big)$ | $(1 + (z/\alpha)^2)^{-3/2}$ | strictly | yes |
# | Huber (Eq. 61) | $\tfrac12 z^2$ if $\lvert z\rvert \le \alpha$, else $\alpha(\lvert z\rvert - \tfrac12\alpha)$ | $1$ if $\lvert z\rvert \le \alpha$, else $0$ | yes | $C^1$ |
# | Welsch (Eq. 63) | $1 - e^{-z^2 / 2\alpha^2}$ | $(1 - z^2/\alpha^2)\, e^{-z^2/2\alpha^2} / \alpha^2$ | no | yes |
# | truncated quadratic (Eq. 64) | $\tfrac12 z^2$ if $\lvert z\rvert \le \alpha$, else $\tfrac12\alpha^2$ | $1$ if $\lvert z\rvert < \alpha$, else $0$ | no | no |
#
# **The gradient.** At a minimum the derivative in `u` vanishes:
# $\sum_i \phi'(y - x_i) = 0$. This holds for every `x` near the current one, so its total
# derivative in $x_j$ vanishes too:
#
# $$ \sum_i \phi''(y - x_i)\,\Big(\frac{\partial y}{\partial x_j} - \delta_{ij}\Big) = 0
# \quad\Longrightarrow\quad
# D_{x_j} y = \frac{\phi''(y - x_j)}{\sum_i \phi''(y - x_i)} . $$
#
# This is Prop. 4.4 with $H = D^2_{YY} f = \sum_i \phi''(y - x_i)$ (a 1×1 matrix) and
# $B = D^2_{XY} f$ with entries $-\phi''(y - x_j)$, so $Dy = -H^{-1}B$. The weights sum to one,
# as they must: shifting every input by `c` shifts `y` by `c`. A point's weight is its
# curvature $\phi''$ at the solution: for the quadratic every point weighs $1/n$ (the mean);
# Huber and truncated quadratic give a point beyond `α` zero weight; Welsch even gives every
# point further than `α` a small *negative* weight.
#
# **Back-propagation needs only `vᵀ Dy`.** Here `y` is a scalar, so `v` is a number and
# `vᵀ Dy = v · φ''(y − x) / Σ φ''` — computed element by element from the cached `y` in O(n)
# memory, never as a matrix (paper §6.1, Eq. 78).

# %% [markdown]
# ## Minimal code
#
# `ddn.reference.robust_pool(x, penalty, alpha)` solves one instance (numpy) and
# `RobustPoolNode(penalty, alpha)` gives its Jacobian; `ddn.torch.robust_pool` is the batched
# layer a network uses.

# %%
import numpy as np
import torch

import ddn.reference as ref
import ddn.torch as dt
from ddn.check import check_gradient
from ddn.utils import is_smoke
from ddn.viz import save_figure
from ddn.viz.pooling import PENALTIES, RobustPoolingExplorer, penalty_table_figure

rng = np.random.default_rng(9)
x = np.r_[rng.normal(0.0, 0.5, 12), [4.0, 5.0, 6.0]]   # twelve inliers, three outliers
alpha = 1.0
pooled = {name: ref.robust_pool(x, name, alpha=alpha) for name in PENALTIES}
print(f"mean {x.mean():.3f}   median {np.median(x):.3f}")
for name, y in pooled.items():
    print(f"{name:>20s}: y = {y:.3f}")

# %% [markdown]
# ## Checks
#
# 1. The quadratic penalty pools to the mean (Eq. 59).
# 2. The node's Jacobian equals the closed form $\phi''(y - x_j) / \sum_i \phi''(y - x_i)$
#    (the table's last column) and central finite differences, for every penalty.
# 3. The batched torch layer back-propagates the same weights.

# %%
def closed_form_weights(x, y, penalty, alpha):
    """φ''(y − x_j) / Σ_i φ''(y − x_i), with φ'' from the table above."""
    z = y - x
    d2 = {
        "quadratic": np.ones_like(z),
        "pseudo-huber": (1 + (z / alpha) ** 2) ** -1.5,
        "huber": (np.abs(z) <= alpha).astype(float),
        "welsch": (1 - z**2 / alpha**2) * np.exp(-(z**2) / (2 * alpha**2)) / alpha**2,
        "truncated-quadratic": (np.abs(z) < alpha).astype(float),
    }[penalty]
    return d2 / d2.sum()


def central_differences(fun, x, eps=1e-6):
    return np.array([(fun(x + eps * e) - fun(x - eps * e)) / (2 * eps) for e in np.eye(x.size)])


assert np.isclose(pooled["quadratic"], x.mean())
for name in PENALTIES:
    node = ref.RobustPoolNode(name, alpha)
    Dy = np.asarray(node.jacobian(x)).reshape(-1)
    fd = central_differences(lambda z: ref.robust_pool(z, name, alpha=alpha), x)
    cf = closed_form_weights(x, pooled[name], name, alpha)
    assert np.allclose(Dy, cf, atol=1e-8), name
    assert np.allclose(Dy, fd, atol=1e-5), name
    assert np.isclose(Dy.sum(), 1.0), name
    far = np.abs(pooled[name] - x) > alpha             # points further than α from y
    if name in ("huber", "truncated-quadratic"):       # ... get zero weight
        assert far.any() and np.all(Dy[far] == 0) and np.all(Dy[~far] > 0), name
    if name == "welsch":                               # ... get a small negative weight
        assert far.any() and np.all(Dy[far] < 0) and np.all(Dy[~far] > 0), name
    print(f"{name:>20s}: Dy matches closed form and finite differences; "
          f"outliers' total weight {Dy[-3:].sum():.4f}")

# %% [markdown]
# `ddn.check.check_gradient` runs the same comparison for any node and reports the optimality
# residual and the conditioning of `H`:

# %%
report = check_gradient(ref.RobustPoolNode("pseudo-huber", alpha), x)
print(report)
assert report.ok

# %% [markdown]
# The torch layer pools along a dimension of a batch. Back-propagating `v = 1` from each
# pooled value gives each row's weights; they agree with the reference node, and
# `torch.autograd.gradcheck` confirms the backward pass in float64.

# %%
b, n = (4, 15) if is_smoke() else (64, 200)
torch.manual_seed(0)
X = torch.randn(b, n, dtype=torch.float64)
X[:, : n // 5] += 5.0                        # a fifth of each row is outliers
X.requires_grad_(True)
for name in PENALTIES:
    Y = dt.robust_pool(X, penalty=name, alpha=alpha, dim=-1)
    (G,) = torch.autograd.grad(Y.sum(), X)
    for i in range(min(b, 3)):
        xi = X[i].detach().numpy()
        ref_w = np.asarray(ref.RobustPoolNode(name, alpha).jacobian(xi)).reshape(-1)
        assert np.isclose(Y[i].item(), ref.robust_pool(xi, name, alpha=alpha), atol=1e-6), name
        assert np.allclose(G[i].numpy(), ref_w, atol=1e-6), name
Xs = X[:2, :8].detach().clone().requires_grad_(True)
assert torch.autograd.gradcheck(lambda z: dt.robust_pool(z, "pseudo-huber", alpha=alpha), (Xs,))
print("torch robust_pool: values and gradients match the reference floor")

# %% [markdown]
# ## The penalty table as pictures
#
# Columns: the penalty φ, its derivative φ' (how hard a point pulls on the optimality
# condition), and φ'' (its un-normalised gradient weight). The quadratic pulls harder the
# further away a point is; pseudo-Huber and Huber cap the pull; Welsch and truncated
# quadratic let go altogether.
#
# ![penalties](../figures/robust_pooling_penalties.png)

# %%
fig = penalty_table_figure(alpha=1.0)
save_figure(fig, "robust_pooling_penalties")
fig

# %% [markdown]
# ## Play with it
#
# Sixty points: inliers around 0 and a cluster of outliers around 4. Choose the penalty,
# `α`, and the fraction of points replaced by outliers. Watch (a) where `y` lands compared to
# the mean and the median, (b) the objective — for Welsch and truncated quadratic a second
# valley opens over the outlier cluster — and (c) the gradient weights, which fall to zero
# (or below) for the outliers under the robust penalties.

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets

explorer = RobustPoolingExplorer(penalty="pseudo-huber", alpha=1.0, outlier_fraction=0.2)
widgets.interact(
    explorer.update,
    penalty=widgets.Dropdown(options=PENALTIES, value="pseudo-huber"),
    alpha=widgets.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05),
    outlier_fraction=widgets.FloatSlider(value=0.2, min=0.0, max=0.7, step=0.05),
);

# %% [markdown]
# The explorer uses the same library calls as the checks above; the weights it plots are the
# node's Jacobian, and they sum to one for every setting:

# %%
for name in PENALTIES:
    for frac in (0.0, 0.3, 0.6):
        explorer.update(penalty=name, alpha=1.0, outlier_fraction=frac)
        assert np.isclose(explorer.dy.sum(), 1.0), (name, frac)
        if name == "quadratic":                       # the mean: every point weighs 1/n
            assert np.allclose(explorer.dy, 1 / explorer.n)
explorer.update(penalty="pseudo-huber", alpha=1.0, outlier_fraction=0.2)

# %% [markdown]
# ## Several minima: why the solver starts twice
#
# Welsch and truncated quadratic are not convex, and with a large enough outlier cluster the
# objective has two valleys: one over the inliers and one over the outliers. A local method
# started from the mean (dragged towards the outliers) may settle in the wrong one; started
# from the median it usually finds the majority. The paper's protocol (§7) runs the solver
# from both starts and keeps the lower objective. Below, 55 % inliers and 45 % outliers:
# both valleys are visible, and `robust_pool` must return the deeper one.

# %%
two = RobustPoolingExplorer(penalty="welsch", alpha=1.0, outlier_fraction=0.45)
print("local minima of the objective (grid):", np.round(two.local_minima, 3))
print("pooled value y:", round(two.y, 4))
assert len(two.local_minima) >= 2
phi = lambda u: np.sum(1 - np.exp(-((u - two.x) ** 2) / 2))  # Welsch, α = 1
best = min(two.local_minima, key=phi)
assert abs(two.y - best) < 0.02, "robust_pool should return the lower of the two minima"
assert phi(two.y) <= min(phi(m) for m in two.local_minima) + 1e-9
two.fig

# %% [markdown]
# Push the outlier fraction past one half and the deeper valley moves to the outliers — the
# "robust" statistic then follows the majority, which is what it should do. For Huber (convex,
# not strictly) a different degeneracy appears: if every point is further than `α` from the
# solution then `H = Σ φ'' = 0` and the minimiser is an interval; the library reports such
# points instead of returning a silent NaN.

# %% [markdown]
# ## Summary
#
# - Robust pooling is `y = argmin_u Σ φ(u − x_i; α)`; only the quadratic (the mean) has a
#   closed form.
# - Implicit differentiation of `Σ φ'(y − x_i) = 0` gives the weights
#   `D_{x_j} y = φ''(y − x_j) / Σ_i φ''(y − x_i)`: each point's gradient is its curvature at
#   the solution, normalised to sum to one; outliers get (almost) none.
# - The backward pass needs only `y` and the inputs: O(n) memory (§6.1, Eq. 78).
# - Non-convex penalties (Welsch, truncated quadratic) can have several minima; start from the
#   mean and the median and keep the lower objective.
#
# ## Exercises
#
# 1. Show that for the pseudo-Huber penalty `y` tends to the mean as `α → ∞` and to the
#    median as `α → 0`. Check both limits numerically with `ref.robust_pool`.
# 2. For Welsch, find a data set where a point gets a negative weight `D_{x_j} y < 0`. Move
#    that point a little towards `y` and confirm that `y` moves the other way, towards the
#    point: the closer a point beyond `α` comes, the harder it pulls (`φ'` grows).
# 3. Construct an input where Huber pooling has an interval of minimisers (hint: two tight
#    clusters further than `2α` apart, equally sized). What does `ddn.torch.robust_pool` do?
# 4. Use `ddn.torch.RobustPool("welsch")` in place of max pooling in a tiny network on point
#    sets with outliers; compare with the mean.
