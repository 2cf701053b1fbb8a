"""M1+M2: M2 trained on the latent codes of a frozen M1 (the paper's best model).

As in the original code, every training minibatch draws fresh codes
z1 ~ q(z1|x) from M1's encoder, evaluation uses the posterior means, and
p(z1|y, z2) is a diagonal Gaussian with learned (input-dependent) variance.
Latent dimensions that M1 leaves inactive (the spread of their posterior means
over the data is at most 0.1) are dropped.  The whole stack is one Keras model:
`call(x)` maps images to q(y|z1(x)) probabilities.
"""

import numpy as np
import tensorflow as tf

from ssl_dgm.m1 import M1, posterior_means
from ssl_dgm.m2 import M2


def active_dimensions(m1: M1, images, threshold=0.1, batch_size=1000):
    """Indices of the latent dimensions whose posterior mean varies over `images`."""
    means = posterior_means(m1, images, batch_size)
    active = np.flatnonzero(means.std(axis=0) > threshold)
    if len(active) == 0:
        raise ValueError("M1 has no active latent dimension (every posterior-mean std "
                         f"<= {threshold}); train M1 longer before stacking M2 on it")
    return active


class M1M2(M2):
    """M2 on the active dimensions of a frozen M1's codes; `call(x)` -> q(y|x).

    Args:
      m1: a trained `M1` (frozen here).
      active: indices of the M1 latent dimensions M2 models.
      **m2_kwargs: the remaining `M2` arguments (not input_size / likelihood).
    """

    def __init__(self, m1: M1, active, **m2_kwargs):
        super().__init__(input_size=len(active), likelihood="gaussian", **m2_kwargs)
        self.m1 = m1
        self.m1.trainable = False
        self.active = tf.constant(np.asarray(active), tf.int32)

    def classifier_networks(self):
        return [self.m1.encoder, self.classifier]

    def decode(self, z, labels_one_hot):
        """Pixel means: the mean of p(z1|y, z2) in the active dimensions (the prior
        mean 0 elsewhere), decoded by M1's p(x|z1)."""
        active_codes = super().decode(z, labels_one_hot)
        embed = tf.one_hot(self.active, self.m1.latent_size, dtype=active_codes.dtype)
        return self.m1.decode(tf.einsum("...a,al->...l", active_codes, embed))

    def features(self, x, seed=None):
        posterior = self.m1.posterior(x)
        codes = posterior.mean() if seed is None else posterior.sample(seed=seed)
        return tf.gather(codes, self.active, axis=-1)
