"""M2: the generative semi-supervised model (Kingma et al. 2014, section 3.1.2).

One model for any input vector: on pixels (Bernoulli likelihood) it is the
paper's M2; on M1's latent codes (Gaussian likelihood, see `stacked`) it is the
top of M1+M2.  The bounds live in `objectives`; this module owns the networks.
"""

from typing import Sequence

import tensorflow as tf

from ssl_dgm import distributions, objectives
from ssl_dgm.bound_model import BoundModel
from ssl_dgm.networks import MLP


class M2(BoundModel):
    """q(z|x,y), p(x|y,z) and q(y|x) as MLPs; `call(x)` returns q(y|x) probabilities.

    Training batches are dicts ``{"labeled_x", "labels", "unlabeled_x"}`` (see
    `data.semi_supervised_dataset`); evaluation batches are ``(x, labels)``.

    Args:
      input_size: dimension d of a (flattened) input vector.
      num_classes: K.
      latent_size: dimension of z.
      hidden_sizes: hidden widths of encoder and decoder.
      classifier_hidden_sizes: hidden widths of q(y|x).
      activation: hidden activation.
      likelihood: ``"bernoulli"`` (pixels) or ``"gaussian"`` (continuous codes).
      alpha: weight of the classification term per labeled example.
      labeled_weight: weight of a labeled example's terms against an unlabeled
        example's U (`objectives`: 1 per step, or the paper's N_l / N_u).
      decoder_bias: optional initial output bias of the decoder (e.g. the logit of
        the mean training image, which saves the first epochs).
      shared_noise: in U(x), one noise draw per image shared by the K labels'
        samples of z (`objectives.unlabeled_bound`) instead of K draws.
      precision: compute dtype policy of the networks: ``"float32"`` or
        ``"mixed_bfloat16"`` (bfloat16 matmuls, float32 weights and bounds).
      seed: seeds the model's `keras.random.SeedGenerator`.
    """

    def __init__(self, input_size: int, num_classes: int = 10, latent_size: int = 50,
                 hidden_sizes: Sequence[int] = (500, 500),
                 classifier_hidden_sizes: Sequence[int] = (500, 500),
                 activation: str = "softplus", likelihood: str = "bernoulli",
                 alpha: float = 50.0, labeled_weight: float = 1.0, decoder_bias=None,
                 shared_noise: bool = False, precision: str = "float32", seed=None,
                 **kwargs):
        super().__init__(input_size,
                         ("loss", "labeled_bound", "unlabeled_bound", "classification",
                          "error"), seed=seed, **kwargs)
        self.num_classes = int(num_classes)
        self.latent_size = int(latent_size)
        self.alpha = float(alpha)
        self.labeled_weight = float(labeled_weight)
        self.shared_noise = bool(shared_noise)
        self.make_likelihood, outputs_per_dim = distributions.likelihood(likelihood)
        self.encoder = MLP(hidden_sizes, 2 * latent_size, num_inputs=2,
                           activation=activation, dtype=precision, name="encoder")
        self.decoder = MLP(hidden_sizes, outputs_per_dim * self.input_size, num_inputs=2,
                           activation=activation, output_bias=decoder_bias, dtype=precision,
                           name="decoder")
        self.classifier = MLP(classifier_hidden_sizes, num_classes, activation=activation,
                              dtype=precision, name="classifier")

    def features(self, x, seed=None):
        """The vectors M2 models, ``[batch, d]``: here the flattened input itself.

        A `seed` asks for a random draw where the features are random (training
        of `stacked.M1M2`); None asks for the deterministic ones.
        """
        del seed
        return self.flatten(x)

    def training_features(self, x, seed):
        """The random features of a training batch's inputs (`features` with a seed)."""
        return self.features(x, seed)

    def classifier_networks(self):
        """The networks `call` uses (what a classifier-only export must hold)."""
        return [self.classifier]

    def call(self, x):
        """q(y|x) probabilities ``[batch, K]``."""
        return tf.nn.softmax(self.classifier(self.features(x)))

    def style(self, x, labels_one_hot):
        """The posterior mean of z given inputs and labels, ``[batch, latent]``."""
        return distributions.diagonal_gaussian(
            self.encoder([self.features(x), labels_one_hot])).mean()

    def decode(self, z, labels_one_hot):
        """The mean of p(x|y, z) in data space, ``[..., d]`` (broadcasts like the MLPs)."""
        return self.make_likelihood(self.decoder([z, labels_one_hot])).mean()

    def build(self, input_shape=None):
        # Create every variable now, so that checkpoints restore before fit.
        x = tf.zeros([1, self.input_size])
        y = tf.zeros([1, self.num_classes])
        z_params = self.encoder([x, y])
        self.decoder([z_params[:, : z_params.shape[-1] // 2], y])
        self.classifier(x)
        super().build(input_shape)

    def training_terms(self, batch, _):
        seeds = self.next_seeds(4)
        labeled_x = self.training_features(batch["labeled_x"], seeds[2])
        unlabeled_x = self.training_features(batch["unlabeled_x"], seeds[3])
        return objectives.m2_objective(labeled_x, batch["labels"], unlabeled_x, self,
                                       self.alpha, seeds[:2], self.labeled_weight,
                                       self.shared_noise)

    def evaluation_terms(self, x, labels):
        """Bounds and error on labeled data; U is evaluated on the same x."""
        x = self.features(x)
        return objectives.m2_objective(x, labels, x, self, self.alpha, self.next_seeds(2),
                                       self.labeled_weight, self.shared_noise)
