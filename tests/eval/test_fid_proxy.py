"""FID-proxy: the Frechet distance formula on known Gaussians, and the in-repo classifier
separates real held-out digits from noise."""
import numpy as np
import pytest

from seedjax.data.images import ImageData
from seedjax.eval.fid_proxy import frechet_distance, score_images, train_classifier


def test_frechet_distance_known_values():
    mu, cov = np.zeros(3), np.eye(3)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # 1-D: (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 = 1 + 1 + 4 - 4
    assert frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == \
        pytest.approx(2.0)
    # commuting covariances: sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance(np.zeros(2), a, np.zeros(2), b) == pytest.approx(4.0 + 1.0)


def test_classifier_scores_real_digits_far_better_than_noise():
    clf = train_classifier("digits")
    assert clf.val_accuracy > 0.9          # an MLP on 8x8 digits: ~0.97
    data = ImageData(source="digits", batch_size=16, seed=0)
    real = score_images(clf, data.val_x, data.val_y)
    noise = score_images(clf, np.random.default_rng(0).uniform(
        -1, 1, data.val_x.shape).astype(np.float32), data.val_y)
    assert real["class_accuracy"] == pytest.approx(clf.val_accuracy)
    assert real["fid_proxy"] * 20 < noise["fid_proxy"] and noise["class_accuracy"] < 0.3
    with pytest.raises(ValueError, match="at least 2 images"):
        score_images(clf, data.val_x[:1], data.val_y[:1])
