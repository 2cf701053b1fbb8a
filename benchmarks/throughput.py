"""Training throughput of ssl_dgm's models against a plain XLA-compiled M2 step.

    python -m benchmarks.throughput               # writes docs/throughput.md/.json

For M2 it times, in one process and interleaved, (a) a straightforward M2 step
written with plain TF ops -- encoder on concat([x, y]) with x repeated for each of
the K labels, jit-compiled -- called once per step and also looped 50 steps per XLA
call, and (b) ssl_dgm's M2 through `Model.fit` on the in-memory tf.data stream (50
steps per XLA call), all at the same sizes. It also times M1 and M1+M2 (codes
encoded by M1 per step, and cached once per image, timed interleaved; on an M1 of
their own, since M1M2 freezes the M1 it wraps), counts the matmul FLOPs of each step
from the layer shapes (backward = 2x forward, 1x for a layer fed by data), and
probes this machine's fp32 matmul GFLOP/s, so each time can be read as a fraction of
what the CPU can do. Numbers are medians over --repeats.
"""

import math
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.records import command_line, define_output, write_report
from benchmarks.timing import EpochTimer
from ssl_dgm import configs, data, objectives
from ssl_dgm.m1 import M1
from ssl_dgm.m2 import M2
from ssl_dgm.stacked import M1M2

flags.DEFINE_list("hidden_sizes", ["500", "500"], "M2 encoder/decoder hidden widths.")
flags.DEFINE_list("classifier_hidden_sizes", ["500", "500"], "M2 q(y|x) hidden widths.")
flags.DEFINE_list("m1_hidden_sizes", ["600", "600"], "M1 hidden widths.")
flags.DEFINE_integer("latent_size", 50, "z (and M1's z1) size.")
flags.DEFINE_integer("batch_size", 100, "Unlabeled images per step.")
flags.DEFINE_integer("labeled_batch_size", 100, "Labeled images per step.")
flags.DEFINE_integer("steps", 100, "Steps per timed repeat.")
flags.DEFINE_integer("repeats", 5, "Timed repeats per variant (median reported).")
flags.DEFINE_integer("threads", 0, "intra/inter-op threads (0: TensorFlow's default).")
flags.DEFINE_integer("probe_repeats", 20, "2048x2048 matmuls per round of the probe (5 rounds).",
                     lower_bound=1)
define_output("docs/throughput")
FLAGS = flags.FLAGS

D, K, IMAGES_PER_EPOCH = 784, 10, 50000
# Steps per compiled call, as the training pipeline runs them by default.
PER_CALL = configs.RuntimeConfig().steps_per_execution


def dense_flops(rows, widths):
    """Forward matmul FLOPs of dense layers ``widths[0] -> widths[1] -> ...`` on `rows`."""
    return sum(2 * rows * a * b for a, b in zip(widths[:-1], widths[1:]))


def m2_flops(b_l, b_u, d, hidden, clf_hidden, z, shared_first_layer, gaussian=False):
    """Matmul FLOPs of one M2 training step, backward included (see `train_flops`)."""
    out = 2 * d if gaussian else d
    h0 = hidden[0]
    rows = b_l + b_u * K
    enc = dense_flops(rows, list(hidden) + [2 * z])
    dec = dense_flops(rows, list(hidden) + [out])
    clf = dense_flops(b_l + b_u, list(clf_hidden) + [K])
    fed = 2 * (b_l + b_u) * d * clf_hidden[0]  # x into the classifier
    if shared_first_layer:
        # x's part once per image; y's part for the labeled rows and once per label
        # (a table the unlabeled rows share), in the encoder and the decoder.
        fed += 2 * (b_l + b_u) * d * h0 + 2 * 2 * (b_l + K) * K * h0
        dec += 2 * rows * z * h0
    else:
        # concat([x, y]) into the encoder, concat([z, y]) into the decoder.
        fed += 2 * rows * (d + K) * h0
        dec += 2 * rows * (z + K) * h0
    return train_flops(enc + dec + clf, fed)


def m1_flops(b, d, hidden, z):
    fed = 2 * b * d * hidden[0]
    return train_flops(dense_flops(b, list(hidden) + [2 * z]) +
                       dense_flops(b, [z] + list(hidden) + [d]), fed)


def train_flops(other, fed):
    """Forward + backward FLOPs: a layer's backward costs two matmuls of its forward's
    size (weight and input gradients), one for a layer fed by data (`fed`), whose
    input needs no gradient; `other` counts the remaining layers' forward FLOPs."""
    return 3 * other + 2 * fed


def matmul_gflops(n=2048, repeats=20, dtype=tf.float32):
    a = tf.cast(tf.random.normal([n, n]), dtype)
    b = tf.cast(tf.random.normal([n, n]), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    matmul()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            matmul().numpy()
        times.append((time.perf_counter() - start) / repeats)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def naive_m2_step(hidden, clf_hidden, z, alpha, d=D):
    """A straightforward jit-compiled M2 step in plain TF ops (the reference point)."""
    def mlp(widths, out):
        return keras.Sequential([keras.layers.Dense(w, activation="softplus") for w in widths]
                                + [keras.layers.Dense(out)])

    encoder, decoder, classifier = mlp(hidden, 2 * z), mlp(hidden, d), mlp(clf_hidden, K)
    optimizer = keras.optimizers.Adam(1e-3)

    def bound(x, y, seed):
        loc, raw = tf.split(encoder(tf.concat([x, y], -1)), 2, -1)
        scale = tf.nn.softplus(raw) + 1e-4
        sample = loc + scale * tf.random.stateless_normal(tf.shape(loc), seed)
        logits = decoder(tf.concat([sample, y], -1))
        distortion = tf.reduce_sum(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), -1)
        kl = 0.5 * tf.reduce_sum(loc ** 2 + scale ** 2 - 1 - 2 * tf.math.log(scale), -1)
        return distortion + kl + math.log(K)

    @tf.function(jit_compile=True)
    def step(x_l, y_l, x_u, seed):
        b_u = tf.shape(x_u)[0]
        with tf.GradientTape() as tape:
            labeled = bound(x_l, tf.one_hot(y_l, K), seed)
            repeated = tf.repeat(x_u, K, axis=0)
            labels = tf.tile(tf.eye(K), [b_u, 1])
            per_label = tf.reshape(bound(repeated, labels, seed + 1), [b_u, K])
            q = tf.nn.softmax(classifier(x_u))
            unlabeled = tf.reduce_sum(q * per_label, -1) + tf.reduce_sum(
                q * tf.math.log(q + 1e-12), -1)
            classification = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y_l, logits=classifier(x_l))
            loss = (tf.reduce_mean(labeled) + tf.reduce_mean(unlabeled)
                    + alpha * tf.reduce_mean(classification))
        variables = (encoder.trainable_variables + decoder.trainable_variables
                     + classifier.trainable_variables)
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    return step


def looped(step, per_call):
    """`step` run `per_call` times in one XLA call (a `tf.while_loop`), as ssl_dgm's fit does."""
    @tf.function(jit_compile=True)
    def steps(x_l, y_l, x_u, seed):
        def body(i, loss):
            return i + 1, step.python_function(x_l, y_l, x_u, seed + tf.stack([0, i]))

        return tf.while_loop(lambda i, _: i < per_call, body, [tf.constant(0), tf.constant(0.0)],
                             parallel_iterations=1)[1]

    return steps


def time_naive(step, x_l, y_l, x_u, steps, per_call=1):
    """Seconds per step of the plain `step`, or of a `looped` one running `per_call` steps."""
    step(x_l, y_l, x_u, tf.constant([0, 0]))
    start = time.perf_counter()
    for i in range(steps // per_call):
        loss = step(x_l, y_l, x_u, tf.constant([i + 1, 0]) * per_call)
    loss.numpy()
    return (time.perf_counter() - start) / (steps // per_call * per_call)


def median_ms(seconds):
    return 1000 * statistics.median(seconds)


def time_fit(model, dataset, steps, repeats):
    """Seconds per step of `fit` over epochs of `steps` steps (first epoch = warm-up).

    `PER_CALL` steps per compiled call inside the model's step (`BoundModel.blocks`),
    as the training pipeline (`ssl_dgm.train.pipeline.fit_stage`) runs them.
    """
    if not model.trainable_weights:
        raise ValueError(f"{type(model).__name__} has nothing to train (a frozen M1?)")
    per_call = min(PER_CALL, steps)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    timer = EpochTimer()
    dataset = model.blocks(dataset.repeat(), per_call)
    model.fit(dataset, steps_per_epoch=steps // per_call, epochs=repeats + 1, verbose=0,
              callbacks=[timer])
    return [s / steps for s in timer.seconds[1:]]


def main(argv):
    del argv
    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    hidden = tuple(int(h) for h in FLAGS.hidden_sizes)
    clf_hidden = tuple(int(h) for h in FLAGS.classifier_hidden_sizes)
    m1_hidden = tuple(int(h) for h in FLAGS.m1_hidden_sizes)
    b_l, b_u, z = FLAGS.labeled_batch_size, FLAGS.batch_size, FLAGS.latent_size
    alpha = objectives.default_alpha(IMAGES_PER_EPOCH, 100)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(5000, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, K, 5000)
    labeled = data.Split(images[:100], labels[:100])
    stream = data.semi_supervised_dataset(labeled, images, b_l, b_u, seed=0)
    unlabeled_stream = data.unlabeled_dataset(images, b_u, seed=0)
    x_l = tf.constant((images[:b_l].reshape(b_l, D) > 0.5).astype(np.float32))
    y_l = tf.constant(labels[:b_l])
    x_u = tf.constant((images[:b_u].reshape(b_u, D) > 0.5).astype(np.float32))

    gflops = matmul_gflops(repeats=FLAGS.probe_repeats)
    naive = naive_m2_step(hidden, clf_hidden, z, alpha)
    per_call = min(PER_CALL, FLAGS.steps)
    naive_looped = looped(naive_m2_step(hidden, clf_hidden, z, alpha), per_call)
    m2 = M2(D, hidden_sizes=hidden, classifier_hidden_sizes=clf_hidden, latent_size=z,
            alpha=alpha, seed=0)
    m2.build()
    m1, encoder = (M1(D, latent_size=z, hidden_sizes=m1_hidden, seed=0) for _ in range(2))
    m1.build()
    encoder.build()  # the M1+M2 variants' own M1: M1M2 freezes the M1 it is given

    def stacked_model(**options):  # the M1+M2 stage, 1x500, on all z dims of M1
        model = M1M2(encoder, np.arange(z), hidden_sizes=(500,), classifier_hidden_sizes=(500,),
                     latent_size=z, alpha=alpha, seed=0, **options)
        model.build()
        return model

    stacked = stacked_model()
    cached = stacked_model(codes="cached")
    shared = stacked_model(codes="cached", shared_noise=True)
    codes = cached.posterior_parameters(images)
    cached_stream = data.semi_supervised_dataset(data.Split(codes[:100], labels[:100]), codes,
                                                 b_l, b_u, seed=0, binarized=False)

    naive_times, looped_times, m2_times = [], [], []
    for _ in range(FLAGS.repeats):  # interleaved, so all see the same machine load
        naive_times.append(time_naive(naive, x_l, y_l, x_u, FLAGS.steps))
        looped_times.append(time_naive(naive_looped, x_l, y_l, x_u, FLAGS.steps, per_call))
        m2_times += time_fit(m2, stream, FLAGS.steps, 1)
    m1_times = time_fit(m1, unlabeled_stream, FLAGS.steps, FLAGS.repeats)
    stacked_times, cached_times, shared_times = [], [], []
    for _ in range(FLAGS.repeats):
        stacked_times += time_fit(stacked, stream, FLAGS.steps, 1)
        cached_times += time_fit(cached, cached_stream, FLAGS.steps, 1)
        shared_times += time_fit(shared, cached_stream, FLAGS.steps, 1)

    rows = []
    for name, times, flops in [
        ("M2, plain XLA step (x repeated per label)", naive_times,
         m2_flops(b_l, b_u, D, hidden, clf_hidden, z, shared_first_layer=False)),
        (f"M2, the same plain step, {PER_CALL} steps looped in one XLA call", looped_times,
         m2_flops(b_l, b_u, D, hidden, clf_hidden, z, shared_first_layer=False)),
        ("M2, ssl_dgm fit", m2_times,
         m2_flops(b_l, b_u, D, hidden, clf_hidden, z, shared_first_layer=True)),
        ("M1, ssl_dgm fit", m1_times, m1_flops(b_u, D, m1_hidden, z)),
        ("M1+M2, ssl_dgm fit (M2 1x500 on 50-d codes)", stacked_times,
         dense_flops(b_l + b_u, [D] + list(m1_hidden) + [2 * z])  # M1's encoder, forward
         + m2_flops(b_l, b_u, z, (500,), (500,), z, True, gaussian=True)),
        ("M1+M2, codes cached (q(z1|x) once per image, sampled per step)", cached_times,
         m2_flops(b_l, b_u, z, (500,), (500,), z, True, gaussian=True)),
        ("M1+M2, codes cached, one noise draw per image for its 10 labels", shared_times,
         m2_flops(b_l, b_u, z, (500,), (500,), z, True, gaussian=True)),
    ]:
        ms = median_ms(times)
        steps_per_epoch = IMAGES_PER_EPOCH // b_u
        rows.append({"variant": name, "ms_per_step": ms,
                     "seconds_per_50k_epoch": ms * steps_per_epoch / 1000,
                     "images_per_second": 1000 * (b_u + (b_l if "M1," not in name else 0)) / ms,
                     "gflop_per_step": flops / 1e9,
                     "fraction_of_matmul_peak": flops / (ms / 1000) / 1e9 / gflops,
                     "all_ms": [1000 * t for t in times]})
    plain, ours = median_ms(naive_times), median_ms(m2_times)
    ratio = ours / plain
    command = command_line("benchmarks.throughput")
    result = {"command": command, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"TF {tf.__version__}", "matmul_gflops_2048": gflops,
              "rows": rows,
              "m2_ratio_ssl_dgm_over_plain": ratio,
              "sizes": {"hidden": hidden, "classifier_hidden": clf_hidden, "latent": z,
                        "labeled_batch": b_l, "unlabeled_batch": b_u}}
    lines = ["# Training throughput", "", f"Command: `{command}`", "",
             f"Machine: {result['machine']}; fp32 matmul probe (2048²): {gflops:.0f} GFLOP/s, "
             f"which the last column compares against.",
             f"Sizes: hidden {hidden}, classifier {clf_hidden}, z {z}, "
             f"{b_l} labeled + {b_u} unlabeled images per step. Medians of {FLAGS.repeats} "
             f"repeats of {FLAGS.steps} steps; M2 variants timed interleaved.", "",
             "| variant | ms/step | s per 50k-image epoch | images/s | GFLOP/step "
             "| of matmul peak |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['ms_per_step']:.1f} | "
                     f"{r['seconds_per_50k_epoch']:.1f} | {r['images_per_second']:.0f} | "
                     f"{r['gflop_per_step']:.2f} | {100 * r['fraction_of_matmul_peak']:.0f}% |")
    looped_ratio = ours / median_ms(looped_times)
    cached_ratio = median_ms(cached_times) / median_ms(stacked_times)
    shared_ratio = median_ms(shared_times) / median_ms(stacked_times)
    result["m2_ratio_ssl_dgm_over_plain_looped"] = looped_ratio
    result["m1m2_ratio_cached_over_per_step"] = cached_ratio
    result["m1m2_ratio_cached_shared_noise_over_per_step"] = shared_ratio
    lines += ["", f"ssl_dgm M2 step / plain XLA M2 step: **{ratio:.2f}×** "
              f"({looped_ratio:.2f}× against the plain step looped as ssl_dgm loops its own); "
              f"M1+M2 step with cached codes / with M1's encoder per step: "
              f"**{cached_ratio:.2f}×**, and with one noise draw per image for all labels "
              f"too: **{shared_ratio:.2f}×** (M1+M2 variants timed interleaved)", ""]
    write_report(FLAGS.output, "\n".join(lines), result)


if __name__ == "__main__":
    app.run(main)
