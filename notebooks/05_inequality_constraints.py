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
# # 05 — Inequality constraints: inactive, active, weakly active
#
# **What and why.** An inequality constraint $g(x, u) \le 0$ either matters at the solution or
# it does not. If it is *inactive* ($g < 0$) it can be deleted without changing `y` or `Dy`; if
# it is *active* ($g = 0$) with a non-zero multiplier, it behaves exactly like an equality.
# Between the two sits the *weakly active* case ($g = 0$ and $\lambda = 0$), where `y(x)` has a
# kink and `Dy` is one-sided — the same situation as ReLU at zero (paper Prop. 4.6, Fig. 3).
# This notebook moves a slider through the three regimes and watches `y(x)` and `Dy(x)`.

# %%
# %matplotlib inline
import warnings

import autograd.numpy as anp
import numpy as np

from ddn import DDNWarning
from ddn.reference import IneqConstrainedNode, ReLUNode
from ddn.viz import save_figure
from ddn.viz.inequality import X_WEAK, InequalityRegimes, disc_projection, draw_three_regimes

# %% [markdown]
# ## The maths (Prop. 4.6)
#
# $y(x) \in \arg\min_u f(x, u)$ s.t. $h_i(x, u) = 0$ ($i = 1..p$) and $g_i(x, u) \le 0$
# ($i = 1..q$). With $L = f - \sum_i \lambda_i h_i - \sum_i \mu_i g_i$, a regular solution
# satisfies the KKT conditions, with $\mu_i \le 0$ under this sign convention and
# $\mu_i g_i = 0$. Then:
#
# - drop the inactive constraints ($g_i < 0$, $\mu_i = 0$) — they change neither `y` nor `Dy`;
# - stack the equalities and the active inequalities into $\tilde h$ and apply Prop. 4.5;
# - if some active constraint has $\mu_i = 0$ (weakly active), `Dy` is not defined: the
#   left and right derivatives differ, and either the unconstrained or the constrained one
#   may be used for back-propagation (both are one-sided derivatives).
#
# **Example.** Project a moving target $t(x) = (x, \tfrac12)$ onto the unit disc:
# $y(x) = \arg\min_u \tfrac12\|u - t(x)\|^2$ s.t. $\|u\|^2 - 1 \le 0$. Inside the disc
# $y = t$ and $Dy = (1, 0)$; outside, $y = t/\|t\|$,
# $\mu = (1 - \|t\|)/2 < 0$ and $Dy = (I - yy^\top)\,t'(x)/\|t\|$; at
# $x = \pm\sqrt{3}/2$ the target crosses the circle and the constraint is weakly active.

# %% [markdown]
# ## Minimal code

# %%
class MovingTargetDisc(IneqConstrainedNode):
    def __init__(self, **options):
        super().__init__(1, 2, **options)

    def objective(self, x, y):
        d = y - anp.stack([x[0], 0.5])
        return 0.5 * anp.dot(d, d)

    def inequality_constraints(self, x, y):
        return anp.dot(y, y) - 1.0


node = MovingTargetDisc()
for x in (0.3, 1.5, -1.2):
    y, ctx = node.solve(np.array([x]))            # default solver: SLSQP + KKT polish
    Dy = node.jacobian(np.array([x]), y, ctx)[:, 0]
    y_ref, Dy_ref, mu_ref, regime = disc_projection(x)
    print(f"x = {x:+.2f} ({regime:8s}): y = {y.round(4)}, μ = {ctx['multipliers'].round(4)}, "
          f"Dy = {Dy.round(4)}")

# %% [markdown]
# ## Check: closed form and finite differences in each regime

# %%
def fd(x, eps=1e-6):
    return (node.solve(np.array([x + eps]))[0] - node.solve(np.array([x - eps]))[0]) / (2 * eps)


for x in (0.3, -0.5, 1.5, -1.2):
    y, ctx = node.solve(np.array([x]))
    Dy = node.jacobian(np.array([x]), y, ctx)[:, 0]
    y_ref, Dy_ref, mu_ref, regime = disc_projection(x)
    assert np.allclose(y, y_ref, atol=1e-8), x
    assert np.allclose(ctx["multipliers"], mu_ref, atol=1e-8), x
    assert np.allclose(Dy, Dy_ref, atol=1e-7) and np.allclose(Dy, fd(x), atol=1e-5), x
print("inactive and active regimes agree with the closed form and finite differences")

# %% [markdown]
# **Weakly active.** At $x = \sqrt{3}/2$ the library notices $g = 0$ and $\mu = 0$, warns
# (`DDNWarning`: the gradient is one-sided) and uses the side chosen by the option
# `weakly_active=` — `"constrained"` (default, like ReLU's 0 at 0) or `"unconstrained"`.
# Each equals a one-sided finite difference:

# %%
xw, eps = float(X_WEAK), 1e-6
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    Dy_con = MovingTargetDisc().jacobian(np.array([xw]))[:, 0]
    Dy_unc = MovingTargetDisc(weakly_active="unconstrained").jacobian(np.array([xw]))[:, 0]
assert any(issubclass(w.category, DDNWarning) for w in caught)
print(str(caught[0].message))
right = (node.solve(np.array([xw + eps]))[0] - node.solve(np.array([xw]))[0]) / eps
left = (node.solve(np.array([xw]))[0] - node.solve(np.array([xw - eps]))[0]) / eps
print("constrained side:", Dy_con.round(4), " right difference:", right.round(4))
print("unconstrained side:", Dy_unc.round(4), " left difference:", left.round(4))
assert np.allclose(Dy_con, right, atol=1e-5) and np.allclose(Dy_unc, left, atol=1e-5)

# %% [markdown]
# ReLU is the one-dimensional version of the same thing (§4.7.2): $y = \arg\min_u \tfrac12(u -
# x)^2$ s.t. $-u \le 0$. Away from 0 its gradient is the familiar 0 or 1; at $x_i = 0$ the
# constraint is weakly active and the default side gives 0.

# %%
relu = ReLUNode(4)
xr = np.array([-1.0, 0.5, 2.0, -0.3])
assert np.allclose(relu.jacobian(xr), np.diag([0.0, 1.0, 1.0, 0.0]))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    J0 = relu.jacobian(np.array([0.0, 1.0, -1.0, 0.0]))
assert np.allclose(J0, np.diag([0.0, 1.0, 0.0, 0.0]))
assert any(issubclass(w.category, DDNWarning) for w in caught)
print("ReLU as a declarative node: Dy = diag(x > 0), one-sided (warned) at 0")

# %% [markdown]
# ## Play with it
#
# Move `x` through the three regimes. Left: the disc, the target, `y` and `Dy` (red arrow;
# at the weakly active point both one-sided arrows). Middle and right: `y(x)`, `Dy(x)` and the
# multiplier over the whole range, with the current `x` marked; `Dy` jumps where `μ` reaches 0.

# %%
# NBVAL_IGNORE_OUTPUT
regimes = InequalityRegimes()
regimes.interact(x=(-2.0, 2.0, 0.01));

# %%
regimes.update(x=1.3)

# %% [markdown]
# Paper Fig. 3 in spirit — the three cases side by side and `Dy(x)` with its kinks — saved to
# `figures/`:

# %%
fig3 = draw_three_regimes()
save_figure(fig3, "fig3_inequality_regimes")
fig3

# %% [markdown]
# ## Summary
#
# - Inactive inequality constraints can be dropped; active ones with $\mu \ne 0$ act as
#   equalities (Prop. 4.6).
# - Weakly active constraints ($g = 0$, $\mu = 0$) are where `y(x)` kinks; `Dy` is one-sided and
#   either side is a valid choice for back-propagation (`weakly_active=`), as for ReLU.
# - The sign of the multiplier is a check: with $L = f - \mu g$, a minimum needs $\mu \le 0$.
#
# ## Exercises
#
# 1. Replace the disc by the half-plane $u_2 \le 0.2$. Where is the constraint weakly active?
#    Sketch `Dy(x)` before running the code.
# 2. Move the target along $t(x) = (x, 1)$ instead. What happens to the inactive regime?
# 3. Write a declarative "clamp to [a, b]" node with two inequality constraints and check it
#    against `np.clip`.
