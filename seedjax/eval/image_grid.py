"""Image grids as PNG: ``save_grid(images [N, H, W, C] in [-1, 1], path, rows=...)``.

Row r holds images r*cols .. (r+1)*cols - 1 (with ``class_grid_labels`` that is one class per
row), separated by a 1-pixel border; 1-channel images are written in grey.
"""
from __future__ import annotations

import os

import numpy as np


def class_grid_labels(num_classes: int, per_class: int) -> np.ndarray:
    """[num_classes * per_class] int32: class c repeated per_class times, classes in order."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def grid_array(images: np.ndarray, rows: int) -> np.ndarray:
    """[rows (H + 1) + 1, cols (W + 1) + 1, C] float in [0, 1]."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"save_grid needs images [N, H, W, C], got shape {images.shape}")
    n, h, w, c = images.shape
    if not (isinstance(rows, int) and 1 <= rows <= max(n, 1)):
        raise ValueError(f"rows={rows!r} must be an integer in [1, {n}]")
    cols = -(-n // rows)
    out = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    pix = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    for i in range(n):
        r, k = divmod(i, cols)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = pix[i]
    return out


def save_grid(images: np.ndarray, path: str, *, rows: int, scale: int = 4) -> str:
    """Writes the grid (each pixel ``scale`` x ``scale``) to ``path``; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = grid_array(images, rows)
    g = np.kron(g, np.ones((scale, scale, 1), np.float32)) if scale > 1 else g
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if g.shape[-1] == 1:
        plt.imsave(path, g[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        plt.imsave(path, g[..., :3])
    return path
