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
# # 06 — Feasibility problems and non-regular solutions
#
# **What and why.** Two extensions from §4.7 of the paper. (1) Sometimes there is nothing to
# minimise: `y` is simply *a point satisfying* some equations that depend on `x` — locating a
# receiver from its distances to two beacons, say (§4.7.1, Eq. 45–46). The implicit function
# theorem still gives `Dy`, straight from the constraints. (2) Sometimes a solution is not
# *regular* (Def. 4.3): more constraints are active than there are dimensions, or the active
# constraints are linearly dependent. Then the multipliers are not unique and Prop. 4.5's
# $(AH^{-1}A^\top)^{-1}$ does not exist; §4.7.3 says what to do instead.

# %%
# %matplotlib inline
import autograd.numpy as anp
import numpy as np

from ddn import DDNError
from ddn.check import check_gradient
from ddn.reference import FeasibilityNode, IneqConstrainedNode
from ddn.viz.feasibility import FeasibilityView, clamp_active_set, trilaterate


def central_differences(fn, x, eps=1e-6):
    cols = [(fn(x + eps * e) - fn(x - eps * e)) / (2 * eps) for e in np.eye(len(x))]
    return np.column_stack(cols)


# %% [markdown]
# ## The maths
#
# **Feasibility (Eq. 45–46).** Find `u` with $h(x, u) = 0$ (and $g(x, u) \le 0$). Keep the
# active constraints as $\tilde h$; differentiating $\tilde h(x, y(x)) = 0$ gives
#
# $$ D_Y \tilde h \; Dy = -D_X \tilde h, $$
#
# a square linear system with a unique solution when $D_Y\tilde h$ is `m × m` and invertible
# (`p + q_active = m`). This is Prop. 4.5 with nothing left to minimise.
#
# **Non-regular solutions (§4.7.3).** Let $A = D_Y\tilde h$ (`p̃ × m`).
# - *More active constraints than dimensions, `A` of full column rank:* the stationarity
#   condition $\lambda^\top A = D_Y f$ is over-determined in the sense that `A` alone already
#   pins `y` down; solve it in the least-squares sense (`nonregular="lstsq"`).
# - *Rank-deficient `A`:* some active constraints are linear combinations of others; drop the
#   dependent rows (their multipliers are set to 0, `nonregular="drop"`) or use a
#   pseudo-inverse (`nonregular="pinv"`).
#
# By default the library refuses a non-regular point (`DDNError`) and names these remedies.

# %% [markdown]
# ## Minimal code 1: trilateration as a feasibility node
#
# `y` is the upper intersection of the circles $\|u\| = r_1$ and $\|u - e_1\| = r_2$, with
# input $x = (r_1, r_2)$:
# $h(x, u) = (\|u\|^2 - r_1^2,\ \|u - e_1\|^2 - r_2^2)$, so $D_Y h = 2\,(y^\top; (y - e_1)^\top)$
# and $D_X h = -2\,\mathrm{diag}(r_1, r_2)$. `initial_guess` picks the upper intersection.

# %%
class Trilateration(FeasibilityNode):
    def __init__(self):
        super().__init__(2, 2)

    def equality_constraints(self, x, y):
        return anp.stack([anp.dot(y, y) - x[0] ** 2, (y[0] - 1.0) ** 2 + y[1] ** 2 - x[1] ** 2])

    def initial_guess(self, x):
        return np.array([0.5, 1.0])


tri = Trilateration()
x = np.array([0.8, 0.7])
y, ctx = tri.solve(x)
Dy = tri.jacobian(x, y, ctx)
y_closed, Dy_closed = trilaterate(*x)
assert np.allclose(y, y_closed, atol=1e-10) and np.allclose(Dy, Dy_closed, atol=1e-10)
assert np.allclose(Dy, central_differences(lambda z: tri.solve(z)[0], x), atol=1e-7)
print("y =", y, "\nDy =\n", Dy)
print(check_gradient(tri, x))

# %% [markdown]
# When the circles become tangent, $D_Y h$ is singular — the two intersections merge and `y`
# stops being a differentiable function of `x`. The library says so instead of returning
# an infinite gradient:

# %%
x_tangent = np.array([0.5, 0.5])        # circles touch at (0.5, 0)
try:
    tri.jacobian(x_tangent, np.array([0.5, 0.0]), {})
    raised = False
except DDNError as err:
    raised = True
    print("DDNError:", str(err)[:160], "...")
assert raised

# %% [markdown]
# ## Minimal code 2: a non-regular corner
#
# $y = \arg\min_u \tfrac12\|u - x\|^2$ s.t. $u_1 \le 0$, $u_2 \le 0$, $u_1 + u_2 \le 0$. For
# $x > 0$ the solution is the corner $y = 0$ where all three constraints are active in
# $\mathbb{R}^2$: `A` is `3 × 2` of rank 2. The point is not regular, but `y` is perfectly
# well pinned down (it stays at the corner for nearby `x`), so `Dy = 0`.

# %%
class Corner(IneqConstrainedNode):
    def __init__(self, **options):
        super().__init__(2, 2, **options)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.stack([y[0], y[1], y[0] + y[1]])


xc = np.array([1.0, 1.0])
try:
    Corner().jacobian(xc)
    raised = False
except DDNError as err:
    raised = True
    print("default:", str(err)[:230], "...")
assert raised
for mode in ("lstsq", "drop", "pinv"):
    node = Corner(nonregular=mode)
    yc, ctxc = node.solve(xc)
    Dyc = node.jacobian(xc, yc, ctxc)
    print(f"nonregular={mode!r}: y = {yc.round(8)}, Dy = {Dyc.round(8).tolist()}")
    assert np.allclose(Dyc, 0, atol=1e-8)
    assert np.allclose(Dyc, central_differences(lambda z: node.solve(z)[0], xc), atol=1e-6)

# %% [markdown]
# **Rank-deficient constraints.** Write the constraint $u_1 \le 0$ twice (once scaled) in
# $\mathbb{R}^3$, together with $u_2 + u_3 \le 1$. The two copies make `A` rank-deficient;
# dropping the dependent row, or the pseudo-inverse, gives the Jacobian of the problem with
# the constraint written once, $\mathrm{diag}(0, 1, 1)$ here. Least squares does not apply
# (`A` lacks full column rank) and says so.

# %%
class Duplicated(IneqConstrainedNode):
    def __init__(self, **options):
        super().__init__(3, 3, **options)

    def objective(self, x, y):
        return 0.5 * anp.sum((y - x) ** 2)

    def inequality_constraints(self, x, y):
        return anp.stack([y[0], 2.0 * y[0], y[1] + y[2] - 1.0])


xd = np.array([0.7, -0.2, 0.4])
for mode in ("drop", "pinv"):
    node = Duplicated(nonregular=mode)
    Dyd = node.jacobian(xd)
    assert np.allclose(Dyd, np.diag([0.0, 1.0, 1.0]), atol=1e-8)
    assert np.allclose(Dyd, central_differences(lambda z: node.solve(z)[0], xd), atol=1e-6)
try:
    Duplicated(nonregular="lstsq").jacobian(xd)
    raised = False
except DDNError as err:
    raised = True
    print(str(err))
assert raised

# %% [markdown]
# ## Play with it
#
# Left: move the radii; the arrows are $\partial y / \partial r_1$ and
# $\partial y / \partial r_2$ (quartered). Near tangency they blow up. Right: move `x` around
# the corner and watch how many constraints are active and whether `y` is regular.

# %%
# NBVAL_IGNORE_OUTPUT
view = FeasibilityView()
view.interact(r1=(0.1, 2.0, 0.02), r2=(0.1, 2.0, 0.02), x1=(-2.0, 2.0, 0.05),
              x2=(-2.0, 2.0, 0.05));

# %%
view.update(r1=0.8, r2=0.7, x1=0.8, x2=0.5)
assert view.active == clamp_active_set([0.8, 0.5])[1] == [0, 1, 2]
view.fig

# %% [markdown]
# ## Summary
#
# - A feasibility node has no objective: $D_Y\tilde h\,Dy = -D_X\tilde h$ (Eq. 46), uniquely
#   solvable when the active constraints form an invertible square system.
# - A non-regular solution is not a dead end: with more active constraints than dimensions
#   the constraints pin `y` (`lstsq`); with dependent constraints, drop them or use a
#   pseudo-inverse. The library asks you to choose (`nonregular=`).
#
# ## Exercises
#
# 1. Add a third beacon at $(0, 1)$ with its own radius. The system is now over-determined:
#    what should `Dy` be when the three circles meet in one point? Try `nonregular="lstsq"`.
# 2. In `Corner`, move `x` to $(1, -0.5)$. Which constraints are active? Is `y` regular?
# 3. Use the library's `CircleLineNode` (circle and a horizontal line) and check its
#    Jacobian against the closed form $(-x/\sqrt{1 - x^2}, 1)$.
