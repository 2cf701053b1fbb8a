"""Callbacks around `fit`: checkpoints, history rows, schedules, the NaN guard, progress.

Order within an epoch's end matters and is fixed by `fit_stage`: the guard has
stopped a bad step before anything is saved; the history row is written before
the checkpoint, so a kill between the two leaves a row the resumed run rewrites
(never a checkpointed epoch without its row).
"""

import csv
import io
import math
import os
import statistics
import time

import keras
import tensorflow as tf

from ssl_dgm import builders, rundir


def learning_rate(optimization, total_steps):
    """Adam's learning rate (or schedule) for an `OptimizationConfig`."""
    if optimization.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(optimization.learning_rate, total_steps)
    return optimization.learning_rate


class Checkpointing(keras.callbacks.Callback):
    """Saves weights (by variable path), optimizer, epoch and training time.

    Saves after every epoch and, within an epoch, every `interval_minutes` of
    training.  tf.train.CheckpointManager writes new files first and then swaps
    the small ``checkpoint`` index, so a kill mid-save leaves the previous
    checkpoint valid.  A run resumed from a mid-epoch checkpoint keeps its weights
    and optimizer state and starts that epoch's data pass again.
    """

    def __init__(self, model, directory, interval_minutes=10.0, say=print):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        # Keras 3 models are not tf.train dependencies: their variables go in by path.
        self.checkpoint = tf.train.Checkpoint(weights=builders.weights_by_path(model),
                                              optimizer=model.optimizer, epoch=self.epoch,
                                              train_seconds=self.train_seconds)
        self.directory = directory
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)
        self.interval_seconds = 60 * interval_minutes
        self.say = say
        self.epoch_start = self.last_save = time.perf_counter()
        self.seconds_before, self.train_end = 0.0, None

    def restore(self):
        """Restores the newest readable checkpoint, if any; returns the epochs done.

        A checkpoint that cannot be read (a missing or damaged file) is skipped, with
        a warning, for the next older one; if none can be read, `ValueError` (never
        a silent restart that would overwrite them).
        """
        restored = builders.restore_newest(
            self.checkpoint, self.directory, self.manager.checkpoints,
            warn=lambda p: self.say(f"warning: checkpoint {p} cannot be read; trying an "
                                    f"older one"))
        if restored is not None:
            self.say(f"resumed from {restored} (epoch {int(self.epoch.numpy())})")
        return int(self.epoch.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = self.last_save = time.perf_counter()
        self.seconds_before = float(self.train_seconds.numpy())
        self.train_end = None

    def on_test_begin(self, logs=None):
        if self.train_end is None:  # validation time does not count as training
            self.train_end = time.perf_counter()

    def epoch_train_seconds(self):
        return (self.train_end or time.perf_counter()) - self.epoch_start

    def train_minutes(self):
        """The stage's training minutes so far, this epoch included."""
        return (self.seconds_before + self.epoch_train_seconds()) / 60

    def _save(self):
        self.train_seconds.assign(self.seconds_before + self.epoch_train_seconds())
        self.manager.save()
        self.last_save = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.last_save > self.interval_seconds:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self._save()


class TimeCosine(keras.callbacks.Callback):
    """Cosine learning-rate decay over training *time*: lr = lr0 (1 + cos(pi t / T)) / 2.

    t is the stage's training time so far (checkpointed, so a resumed run goes on
    where it stopped) and T the time budget.  The rate is set before every
    compiled call (`steps_per_execution` steps).
    """

    def __init__(self, checkpointing, initial_rate, budget_minutes):
        super().__init__()
        self.checkpointing = checkpointing
        self.initial_rate = initial_rate
        self.budget_seconds = 60 * budget_minutes

    def rate(self, seconds):
        done = min(seconds / self.budget_seconds, 1.0)
        return 0.5 * self.initial_rate * (1 + math.cos(math.pi * done))

    def on_train_batch_begin(self, batch, logs=None):
        seconds = self.checkpointing.seconds_before + self.checkpointing.epoch_train_seconds()
        self.model.optimizer.learning_rate.assign(self.rate(seconds))


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops on a NaN/Inf loss, naming the step and the last good checkpoint (kept)."""

    def __init__(self, checkpointing):
        super().__init__()
        self.checkpointing = checkpointing

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            last = self.checkpointing.manager.latest_checkpoint or "none yet"
            raise FloatingPointError(
                f"non-finite loss {float(loss)} at step "
                f"{int(self.model.optimizer.iterations)}; training stopped. "
                f"Last good checkpoint: {last}")


class History(keras.callbacks.Callback):
    """One CSV row per finished epoch: training minutes so far, seconds, all metrics.

    Every metric has a ``val_`` column, empty in the epochs that did not validate.

    Also stops training once the time budget is spent.  At the start, rows past
    the restored epoch (written before a kill that lost their checkpoint) are
    dropped, so the file holds exactly one row for each epoch done.
    """

    def __init__(self, path, checkpointing, time_budget_minutes=None):
        super().__init__()
        self.path = path
        self.checkpointing = checkpointing
        self.time_budget_minutes = time_budget_minutes
        self.fields = None

    def on_train_begin(self, logs=None):
        done = int(self.checkpointing.epoch.numpy())
        rows = [r for r in rundir.read_history(self.path) if int(r["epoch"]) <= done]
        self.fields = None
        if rows:  # the columns are the file's header: a row omits what it did not measure
            with open(self.path, newline="") as f:
                self.fields = next(csv.reader(f))
        if os.path.exists(self.path):
            rundir.atomic_write(self.path, self._csv(rows, header=True))

    def _csv(self, rows, header):
        if not rows:
            return ""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.fields, lineterminator="\n")
        if header:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: int(v) if k == "epoch" else v for k, v in row.items()})
        return text.getvalue()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "train_minutes": self.checkpointing.train_minutes(),
               "epoch_train_seconds": self.checkpointing.epoch_train_seconds(),
               "epoch_seconds": time.perf_counter() - self.checkpointing.epoch_start}
        new_file = self.fields is None or not os.path.exists(self.path)
        if new_file:
            metrics = {k.removeprefix("val_") for k in logs or {}}
            self.fields = list(row) + sorted(metrics | {f"val_{k}" for k in metrics})
        row.update({k: float(v) for k, v in sorted((logs or {}).items())})
        with open(self.path, "a", newline="") as f:
            f.write(self._csv([row], header=new_file))
            f.flush()
            os.fsync(f.fileno())
        if (self.time_budget_minutes is not None
                and row["train_minutes"] >= self.time_budget_minutes):
            self.model.stop_training = True


def _minutes(seconds):
    seconds = max(seconds, 0.0)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Progress(keras.callbacks.Callback):
    """One short line per epoch: loss, validation loss / error, s/epoch, the stage's ETA.

    The ETA is the median epoch's seconds times the epochs left, or the training
    time left of a time budget if that ends the stage first.
    """

    def __init__(self, stage, epochs, checkpointing, time_budget_minutes=None, say=print):
        super().__init__()
        self.stage, self.epochs = stage, epochs
        self.checkpointing = checkpointing
        self.budget = time_budget_minutes
        self.say = say
        self.seconds = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.seconds.append(time.perf_counter() - self.checkpointing.epoch_start)
        typical = statistics.median(self.seconds)
        left = typical * (self.epochs - epoch - 1)
        if self.budget is not None:
            left = min(left, 60 * (self.budget - self.checkpointing.train_minutes()))
        parts = [f"{self.stage} epoch {epoch + 1}/{self.epochs}"]
        if "loss" in logs:
            parts.append(f"loss {logs['loss']:.2f}")
        if "val_error" in logs:
            parts.append(f"val error {100 * logs['val_error']:.2f}%")
        elif "val_loss" in logs:
            parts.append(f"val loss {logs['val_loss']:.2f}")
        parts.append(f"{self.seconds[-1]:.1f} s/epoch")
        parts.append(f"ETA {_minutes(left)}")
        self.say("  ".join(parts))
