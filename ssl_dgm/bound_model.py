"""The Keras glue shared by M1 and M2: metric trackers, seeds, train/test steps.

Subclasses say which scalars they track and how to compute them from a batch
(`training_terms`, `evaluation_terms`, each returning a dict with ``loss``); this
class turns that into gradients, an optimizer update and metric results.  A
training dict may also hold an ``objective``: what is minimised when it differs
from the reported ``loss`` (e.g. during M1's KL warm-up).
"""

import keras
import tensorflow as tf


class BoundModel(keras.Model):
    """Base of the paper's models.

    Args:
      input_size: dimension d of a flattened input.
      tracked: names of the scalars the terms dicts hold (``loss`` first).
      seed: seeds the model's `keras.random.SeedGenerator`.
    """

    def __init__(self, input_size, tracked, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.input_size = int(input_size)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in tracked}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def flatten(self, x):
        """``[batch, ...]`` -> ``[batch, d]`` in the model's dtype."""
        return tf.reshape(tf.cast(x, self.compute_dtype), [-1, self.input_size])

    def next_seeds(self, count):
        """`count` fresh stateless seeds ``[count, 2]`` from the model's generator."""
        seed = tf.cast(self.seed_generator.next(), tf.int32)
        return tf.random.experimental.stateless_split(seed, count)

    def training_terms(self, x, y):
        raise NotImplementedError

    def evaluation_terms(self, x, y):
        return self.training_terms(x, y)

    def _update(self, terms):
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            terms = self.training_terms(x, y)
            objective = terms.pop("objective", terms["loss"])
            # Under a tf.distribute strategy each replica sees 1/n of the global batch
            # and the optimizer sums the replicas' gradients: scale the mean by 1/n.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = objective / replicas
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        return self._update(terms)

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._update(self.evaluation_terms(x, y))
