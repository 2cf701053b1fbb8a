"""Measures the exported SavedModels and writes their model card.

    python -m benchmarks.model_card --model_dir=RUN --export_dir=saved_models

Loads ``classifier`` and ``generator`` (newest versions) with `tf.saved_model.load`
only, then measures:

* class consistency: the classifier's agreement with the conditioning label on
  --per_class digits per class drawn by ``generator.sample`` (seeds 0, 1, ...);
* classifier latency at batch 1 (median of --latency_calls calls) and throughput
  at batch 256, through the ``serving_default`` signature;

and writes ``EXPORT_DIR/MODEL_CARD.md`` and ``EXPORT_DIR/model_card.json`` with the
run's command, seed, validation error and these numbers.
"""

import datetime
import json
import os
import platform
import statistics
import time

from absl import app, flags

import numpy as np
import tensorflow as tf

from benchmarks.records import command_line

flags.DEFINE_string("model_dir", None, "The run that was exported.", required=True)
flags.DEFINE_string("export_dir", "saved_models", "Folder with classifier/ and generator/.")
flags.DEFINE_integer("per_class", 1000, "Generated digits per class.")
flags.DEFINE_integer("latency_calls", 1000, "Batch-1 calls timed.")
FLAGS = flags.FLAGS


def newest(folder):
    return os.path.join(folder, str(max(int(v) for v in os.listdir(folder) if v.isdigit())))


def class_consistency(classify, sample, num_classes, per_class, chunk=1000):
    agree = np.zeros(num_classes)
    for k in range(num_classes):
        for start in range(0, per_class, chunk):
            n = min(chunk, per_class - start)
            seeds = tf.constant(k * per_class + start + np.arange(n), tf.int32)
            images = sample(labels=tf.fill([n], k), seed=seeds)["images"]
            agree[k] += int(np.sum(classify(images=images)["classes"].numpy() == k))
    return agree / per_class


def latency(classify, image_shape, calls):
    one = tf.zeros([1, *image_shape])
    for _ in range(20):
        classify(images=one)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        classify(images=one)["classes"].numpy()
        times.append(time.perf_counter() - start)
    batch = tf.random.uniform([256, *image_shape])
    classify(images=batch)
    start = time.perf_counter()
    for _ in range(20):
        classify(images=batch)["classes"].numpy()
    per_batch = (time.perf_counter() - start) / 20
    return 1000 * statistics.median(times), 256 / per_batch


def main(argv):
    del argv
    classifier_dir = newest(os.path.join(FLAGS.export_dir, "classifier"))
    generator_dir = newest(os.path.join(FLAGS.export_dir, "generator"))
    classify = tf.saved_model.load(classifier_dir).signatures["serving_default"]
    sample = tf.saved_model.load(generator_dir).signatures["sample"]
    image_shape = classify.structured_input_signature[1]["images"].shape[1:]
    num_classes = classify.structured_outputs["probabilities"].shape[-1]

    consistency = class_consistency(classify, sample, num_classes, FLAGS.per_class)
    ms_batch1, images_per_s = latency(classify, image_shape, FLAGS.latency_calls)

    run = FLAGS.model_dir
    config = json.load(open(os.path.join(run, "config.json")))
    results = json.load(open(os.path.join(run, "results.json")))
    commands = []
    for stage in ("m1", ""):  # an M1+M2 run's M1 stage first, if its record is there
        path = os.path.join(run, stage, "commands.txt")
        if os.path.exists(path):
            commands += open(path).read().strip().splitlines()
    size_mb = sum(os.path.getsize(os.path.join(d, f)) for base in (classifier_dir, generator_dir)
                  for d, _, files in os.walk(base) for f in files) / 2 ** 20
    command = command_line("benchmarks.model_card")
    card = {
        "measured_by": command, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}",
        "run": run, "training_commands": commands, "model": config["model"],
        "labels": config["data"]["labels"], "seed": config["seed"],
        "validation_error": results["validation_error"],
        "classifier": classifier_dir, "generator": generator_dir, "size_mb": size_mb,
        "class_consistency": float(consistency.mean()),
        "class_consistency_per_class": consistency.tolist(), "per_class": FLAGS.per_class,
        "latency_ms_batch1_median": ms_batch1, "images_per_second_batch256": images_per_s,
    }
    lines = [
        "# Model card: ssl_dgm pretrained models", "",
        f"* Model: **{config['model']}** with **{config['data']['labels']}** labels, seed "
        f"{config['seed']}; validation error (train[50000:]) "
        f"**{100 * results['validation_error']:.2f}%**.",
        f"* Trained by (in `{run}`): " + "; ".join(f"`{c}`" for c in commands),
        f"* Files: `{classifier_dir}`, `{generator_dir}` ({size_mb:.1f} MB together).",
        f"* Class consistency of generated digits: **{100 * card['class_consistency']:.2f}%** "
        f"of {FLAGS.per_class} samples per class are classified as their conditioning label "
        f"by the shipped classifier (per class: "
        + ", ".join(f"{k}: {100 * c:.1f}%" for k, c in enumerate(consistency)) + ").",
        f"* Classifier latency, batch 1: **{ms_batch1:.2f} ms** median over "
        f"{FLAGS.latency_calls} calls; batch 256: **{images_per_s:.0f} images/s** "
        f"(through `tf.saved_model.load`, on {card['machine']}).",
        f"* Measured {card['date']} by `{command}`.", "",
        "Signatures: see `ssl_dgm/serving.py` (classifier `serving_default`; generator "
        "`generate`, `sample`, `analogies`).", ""]
    with open(os.path.join(FLAGS.export_dir, "model_card.json"), "w") as f:
        json.dump(card, f, indent=2)
    with open(os.path.join(FLAGS.export_dir, "MODEL_CARD.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
