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
# # 10 — Projection onto Lp spheres and balls
#
# **What and why.** Dividing a feature vector by its Euclidean length — L2 normalisation —
# is a projection: the closest point on the unit sphere. Other norms give other shapes: the
# L1 sphere is a diamond whose projections are *sparse*, the L∞ sphere a box whose
# projections *clip*. Only the L2 case has a closed form, but all three are cheap to compute,
# and their gradients follow from Prop. 4.5 with one equality constraint (paper §5.2,
# Table I). The L1 and L∞ spheres have corners and edges where the projection stops moving
# with some inputs; there the paper's gradient is a valid descent direction but not the
# derivative, and a *masked* gradient recovers the derivative. This notebook draws the
# shapes, derives the gradients, checks them, and lets you drag a point around.
#
# Vocabulary: `x` the input point, `y` its projection (the solution), `Dy` the Jacobian,
# `v` the incoming gradient.

# %% [markdown]
# ## The maths
#
# Projection onto the Lp sphere of radius `r` (paper Eq. 72) and onto the ball (Eq. 75):
#
# $$ y(x) \in \arg\min_u \tfrac12 \lVert u - x \rVert_2^2 \ \text{ s.t. } \lVert u\rVert_p = r,
# \qquad y(x) \in \arg\min_u \tfrac12 \lVert u - x \rVert_2^2 \ \text{ s.t. } \lVert u\rVert_p \le r. $$
#
# With the constraint $h(u) = \lVert u\rVert_p - r = 0$, Prop. 4.5 needs
# $A = D_Y h(y)$ (a 1×n row), $B = D^2_{XY} f = -I$, $C = D_X h = 0$ and
# $H = I - \lambda D^2_{YY} h(y)$, and gives
#
# $$ Dy = H^{-1} - \frac{H^{-1} A^\top A H^{-1}}{A H^{-1} A^\top}. $$
#
# - **p = 2.** $A = y^\top / r$, $\lambda = r - \lVert x\rVert_2$, and the formula collapses to
#   the closed form $y = r x / \lVert x\rVert_2$, $Dy = \frac{r}{\lVert x\rVert_2}(I - y y^\top / r^2)$
#   (Eq. 65–66 for r = 1).
# - **p = 1.** $D^2 h = 0$ wherever it exists, so $H = I$ and with $s = \operatorname{sign}(y)$:
#   $Dy = I - s s^\top / \lVert s\rVert^2$. The solution comes from Duchi et al.'s sort-based
#   projection.
# - **p = ∞.** Again $H = I$; with $T$ the coordinates on the face ($\lvert y_i\rvert = r$) and
#   $s_T$ their signs, $Dy = I - s_T s_T^\top / \lvert T\rvert$. The solution clips: $y = \operatorname{clamp}(x, -r, r)$.
#
# **Masking.** For p = 1 a coordinate with $y_i = 0$ sits on a lower-dimensional face: small
# changes of $x_i$ do not move `y` at all, yet the formula above still gives row and column
# `i` of the identity. For p = ∞ the same happens for coordinates pinned at $\lvert y_i\rvert = r$
# when the point is projected into a corner. The paper keeps the Prop. 4.5 gradient (a valid
# Clarke generalised descent direction) or *masks* it — zeroes the rows and columns of the
# pinned coordinates — which then equals the numerical derivative.
#
# **The ball** (Eq. 75). Inside, the constraint is inactive: $y = x$ and $Dy = I$. Outside,
# the ball's projection is the sphere's.

# %% [markdown]
# ## Minimal code

# %%
import numpy as np
import torch

import ddn.reference as ref
import ddn.torch as dt
from ddn.viz import save_figure
from ddn.viz.projections import (P_VALUES, ProjectionExplorer, finite_difference_jacobian,
                                 lp_projection_figure)

x = np.array([1.3, -0.4, 0.25, 0.05])
for p in P_VALUES:
    y = ref.project_sphere(x, p, radius=1.0)
    print(f"p = {p}: y = {np.round(y, 4)},  ‖y‖_p = {np.linalg.norm(y, ord=p):.6f}")
    assert np.isclose(np.linalg.norm(y, ord=p), 1.0)
assert np.allclose(ref.project_sphere(x, 1), [0.95, -0.05, 0.0, 0.0])   # small ones zeroed
assert np.allclose(ref.project_sphere(x, float("inf")), np.clip(x, -1, 1))   # large one clipped

# %% [markdown]
# The L1 projection zeroed the small coordinates (sparsity); the L∞ projection clipped the
# large one. In torch the same operations are batched along a dimension:

# %%
torch.manual_seed(0)
X = torch.randn(5, 4, dtype=torch.float64)
for p in P_VALUES:
    Y = dt.project_sphere(X, p=p, radius=1.0, dim=-1)
    assert torch.allclose(torch.linalg.vector_norm(Y, ord=p, dim=-1),
                          torch.ones(5, dtype=torch.float64))
    for i in range(5):
        assert np.allclose(Y[i].numpy(), ref.project_sphere(X[i].numpy(), p, radius=1.0))
print("torch and reference projections agree, and land on the spheres")

# %% [markdown]
# ## Checks
#
# 1. **p = 2**: the general Prop. 4.5 expression, evaluated with the matrices above, equals the
#    closed form, and both equal central finite differences.
# 2. **p = 1, ∞** at a generic point (on the interior of a face): unmasked, masked and finite
#    differences agree.
# 3. **At a vertex / corner** the masked Jacobian equals finite differences; the unmasked one is
#    `I − s sᵀ/‖s‖²`.
# 4. **Ball**: inside, `Dy = I`; outside, the sphere's Jacobian.
#
# The Jacobians below come from the torch layers' backward pass (implicit differentiation),
# read out column by column with `torch.autograd.functional.jacobian`.

# %%
def torch_jacobian(x, p, radius=1.0, kind="sphere", **kw):
    fn = dt.project_sphere if kind == "sphere" else dt.project_ball
    xt = torch.as_tensor(x, dtype=torch.float64)[None]
    J = torch.autograd.functional.jacobian(lambda z: fn(z, p=p, radius=radius, **kw)[0], xt)
    return J[:, 0, :].numpy()


def fd(x, p, radius=1.0, kind="sphere"):
    fn = ref.project_sphere if kind == "sphere" else ref.project_ball
    return finite_difference_jacobian(lambda z: fn(z, p, radius=radius), x)


# 1. p = 2: Prop. 4.5 with H = I − λ D²h, A = yᵀ/r, B = −I, C = 0
r = 1.5
x = np.array([1.0, -2.0, 0.5])
y = ref.project_sphere(x, 2, radius=r)
nx = np.linalg.norm(x)
A = (y / r)[None, :]
lam = r - nx
H = np.eye(3) - lam * (np.eye(3) - np.outer(y, y) / r**2) / r
Hi = np.linalg.inv(H)
Dy_prop45 = Hi - Hi @ A.T @ A @ Hi / (A @ Hi @ A.T)
Dy_closed = (r / nx) * (np.eye(3) - np.outer(y, y) / r**2)
assert np.allclose(Dy_prop45, Dy_closed)
assert np.allclose(Dy_closed, fd(x, 2, r), atol=1e-6)
assert np.allclose(torch_jacobian(x, 2, r), Dy_closed, atol=1e-8)

# 2. p = 1 and ∞ at generic points: everything agrees
x = np.array([0.9, -0.6, 0.4])          # L1 projection keeps all three coordinates non-zero
for p in (1, float("inf")):
    x_p = x if p == 1 else np.array([1.7, -0.3, 0.2])   # one coordinate clipped
    for masked in (False, True):
        assert np.allclose(torch_jacobian(x_p, p, masked=masked), fd(x_p, p), atol=1e-6), (p, masked)

# 3. vertex of the L1 ball / corner of the L∞ ball
x_vertex = np.array([2.0, 0.1, -0.2])   # projects onto the vertex (1, 0, 0)
x_corner = np.array([1.8, -1.6, 0.2])   # projects onto the edge y = (1, −1, 0.2)
for p, xp in ((1, x_vertex), (float("inf"), x_corner)):
    y = ref.project_sphere(xp, p)
    J_fd = fd(xp, p)
    J_masked = torch_jacobian(xp, p, masked=True)
    J_plain = torch_jacobian(xp, p, masked=False)
    s = np.sign(y) if p == 1 else np.sign(y) * np.isclose(np.abs(y), 1.0)
    assert np.allclose(J_masked, J_fd, atol=1e-6), p
    assert np.allclose(J_plain, np.eye(3) - np.outer(s, s) / (s @ s), atol=1e-8), p
    print(f"p = {p}: y = {np.round(y, 3)}\n  unmasked Dy =\n{np.round(J_plain, 3)}\n"
          f"  masked Dy = finite differences =\n{np.round(J_masked, 3)}")

# 4. ball: inside Dy = I, outside the sphere's
for p in P_VALUES:
    inside = np.array([0.2, -0.1, 0.3])
    outside = np.array([1.2, -0.9, 0.7])
    assert np.allclose(ref.project_ball(inside, p), inside)
    assert np.allclose(torch_jacobian(inside, p, kind="ball"), np.eye(3))
    assert np.allclose(torch_jacobian(outside, p, kind="ball"), torch_jacobian(outside, p))

# %% [markdown]
# The unmasked vertex Jacobian says "moving `x` along the other axes moves `y`"; finite
# differences say it does not — `y` stays on the vertex. Both are useful: the unmasked one is
# a valid descent direction for training (it lets gradient flow to coordinates that could
# become non-zero), the masked one is the true local derivative. Both floors default to the
# masked form (`masked=True`; pass `masked=False` for the paper's gradient):

# %%
for p, xp in ((1, x_vertex), (float("inf"), x_corner)):
    assert np.allclose(torch_jacobian(xp, p), torch_jacobian(xp, p, masked=True))
    assert np.allclose(ref.SphereProjectionNode(p).jacobian(xp), fd(xp, p), atol=1e-6)
print("default: masked=True in ddn.torch and ddn.reference")

# %% [markdown]
# ## The picture
#
# The three spheres (outlines) and balls (shaded) in 2-D, with a ring of points projected
# onto each. Solid arrows come from outside (sphere and ball agree); dashed arrows start
# inside, where the sphere pushes the point out and the ball leaves it be. Note how the L1
# projections pile up on the vertices — the sparse solutions — and the L∞ ones on the
# corners.
#
# ![Lp projections](../figures/lp_projections.png)

# %%
fig = lp_projection_figure(radius=1.0)
save_figure(fig, "lp_projections")
fig

# %% [markdown]
# ## Play with it
#
# Move the point with the sliders, switch the norm, the radius and sphere/ball. The arrows at
# `y` are the columns of `Dy` — how `y` moves when `x` moves along each axis — solid for the
# unmasked gradient, dashed for the masked one. Drag `x` into the region that projects onto a
# vertex (p = 1) or a corner (p = ∞) and the masked arrows vanish while the unmasked ones run
# along the edges; the table on the right says which agrees with finite differences.

# %%
# NBVAL_IGNORE_OUTPUT
import ipywidgets as widgets

explorer = ProjectionExplorer(p=1, radius=1.0, x0=1.2, x1=0.4)
widgets.interact(
    explorer.update,
    p=widgets.Dropdown(options=[("1", 1), ("2", 2), ("∞", float("inf"))], value=1),
    radius=widgets.FloatSlider(value=1.0, min=0.25, max=2.0, step=0.05),
    x0=widgets.FloatSlider(value=1.2, min=-2.5, max=2.5, step=0.05),
    x1=widgets.FloatSlider(value=0.4, min=-2.5, max=2.5, step=0.05),
    kind=widgets.ToggleButtons(options=["sphere", "ball"], value="sphere"),
);

# %% [markdown]
# The explorer's numbers come from the same calls as the checks. One sweep over a grid of
# points confirms the claim of §5.2 in 2-D: the masked Jacobian equals finite differences
# everywhere except on the measure-zero boundaries between regions.

# %%
# offset grids so that no point lies on a boundary between regions (|x0| − |x1| = ±r, |x_i| = r)
grid0 = np.linspace(-2.0, 2.0, 9) + 0.013
grid1 = np.linspace(-2.0, 2.0, 9) + 0.031
for p in (1, float("inf")):
    agree = total = 0
    for a in grid0:
        for b in grid1:
            if np.linalg.norm([a, b], ord=p) <= 1.0:
                continue                      # inside: the sphere pushes out, see exercise 3
            explorer.update(p=p, radius=1.0, x0=a, x1=b, kind="sphere")
            agree += np.allclose(explorer.jacobians[True], explorer.fd_jacobian, atol=1e-4)
            total += 1
    print(f"p = {p}: masked Dy = finite differences at {agree}/{total} points outside the ball")
    assert agree == total

# %% [markdown]
# ## Summary
#
# - Lp-sphere projection is a declarative node with one equality constraint; Prop. 4.5 gives
#   `Dy = H⁻¹ − H⁻¹AᵀAH⁻¹ / (AH⁻¹Aᵀ)` with `A = D_Y h`, `H = I − λ D²h`.
# - p = 2 reproduces L2 normalisation's closed form; p = 1 and ∞ have `H = I` and a rank-one
#   correction `I − s sᵀ/‖s‖²`.
# - On vertices and corners the Prop. 4.5 gradient is a Clarke descent direction, not the
#   derivative; masking the pinned coordinates gives the derivative (finite differences).
# - The ball (Eq. 75) is the identity inside and the sphere outside.
#
# ## Exercises
#
# 1. Derive `λ = r − ‖x‖₂` for p = 2 from `D_Y f = λ D_Y h` and verify the collapse of
#    Prop. 4.5 to Eq. 66 by hand.
# 2. For p = 1, what fraction of points drawn from `N(0, I)` in 10 dimensions project onto a
#    vertex of the unit L1 sphere? Onto an edge? Count with `ref.project_sphere`.
# 3. Where exactly is the L∞ *sphere* projection of a point inside the ball discontinuous?
#    Find it with the explorer (kind = sphere, point inside) and explain.
# 4. Train a linear classifier on 2-D data with a `dt.SphereProjection(p=1)` layer in front,
#    once with `masked=True` and once without. Do the learning curves differ?
