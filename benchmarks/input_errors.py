"""Validation error of finished runs on binarised and on grayscale inputs.

    python benchmarks/input_errors.py --run_dir=RUN [--run_dir=RUN2 ...] --output=docs/input_errors

Training sees dynamically binarised pixels and every epoch's validation uses the
validation images binarised once (seed = the run's seed); the exported
classifier is served the stored intensities in [0, 1].  This reloads each
finished m2 / m1m2 run and measures both (runs finished before results.json
recorded the grayscale error included), and writes OUTPUT.md and OUTPUT.json.
"""

import os
import platform
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.records import command_line, write_report  # noqa: E402

flags.DEFINE_multi_string("run_dir", None, "Finished m2 / m1m2 run directories.",
                          required=True)
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
flags.DEFINE_string("output", None, "Writes OUTPUT.md and OUTPUT.json.", required=True)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from ssl_dgm import data, training

    command = command_line()
    rows = []
    for run_dir in FLAGS.run_dir:
        model, config, results = training.load_trained(run_dir)
        validation = data.load_split("validation", config.dataset, FLAGS.data_dir)
        errors = training.split_errors(model, validation, config.seed, binarize=True)
        rows.append({"run": run_dir, "model": config.model, "labels": config.labels,
                     "seed": config.seed, "recorded": results["validation_error"],
                     "binarized": errors["error"], "grayscale": errors["error_grayscale"]})
    lines = ["# Validation error: binarised vs grayscale inputs", "",
             f"Written by `{command}` on {platform.machine()}, {os.cpu_count()} cores. "
             "Binarised: the validation images binarised once with the run's seed (the "
             "inputs of every epoch's validation, and the error results.json records). "
             "Grayscale: the stored intensities in [0, 1] (what the exported classifier "
             "is served).", "",
             "| run | model | labels | recorded % | binarised % | grayscale % | "
             "grayscale - binarised |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['run']}` | {r['model']} | {r['labels']} | "
                     f"{100 * r['recorded']:.2f} | {100 * r['binarized']:.2f} | "
                     f"{100 * r['grayscale']:.2f} | "
                     f"{100 * (r['grayscale'] - r['binarized']):+.2f} |")
    text = "\n".join(lines) + "\n"
    write_report(FLAGS.output, text, {"command": command, "runs": rows})


if __name__ == "__main__":
    app.run(main)
