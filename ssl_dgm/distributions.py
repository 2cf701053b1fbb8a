"""Small functions that turn network outputs into TFP distributions.

Networks return plain tensors (see `networks`); these functions give them a
meaning.  Event shapes are the last axis, so everything broadcasts over any
leading batch shape, e.g. ``[batch]`` or ``[batch, classes]``.
"""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# A floor on predicted standard deviations keeps log-densities finite.
MIN_SCALE = 1e-4


@tf.custom_gradient
def softplus(x):
    """log(1 + exp(x)), with a gradient that reuses the forward pass's exp.

    Written stably as ``max(x, 0) + log1p(e)`` with ``e = exp(-|x|)``. Its
    derivative, sigmoid(x), is ``1 / (1 + e)`` for x >= 0 and ``e / (1 + e)``
    otherwise, so the backward pass needs no exp of its own; `tf.nn.softplus`'s
    gradient computes exp(-x) again.  Training evaluates softplus on every hidden
    unit of every network and on every pixel's logit (`_Bernoulli`), about 3
    million elements per M2 step: one exp fewer per element made the 2×500 M2 step
    about 5% faster here (docs/performance.md).  `tf.maximum`, not
    `tf.nn.relu`: TF's graph optimiser tries to fuse a Relu into the matmul
    before it and fails on this pattern (without XLA, e.g. mixed_bfloat16).
    """
    e = tf.exp(-tf.abs(x))

    def gradient(upstream):
        return upstream * tf.where(x >= 0, tf.ones_like(e), e) / (1 + e)

    return tf.maximum(x, 0) + tf.math.log1p(e), gradient


def diagonal_gaussian(params):
    """q(z|.) or p(x|.): N(loc, diag(scale^2)) from ``params = [loc, raw_scale]``.

    Args:
      params: ``[..., 2 * size]``; the second half passes through softplus.

    Returns:
      A distribution with event shape ``[size]``.
    """
    loc, raw_scale = tf.split(params, 2, axis=-1)
    return tfd.MultivariateNormalDiag(loc=loc, scale_diag=softplus(raw_scale) + MIN_SCALE)


def standard_normal(size, dtype=tf.float32):
    """p(z) = N(0, I) with event shape ``[size]``."""
    return tfd.MultivariateNormalDiag(loc=tf.zeros([size], dtype))


class _Bernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose log-density costs one softplus per pixel instead of two.

    TFP's `log_prob` evaluates log p and log(1 - p) separately and mixes them;
    here it is the same number written as the negative logistic cross-entropy,
    log p(x) = x * l - softplus(l), which XLA fuses into one pass over the decoder's
    logits (the largest tensor of an M2 step), whose gradient x - sigmoid(l) reuses
    that pass's exp (`softplus`), and which is also the cross-entropy for grey
    levels x in [0, 1].
    """

    def _log_prob(self, event):
        logits = tf.convert_to_tensor(self.logits)
        return tf.cast(event, logits.dtype) * logits - softplus(logits)


def bernoulli(logits):
    """p(x|.) for binary pixels: independent Bernoullis, event shape ``[pixels]``."""
    return tfd.Independent(_Bernoulli(logits=logits, dtype=logits.dtype),
                           reinterpreted_batch_ndims=1)


def categorical(logits):
    """q(y|x) (or the prior p(y) when the logits are constant)."""
    return tfd.Categorical(logits=logits)


LIKELIHOODS = {
    # name -> (distribution from decoder output, decoder outputs per data dimension)
    "bernoulli": (bernoulli, 1),
    "gaussian": (diagonal_gaussian, 2),
}


def likelihood(name):
    """Returns ``(make_distribution, outputs_per_dimension)`` for a likelihood name."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name]
