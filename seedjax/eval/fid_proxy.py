"""FID-proxy and class accuracy of generated digits, on the features of a small classifier
trained in-repo on the same data. NOT comparable to ImageNet FID (Inception features, 50k
samples): only for comparing runs on the same data set with the same number of samples.

Classifier (``train_classifier``): MLP  x [H W C] -> 256 -> 128 (ReLU; the 128-d features)
-> 10 logits, trained with Adam (lr 1e-3, batch 128, ``epochs`` passes) on the train split,
always from seed 0, so every run of a data set is scored by the same network (cached per
process by source).

    FID-proxy = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_r^1/2 S_g S_r^1/2)^1/2)

(Frechet distance of Gaussians fitted to the features of the generated images g and of the
real train images r; the matrix square root through symmetric eigendecompositions in float64).
Class accuracy: the fraction of generated images the classifier assigns to their label.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seedjax.data.images import ImageData

HIDDEN = (256, 128)


class Classifier(NamedTuple):
    params: dict
    val_accuracy: float
    ref_mean: np.ndarray      # [F] features of the real train images
    ref_cov: np.ndarray       # [F, F]
    source: str


def _forward(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [N, H, W, C] -> (features [N, 128], logits [N, classes])."""
    h = x.reshape(x.shape[0], -1)
    for i in range(len(HIDDEN)):
        h = jax.nn.relu(h @ params[f"w{i}"] + params[f"b{i}"])
    return h, h @ params["w_out"] + params["b_out"]


def _init(key, n_in: int, n_classes: int) -> dict:
    dims = (n_in, *HIDDEN)
    keys = jax.random.split(key, len(HIDDEN) + 1)
    p = {}
    for i in range(len(HIDDEN)):
        p[f"w{i}"] = jax.random.normal(keys[i], (dims[i], dims[i + 1])) * dims[i] ** -0.5
        p[f"b{i}"] = jnp.zeros(dims[i + 1])
    p["w_out"] = jax.random.normal(keys[-1], (HIDDEN[-1], n_classes)) * HIDDEN[-1] ** -0.5
    p["b_out"] = jnp.zeros(n_classes)
    return p


def features(clf: Classifier, images: np.ndarray, batch: int = 1024
             ) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 128] float64, predicted labels [N]) of images [N, H, W, C] in [-1, 1]."""
    f = jax.jit(_forward)
    feats, preds = [], []
    for i in range(0, len(images), batch):
        h, logits = f(clf.params, jnp.asarray(images[i:i + batch], jnp.float32))
        feats.append(np.asarray(h, np.float64))
        preds.append(np.asarray(jnp.argmax(logits, -1)))
    return np.concatenate(feats), np.concatenate(preds)


@functools.lru_cache(maxsize=4)
def train_classifier(source: str, epochs: int = 8) -> Classifier:
    """The scoring classifier of ``source`` (seed 0; see module doc)."""
    data = ImageData(source=source, batch_size=128, seed=0)
    x, y = data.train_x, data.train_y
    params = _init(jax.random.key(0), int(np.prod(x.shape[1:])), data.num_classes)
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(_forward(p, xb)[1], yb).mean()
        g = jax.grad(loss)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt

    rng = np.random.default_rng(0)
    for _ in range(epochs):
        perm = rng.permutation(len(x))
        for i in range(0, len(x) - 127, 128):
            idx = perm[i:i + 128]
            params, opt = step(params, opt, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    clf = Classifier(params, 0.0, np.zeros(0), np.zeros((0, 0)), source)
    _, val_pred = features(clf, data.val_x)
    ref, _ = features(clf, x)
    return clf._replace(val_accuracy=float(np.mean(val_pred == data.val_y)),
                        ref_mean=ref.mean(0), ref_cov=np.cov(ref, rowvar=False))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    r = _sqrt_psd(cov2)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(r @ cov1 @ r), 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def score_images(clf: Classifier, images: np.ndarray, labels: np.ndarray) -> dict:
    """{"fid_proxy", "class_accuracy", "n"} of generated images [N, H, W, C] with labels [N]."""
    if len(images) < 2:
        raise ValueError(f"FID-proxy needs at least 2 images, got {len(images)}")
    feats, pred = features(clf, images)
    fid = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), clf.ref_mean, clf.ref_cov)
    return {"fid_proxy": fid, "class_accuracy": float(np.mean(pred == np.asarray(labels))),
            "n": int(len(images))}
