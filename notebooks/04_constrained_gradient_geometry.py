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
# # 04 — The geometry of the constrained gradient
#
# **What and why.** Prop. 4.5 is a formula; §4.5 of the paper reads it as a picture (Fig. 4).
# For a scalar input and one equality constraint, `Dy` is the *unconstrained* derivative
# $-H^{-1}B$ with the part that would leave the constraint surface removed — a projection onto
# the tangent line, but in the metric defined by `H`, plus a bias term when the surface itself
# moves with `x`. This notebook makes that picture interactive and checks every arrow.

# %%
# %matplotlib inline
import autograd.numpy as anp
import numpy as np
from scipy.linalg import sqrtm

from ddn.reference import EqConstrainedNode
from ddn.viz import save_figure
from ddn.viz.geometry import CircleConstrainedQuadratic, ConstrainedGradientGeometry

# %% [markdown]
# ## The maths (§4.5)
#
# With one constraint, $A = a^\top$ is a row, $C = c$ a number, and Prop. 4.5 reads
#
# $$ Dy = \underbrace{-H^{-1}B}_{\text{unconstrained}}
#        \;+\; \underbrace{\frac{H^{-1} a}{a^\top H^{-1} a}\,\big(a^\top H^{-1} B - c\big)}
#        _{\text{correction}}. $$
#
# **Fixed constraint (`c = 0`).** With `H` positive definite, substitute $\tilde a =
# H^{-1/2} a$ and $g = -H^{-1/2} B$ (the unconstrained derivative seen through $H^{1/2}$):
#
# $$ Dy = H^{-1/2}\Big(I - \frac{\tilde a \tilde a^\top}{\tilde a^\top \tilde a}\Big) g. $$
#
# Read right to left: (i) pre-multiply the unconstrained derivative by $H^{1/2}$; (ii) project
# onto the tangent plane of the transformed surface (normal $\tilde a$); (iii) pre-multiply by
# $H^{-1/2}$. The result satisfies $a^\top Dy = 0$: `y` slides along the surface. The
# correction compensates for curvature *before* projecting, which is why it is generally not
# the Euclidean projection of $-H^{-1}B$.
#
# **Moving constraint (`c ≠ 0`).** The extra term $-H^{-1}a\,c / (a^\top H^{-1} a)$ moves `y`
# off the old surface by exactly what keeps it on the new one: $a^\top Dy = -c$.

# %% [markdown]
# ## Minimal code: the problem behind the picture
#
# $y(x) = \arg\min_u \tfrac12 (u - z(x))^\top Q (u - z(x))$ s.t.
# $\|u - c(x)\|^2 = r^2$, with target $z(x) = (x, 1.8)$, an anisotropic `Q`, and a circle whose
# centre $c(x) = (0, s x)$ moves with the input when $s \ne 0$. `CircleConstrainedQuadratic`
# (in `ddn.viz.geometry`) solves it globally on the circle and computes the pieces of
# Prop. 4.5 by hand; the same problem as an `EqConstrainedNode` gives the library's `Dy`.

# %%
class CircleNode(EqConstrainedNode):
    def __init__(self, radius, coupling, Q):
        super().__init__(1, 2)
        self.r, self.s, self.Q = radius, coupling, Q

    def objective(self, x, y):
        d = y - anp.stack([x[0], 1.8])
        return 0.5 * anp.dot(d, anp.dot(self.Q, d))

    def equality_constraints(self, x, y):
        d = y - anp.stack([0.0, self.s * x[0]])
        return anp.dot(d, d) - self.r ** 2

    def solve(self, x):   # the global solver of the picture; the gradient does not care
        return CircleConstrainedQuadratic(self.r, self.s, self.Q).solve(x[0]), {}


x0 = 2.0
for s in (0.0, 0.7):
    prob = CircleConstrainedQuadratic(radius=1.2, coupling=s)
    node = CircleNode(1.2, s, prob.Q)
    y, ctx = node.solve(np.array([x0]))
    unconstrained, correction, dy = prob.gradient_parts(x0, y)
    eps = 1e-6
    dy_fd = (prob.solve(x0 + eps) - prob.solve(x0 - eps)) / (2 * eps)
    dy_node = node.jacobian(np.array([x0]), y, ctx)[:, 0]
    p = prob.pieces(x0, y)
    print(f"s = {s}: Dy = {dy.round(6)}, library {dy_node.round(6)}, finite diff {dy_fd.round(6)}; "
          f"a·Dy = {p['A'][0] @ dy:+.2e}, -c = {-p['C'][0, 0]:+.4f}")
    assert np.allclose(dy, dy_node, atol=1e-8) and np.allclose(dy, dy_fd, atol=1e-6)
    assert np.isclose(p["A"][0] @ dy, -p["C"][0, 0], atol=1e-8)   # a^T Dy = -c

# %% [markdown]
# ## Check: the three-step reading for a fixed constraint
#
# $H^{1/2}$, project, $H^{-1/2}$ reproduces Prop. 4.5 (here `H` is positive definite because
# the multiplier is negative and the constraint curvature is positive):

# %%
prob = CircleConstrainedQuadratic(radius=1.2, coupling=0.0)
p = prob.pieces(x0)
H, a, B = p["H"], p["A"][0], p["B"]
assert p["lam"] < 0 and np.all(np.linalg.eigvalsh(H) > 0)
H_half = np.real(sqrtm(H))
H_mhalf = np.linalg.inv(H_half)
a_t = H_mhalf @ a                         # normal of the transformed tangent plane
g = -H_mhalf @ B[:, 0]                    # H^{1/2} (-H^{-1} B)
dy_geometric = H_mhalf @ (g - a_t * (a_t @ g) / (a_t @ a_t))
dy_prop45 = prob.gradient_parts(x0)[2]
assert np.allclose(dy_geometric, dy_prop45, atol=1e-10)

unc = prob.gradient_parts(x0)[0]
euclid = unc - a * (a @ unc) / (a @ a)    # the naive Euclidean projection
print("metric-H projection:", dy_prop45.round(4), "  Euclidean projection:", euclid.round(4))
assert not np.allclose(euclid, dy_prop45, atol=1e-3)

# %% [markdown]
# ## Play with it
#
# Grey: level sets of `f(x, ·)`; black: the constraint; blue: $-H^{-1}B$; red: the correction;
# green: `Dy` (arrows doubled in length, or shortened to stay in the picture: the legend gives
# the factor `k`); the black dot: `y + k·(finite difference)`, the tip of `Dy`. Move `x`,
# the radius, and the coupling `s` that makes the circle move with `x` — with `s = 0` the green
# arrow is tangent to the circle; with `s ≠ 0` it is not.

# %%
# NBVAL_IGNORE_OUTPUT
geometry = ConstrainedGradientGeometry()
geometry.interact(x=(-2.5, 3.0, 0.05), radius=(0.3, 2.0, 0.05), coupling=(-1.0, 1.0, 0.05));

# %% [markdown]
# The static version (paper Fig. 4 in spirit), saved to `figures/`:

# %%
fig4 = geometry.update(x=2.0, radius=1.2, coupling=0.0)
assert abs(geometry.parts["dy"] @ geometry.parts["y"]) < 1e-8      # tangent to the circle
save_figure(fig4, "fig4_constrained_gradient_geometry")
fig4

# %% [markdown]
# ## Summary
#
# - One constraint, scalar input: `Dy` = unconstrained derivative + a correction.
# - Fixed constraint: the correction is a projection onto the tangent plane *in the metric of
#   `H`* ($H^{1/2}$, project, $H^{-1/2}$), so `y` slides along the surface ($a^\top Dy = 0$).
# - Moving constraint: an extra bias term follows the surface ($a^\top Dy = -c$).
#
# ## Exercises
#
# 1. Set `Q = I` (isotropic). Show that the metric projection becomes the Euclidean one.
# 2. Find a slider setting where `H` is *not* positive definite (hint: the multiplier changes
#    sign when the target is inside the circle). Is Prop. 4.5 still valid there? Is the
#    three-step reading?
# 3. With `s ≠ 0`, verify numerically that $a^\top Dy = -c$ by moving `x` a little and
#    checking `h(x + ε, y + ε Dy) ≈ 0`.
