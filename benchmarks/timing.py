"""Timing shared by the benchmarks that time `Model.fit` (imports Keras)."""

import time

import keras


class EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch of a fit, in `seconds`."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)
