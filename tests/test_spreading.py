"""Label spreading (the M1 head) against brute-force and closed-form references."""

import numpy as np
import pytest

from ssl_dgm import spreading
from ssl_dgm.m1 import M1, SpreadingClassifier, posterior_means


def brute_force_neighbours(queries, points, k, exclude_self):
    squared = ((queries[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(squared, np.inf)
    order = np.argsort(squared, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(squared, order, axis=1)


def test_nearest_neighbours_match_brute_force_in_any_batch_size():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(37, 4)).astype(np.float32)
    queries = rng.normal(size=(11, 4)).astype(np.float32)
    for exclude_self, batch in ((False, 4), (True, 5)):
        q = points if exclude_self else queries
        indices, squared = spreading.nearest_neighbours(q, points, 3, exclude_self, batch)
        expected_indices, expected_squared = brute_force_neighbours(q, points, 3, exclude_self)
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(squared, expected_squared, rtol=1e-4, atol=1e-5)


def test_label_spreading_reaches_the_closed_form_solution():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(25, 3)).astype(np.float32)
    labeled, labels, k, alpha = np.array([0, 7, 19]), np.array([2, 0, 1]), 4, 0.9
    distributions, sigma = spreading.label_spreading(points, labeled, labels, 3, k, alpha,
                                                     iterations=400)
    # Dense reference: W from the brute-force kNN graph, symmetrised by addition.
    order, squared = brute_force_neighbours(points, points, k, exclude_self=True)
    assert sigma == pytest.approx(np.median(squared[:, -1]), rel=1e-4)
    weights = np.zeros((25, 25))
    for i in range(25):
        weights[i, order[i]] += np.exp(-squared[i] / sigma)
    weights = weights + weights.T
    degree = weights.sum(axis=1)
    normalised = weights / np.sqrt(np.outer(degree, degree))
    seeds = np.zeros((25, 3))
    seeds[labeled, labels] = 1.0
    scores = (1 - alpha) * np.linalg.solve(np.eye(25) - alpha * normalised, seeds)
    np.testing.assert_allclose(distributions, scores / scores.sum(axis=1, keepdims=True),
                               atol=1e-4)


def test_one_label_per_cluster_labels_every_point_of_it():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 40)
    points = (centres[truth] + rng.normal(size=(120, 2))).astype(np.float32)
    labeled = np.array([0, 40, 80])
    distributions, _ = spreading.label_spreading(points, labeled, truth[labeled], 3, k=5)
    np.testing.assert_array_equal(distributions.argmax(axis=1), truth)
    np.testing.assert_allclose(distributions.sum(axis=1), 1.0, rtol=1e-5)


def test_unreached_points_get_a_uniform_distribution():
    # Two clusters far apart; only the first holds a label.
    points = np.array([[0.0], [0.1], [0.2], [100.0], [100.1], [100.2]], np.float32)
    distributions, _ = spreading.label_spreading(points, [0], [1], 2, k=2)
    np.testing.assert_allclose(distributions[3:], 0.5)
    np.testing.assert_array_equal(distributions[:3].argmax(axis=1), 1)


def test_bad_arguments_are_clear_errors():
    points = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="need 0 < neighbours < points"):
        spreading.label_spreading(points, [0], [0], 2, k=5)
    with pytest.raises(ValueError, match="alpha must be in"):
        spreading.label_spreading(points, [0], [0], 2, k=2, alpha=1.0)


def test_spreading_classifier_is_the_kernel_weighted_vote_of_the_nearest_codes():
    m1 = M1(6, latent_size=3, hidden_sizes=(8,), seed=3)
    m1.build()
    rng = np.random.default_rng(3)
    images = rng.integers(0, 2, (40, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 40)
    classifier = SpreadingClassifier.spread(m1, images, [1, 5, 9, 30], labels[[1, 5, 9, 30]],
                                            4, k=3, alpha=0.9)
    codes = posterior_means(m1, images)
    expected_distributions, sigma = spreading.label_spreading(
        codes, [1, 5, 9, 30], labels[[1, 5, 9, 30]], 4, k=3, alpha=0.9)
    np.testing.assert_allclose(classifier.distributions.numpy(), expected_distributions,
                               atol=1e-6)
    queries = rng.integers(0, 2, (7, 6)).astype(np.float32)
    order, squared = brute_force_neighbours(posterior_means(m1, queries), codes, 3, False)
    kernel = np.exp(-squared / sigma)
    kernel /= kernel.sum(axis=1, keepdims=True)
    votes = np.eye(4)[expected_distributions.argmax(axis=1)]
    np.testing.assert_allclose(classifier(queries).numpy(),
                               np.einsum("bk,bkc->bc", kernel, votes[order]),
                               rtol=1e-4, atol=1e-6)
    assert not m1.trainable_variables and not classifier.trainable_variables
    # Voting with whole distributions instead of labels.
    soft = SpreadingClassifier(m1, codes, expected_distributions, sigma, k=3,
                               vote="distributions")
    np.testing.assert_allclose(soft(queries).numpy(),
                               np.einsum("bk,bkc->bc", kernel, expected_distributions[order]),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown vote"):
        SpreadingClassifier(m1, codes, expected_distributions, sigma, vote="median")
