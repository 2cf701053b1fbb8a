"""tf.distribute strategies, and the fit loop for MultiWorkerMirroredStrategy."""

import json
import os

import keras
import tensorflow as tf


def make_strategy(name):
    """The tf.distribute strategy for `RuntimeConfig.strategy`.

    Create it before any other TensorFlow work: MultiWorkerMirroredStrategy sets
    up collective ops, which must happen at program start-up.
    """
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def check_tf_config():
    """Raises ValueError unless TF_CONFIG describes a cluster and this task in it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise ValueError("--strategy=multi_worker needs TF_CONFIG describing the cluster "
                         "(see docs/running.md, 'Scaling out')")
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        jobs = cluster[task["type"]]
        if not 0 <= int(task["index"]) < len(jobs):
            raise IndexError(task["index"])
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise ValueError(f"TF_CONFIG is malformed ({type(error).__name__}: {error}); it "
                         f"needs {{\"cluster\": {{\"worker\": [\"host:port\", ...]}}, "
                         f"\"task\": {{\"type\": \"worker\", \"index\": i}}}}") from None


def is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def distributed_fit(model, train_ds, validation_ds, strategy, epochs, initial_epoch,
                    callbacks, validated):
    """The fit loop for MultiWorkerMirroredStrategy: `model.train_step` per replica.

    Keras 3's fit fails under this strategy (keras-team/keras#20585), so this runs
    the same train and test steps through `strategy.run`, with the same callbacks,
    validating after the (1-based) epochs in `validated` as fit's `validation_freq`.
    """
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
        if epoch + 1 in validated:
            callbacks.on_test_begin()
            model.reset_metrics()
            for batch in validation:
                val_logs = test_step(batch)
            logs.update({f"val_{k}": float(v) for k, v in val_logs.items()})
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end()
