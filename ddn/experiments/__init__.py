"""The paper's experiments: point clouds with robust pooling, images with Lp projections."""
