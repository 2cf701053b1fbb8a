"""The training pipeline: check everything, then train each stage, then score.

    results = pipeline.run(presets.get("m1m2", labels=100), "runs/m1m2_100_seed0")

`run` first checks the configuration against the data (dataset, splits, label
count, a reused M1) and only then creates the run folder (`ssl_dgm.rundir`), so
a refused command writes nothing.  A folder whose run finished is reported, not
retrained; an unfinished one resumes from its newest readable checkpoint.
"""

import dataclasses
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from ssl_dgm import builders, configs, data, rundir
from ssl_dgm.m1 import LatentClassifier, SpreadingClassifier
from ssl_dgm.stacked import active_dimensions
from ssl_dgm.train import callbacks as cb
from ssl_dgm.train.distribute import distributed_fit, is_chief, make_strategy
from ssl_dgm.train.evaluation import split_errors


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a checked configuration trains on (see `prepare`)."""

    config: configs.ExperimentConfig
    info: data.DatasetInfo
    train: data.Split
    validation: data.Split
    labeled_indices: np.ndarray
    evaluation: dict  # {split name: data.Split} reported at the end


def prepare(config: configs.ExperimentConfig) -> Inputs:
    """Checks `config` against its data and loads the data; writes nothing.

    Returns the config with a reused M1 adopted (`builders.adopt_m1`).

    Raises:
      ValueError / FileNotFoundError: naming the flag or file and what to do.
    """
    settings = config.data
    info = data.dataset_info(settings.dataset, settings.data_dir)
    info.check_split("train")
    info.check_split(settings.eval_split)
    if config.m1_dir is not None:
        config = builders.adopt_m1(config, info.image_shape)
    train = data.load_split("train", settings.dataset, settings.data_dir, info,
                            first=settings.train_examples)
    if settings.train_examples is not None and settings.train_examples > len(train):
        raise ValueError(f"--train_examples={settings.train_examples} exceeds the "
                         f"{len(train)} training images")
    if settings.batch_size > len(train):
        raise ValueError(f"--batch_size={settings.batch_size} exceeds the {len(train)} "
                         f"training images")
    indices = data.labeled_indices(train.labels, settings.labels, info.num_classes,
                                   config.seed)
    validation = data.load_split("validation", settings.dataset, settings.data_dir, info)
    evaluation = {"validation": validation}
    if settings.eval_split != "validation":  # loaded now: a bad slice fails before training
        evaluation[settings.eval_split] = data.load_split(settings.eval_split, settings.dataset,
                                                          settings.data_dir, info)
    return Inputs(config, info, train, validation, indices, evaluation)


def run(config: configs.ExperimentConfig, model_dir: str, command=None, say=print):
    """Trains `config` in `model_dir` (resuming if possible) and scores it.

    `command`, if given, is recorded in the folder's ``commands.txt``; `say`
    prints progress (stage announcements, one line per epoch).  Under
    ``multi_worker`` only the chief writes `model_dir`; the other workers write
    (the same) checkpoints to a temporary folder, which they remove.

    Returns:
      The results dict also written to ``results.json``.
    """
    if (config.runtime.strategy == "multi_worker"
            and os.path.isdir(os.path.join(model_dir, "checkpoints"))):
        # Only the chief reads the folder, so workers would start over beside a
        # resumed chief and their collectives would disagree.
        raise ValueError(f"{model_dir} holds checkpoints: a multi-worker run does not "
                         f"resume; start it in a new run folder")
    strategy = make_strategy(config.runtime.strategy)
    if is_chief(strategy):
        with strategy.scope():
            return _run(config, model_dir, command, say)
    scratch = tempfile.mkdtemp(prefix="ssl_dgm_worker_")
    try:
        with strategy.scope():
            return _run(config, scratch, command, lambda *_: None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _finished(config, model_dir, say):
    rundir.check_same_config(model_dir, config, rundir.PLACEMENT)
    say(f"{model_dir} holds this run, finished: reporting its results")
    return rundir.read_json(os.path.join(model_dir, rundir.RESULTS))


def _run(config, model_dir, command, say):
    inputs = prepare(config)
    config = inputs.config
    if rundir.is_finished(model_dir):  # read-only: a finished folder is not touched
        return _finished(config, model_dir, say)
    lock = rundir.lock(model_dir)
    try:
        if rundir.is_finished(model_dir):  # finished by another process meanwhile
            return _finished(config, model_dir, say)
        rundir.record(model_dir, config, command)
        return _train(config, inputs, model_dir, say)
    finally:
        lock.release()


def _train(config, inputs, model_dir, say):
    keras.utils.set_random_seed(config.seed)
    train, validation, indices = inputs.train, inputs.validation, inputs.labeled_indices
    rundir.write_json(os.path.join(model_dir, "labeled_indices.json"), indices.tolist())
    binarize = config.data.binarize
    validation_ds = data.evaluation_dataset(validation, 1000, config.seed, binarize)
    results = {"model": config.model, "labels": config.data.labels,
               "dataset": config.data.dataset, "image_shape": list(inputs.info.image_shape),
               "num_classes": inputs.info.num_classes, "num_train": len(train)}

    if config.m1 is not None:
        m1, results["m1"] = m1_stage(config, model_dir, train, validation_ds, say)
    started = time.perf_counter()
    if config.model == "m1":
        say(f"M1 head: {config.head.kind} on {config.data.labels} labeled codes")
        model = m1_classifier(m1, train, indices, inputs.info.num_classes, config.head)
        results["epochs_done"] = results["m1"]["epochs_done"]
        results["train_minutes"] = (time.perf_counter() - started) / 60  # M1's: in "m1"
    else:
        model, train_ds = m2_inputs(config, inputs, m1 if config.model == "m1m2" else None,
                                    results)
        preparation_minutes = (time.perf_counter() - started) / 60
        epochs = config.m2.optimization.epochs
        say(f"M2 stage: {epochs} epochs" if config.model == "m2" else
            f"M2 stage on {model.input_size} M1 codes: {epochs} epochs")
        results["epochs_done"], results["train_minutes"] = fit_stage(
            model, train_ds, validation_ds, model_dir, config.m2.optimization, config.runtime,
            len(train) // config.data.batch_size, "M2", say)
        results["train_minutes"] += preparation_minutes

    results["total_train_minutes"] = (results["train_minutes"]
                                      + results.get("m1", {}).get("train_minutes", 0.0))
    for name, split in inputs.evaluation.items():
        results.update({f"{name}_{key}": error for key, error in
                        split_errors(model, split, config.seed, binarize).items()})
    results["eval_split"] = config.data.eval_split
    results["eval_error"] = results[f"{config.data.eval_split}_error"]
    if binarize:
        results["eval_error_grayscale"] = results[f"{config.data.eval_split}_error_grayscale"]
    rundir.write_json(os.path.join(model_dir, rundir.RESULTS), results)
    return results


def m2_inputs(config, inputs, m1, results):
    """The built M2 (or M1+M2 on `m1`) and its training stream."""
    train, labeled = inputs.train, data.Split(inputs.train.images[inputs.labeled_indices],
                                              inputs.train.labels[inputs.labeled_indices])
    input_size = int(np.prod(train.images.shape[1:]))
    images, binarized = train.images, config.data.binarize
    if m1 is None:
        model = builders.build_m2(config, inputs.info.num_classes, input_size, len(train),
                                  decoder_bias=builders.logit_of_mean(train.images))
    else:
        active = active_dimensions(m1, train.images)
        results["m1_active_dimensions"] = active.tolist()
        model = builders.build_m2(config, inputs.info.num_classes, input_size, len(train), m1,
                                  active)
        if config.m2.codes == "cached":
            images, binarized = model.posterior_parameters(train.images), False
            labeled = data.Split(images[inputs.labeled_indices], labeled.labels)
    train_ds = data.semi_supervised_dataset(labeled, images, config.data.labeled_batch_size,
                                            config.data.batch_size, config.seed, binarized)
    return model, train_ds


def m1_stage(config, model_dir, train, validation_ds, say):
    """Trains M1 (or loads a finished one) and returns it with its stage summary.

    A finished M1 folder holds ``m1.weights.h5`` and ``results.json``; it is reused
    from `config.m1_dir`, or from ``<model_dir>/m1`` when an earlier run finished it.
    """
    stage_dir = builders.m1_stage_dir(config, model_dir)
    if rundir.is_finished(stage_dir):
        say(f"M1 stage: reusing the finished M1 in {stage_dir}")
        return builders.load_m1(stage_dir)

    stage, settings = config.m1, config.data
    steps_per_epoch = len(train) // settings.batch_size
    m1 = builders.build_m1(stage, int(np.prod(train.images.shape[1:])), config.seed,
                           builders.logit_of_mean(train.images),
                           stage.kl_warmup_epochs * steps_per_epoch)
    train_ds = data.unlabeled_dataset(train.images, settings.batch_size, config.seed,
                                      settings.binarize)
    say(f"M1 stage: {stage.optimization.epochs} epochs")
    epochs, minutes = fit_stage(m1, train_ds, validation_ds, stage_dir, stage.optimization,
                                config.runtime, steps_per_epoch, "M1", say)
    weights = os.path.join(stage_dir, rundir.M1_WEIGHTS)
    temporary = os.path.join(stage_dir, ".tmp." + rundir.M1_WEIGHTS)
    # A finished M1 is only ever used frozen: its weights without Adam's slots (1/3 the file).
    optimizer, m1.optimizer = m1.optimizer, None
    try:
        m1.save_weights(temporary)
    finally:
        m1.optimizer = optimizer
    os.chmod(temporary, rundir.file_mode())
    os.replace(temporary, weights)
    summary = {"m1": configs.to_dict(stage), "seed": config.seed,
               "dataset": settings.dataset, "image_shape": list(train.images.shape[1:]),
               "epochs_done": epochs, "train_minutes": minutes,
               "validation_negative_elbo": float(m1.evaluate(validation_ds, verbose=0,
                                                             return_dict=True)["loss"])}
    rundir.write_json(os.path.join(stage_dir, rundir.RESULTS), summary)
    return m1, summary


def m1_classifier(m1, train, labeled_indices, num_classes, head):
    """M1 + the `HeadConfig` head, fitted to ``train``'s labels at `labeled_indices`."""
    labels = train.labels[labeled_indices]
    if head.kind == "spreading":
        return SpreadingClassifier.spread(m1, train.images, labeled_indices, labels,
                                          num_classes, head.neighbours, head.alpha)
    classifier = LatentClassifier(m1, num_classes)
    features = classifier.m1.predict_on_batch(train.images[labeled_indices])
    softmax = keras.Sequential([classifier.head, keras.layers.Softmax()])
    softmax.compile(optimizer=keras.optimizers.Adam(head.learning_rate),
                    loss="sparse_categorical_crossentropy")
    softmax.fit(features, labels, batch_size=len(features), epochs=head.steps, verbose=0)
    return classifier


def validation_epochs(epochs, every):
    """The (1-based) epochs after which a stage of `epochs` validates: every
    `every`-th and the last."""
    return sorted(set(range(every, epochs + 1, every)) | {epochs})


def one_iterator(train_ds, keras_steps):
    """``(dataset, steps_per_epoch)`` for `fit`: the pass repeated and one pass per epoch,
    so that one tf.data iterator serves the whole fit.

    Destroying a pass's iterator at every epoch's end can stall the process for about
    2 s while tf.data's threads wind down (docs/performance.md).  The pass stays as it
    is (Keras ends the epoch at its end) when its length is unknown, or when Keras runs
    `keras_steps` > 1 steps per call and the pass is not a multiple of them: its last
    call would then run into the next pass.
    """
    passes = int(train_ds.cardinality())
    if passes > 0 and passes % keras_steps == 0:
        return train_ds.repeat(), passes
    return train_ds, None


def fit_stage(model, train_ds, validation_ds, stage_dir, optimization, runtime,
              steps_per_epoch, stage_name="M2", say=print):
    """Compiles and fits one model in `stage_dir`, resuming from its checkpoints.

    Returns:
      `(epochs_done, train_minutes)` of the stage, over every process that trained it.
    """
    os.makedirs(stage_dir, exist_ok=True)
    epochs = optimization.epochs
    schedule = cb.learning_rate(optimization, epochs * steps_per_epoch)
    steps_per_call = min(runtime.steps_per_execution, steps_per_epoch)
    if tf.distribute.has_strategy():
        keras_steps = steps_per_call  # Keras loops over compiled steps
    else:
        keras_steps = 1  # the model loops inside one compiled call
        train_ds = model.blocks(train_ds, steps_per_call)
    model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile=runtime.jit_compile,
                  steps_per_execution=keras_steps)
    model.optimizer.build(model.trainable_variables)
    checkpointing = cb.Checkpointing(model, os.path.join(stage_dir, "checkpoints"),
                                     runtime.checkpoint_minutes, say)
    initial_epoch = checkpointing.restore()
    if initial_epoch < epochs:
        budget = optimization.time_budget_minutes
        history = cb.History(os.path.join(stage_dir, "history.csv"), checkpointing, budget)
        # The guard runs before anything saves a bad step; the history row is written
        # before the epoch's checkpoint (see callbacks' module docstring).
        callbacks = [cb.NonFiniteGuard(checkpointing), history, checkpointing,
                     cb.Progress(stage_name, epochs, checkpointing, budget, say)]
        if optimization.lr_schedule == "cosine_time":
            callbacks.insert(0, cb.TimeCosine(checkpointing, optimization.learning_rate,
                                              budget))
        validated = validation_epochs(epochs, runtime.validation_every)
        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            distributed_fit(model, train_ds, validation_ds, strategy, epochs, initial_epoch,
                            callbacks, validated)
        else:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(stage_dir, "logs")))
            train_ds, steps = one_iterator(train_ds, keras_steps)
            model.fit(train_ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                      validation_data=validation_ds, validation_freq=validated,
                      callbacks=callbacks, verbose=0,
                      shuffle=False)  # the streams shuffle themselves
    return int(checkpointing.epoch.numpy()), float(checkpointing.train_seconds.numpy()) / 60
