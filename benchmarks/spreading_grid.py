"""How the label-spreading head's settings were chosen: a grid on validation.

    python benchmarks/spreading_grid.py --m1_dir=RUN/m1 --labels=100 --seed=0 \
        --output=docs/spreading_grid

For every (neighbours, alpha) it spreads the labels of the seed's balanced labeled
subset over a finished M1's codes of the 50000 training images, then reports the
error of the spread labels on the unlabeled training images (transductive) and the
validation error of `SpreadingClassifier` with each vote.  Pick on validation only.
"""

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.records import command_line, write_report  # noqa: E402

flags.DEFINE_string("m1_dir", None, "A finished M1 (holds m1.weights.h5, results.json).",
                    required=True)
flags.DEFINE_integer("labels", 100, "Labeled training images N.")
flags.DEFINE_integer("seed", 0, "Seeds the labeled subset and the binarised validation images.")
flags.DEFINE_list("neighbours", ["5", "10", "20"], "Graph and vote neighbours to try.")
flags.DEFINE_list("alphas", ["0.99", "0.999"], "Label spreading alphas to try.")
flags.DEFINE_integer("train_examples", None, "Use only the first N training images (tests).")
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
flags.DEFINE_string("output", None, "Writes OUTPUT.md and OUTPUT.json.", required=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import numpy as np

    from ssl_dgm import data, spreading, training
    from ssl_dgm.m1 import SpreadingClassifier, posterior_means

    train = data.load_split("train", "mnist", FLAGS.data_dir)
    if FLAGS.train_examples:
        train = data.Split(train.images[:FLAGS.train_examples],
                           train.labels[:FLAGS.train_examples])
    validation = data.load_split("validation", "mnist", FLAGS.data_dir)
    m1, _ = training.load_m1(FLAGS.m1_dir, int(np.prod(train.images.shape[1:])))
    num_classes = int(train.labels.max()) + 1
    labeled = data.labeled_indices(train.labels, FLAGS.labels, num_classes, FLAGS.seed)
    unlabeled = np.setdiff1d(np.arange(len(train)), labeled)
    codes = posterior_means(m1, train.images)
    rows = []
    for k in map(int, FLAGS.neighbours):
        for alpha in map(float, FLAGS.alphas):
            started = time.perf_counter()
            distributions, sigma = spreading.label_spreading(
                codes, labeled, train.labels[labeled], num_classes, k, alpha)
            seconds = time.perf_counter() - started
            row = {"neighbours": k, "alpha": alpha, "spreading_seconds": seconds,
                   "transductive_error": float(np.mean(
                       distributions[unlabeled].argmax(axis=1) != train.labels[unlabeled]))}
            for vote in SpreadingClassifier.VOTES:
                classifier = SpreadingClassifier(m1, codes, distributions, sigma, k, vote)
                errors = training.split_errors(classifier, validation, FLAGS.seed)
                row[vote] = errors
            rows.append(row)
            print(row, flush=True)
    command = command_line()
    lines = ["# Label spreading on M1's codes: the settings grid", "",
             f"Written by `{command}` on the M1 in `{FLAGS.m1_dir}`, {FLAGS.labels} labels "
             f"(seed {FLAGS.seed}'s subset). Errors in %: of the spread labels on the "
             f"{len(unlabeled)} unlabeled training images, and of the classifier on the "
             "validation images (binarised once with the seed, as in training; grayscale: "
             "the stored intensities) when the k nearest codes (k: the graph's neighbours) "
             "vote with their labels or with their label distributions. Seconds: the graph and the spreading, on the "
             "shared 2-core machine.", "",
             "| neighbours | alpha | unlabeled training % | validation %, label votes "
             "(grayscale) | validation %, distribution votes (grayscale) | seconds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        votes = [f"{100 * r[v]['error']:.2f} ({100 * r[v]['error_grayscale']:.2f})"
                 for v in SpreadingClassifier.VOTES]
        lines.append(f"| {r['neighbours']} | {r['alpha']:g} | {100 * r['transductive_error']:.2f}"
                     f" | {' | '.join(votes)} | {r['spreading_seconds']:.0f} |")
    lines.append("")
    write_report(FLAGS.output, "\n".join(lines), {"command": command, "rows": rows})


if __name__ == "__main__":
    app.run(main)
