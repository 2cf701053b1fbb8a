"""M1+M2: M2 trained on the latent codes of a frozen M1 (the paper's best model).

As in the original code, every training minibatch draws fresh codes
z1 ~ q(z1|x), evaluation uses the posterior means, and
p(z1|y, z2) is a diagonal Gaussian with learned (input-dependent) variance.
Latent dimensions that M1 leaves inactive (the spread of their posterior means
over the data is at most 0.1) are dropped.  The whole stack is one Keras model:
`call(x)` maps images to q(y|z1(x)) probabilities.

Where the training codes come from (`CODES`): ``"per_step"`` runs M1's encoder on
every training batch (dynamically binarised images, when the run binarises);
``"cached"`` computes q(z1|x) once for every training image, on its grey levels,
and each step samples z1 from those stored means and scales, as the original
code did (learn_yz_x_ss.py: features extracted once, ``np.random.normal(mean,
exp(logvar / 2))`` per minibatch).  Cached training batches hold
``[loc, scale]`` rows (`posterior_parameters`) instead of images.
"""

import numpy as np
import tensorflow as tf

from ssl_dgm.configs import CODES
from ssl_dgm.m1 import M1, in_batches, posterior_means
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
      codes: one of `CODES`: what training batches hold (images, or the
        `posterior_parameters` of images).
      **m2_kwargs: the remaining `M2` arguments (not input_size / likelihood).
    """

    def __init__(self, m1: M1, active, codes="per_step", **m2_kwargs):
        if codes not in CODES:
            raise ValueError(f"unknown codes {codes!r}; choose one of {CODES}")
        super().__init__(input_size=len(active), likelihood="gaussian", **m2_kwargs)
        self.m1 = m1
        self.m1.trainable = False
        self.active = tf.constant(np.asarray(active), tf.int32)
        self.codes = codes

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

    def posterior_parameters(self, images, batch_size=1000):
        """q(z1|x)'s means and scales in the active dimensions, ``[n, 2 * active]``
        (numpy), in batches: the training inputs of a ``codes="cached"`` model."""
        def parameters(batch):
            posterior = self.m1.posterior(batch)
            return tf.gather(tf.concat([posterior.mean(), posterior.stddev()], -1),
                             tf.concat([self.active, self.active + self.m1.latent_size], 0),
                             axis=-1)

        return in_batches(parameters, images, batch_size)

    def training_features(self, x, seed):
        if self.codes == "per_step":
            return self.features(x, seed)
        loc, scale = tf.split(tf.cast(x, self.compute_dtype), 2, axis=-1)
        return loc + scale * tf.random.stateless_normal(tf.shape(loc), seed, dtype=loc.dtype)
