"""M2: the generative semi-supervised model (Kingma et al. 2014, section 3.1.2).

One model for any input vector: on pixels (Bernoulli likelihood) it is the
paper's M2; on M1's latent codes (Gaussian likelihood) it is the top of M1+M2.
The bounds live in `objectives`; this module only owns the networks and glues
them to Keras' `fit`.
"""

from typing import Sequence

import keras
import tensorflow as tf

from ssl_dgm import distributions, objectives
from ssl_dgm.networks import MLP


class M2(keras.Model):
    """q(z|x,y), p(x|y,z) and q(y|x) as MLPs; `call(x)` returns q(y|x) probabilities.

    Args:
      input_size: dimension d of a (flattened) input vector.
      num_classes: K.
      latent_size: dimension of z.
      hidden_sizes: hidden widths of encoder and decoder.
      classifier_hidden_sizes: hidden widths of q(y|x).
      activation: hidden activation.
      likelihood: ``"bernoulli"`` (pixels) or ``"gaussian"`` (continuous codes).
      alpha: weight of the classification term per labeled example.
      decoder_bias: optional initial output bias of the decoder, ``[d]`` (e.g.
        the logit of the mean training image, which saves the first epochs).
      seed: seeds the model's `keras.random.SeedGenerator`.
    """

    def __init__(self, input_size: int, num_classes: int = 10, latent_size: int = 50,
                 hidden_sizes: Sequence[int] = (500, 500),
                 classifier_hidden_sizes: Sequence[int] = (500, 500),
                 activation: str = "softplus", likelihood: str = "bernoulli",
                 alpha: float = 50.0, decoder_bias=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)
        self.make_likelihood, outputs_per_dim = distributions.likelihood(likelihood)
        self.encoder = MLP(hidden_sizes, 2 * latent_size, num_inputs=2,
                           activation=activation, name="encoder")
        self.decoder = MLP(hidden_sizes, outputs_per_dim * self.input_size, num_inputs=2,
                           activation=activation, output_bias=decoder_bias, name="decoder")
        self.classifier = MLP(classifier_hidden_sizes, num_classes, activation=activation,
                              name="classifier")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in
                         ("loss", "labeled_bound", "unlabeled_bound", "classification",
                          "error")}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def flatten(self, x):
        return tf.reshape(tf.cast(x, self.compute_dtype), [-1, self.input_size])

    def call(self, x):
        """q(y|x) probabilities ``[batch, K]`` for inputs of any shape that flattens to d."""
        return tf.nn.softmax(self.classifier(self.flatten(x)))

    def build(self, input_shape=None):
        # Touch every network once so that variables exist before restore/fit.
        x = tf.zeros([1, self.input_size])
        y = tf.zeros([1, self.num_classes])
        z_params = self.encoder([x, y])
        self.decoder([z_params[:, : z_params.shape[-1] // 2], y])
        self.classifier(x)
        super().build(input_shape)

    def _seeds(self):
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        return tf.random.experimental.stateless_split(seed, 2)

    def _update(self, terms):
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        """One step on ``{"labeled_x", "labels", "unlabeled_x"}`` (see `data`)."""
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        labeled_x, labels = self.flatten(batch["labeled_x"]), batch["labels"]
        unlabeled_x = self.flatten(batch["unlabeled_x"])
        with tf.GradientTape() as tape:
            terms = objectives.m2_objective(labeled_x, labels, unlabeled_x, self,
                                            self.alpha, self._seeds())
        gradients = tape.gradient(terms["loss"], self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update(terms)

    def test_step(self, data):
        """Bounds and error on labeled evaluation data ``(x, y)``; U uses the same x."""
        x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = self.flatten(x)
        terms = objectives.m2_objective(x, labels, x, self, self.alpha, self._seeds())
        return self._update(terms)
