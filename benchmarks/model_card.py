"""Measures the exported SavedModels and writes their model card.

    python -m benchmarks.model_card --model_dir=runs/m1m2_100_seed0 --export_dir=saved_models

Loads ``classifier`` and ``generator`` (newest versions) with `tf.saved_model.load`
alone, then measures:

* the classifier's validation error (``train[50000:]``) on the images binarised once,
  as training scores them, and on their grey levels, which is what a server receives;
* class consistency of generated digits: --per_class digits per class drawn by
  ``generator.sample`` (seeds 0, 1, ...), classified by a *judge independent of the
  model*: a small CNN trained with every label of ``train[:50000]`` (its own
  validation accuracy stated), so the generator is not graded by its own classifier;
  the shipped classifier's agreement is given beside it;
* classifier latency at batch 1 (median of --latency_calls calls) and throughput at
  batch 256, through ``serving_default``;

and writes ``EXPORT_DIR/MODEL_CARD.md`` and ``EXPORT_DIR/model_card.json`` with the
run's commands and these numbers.  The judge is trained once and kept in
--judge_dir (with its accuracy in ``judge.json``).
"""

import datetime
import json
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.records import command_line
from ssl_dgm import data, rundir, serving

flags.DEFINE_string("model_dir", None, "The run that was exported.", required=True)
flags.DEFINE_string("export_dir", "saved_models", "Folder with classifier/ and generator/.")
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
flags.DEFINE_string("judge_dir", "runs/judge", "Where the independent CNN judge is kept.")
flags.DEFINE_integer("judge_epochs", 5, "Epochs of the judge's training.")
flags.DEFINE_integer("judge_examples", None, "Train the judge on the first N images (tests).",
                     lower_bound=1)
flags.DEFINE_integer("per_class", 1000, "Generated digits per class.")
flags.DEFINE_integer("latency_calls", 1000, "Batch-1 calls timed.")
FLAGS = flags.FLAGS


def cnn(image_shape, num_classes):
    """The judge: two conv layers and a dense layer, trained on grey levels."""
    return keras.Sequential([
        keras.Input(image_shape),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dropout(0.3),
        keras.layers.Dense(128, activation="relu"), keras.layers.Dense(num_classes)])


def judge(train, validation, folder, epochs, num_classes, dataset="mnist"):
    """The trained judge in `folder` (trained there first if absent) and its accuracy.

    A judge kept there is reused only if it was trained as asked (dataset, epochs,
    training images); else it is trained again.
    """
    path, record = os.path.join(folder, "judge.keras"), os.path.join(folder, "judge.json")
    wanted = {"dataset": dataset, "epochs": epochs, "train_images": len(train)}
    if os.path.exists(path) and os.path.exists(record):
        summary = rundir.read_json(record)
        if all(summary.get(k) == v for k, v in wanted.items()):
            return keras.models.load_model(path), summary
    keras.utils.set_random_seed(0)
    model = cnn(train.images.shape[1:], num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train.images, train.labels, batch_size=128, epochs=epochs, verbose=0)
    accuracy = float(model.evaluate(validation.images, validation.labels, verbose=0)[1])
    summary = {**wanted, "validation_accuracy": accuracy,
               "architecture": "conv32-pool-conv64-pool-dense128, relu, Adam 1e-3, batch 128"}
    os.makedirs(folder, exist_ok=True)
    model.save(path)
    rundir.write_json(record, summary)
    return model, summary


def consistency(classes_of, sample, num_classes, per_class, chunk=1000):
    """Per class, the fraction of `sample`d digits that `classes_of` gives that class."""
    agree = np.zeros(num_classes)
    for k in range(num_classes):
        for start in range(0, per_class, chunk):
            n = min(chunk, per_class - start)
            seeds = tf.constant(k * per_class + start + np.arange(n), tf.int32)
            images = sample(labels=tf.fill([n], k), seed=seeds)["images"]
            agree[k] += int(np.sum(classes_of(images) == k))
    return agree / per_class


def validation_errors(classify, validation, seed):
    """The shipped classifier's error on validation, binarised once (with the run's seed,
    as training scores it) and on grey levels."""
    errors = {}
    for kind, binarized in (("binarized", True), ("grayscale", False)):
        wrong = 0
        for x, labels in data.evaluation_dataset(validation, 1000, seed, binarized):
            wrong += int(np.sum(classify(images=x)["classes"].numpy() != labels.numpy()))
        errors[kind] = wrong / len(validation)
    return errors


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


def _percent(values):
    return ", ".join(f"{k}: {100 * v:.1f}%" for k, v in enumerate(values))


def main(argv):
    del argv
    classifier_dir = serving.newest(FLAGS.export_dir, "classifier")
    generator_dir = serving.newest(FLAGS.export_dir, "generator")
    classify = tf.saved_model.load(classifier_dir).signatures["serving_default"]
    sample = tf.saved_model.load(generator_dir).signatures["sample"]
    image_shape = classify.structured_input_signature[1]["images"].shape[1:]
    num_classes = classify.structured_outputs["probabilities"].shape[-1]

    run = FLAGS.model_dir
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    dataset = config["data"]["dataset"]
    train = data.load_split("train", dataset, FLAGS.data_dir, first=FLAGS.judge_examples)
    validation = data.load_split("validation", dataset, FLAGS.data_dir)
    judge_model, judge_summary = judge(train, validation, FLAGS.judge_dir, FLAGS.judge_epochs,
                                       num_classes, dataset)
    judged = consistency(lambda x: np.argmax(judge_model.predict_on_batch(x), -1), sample,
                         num_classes, FLAGS.per_class)
    own = consistency(lambda x: classify(images=x)["classes"].numpy(), sample, num_classes,
                      FLAGS.per_class)
    errors = validation_errors(classify, validation, config["seed"])
    ms_batch1, images_per_s = latency(classify, image_shape, FLAGS.latency_calls)

    # An M1+M2 run's M1 stage first, if its record is there.
    commands = rundir.commands(os.path.join(run, "m1")) + rundir.commands(run)
    size_mb = sum(os.path.getsize(os.path.join(d, f)) for base in (classifier_dir, generator_dir)
                  for d, _, files in os.walk(base) for f in files) / 2 ** 20
    command = command_line("benchmarks.model_card")
    card = {
        "measured_by": command, "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}",
        "run": run, "training_commands": commands, "model": config["model"],
        "dataset": dataset, "labels": config["data"]["labels"], "seed": config["seed"],
        "validation_error": errors["binarized"],
        "validation_error_grayscale": errors["grayscale"],
        "classifier": classifier_dir, "generator": generator_dir, "size_mb": size_mb,
        "judge": judge_summary, "class_consistency": float(judged.mean()),
        "class_consistency_per_class": judged.tolist(),
        "class_consistency_own_classifier": float(own.mean()), "per_class": FLAGS.per_class,
        "latency_ms_batch1_median": ms_batch1, "images_per_second_batch256": images_per_s,
    }
    lines = [
        "# Model card: ssl_dgm pretrained models", "",
        f"* Model: **{config['model']}** with **{config['data']['labels']}** labels of "
        f"{dataset}, seed {config['seed']}.",
        f"* Validation error (train[50000:]) of the exported classifier: "
        f"**{100 * errors['grayscale']:.2f}%** on grey-level images (what a server receives), "
        f"{100 * errors['binarized']:.2f}% on the images binarised once (as training scores "
        f"them). The recipe was chosen on this split; the test split is scored independently.",
        f"* Trained by (in `{run}`): " + "; ".join(f"`{c}`" for c in commands),
        f"* Files: `{classifier_dir}`, `{generator_dir}` ({size_mb:.1f} MB together).",
        f"* Class consistency of generated digits: **{100 * card['class_consistency']:.2f}%** "
        f"of {FLAGS.per_class} samples per class are classified as their conditioning label "
        f"by an independent judge, a CNN trained on all {judge_summary['train_images']} "
        f"labeled training images ({judge_summary['architecture']}, "
        f"{judge_summary['epochs']} epochs; validation accuracy "
        f"{100 * judge_summary['validation_accuracy']:.2f}%). Per class: {_percent(judged)}. "
        f"The shipped classifier agrees with the label on "
        f"{100 * card['class_consistency_own_classifier']:.2f}%.",
        f"* Classifier latency, batch 1: **{ms_batch1:.2f} ms** median over "
        f"{FLAGS.latency_calls} calls; batch 256: **{images_per_s:.0f} images/s** "
        f"(through `tf.saved_model.load`, on {card['machine']}).",
        f"* Measured {card['date']} by `{command}`.", "",
        "Signatures: see `ssl_dgm/serving.py` (classifier `serving_default`; generator "
        "`generate`, `sample`, `analogies`).", ""]
    rundir.write_json(os.path.join(FLAGS.export_dir, "model_card.json"), card)
    rundir.atomic_write(os.path.join(FLAGS.export_dir, "MODEL_CARD.md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
