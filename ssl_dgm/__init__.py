"""ssl_dgm: Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised Learning
with Deep Generative Models", on TensorFlow 2 / Keras 3 / TensorFlow Probability.

Modules, in the direction data flows:

  configs        frozen dataclasses per concern, composed into an ExperimentConfig.
  presets        the named presets (m1, m2, m1m2, m1m2_paper): the one source of defaults.
  overrides      setting any config field by dotted path (flags, --set, config files).
  data           TFDS splits, the balanced labeled subset, tf.data streams.
  networks       MLP builders shared by every model.
  distributions  network outputs -> TFP distributions.
  objectives     the bounds: ELBO, L(x, y), U(x), the classification term, J^alpha.
  bound_model    the Keras glue of every model: trackers, seeds, train/test steps.
  m1, m2, stacked, spreading   the models and M1's transductive head.
  rundir         the run folder: lock, config.json, atomic writes.
  builders       models from configs; finished runs from their folders.
  train          the stage pipeline, its callbacks, strategies and evaluation.
  serving        the exported SavedModels' signatures, atomic versioned export.
  figures        PNGs of a trained run; quiet: TensorFlow's start-up chatter off.
  paper          the paper's Table 1, which the reports compare against.
"""

import os

# Keras 3 picks its backend at import time; this package is written for TensorFlow.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
