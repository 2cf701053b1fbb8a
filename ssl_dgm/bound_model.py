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
        self.steps_per_call = 1

    def blocks(self, dataset, steps):
        """Makes `train_step` run `steps` optimizer steps per call on `dataset`.

        Returns the dataset of blocks to fit on: `steps` consecutive batches stacked
        on a new leading axis (the last block of a pass may hold fewer).  Not under
        a tf.distribute strategy, whose cross-replica update cannot sit in a loop.
        """
        if tf.distribute.has_strategy():
            raise ValueError("blocks of steps run without a tf.distribute strategy only")
        self.steps_per_call = int(steps)
        return dataset.batch(self.steps_per_call) if self.steps_per_call > 1 else dataset

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

    def _results(self):
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def _update(self, terms):
        for name, value in terms.items():
            self.trackers[name].update_state(value)
        return self._results()

    def train_step(self, data):
        """One optimizer step per batch, or `steps_per_call` of them per block.

        With ``steps_per_call > 1`` (see `blocks`) `data` stacks that many batches on
        a leading axis and the steps run in a `tf.while_loop` here, so that one
        XLA-compiled call does them all.  Keras' own ``steps_per_execution`` loops
        outside the compiled step instead; each call then reads and writes every
        weight and Adam slot (an M2 step took 29.6 ms that way against 26.0 ms
        here, docs/throughput_blocks.md).
        """
        if self.steps_per_call == 1:
            return self._train_one(data)
        steps = tf.shape(tf.nest.flatten(data)[0])[0]

        def body(step):
            self._train_one(tf.nest.map_structure(lambda t: t[step], data))
            return step + 1

        # One step after another: each reads the weights the previous one wrote.
        tf.while_loop(lambda step: step < steps, body, [tf.constant(0)], parallel_iterations=1)
        return self._results()

    def _train_one(self, data):
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
