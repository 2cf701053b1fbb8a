"""Run directories and the loop around `fit`.

A run directory says what produced it and what it scored:

    config.json            the `TrainConfig` (refused if a rerun's flags differ)
    labeled_indices.json   which training images carried labels
    checkpoints/           tf.train checkpoints (model, optimizer, RNG, epoch, time)
    history.csv            per epoch: wall minutes, seconds, train and validation metrics
    logs/                  TensorBoard
    results.json           final errors, written last (its presence = finished run)

Rerunning with the same directory resumes from the last checkpoint.
"""

import csv
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from typing import Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ssl_dgm import data, objectives
from ssl_dgm.m1 import M1, LatentClassifier, SpreadingClassifier
from ssl_dgm.m2 import M2
from ssl_dgm.stacked import CODES, M1M2, active_dimensions

MODELS = ("m1", "m2", "m1m2")
STRATEGIES = ("default", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
      model: one of `MODELS`.
      labels: number of labeled training images N (a multiple of the classes).
      epochs: passes over the 50000 unlabeled training images.
      batch_size: unlabeled images per step.
      labeled_batch_size: labeled images per step.
      learning_rate: Adam's initial step size.
      lr_schedule: ``"constant"``, ``"cosine"`` (decays to 0 at the last epoch) or
        ``"cosine_time"`` (decays to 0 as the training time reaches
        `time_budget_minutes`, whatever the machine's speed; `epochs` is then a cap).
      alpha: weight of -log q(y|x) per labeled example; None means
        `objectives.default_alpha` (the paper's 0.1 * N, per labeled example).
      labeled_weight: weight of a labeled example's L and classification terms
        against an unlabeled example's U, per step; None means
        `objectives.paper_labeled_weight` (N_l / N_u, the paper's sums).
      hidden_sizes: encoder/decoder hidden widths.
      classifier_hidden_sizes: q(y|x) hidden widths.
      latent_size: dimension of z.
      activation: hidden activation.
      binarize: dynamic binarisation of pixels.
      seed: seeds the labeled subset, the data order and the model's RNG.
      dataset: TFDS name.
      data_dir: TFDS data folder (None: TFDS's default).
      eval_split: split reported at the end (``test`` by default; ``validation``
        works wherever the training data does).
      time_budget_minutes: stop after this much training wall time (None: no limit).
      steps_per_execution: train steps per compiled call.
      jit_compile: XLA-compile the train step.
      train_examples: use only the first this many training images (tests); None: all.
      m1_epochs: epochs of the M1 stage (m1, m1m2).
      m1_lr_schedule: the M1 stage's `lr_schedule`; None: the same as the M2
        stage's (e.g. ``"cosine"`` over `m1_epochs` while M2 anneals over its
        time budget with ``"cosine_time"``).
      m1_hidden_sizes: M1 encoder/decoder hidden widths.
      m1_latent_size: dimension of M1's z1.
      m1_kl_warmup_epochs: epochs over which M1's KL weight rises from 0 to 1
        (0: none, the paper's plain ELBO throughout).
      m1_dir: reuse the finished M1 in this folder instead of training one.
      m1_codes: where M1+M2's training codes come from (`stacked.CODES`):
        ``"per_step"`` (M1's encoder on every batch) or ``"cached"`` (q(z1|x) of
        every training image computed once, on grey levels, and sampled per step).
      m1_head: the classifier on M1's codes (model m1): ``"spreading"`` (label
        spreading over all training codes, `ssl_dgm.spreading`) or ``"softmax"``
        (softmax regression on the labeled codes).
      spreading_neighbours: graph and prediction neighbours of the spreading head.
      spreading_alpha: label spreading's alpha (chosen with the neighbours on
        validation among 5, 10, 20 x 0.99, 0.999, 100 labels, seed 0:
        docs/spreading_grid.md).
      head_steps: full-batch Adam steps of M1's softmax head on the labeled set.
      head_learning_rate: Adam's step size for that head (1e-2 was best on
        validation among 1e-3, 1e-2, 1e-1 x 500, 3000 steps, 100 labels).
      strategy: ``default`` (one device), ``mirrored`` (all local devices) or
        ``multi_worker`` (MultiWorkerMirroredStrategy, cluster from TF_CONFIG).
        Batch sizes are global: each of n replicas gets 1/n of every batch.
      checkpoint_minutes: also checkpoint within an epoch after this much training.
    """

    model: str = "m2"
    labels: int = 100
    epochs: int = 200
    batch_size: int = 100
    labeled_batch_size: int = 100
    learning_rate: float = 1e-3
    lr_schedule: str = "cosine"
    alpha: Optional[float] = None
    labeled_weight: Optional[float] = 1.0
    hidden_sizes: Tuple[int, ...] = (500, 500)
    classifier_hidden_sizes: Tuple[int, ...] = (500, 500)
    latent_size: int = 50
    activation: str = "softplus"
    binarize: bool = True
    seed: int = 0
    dataset: str = "mnist"
    data_dir: Optional[str] = None
    eval_split: str = "test"
    time_budget_minutes: Optional[float] = None
    steps_per_execution: int = 50
    jit_compile: bool = True
    train_examples: Optional[int] = None
    m1_epochs: int = 300
    m1_lr_schedule: Optional[str] = None
    m1_hidden_sizes: Tuple[int, ...] = (600, 600)
    m1_latent_size: int = 50
    m1_kl_warmup_epochs: int = 0
    m1_dir: Optional[str] = None
    m1_codes: str = "per_step"
    m1_head: str = "spreading"
    spreading_neighbours: int = 10
    spreading_alpha: float = 0.99
    head_steps: int = 500
    head_learning_rate: float = 1e-2
    strategy: str = "default"
    checkpoint_minutes: float = 10.0

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODELS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; "
                             f"choose one of {LR_SCHEDULES}")
        if self.m1_lr_schedule not in (None, *LR_SCHEDULES):
            raise ValueError(f"unknown m1_lr_schedule {self.m1_lr_schedule!r}; "
                             f"choose one of {LR_SCHEDULES}")
        if "cosine_time" in (self.lr_schedule, self.m1_lr_schedule) and not (
                self.time_budget_minutes):
            raise ValueError("lr_schedule 'cosine_time' anneals over the time budget: "
                             "give time_budget_minutes too")
        if self.m1_codes not in CODES:
            raise ValueError(f"unknown m1_codes {self.m1_codes!r}; choose one of {CODES}")
        if self.m1_head not in M1_HEADS:
            raise ValueError(f"unknown m1_head {self.m1_head!r}; choose one of {M1_HEADS}")
        if not 0.0 < self.spreading_alpha < 1.0:
            raise ValueError(f"spreading_alpha must be in (0, 1), got {self.spreading_alpha}")
        for name in ("epochs", "batch_size", "labeled_batch_size", "latent_size",
                     "steps_per_execution", "m1_epochs", "m1_latent_size", "head_steps",
                     "spreading_neighbours"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.labeled_weight is not None and not self.labeled_weight > 0:
            raise ValueError(f"labeled_weight must be positive, got {self.labeled_weight}")


LR_SCHEDULES = ("constant", "cosine", "cosine_time")
M1_HEADS = ("spreading", "softmax")

# Fields that may change when a run is resumed (the rest must match config.json).
RESUMABLE_FIELDS = ("epochs", "eval_split", "data_dir", "time_budget_minutes", "strategy",
                    "checkpoint_minutes")
# Fields that may differ between a finished run and a description of it (where the
# data lives, how the run was spread and checkpointed): not what was trained or reported.
PLACEMENT_FIELDS = ("data_dir", "strategy", "checkpoint_minutes")

# Fields a run never reads need not match when it is resumed or checked: an m2
# run made before m1_head existed is the same run under any m1_head, and a run on
# a finished M1 (m1_dir) does not train one.
M1_HEAD_FIELDS = ("m1_head", "spreading_neighbours", "spreading_alpha", "head_steps",
                  "head_learning_rate")
M1_TRAINING_FIELDS = ("m1_epochs", "m1_lr_schedule", "m1_hidden_sizes", "m1_latent_size",
                      "m1_kl_warmup_epochs")


def unread_fields(config):
    """The TrainConfig fields that `config`'s run does not read."""
    if config.model == "m2":
        return M1_HEAD_FIELDS + M1_TRAINING_FIELDS + ("m1_dir", "m1_codes")
    unread = M1_TRAINING_FIELDS if config.m1_dir else ()
    return unread + (M1_HEAD_FIELDS if config.model == "m1m2" else ())


# Defaults that differ by model, applied by train.py to the flags a command does not
# set (TrainConfig's own defaults stay M2's, which the Table 1 harness builds on).
# m1m2: the recipe of the 2-hour runs (KL warm-up M1, 1x500 stage, labeled weight
# 0.1: 3.25 / 3.19 / 3.15% validation error on seeds 0 / 1 / 2, docs/results.md), with
# the stage's cosine over 600 epochs (about its 78 minutes here) instead of over the
# time budget.
MODEL_DEFAULTS = {"m1m2": {"epochs": 600, "hidden_sizes": (500,),
                           "classifier_hidden_sizes": (500,), "labeled_weight": 0.1,
                           "m1_kl_warmup_epochs": 50}}

# What runs made before a field existed did, pinned here so that a later change of
# the field's default does not change how their config.json is read.
VALUES_BEFORE_FIELD = {"labeled_weight": 1.0, "m1_head": "softmax", "m1_codes": "per_step",
                       "m1_lr_schedule": None}


def as_stored(config):
    """`config` as config.json holds it (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def stored_config(stored):
    """A config.json's fields, completed for fields added after it was written."""
    return {**as_stored(TrainConfig()), **VALUES_BEFORE_FIELD, **stored}


def atomic_write(path, text):
    """Writes a file so that readers see the old or the new content, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def check_same_config(model_dir, config, free=RESUMABLE_FIELDS):
    """Raises ValueError if `model_dir` holds a run made with other settings.

    Fields in `free` (by default those a resumed run may change; PLACEMENT_FIELDS
    to check that a finished run is the one `config` describes), and those the run
    does not read (`unread_fields`), may differ; a folder without config.json passes.
    """
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        return
    stored = stored_config(read_json(path))
    wanted = as_stored(config)
    free = tuple(free) + unread_fields(config)
    differing = sorted(k for k in set(stored) | set(wanted)
                       if k not in free and stored.get(k) != wanted.get(k))
    if differing:
        details = ", ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now"
                            for k in differing)
        raise ValueError(f"{model_dir} holds a run made with other settings ({details}); "
                         f"use a new --model_dir or the same flags to resume it")


def prepare_run_dir(model_dir, config, command=None):
    """Creates the run directory or checks that it was made by the same config.

    `command` (the command line) is appended to ``commands.txt``, so the folder
    says what produced it, resumes included.
    """
    os.makedirs(model_dir, exist_ok=True)
    check_same_config(model_dir, config)
    write_json(os.path.join(model_dir, "config.json"), as_stored(config))
    if command:
        with open(os.path.join(model_dir, "commands.txt"), "a") as f:
            f.write(command + "\n")


def logit_of_mean(images):
    """Initial Bernoulli decoder bias: the logit of the mean training image."""
    mean = np.clip(images.reshape(len(images), -1).mean(axis=0), 1e-3, 1 - 1e-3)
    return np.log(mean / (1 - mean)).astype(np.float32)


class Checkpointing(keras.callbacks.Callback):
    """Saves model, optimizer, RNG state, epoch and training time.

    Saves after every epoch and, within an epoch, every `interval_minutes` of
    training.  tf.train.CheckpointManager writes new files first and then swaps
    the small ``checkpoint`` index, so a kill mid-save leaves the previous
    checkpoint valid.  A run resumed from a mid-epoch checkpoint keeps its weights
    and optimizer state and starts that epoch's data pass again.
    """

    def __init__(self, model, directory, interval_minutes=10.0):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        # Keras 3 models are not tracked as tf.train dependencies: their variables
        # (weights, RNG state) go in as a list, matched by position.
        self.checkpoint = tf.train.Checkpoint(weights=list(model.weights),
                                              optimizer=model.optimizer, epoch=self.epoch,
                                              train_seconds=self.train_seconds)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)
        self.interval_seconds = 60 * interval_minutes

    def restore(self):
        """Restores the newest checkpoint, if any; returns the epochs already done."""
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
            logging.info("resumed from %s (epoch %d)", self.manager.latest_checkpoint,
                         int(self.epoch.numpy()))
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

    Also stops training once the time budget is spent.  Rows of epochs that a
    resumed run repeats are dropped first, so every epoch appears once.
    """

    def __init__(self, path, checkpointing, time_budget_minutes=None):
        super().__init__()
        self.path = path
        self.checkpointing = checkpointing
        self.time_budget_minutes = time_budget_minutes

    def on_train_begin(self, logs=None):
        if os.path.exists(self.path):
            done = int(self.checkpointing.epoch.numpy())
            with open(self.path) as f:
                lines = f.read().splitlines()
            kept = lines[:1] + [l for l in lines[1:] if int(l.split(",")[0]) <= done]
            atomic_write(self.path, "".join(l + "\n" for l in kept))

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1,
               "train_minutes": float(self.checkpointing.train_seconds.numpy()) / 60,
               "epoch_train_seconds": self.checkpointing.epoch_train_seconds(),
               "epoch_seconds": time.perf_counter() - self.checkpointing.epoch_start}
        row.update({k: float(v) for k, v in sorted((logs or {}).items())})
        new_file = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        if (self.time_budget_minutes is not None
                and row["train_minutes"] >= self.time_budget_minutes):
            logging.info("time budget of %.1f minutes reached after epoch %d",
                         self.time_budget_minutes, epoch + 1)
            self.model.stop_training = True


def fit_stage(model, train_ds, validation_ds, stage_dir, config, epochs, steps_per_epoch):
    """Compiles and fits one model in `stage_dir`, resuming from its checkpoints.

    Returns:
      `(epochs_done, train_minutes)` over all sessions of this stage.
    """
    os.makedirs(stage_dir, exist_ok=True)
    schedule = learning_rate(config, epochs * steps_per_epoch)
    steps_per_call = min(config.steps_per_execution, steps_per_epoch)
    if tf.distribute.has_strategy():
        keras_steps = steps_per_call  # Keras loops over compiled steps
    else:
        keras_steps = 1  # the model loops inside one compiled call
        train_ds = model.blocks(train_ds, steps_per_call)
    model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=config.jit_compile,
                  steps_per_execution=keras_steps)
    model.optimizer.build(model.trainable_variables)
    checkpointing = Checkpointing(model, os.path.join(stage_dir, "checkpoints"),
                                  config.checkpoint_minutes)
    initial_epoch = checkpointing.restore()
    if initial_epoch < epochs:
        history = History(os.path.join(stage_dir, "history.csv"), checkpointing,
                          config.time_budget_minutes)
        # Order matters: the guard runs before a checkpoint could save a bad step,
        # and the history row is written once the epoch's checkpoint is.
        callbacks = [NonFiniteGuard(checkpointing), checkpointing, history]
        if config.lr_schedule == "cosine_time":
            callbacks.insert(0, TimeCosine(checkpointing, config.learning_rate,
                                           config.time_budget_minutes))
        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3's fit fails under this strategy (keras-team/keras#20585):
            # run the same train_step through strategy.run instead.
            distributed_fit(model, train_ds, validation_ds, strategy, epochs, initial_epoch,
                            callbacks)
        else:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(stage_dir, "logs")))
            model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch,
                      validation_data=validation_ds, callbacks=callbacks,
                      verbose=1 if os.isatty(1) else 2)
    return int(checkpointing.epoch.numpy()), float(checkpointing.train_seconds.numpy()) / 60


def distributed_fit(model, train_ds, validation_ds, strategy, epochs, initial_epoch,
                    callbacks):
    """The fit loop for MultiWorkerMirroredStrategy: `model.train_step` per replica."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = strategy.experimental_distribute_dataset(train_ds.with_options(options))
    validation = strategy.experimental_distribute_dataset(validation_ds.with_options(options))

    def mean_over_replicas(logs):
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    @tf.function
    def train_step(batch):
        return mean_over_replicas(strategy.run(model.train_step, args=(batch,)))

    @tf.function
    def test_step(batch):
        return mean_over_replicas(strategy.run(model.test_step, args=(batch,)))

    callbacks = keras.callbacks.CallbackList(callbacks, model=model)
    callbacks.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step, batch in enumerate(train):
            callbacks.on_train_batch_begin(step)
            logs = train_step(batch)
            callbacks.on_train_batch_end(step, {k: float(v) for k, v in logs.items()})
        logs = {k: float(v) for k, v in logs.items()}
        callbacks.on_test_begin()
        model.reset_metrics()
        for batch in validation:
            val_logs = test_step(batch)
        logs.update({f"val_{k}": float(v) for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, logs)
        logging.info("epoch %d/%d: %s", epoch + 1, epochs,
                     " - ".join(f"{k}: {v:.4f}" for k, v in sorted(logs.items())))
        if model.stop_training:
            break
    callbacks.on_train_end()


def learning_rate(config, total_steps):
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    return config.learning_rate


def build_m2(config, input_size, num_train, m1=None, active=None, decoder_bias=None):
    """The built M2 of an m2 run, or the M1M2 on `m1`'s `active` dims of an m1m2 run."""
    alpha = config.alpha
    if alpha is None:
        alpha = objectives.default_alpha(num_train, config.labels)
    labeled_weight = config.labeled_weight
    if labeled_weight is None:
        labeled_weight = objectives.paper_labeled_weight(num_train, config.labels)
    arguments = dict(num_classes=10, latent_size=config.latent_size,
                     hidden_sizes=config.hidden_sizes,
                     classifier_hidden_sizes=config.classifier_hidden_sizes,
                     activation=config.activation, alpha=alpha,
                     labeled_weight=labeled_weight, seed=config.seed)
    if config.model == "m2":
        model = M2(input_size, likelihood="bernoulli", decoder_bias=decoder_bias, **arguments)
    else:
        model = M1M2(m1, active, codes=config.m1_codes, **arguments)
    model.build()
    return model


M1_WEIGHTS = "m1.weights.h5"


def build_m1(m1_config, input_size, decoder_bias=None, kl_warmup_steps=0):
    model = M1(input_size, latent_size=m1_config["m1_latent_size"],
               hidden_sizes=m1_config["m1_hidden_sizes"], activation=m1_config["activation"],
               decoder_bias=decoder_bias, kl_warmup_steps=kl_warmup_steps,
               seed=m1_config["seed"])
    model.build()
    return model


def m1_stage_dir(config, model_dir):
    """Where a run's M1 lives: --m1_dir if given, else ``<model_dir>/m1``."""
    return config.m1_dir or os.path.join(model_dir, "m1")


def load_m1(stage_dir, input_size):
    """The finished M1 in `stage_dir` and its summary (``results.json``)."""
    summary = read_json(os.path.join(stage_dir, "results.json"))
    weights = os.path.join(stage_dir, M1_WEIGHTS)
    if "config" not in summary or not os.path.exists(weights):
        raise FileNotFoundError(f"{stage_dir} is not a finished M1: it needs {M1_WEIGHTS} and "
                                f"the M1 stage's results.json (a run's m1/ folder)")
    m1 = build_m1(summary["config"], input_size)
    m1.load_weights(weights)
    return m1, summary


def m1_stage(config, model_dir, train, validation_ds):
    """Trains M1 (or loads a finished one) and returns it with its stage summary.

    A finished M1 folder holds ``m1.weights.h5`` and ``results.json``; it is reused
    from `config.m1_dir`, or from ``<model_dir>/m1`` when an earlier run finished it.
    """
    stage_dir = m1_stage_dir(config, model_dir)
    input_size = int(np.prod(train.images.shape[1:]))
    finished = os.path.exists(os.path.join(stage_dir, "results.json"))
    if config.m1_dir and not finished:
        raise FileNotFoundError(f"--m1_dir {config.m1_dir} holds no finished M1 "
                                f"({M1_WEIGHTS} and results.json)")
    if finished:
        logging.info("reusing the finished M1 in %s", stage_dir)
        return load_m1(stage_dir, input_size)

    m1_config = {k: getattr(config, k) for k in ("m1_latent_size", "m1_hidden_sizes",
                                                 "activation", "seed", "m1_kl_warmup_epochs")}
    steps_per_epoch = len(train) // config.batch_size
    m1 = build_m1(m1_config, input_size, logit_of_mean(train.images),
                  config.m1_kl_warmup_epochs * steps_per_epoch)
    train_ds = data.unlabeled_dataset(train.images, config.batch_size, config.seed,
                                      config.binarize)
    stage_config = config
    if config.m1_lr_schedule is not None:
        stage_config = dataclasses.replace(config, lr_schedule=config.m1_lr_schedule)
    epochs, minutes = fit_stage(m1, train_ds, validation_ds, stage_dir, stage_config,
                                config.m1_epochs, steps_per_epoch)
    weights = os.path.join(stage_dir, M1_WEIGHTS)
    temporary = weights + ".tmp.weights.h5"
    m1.save_weights(temporary)
    os.replace(temporary, weights)
    summary = {"config": m1_config, "epochs_done": epochs, "train_minutes": minutes,
               "validation_negative_elbo": float(m1.evaluate(validation_ds, verbose=0,
                                                             return_dict=True)["loss"])}
    write_json(os.path.join(stage_dir, "results.json"), summary)
    return m1, summary


def m1_classifier(m1, train, labeled_indices, num_classes, config):
    """M1 + `config.m1_head`, fitted to ``train``'s labels at `labeled_indices`."""
    labels = train.labels[labeled_indices]
    if config.m1_head == "spreading":
        return SpreadingClassifier.spread(m1, train.images, labeled_indices, labels,
                                          num_classes, config.spreading_neighbours,
                                          config.spreading_alpha)
    classifier = LatentClassifier(m1, num_classes)
    fit_head(classifier, data.Split(train.images[labeled_indices], labels), config)
    return classifier


def fit_head(classifier, labeled, config):
    """Full-batch softmax regression of the labels on M1's posterior means."""
    features = classifier.m1.predict_on_batch(labeled.images)
    head = keras.Sequential([classifier.head, keras.layers.Softmax()])
    head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate),
                 loss="sparse_categorical_crossentropy")
    head.fit(features, labeled.labels, batch_size=len(features), epochs=config.head_steps,
             verbose=0)


def make_strategy(name):
    """The tf.distribute strategy for `TrainConfig.strategy`.

    Create it before any other TensorFlow work: MultiWorkerMirroredStrategy sets
    up collective ops, which must happen at program start-up.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs TF_CONFIG describing the cluster "
                             "(see README, 'Scaling out')")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def run(config: TrainConfig, model_dir: str, command: Optional[str] = None):
    """Trains the configured model in `model_dir` (resuming if possible).

    `command`, if given, is recorded in the run directory's ``commands.txt``.
    Under ``multi_worker`` only the chief writes `model_dir`; the other workers
    write (the same) checkpoints to a temporary folder, which they remove.

    Returns:
      The results dict also written to ``results.json``.
    """
    strategy = make_strategy(config.strategy)
    if is_chief(strategy):
        with strategy.scope():
            return _run(config, model_dir, command)
    scratch = tempfile.mkdtemp(prefix="ssl_dgm_worker_")
    try:
        with strategy.scope():
            return _run(config, scratch, command)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(config, model_dir, command):
    prepare_run_dir(model_dir, config, command)
    keras.utils.set_random_seed(config.seed)

    train = data.load_split("train", config.dataset, config.data_dir)
    if config.train_examples:
        train = data.Split(train.images[:config.train_examples],
                           train.labels[:config.train_examples])
    validation = data.load_split("validation", config.dataset, config.data_dir)
    num_classes = int(max(train.labels.max(), validation.labels.max())) + 1
    indices = data.labeled_indices(train.labels, config.labels, num_classes, config.seed)
    write_json(os.path.join(model_dir, "labeled_indices.json"), indices.tolist())
    labeled = data.Split(train.images[indices], train.labels[indices])
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the "
                         f"{len(train)} training images")
    validation_ds = data.evaluation_dataset(validation, 1000, config.seed, config.binarize)
    results = {"model": config.model, "labels": config.labels,
               "image_shape": list(train.images.shape[1:]), "num_train": len(train)}

    if config.model in ("m1", "m1m2"):
        m1, results["m1"] = m1_stage(config, model_dir, train, validation_ds)
    if config.model == "m1":
        started = time.perf_counter()
        model = m1_classifier(m1, train, indices, num_classes, config)
        results["epochs_done"] = results["m1"]["epochs_done"]
        results["train_minutes"] = (time.perf_counter() - started) / 60  # M1's: in "m1"
    else:
        input_size = int(np.prod(train.images.shape[1:]))
        started = time.perf_counter()
        inputs, labeled_inputs, binarized = train.images, labeled, config.binarize
        if config.model == "m2":
            model = build_m2(config, input_size, len(train),
                             decoder_bias=logit_of_mean(train.images))
        else:
            active = active_dimensions(m1, train.images)
            results["m1_active_dimensions"] = active.tolist()
            model = build_m2(config, input_size, len(train), m1, active)
            if config.m1_codes == "cached":
                inputs, binarized = model.posterior_parameters(train.images), False
                labeled_inputs = data.Split(inputs[indices], labeled.labels)
        preparation_minutes = (time.perf_counter() - started) / 60
        train_ds = data.semi_supervised_dataset(labeled_inputs, inputs,
                                                config.labeled_batch_size, config.batch_size,
                                                config.seed, binarized)
        results["epochs_done"], results["train_minutes"] = fit_stage(
            model, train_ds, validation_ds, model_dir, config, config.epochs, steps_per_epoch)
        results["train_minutes"] += preparation_minutes

    results["total_train_minutes"] = (results["train_minutes"]
                                      + results.get("m1", {}).get("train_minutes", 0.0))
    splits = {"validation": validation}
    if config.eval_split != "validation":
        splits[config.eval_split] = data.load_split(config.eval_split, config.dataset,
                                                    config.data_dir)
    for name, split in splits.items():
        results.update({f"{name}_{key}": error for key, error in
                        split_errors(model, split, config.seed, config.binarize).items()})
    results["eval_split"] = config.eval_split
    results["eval_error"] = results[f"{config.eval_split}_error"]
    if config.binarize:
        results["eval_error_grayscale"] = results[f"{config.eval_split}_error_grayscale"]
    write_json(os.path.join(model_dir, "results.json"), results)
    return results


def evaluate_error(model, dataset):
    """Classification error of `model(x)` probabilities on ``(x, y)`` batches, a fraction."""
    wrong = total = 0
    for x, labels in dataset:
        predictions = np.argmax(model.predict_on_batch(x), axis=-1)
        wrong += int(np.sum(predictions != labels.numpy()))
        total += len(predictions)
    return wrong / total


def split_errors(model, split, seed, binarize=True):
    """Classification errors on `split`: ``error`` on the inputs training sees
    (once-binarised with `seed` when `binarize`, as in every epoch's validation) and,
    when binarised, ``error_grayscale`` on the stored intensities in [0, 1] (what the
    exported classifier is served)."""
    errors = {"error": evaluate_error(model, data.evaluation_dataset(split, 1000, seed,
                                                                      binarize))}
    if binarize:
        errors["error_grayscale"] = evaluate_error(
            model, data.evaluation_dataset(split, 1000, seed, binarized=False))
    return errors


def load_trained(model_dir):
    """Rebuilds the finished M2 or M1+M2 run in `model_dir` with its last weights.

    Returns:
      ``(model, config, results)``.

    Raises:
      ValueError: the run is unfinished (no results.json) or not an M2 / M1+M2 run.
    """
    results_path = os.path.join(model_dir, "results.json")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise ValueError(f"{model_dir} is not a training run directory (no config.json)")
    if not os.path.exists(results_path):
        raise ValueError(f"{model_dir} holds an unfinished run (no results.json); finish it "
                         f"with the command in its commands.txt")
    stored = stored_config(read_json(os.path.join(model_dir, "config.json")))
    config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in stored.items()})
    results = read_json(results_path)
    if config.model not in ("m2", "m1m2"):
        raise ValueError(f"{model_dir} is an {config.model} run; only m2 and m1m2 runs "
                         f"generate digits and can be exported")
    input_size = int(np.prod(results["image_shape"]))
    m1 = None
    if config.model == "m1m2":
        m1, _ = load_m1(m1_stage_dir(config, model_dir), input_size)
    model = build_m2(config, input_size, results["num_train"], m1,
                     results.get("m1_active_dimensions"))
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise ValueError(f"{model_dir} has no checkpoint to export")
    if tf.train.load_checkpoint(latest).has_tensor("weights/0/.ATTRIBUTES/VARIABLE_VALUE"):
        checkpoint = tf.train.Checkpoint(weights=list(model.weights))
    else:
        # Checkpoints written before the weights list reached the trainable
        # variables only through the optimizer's references to them.
        optimizer = keras.optimizers.Adam(learning_rate(config, 1))  # same variables
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(optimizer=optimizer)
    checkpoint.restore(latest).expect_partial().assert_existing_objects_matched()
    return model, config, results
