"""Subprocess helper for test_distribute.py (not a test module).

    python distributed_worker.py mirrored OUT.npz
    TF_CONFIG=... python distributed_worker.py multi_worker OUT.npz STAGE_DIR

``mirrored``: splits the CPU into 2 logical devices, takes one SGD step of a tiny
M2 on one device and one on 2 replicas with the same global batch and initial
weights, and saves both weight lists.  ``multi_worker``: one worker of a
MultiWorkerMirroredStrategy cluster runs `pipeline.fit_stage` for a few steps and
saves its final weights.
"""

import sys

mode, out = sys.argv[1], sys.argv[2]

import tensorflow as tf  # noqa: E402

if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
else:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

import ssl_dgm  # noqa: E402,F401
import keras  # noqa: E402
import numpy as np  # noqa: E402

from ssl_dgm import configs  # noqa: E402
from ssl_dgm.train import pipeline  # noqa: E402
from ssl_dgm.m2 import M2  # noqa: E402

DIM, CLASSES = 6, 3


def tiny_m2():
    model = M2(DIM, num_classes=CLASSES, latent_size=2, hidden_sizes=(5,),
               classifier_hidden_sizes=(4,), alpha=2.0, seed=3)
    model.build()
    # A near-deterministic q(z|x,y) (scale ~1e-4): replicas draw other noise than
    # one device does, and this keeps that from mattering.
    bias = model.encoder.layers_after[-1].bias
    bias.assign(tf.concat([bias[:2], tf.fill([2], -30.0)], 0))
    return model


rng = np.random.default_rng(0)
batch = {"labeled_x": rng.integers(0, 2, (4, DIM)).astype(np.float32),
         "labels": np.array([0, 1, 2, 1]),
         "unlabeled_x": rng.integers(0, 2, (6, DIM)).astype(np.float32)}

if mode == "mirrored":
    single = tiny_m2()
    initial = [w.numpy() for w in single.weights]
    single.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    single.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    with strategy.scope():
        mirrored = tiny_m2()
        mirrored.set_weights(initial)
        mirrored.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    mirrored.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    np.savez(out, replicas=strategy.num_replicas_in_sync,
             **{f"initial_{i}": w for i, w in enumerate(initial)},
             **{f"single_{i}": w.numpy() for i, w in enumerate(single.weights)},
             **{f"mirrored_{i}": w.numpy() for i, w in enumerate(mirrored.weights)})
else:
    stage_dir = sys.argv[3]
    with strategy.scope():
        model = tiny_m2()
        optimization = configs.OptimizationConfig(epochs=2, learning_rate=0.01,
                                                  lr_schedule="constant")
        runtime = configs.RuntimeConfig(jit_compile=False, steps_per_execution=1)
        train = tf.data.Dataset.from_tensors(batch).repeat(3)
        validation = tf.data.Dataset.from_tensors(
            (batch["labeled_x"], batch["labels"]))
        pipeline.fit_stage(model, train, validation, stage_dir, optimization, runtime,
                           steps_per_epoch=3)
    np.savez(out, **{f"w_{i}": w.numpy() for i, w in enumerate(model.weights)})
