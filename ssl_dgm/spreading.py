"""Label spreading on a k-nearest-neighbour graph: a transductive head for M1.

The paper classified M1's latent codes with a transductive SVM, which uses the
unlabeled training codes as well as the N labeled ones.  Label spreading (Zhou,
Bousquet, Lal, Weston & Schoelkopf, "Learning with Local and Global Consistency",
NeurIPS 2003) is the graph counterpart, and needs no solver beyond a few hundred
sparse matrix products:

  W_ij = exp(-|z_i - z_j|^2 / sigma) if j is among the k nearest neighbours of i
         (then symmetrised, W + W^T), else 0; sigma = the median squared distance
         to the k-th neighbour;
  S    = D^-1/2 W D^-1/2 with D the row sums of W;
  F    = (1 - alpha) (I - alpha S)^-1 Y, the limit of F <- alpha S F + (1 - alpha) Y,
         where Y one-hot encodes the labeled points (zero rows elsewhere).

Row i of F, normalised, is the label distribution of training point i.  A new
point takes the kernel-weighted mean of its k nearest training points' rows.
"""

import numpy as np
import tensorflow as tf


def squared_distances(queries, points):
    """``[m, n]`` squared Euclidean distances between rows of `queries` and `points`."""
    return (tf.reduce_sum(tf.square(queries), axis=1, keepdims=True)
            - 2.0 * tf.matmul(queries, points, transpose_b=True)
            + tf.reduce_sum(tf.square(points), axis=1))


def nearest_neighbours(queries, points, k, exclude_self=False, batch_size=2000):
    """The `k` nearest `points` of every query (squared Euclidean distance).

    Args:
      queries: ``[m, d]``.
      points: ``[n, d]``.
      k: neighbours per query.
      exclude_self: `queries` are `points`; skip each query's own row.
      batch_size: queries per distance matrix (``batch_size x n`` floats).

    Returns:
      ``(indices [m, k] int, squared_distances [m, k])``, nearest first.
    """
    points = tf.convert_to_tensor(points, tf.float32)
    skip = 1 if exclude_self else 0
    indices, distances = [], []
    for start in range(0, len(queries), batch_size):
        block = tf.convert_to_tensor(queries[start:start + batch_size], tf.float32)
        squared = squared_distances(block, points)
        if exclude_self:  # a point is its own nearest neighbour, whatever rounding says
            own = tf.range(start, start + len(block))
            squared = tf.tensor_scatter_nd_update(
                squared, tf.stack([tf.range(len(block)), own], axis=1),
                tf.fill([len(block)], -np.inf))
        negative, nearest = tf.math.top_k(-squared, k + skip)
        indices.append(nearest[:, skip:].numpy())
        distances.append(np.maximum(-negative[:, skip:].numpy(), 0.0))
    return np.concatenate(indices), np.concatenate(distances)


def knn_graph(points, k):
    """The symmetrised, normalised kNN graph S of the module docstring.

    Returns:
      ``(rows, columns, weights, sigma)``: S as a list of entries (pairs that are
      each other's neighbours appear twice, and the entries add up), and the kernel
      width sigma.
    """
    if not 0 < k < len(points):
        raise ValueError(f"need 0 < neighbours < points, got {k} neighbours of "
                         f"{len(points)} points")
    neighbours, squared = nearest_neighbours(points, points, k, exclude_self=True)
    sigma = max(float(np.median(squared[:, -1])), 1e-12)
    kernel = np.exp(-squared / sigma).ravel()
    own = np.repeat(np.arange(len(points)), k)
    rows = np.concatenate([own, neighbours.ravel()])
    columns = np.concatenate([neighbours.ravel(), own])
    weights = np.concatenate([kernel, kernel])
    degree = np.bincount(rows, weights=weights, minlength=len(points))
    weights = weights / np.sqrt(degree[rows] * degree[columns])
    return rows, columns, weights.astype(np.float32), sigma


def label_spreading(points, labeled_indices, labels, num_classes, k=10, alpha=0.99,
                    iterations=500):
    """Spreads `labels` over the kNN graph of `points` (see the module docstring).

    Args:
      points: ``[n, d]`` codes, labeled and unlabeled.
      labeled_indices: ``[N]`` rows of `points` whose labels are known.
      labels: ``[N]`` their classes.
      num_classes: C.
      k: graph neighbours per point.
      alpha: in (0, 1); how far labels travel (1 - alpha: how strongly the known
        ones are kept).
      iterations: of F <- alpha S F + (1 - alpha) Y (the error shrinks by alpha each).

    Returns:
      ``(distributions [n, C], sigma)``: the rows of F normalised to sum to 1
      (uniform where no label reached), and the kernel width.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rows, columns, weights, sigma = knn_graph(np.asarray(points, np.float32), k)
    seeds = np.zeros([len(points), num_classes], np.float32)
    seeds[np.asarray(labeled_indices), np.asarray(labels)] = 1.0
    scores = _iterate(tf.constant(rows), tf.constant(columns), tf.constant(weights),
                      tf.constant(seeds), tf.constant(alpha, tf.float32),
                      tf.constant(iterations)).numpy()
    totals = scores.sum(axis=1, keepdims=True)
    uniform = np.full_like(scores, 1.0 / num_classes)
    return np.where(totals > 0, scores / np.maximum(totals, 1e-30), uniform), sigma


@tf.function
def _iterate(rows, columns, weights, seeds, alpha, iterations):
    def step(i, scores):
        spread = tf.math.unsorted_segment_sum(weights[:, None] * tf.gather(scores, columns),
                                              rows, tf.shape(seeds)[0])
        return i + 1, alpha * spread + (1.0 - alpha) * seeds
    return tf.while_loop(lambda i, _: i < iterations, step, [0, seeds])[1]
