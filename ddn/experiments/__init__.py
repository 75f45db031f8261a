"""The paper's experiments: point clouds with robust pooling, images with Lp projections.

- :mod:`ddn.experiments.pointcloud` — PointNet with max or robust global pooling under the
  outlier protocol of Tables II and III (ModelNet40 HDF5 or built-in synthetic shapes).
- :mod:`ddn.experiments.images` — ResNet-18 with an Lp-sphere/ball feature projection
  (Table IV) on an ImageNet-layout folder or Fashion-MNIST.
- :mod:`ddn.experiments.common` — metrics (top-k, mAP over all classes), devices, seeds,
  resumable checkpoints, result CSVs and the paper's tables (``paper_tables/``).

Each runs from the command line (``python -m ddn.experiments.pointcloud --preset cpu``) or
from notebook cells (``run_experiment(preset("cpu"))``); presets ``paper``, ``cpu``, ``smoke``.
Submodules are imported on demand, so ``import ddn.experiments`` stays light.
"""
