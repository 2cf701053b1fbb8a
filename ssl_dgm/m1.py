"""M1: the latent-feature discriminative model (Kingma et al. 2014, section 3.1.1).

A VAE with q(z|x) diagonal Gaussian, p(z) = N(0, I) and a Bernoulli p(x|z),
trained on all images without labels; its posterior means are features for a
classifier of the few labels.  The paper used a transductive SVM; here the head is
either label spreading over the training codes (`SpreadingClassifier`, also
transductive) or a softmax regression on the labeled codes alone
(`LatentClassifier`).
"""

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ssl_dgm import distributions, objectives, spreading
from ssl_dgm.bound_model import BoundModel
from ssl_dgm.networks import MLP


class M1(BoundModel):
    """VAE on flattened inputs; `call(x)` returns the posterior mean of z, ``[batch, latent]``.

    Trains on batches of images (labels, if a dataset has them, are ignored).

    Args:
      input_size: dimension d of a flattened image.
      latent_size: dimension of z.
      hidden_sizes: hidden widths of encoder and decoder.
      activation: hidden activation.
      decoder_bias: optional initial decoder output bias, ``[d]``.
      precision: compute dtype policy of the networks: ``"float32"`` or
        ``"mixed_bfloat16"`` (bfloat16 matmuls, float32 weights and bounds).
      kl_warmup_steps: if positive, training minimises distortion + beta * rate
        with beta rising linearly from 0 to 1 over this many steps ("KL warm-up",
        Sonderby et al. 2016), which keeps more latent dimensions in use; the
        reported ``loss`` is always the true -ELBO.
      seed: seeds the model's `keras.random.SeedGenerator`.
    """

    def __init__(self, input_size: int, latent_size: int = 50,
                 hidden_sizes: Sequence[int] = (600, 600), activation: str = "softplus",
                 decoder_bias=None, precision: str = "float32", kl_warmup_steps: int = 0,
                 seed=None, **kwargs):
        super().__init__(input_size, ("loss", "distortion", "rate"), seed=seed, **kwargs)
        self.latent_size = int(latent_size)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.make_likelihood = distributions.bernoulli
        self.encoder = MLP(hidden_sizes, 2 * latent_size, activation=activation,
                           dtype=precision, name="encoder")
        self.decoder = MLP(hidden_sizes, self.input_size, activation=activation,
                           output_bias=decoder_bias, dtype=precision, name="decoder")

    def build(self, input_shape=None):
        self.decoder(self.encoder(tf.zeros([1, self.input_size]))[:, :self.latent_size])
        super().build(input_shape)

    def posterior(self, x):
        """q(z|x) for inputs of any shape that flattens to d."""
        return distributions.diagonal_gaussian(self.encoder(self.flatten(x)))

    def call(self, x):
        return self.posterior(x).mean()

    def decode(self, z):
        """Pixel means of p(x|z), ``[..., d]``."""
        return self.make_likelihood(self.decoder(z)).mean()

    def evaluation_terms(self, x, _):
        distortion, rate = objectives.elbo_terms(self.flatten(x), [], self.encoder,
                                                 self.decoder, self.make_likelihood,
                                                 self.next_seeds(1)[0])
        terms = {"distortion": tf.reduce_mean(distortion), "rate": tf.reduce_mean(rate)}
        terms["loss"] = terms["distortion"] + terms["rate"]  # mean J(x) = -ELBO
        return terms

    def training_terms(self, x, _):
        terms = self.evaluation_terms(x, _)
        if self.kl_warmup_steps > 0:
            beta = tf.minimum(1.0, tf.cast(self.optimizer.iterations + 1, tf.float32)
                              / self.kl_warmup_steps)
            terms["objective"] = terms["distortion"] + beta * terms["rate"]
        return terms


class LatentClassifier(keras.Model):
    """M1 + head: q(y|x) = softmax(head(E_q[z|x])) with M1 frozen; `call(x)` -> probabilities."""

    def __init__(self, m1: M1, num_classes: int = 10, hidden_sizes: Sequence[int] = (),
                 activation: str = "softplus", **kwargs):
        super().__init__(**kwargs)
        self.m1 = m1
        self.m1.trainable = False
        self.head = MLP(hidden_sizes, num_classes, activation=activation, name="head")

    def call(self, x):
        return tf.nn.softmax(self.head(self.m1(x)))


def in_batches(function, images, batch_size=1000):
    """`function` (a batch of images -> a tensor) over all `images`, concatenated (numpy)."""
    return np.concatenate([function(images[i:i + batch_size]).numpy()
                           for i in range(0, len(images), batch_size)])


def posterior_means(m1: M1, images, batch_size=1000):
    """E_q[z|x] of every image, ``[n, latent]`` (numpy), in batches."""
    return in_batches(m1, images, batch_size)


class SpreadingClassifier(keras.Model):
    """M1 + label spreading; `call(x)` -> probabilities ``[batch, classes]``.

    Holds the training codes and their spread label distributions (see
    `ssl_dgm.spreading`).  The `k` training codes nearest to E_q[z|x] vote, each vote
    weighted by the kernel exp(-d / sigma): with their most probable labels
    (``vote="labels"``, the probabilities are the vote shares) or with their whole
    distributions (``vote="distributions"``).  Build one with `spread`.

    Args:
      m1: a trained `M1` (frozen here).
      codes: ``[n, latent]`` posterior means of the training images.
      distributions: ``[n, classes]`` their label distributions.
      sigma: the graph's kernel width.
      k: neighbours per prediction.
      vote: ``"labels"`` (better on validation: docs/spreading_grid.md) or
        ``"distributions"``.
    """

    VOTES = ("labels", "distributions")

    def __init__(self, m1: M1, codes, distributions, sigma: float, k: int = 10,
                 vote: str = "labels", **kwargs):
        super().__init__(**kwargs)
        if vote not in self.VOTES:
            raise ValueError(f"unknown vote {vote!r}; choose one of {self.VOTES}")
        self.m1 = m1
        self.m1.trainable = False
        self.k = int(k)
        self.sigma = float(sigma)
        self.vote = vote
        self.codes = self.add_weight(shape=codes.shape, initializer="zeros",
                                     trainable=False, name="codes")
        self.codes.assign(codes)
        self.distributions = self.add_weight(shape=distributions.shape, initializer="zeros",
                                             trainable=False, name="distributions")
        self.distributions.assign(distributions)

    @classmethod
    def spread(cls, m1: M1, images, labeled_indices, labels, num_classes: int, k: int = 10,
               alpha: float = 0.99):
        """Spreads the labels of ``images[labeled_indices]`` over all `images`' codes."""
        codes = posterior_means(m1, images)
        distributions, sigma = spreading.label_spreading(codes, labeled_indices, labels,
                                                         num_classes, k, alpha)
        return cls(m1, codes, distributions, sigma, k)

    def call(self, x):
        squared = spreading.squared_distances(self.m1(x), self.codes)
        negative, nearest = tf.math.top_k(-squared, self.k)
        kernel = tf.nn.softmax(negative / self.sigma)  # exp(-d / sigma), normalised
        votes = self.distributions
        if self.vote == "labels":
            votes = tf.one_hot(tf.argmax(votes, axis=1), tf.shape(votes)[1])
        return tf.einsum("bk,bkc->bc", kernel, tf.gather(votes, nearest))
