"""Image data: sources, fixed val split, resumable train order, per-process rows, errors."""
import numpy as np
import pytest

from seedjax.data.images import ImageData, load_images


def test_mnist_and_digits_load_in_range():
    x, y = load_images("mnist")
    assert x.shape == (5000, 28, 28, 1) and x.min() == -1.0 and x.max() == 1.0
    assert sorted(set(y.tolist())) == list(range(10))
    x, y = load_images("digits")
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32


def test_resume_continues_the_same_batches_and_val_is_fixed():
    a = ImageData(source="digits", batch_size=32, seed=3)
    for _ in range(60):     # past one epoch (50 batches)
        next(a.train_iter)
    state = a.get_state()
    want = [next(a.train_iter) for _ in range(3)]
    b = ImageData(source="digits", batch_size=32, seed=3)
    b.set_state(state)
    got = [next(b.train_iter) for _ in range(3)]
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w["images"], g["images"])
        np.testing.assert_array_equal(w["index"], g["index"])
    other = ImageData(source="digits", batch_size=32, seed=4)
    np.testing.assert_array_equal(other.val_batches()[0]["images"], a.val_batches()[0]["images"])
    with pytest.raises(ValueError, match="different data setup"):
        other.set_state(state)


def test_processes_split_each_global_batch():
    whole = next(ImageData(source="digits", batch_size=8, seed=0).train_iter)
    parts = [next(ImageData(source="digits", batch_size=8, seed=0, process_index=p,
                            process_count=2).train_iter) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), whole["index"])


def test_npz_source_and_errors(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, images=np.zeros((40, 6, 6), np.uint8), labels=np.arange(40) % 3)
    d = ImageData(source=str(p), batch_size=4, seed=0)
    assert d.image_shape == (6, 6, 1) and d.num_classes == 3
    bad = tmp_path / "bad.npz"
    np.savez(bad, pixels=np.zeros((4, 6, 6)))
    with pytest.raises(ValueError, match="must hold arrays 'images' and 'labels'"):
        load_images(str(bad))
    with pytest.raises(ValueError, match="is not an image source; allowed"):
        load_images("cifar")
    with pytest.raises(ValueError, match="fewer than one batch"):
        ImageData(source=str(p), batch_size=8, seed=0)


def test_fashion_mnist_reads_debian_idx_files(tmp_path, monkeypatch):
    """The four idx-ubyte(.gz) files as Debian's fashion-mnist package installs them."""
    import gzip
    import struct

    import seedjax.data.images as images

    def idx(path, arr):
        head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(head + arr.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setattr(images, "FASHION_MNIST_DIRS", (str(tmp_path),))
    x, y = load_images("fashion_mnist")
    assert x.shape == (40, 28, 28, 1) and -1 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(y[:10], np.arange(10))
    monkeypatch.setattr(images, "FASHION_MNIST_DIRS", (str(tmp_path / "none"),))
    with pytest.raises(ValueError, match="needs Debian's fashion-mnist files"):
        load_images("fashion_mnist")
