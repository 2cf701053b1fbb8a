"""Whole training epochs: one tf.data iterator per epoch against one for the whole fit.

    python -m benchmarks.epochs                   # writes docs/epochs.md/.json

Times full 50,000-image epochs of M1 (600-600, z 50) and of the M1+M2 stage (1x500
on M1's 50 codes, drawn per step) through `Model.fit` on the pipeline's own streams
(`ssl_dgm.data`, dynamic binarisation, 50 steps per XLA call), two ways: fit over
one pass, so that Keras makes and destroys an iterator every epoch (how
`pipeline.fit_stage` ran before), and fit over the pass repeated with
``steps_per_epoch`` = one pass, one iterator kept (`pipeline.one_iterator`, how it
runs now; the batches are the same, `tests/test_data.py`). The variants alternate,
--rounds times, in one process; each fit's first epoch (compile, iterator start) is
left out. The mean matters as much as the median: the stall hits some epochs, not
all.
"""

import os
import platform
import statistics

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.records import command_line, define_output, write_report
from benchmarks.timing import EpochTimer
from ssl_dgm import builders, configs, data, objectives, presets
from ssl_dgm.stacked import M1M2
from ssl_dgm.train import pipeline

flags.DEFINE_integer("epochs", 6, "Epochs per fit (the first is left out).")
flags.DEFINE_integer("rounds", 3, "Fits per variant, alternating.")
flags.DEFINE_integer("images", 50000, "Unlabeled images per epoch.")
define_output("docs/epochs")
FLAGS = flags.FLAGS

PER_CALL = configs.RuntimeConfig().steps_per_execution  # the pipeline's steps per call


def epoch_seconds(model, stream, kept):
    """Seconds of each epoch but the first of one fit over `stream` (one pass)."""
    if not model.trainable_weights:
        raise ValueError(f"{type(model).__name__} has nothing to train (a frozen M1?)")
    stream, steps = pipeline.one_iterator(stream, 1) if kept else (stream, None)
    timer = EpochTimer()
    model.fit(stream, epochs=FLAGS.epochs, steps_per_epoch=steps, verbose=0,
              callbacks=[timer], shuffle=False)
    return timer.seconds[1:]


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(FLAGS.images, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, FLAGS.images)
    labeled = data.Split(images[:100], labels[:100])
    m1, encoder = (builders.build_m1(presets.M1_STAGE, 28 * 28, 0) for _ in range(2))
    stage = presets.STACKED_M2
    stacked = M1M2(encoder, np.arange(encoder.latent_size),  # M1M2 freezes its M1
                   hidden_sizes=stage.hidden_sizes,
                   classifier_hidden_sizes=stage.classifier_hidden_sizes,
                   latent_size=stage.latent_size, labeled_weight=stage.labeled_weight,
                   alpha=objectives.default_alpha(FLAGS.images, 100), seed=0)
    stacked.build()
    models = {"M1": (m1, data.unlabeled_dataset(images, 100, 0)),
              "M1+M2 stage": (stacked, data.semi_supervised_dataset(labeled, images, 100,
                                                                    100, 0))}
    seconds = {}
    for name, (model, stream) in models.items():
        model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
        stream = model.blocks(stream, PER_CALL)
        for kept in (False, True):
            seconds[name, kept] = []
        for _ in range(FLAGS.rounds):
            for kept in (False, True):
                seconds[name, kept] += epoch_seconds(model, stream, kept)

    command = command_line("benchmarks.epochs")
    rows, record = [], {"command": command, "machine": platform.machine(),
                        "cores": os.cpu_count(), "tensorflow": tf.__version__, "models": {}}
    for name in models:
        fresh, kept = seconds[name, False], seconds[name, True]
        record["models"][name] = {"fresh_iterator_seconds": fresh, "kept_iterator_seconds": kept,
                                  "ratio_of_means": statistics.mean(kept) / statistics.mean(fresh)}
        for label, times in (("an iterator per epoch", fresh), ("one iterator kept", kept)):
            rows.append(f"| {name} | {label} | {statistics.median(times):.2f} | "
                        f"{statistics.mean(times):.2f} | {max(times):.2f} | "
                        f"{sum(t > 1.5 * statistics.median(kept) for t in times)} of "
                        f"{len(times)} |")
    text = "\n".join([
        "# Whole epochs: a tf.data iterator per epoch against one kept", "",
        f"Command: `{command}`", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}. "
        f"{FLAGS.images:,} random images binarised per batch, 100 per step (M1+M2: 100 "
        f"labeled + 100 unlabeled), {PER_CALL} steps per XLA call; {FLAGS.rounds} fits per "
        f"variant alternating, {FLAGS.epochs - 1} timed epochs each.", "",
        "| model | iterator | median s/epoch | mean s/epoch | slowest | epochs over 1.5× the "
        "kept median |", "|---|---|---|---|---|---|", *rows, "",
        "Mean epoch with one iterator kept / with one per epoch: " + ", ".join(
            f"{name} **{r['ratio_of_means']:.2f}×**" for name, r in record["models"].items())
        + ".", ""])
    write_report(FLAGS.output, text, record)


if __name__ == "__main__":
    app.run(main)
