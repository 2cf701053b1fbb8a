"""ssl_dgm: Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised Learning
with Deep Generative Models", on TensorFlow 2 / Keras 3 / TensorFlow Probability.

Modules, in the direction data flows:

  data           TFDS splits, the balanced labeled subset, tf.data streams.
  networks       MLP builders shared by every model.
  distributions  network outputs -> TFP distributions.
  objectives     the bounds L(x, y), U(x), the classification term, J^alpha.
  m2             the M2 model (labels as a latent variable).
  training       run directory, config, checkpoints, the loop around fit().
  paper          the paper's Table 1, which the reports compare against.
"""

import os

# Keras 3 picks its backend at import time; this package is written for TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
