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
# # 13 — Experiment: Lp-sphere and Lp-ball projection in an image classifier
#
# **What and why.** Notebook 10 built the projections onto the Lp sphere and ball,
# `y = argmin_u ½‖u − x‖² s.t. ‖u‖_p = r` (or `≤ r`), and their implicit gradients. The paper
# (§7.2, Table IV) puts one in front of ResNet-18's final linear layer: the 512-d feature is
# batch-normalized (without learnable parameters) and projected, so the classifier sees
# features of bounded norm. The paper reports slightly better top-1 and much better mAP on
# ImageNet, and reads it as better calibration. Here we build that network with
# `ddn.experiments.images` and train it at a small scale on Fashion-MNIST.
#
# The command line does the same: `python -m ddn.experiments.images --preset cpu`.

# %% [markdown]
# ## The network and the pre-scale
#
# The projection acts on batch-normalized features `x̂`, whose coordinates are roughly
# standard normal. The paper "pre-scales" them — divides by a factor `s_p` and projects onto
# the unit sphere/ball, which is the same as projecting onto the radius-`s_p` sphere/ball —
# with `s_p` = 250, 15, 3 for p = 1, 2, ∞, derived from the pre-trained model's features.
# Our rule needs no pre-trained model: `s_p = γ · E‖z‖_p` for `z ~ N(0, I_d)`, with
# γ = 0.65 (the ratio of the paper's factors to `E‖z‖_p` for p = 1, 2):
#
# $$ \mathbb{E}\|z\|_1 = d\sqrt{2/\pi},\qquad
#    \mathbb{E}\|z\|_2 = \sqrt2\,\Gamma(\tfrac{d+1}{2})/\Gamma(\tfrac d2),\qquad
#    \mathbb{E}\|z\|_\infty = \int_0^\infty 1 - \operatorname{erf}(t/\sqrt2)^d\,dt . $$

# %%
import math

import numpy as np
import torch

from ddn.utils import is_smoke, repo_root
from ddn.experiments import images as im
from ddn.experiments.common import results_dir

torch.set_num_threads(1)
print(f"{'p':>4} {'E||z||_p (d=512)':>18} {'rule':>8} {'paper':>6}")
for p, paper in im.PAPER_SCALES.items():
    print(f"{p:>4} {im.expected_norm(512, p):18.2f} {im.auto_scale(512, p):8.2f} {paper:6.0f}")

# %% [markdown]
# The rule against a Monte Carlo estimate, and the share of standard-normal features that
# the ball of that radius actually moves. Norms of high-dimensional Gaussian vectors
# concentrate (‖z‖₂ = 22.6 ± 0.7 for d = 512), so the ball moves essentially all of them —
# the paper's "affects most features" — while shrinking each only by about γ:

# %%
torch.manual_seed(0)
z = torch.randn(4000, 512, dtype=torch.float64)
for p in (1.0, 2.0, math.inf):
    norms = torch.linalg.vector_norm(z, ord=p, dim=1)
    assert abs(norms.mean().item() / im.expected_norm(512, p) - 1) < 0.01
    print(f"p = {p}: ball of radius {im.auto_scale(512, p):.2f} moves "
          f"{(norms > im.auto_scale(512, p)).float().mean().item():.0%} of the features")
    assert (norms > im.auto_scale(512, p)).float().mean() > 0.9
    if p == 2.0:
        assert abs(norms.std().item() - 0.5**0.5) < 0.05       # ‖z‖₂ = 22.6 ± 0.7
for p in (1.0, 2.0):                                            # γ = 0.65: the paper's ratios
    assert 0.6 < im.PAPER_SCALES[p] / im.expected_norm(512, p) < 0.7

# %% [markdown]
# ## The gradient through the projection
#
# For the L2 sphere, `Dy = (r/‖x‖)(I − y yᵀ/r²)`: the gradient reaching the features is the
# incoming gradient with its component along `y` removed, scaled by `r/‖x‖`. We check that
# in the network's head: back-propagate a random `v` through `FeatureProjection` (batch norm
# in eval mode, so it is a fixed affine map) and compare with the closed form.

# %%
head = im.FeatureProjection(32, "sphere", 2.0, scale=3.0).double().eval()
xf = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
yf = head(xf)
assert torch.allclose(yf.norm(dim=1), torch.full((5,), 3.0, dtype=torch.float64))
v = torch.randn_like(yf)
(gx,) = torch.autograd.grad(yf, xf, v)
xhat = head.bn(xf).detach()                              # the projection's input
r, nx = 3.0, xhat.norm(dim=1, keepdim=True)
y_ = yf.detach()
closed = (r / nx) * (v - (v * y_).sum(1, keepdim=True) * y_ / r**2)
closed = closed / torch.sqrt(head.bn.running_var + head.bn.eps)   # through the eval-mode BN
assert torch.allclose(gx, closed, atol=1e-10)
print("gradient through BN + sphere projection matches the closed form")

# %% [markdown]
# ## Training on Fashion-MNIST
#
# ResNet-18 with a 3×3 stem (28×28 inputs), width reduced for a CPU, trained on a class-
# balanced subset. Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (`make data`).
# Under `DDN_SMOKE` the run is seconds long and proves only that the pipeline runs; for a
# person it trains the baseline and the two L2 variants (about ten minutes on one core).

# %%
cfg = im.preset(variants=["none", "sphere-2"] if is_smoke() else ["none", "sphere-2", "ball-2"])
print(cfg.preset, "preset:", cfg.n_train, "training images, width", cfg.width, ",", cfg.epochs, "epochs")
scratch = (repo_root() or results_dir().parent) / "build" / "notebook13"
data = im.load_data(cfg)
rows = im.run_experiment(cfg, "cpu", scratch / "images.csv", scratch / "checkpoints",
                         show_progress=not is_smoke(), data=data)
print(im.render_table(scratch / "images.csv", cfg.preset))
for r in rows:
    assert 0 <= r["top1"] <= r["top5"] <= 100 and 0 <= r["map"] <= 100
    if not is_smoke():
        assert r["top1"] > 80          # Fashion-MNIST is easy enough for a small ResNet

# %% [markdown]
# ## The committed CPU-scale results
#
# `results/images.csv` holds the baseline and all six projection variants at the `cpu`
# preset. Cells read *ours (paper)*; the paper's numbers are ImageNet at full scale.

# %%
committed = results_dir() / "images.csv"
if committed.is_file():
    from IPython.display import Markdown, display
    display(Markdown(im.render_table(committed, "cpu")))

# %% [markdown]
# ## Summary
#
# - A projection layer is a parameter-free module between the features and the classifier;
#   its backward pass removes the gradient's component normal to the constraint surface.
# - The pre-scale is the sphere's radius in feature units; a rule based on the expected
#   norm of a standard-normal vector lands close to the paper's factors for p = 1, 2.
#
# ## Exercises
#
# 1. Train `ball-2` with radius `0.3·E‖z‖₂` and `3·E‖z‖₂` (`cfg.scales = {2.0: ...}`). At
#    which end does the ball stop mattering, and at which does it hurt?
# 2. Compare the calibration of the baseline and `sphere-2`: bin the test samples by their
#    max softmax probability and plot accuracy per bin.
# 3. Point `--data imagenet --data-root DIR` at a small ImageNet-layout folder (e.g. a
#    10-class subset) and rerun at width 32.
