"""Regenerates the paper's Table 1 (MNIST, N labels) with ssl_dgm, resumably.

    python benchmarks/table1.py --models=m2,m1m2 --labels=100,600,1000,3000 --seeds=0,1,2 \
        --root=runs/table1 --eval_split=validation

Every (model, labels, seed) run lives in ``ROOT/<model>_<labels>_seed<seed>``; a
run with a results.json is skipped, an interrupted one resumes from its last
checkpoint.  M1 is trained once per seed (``ROOT/m1_seed<seed>``) and reused by
every m1 / m1m2 run of that seed, whatever its label count: M1 never sees labels.
An ``m1_dir`` in --model_overrides instead gives that model's runs of every seed
one finished M1 (the seeds then vary the labeled subset, the data order and the
classifier's initialisation, not M1); the report says so.
A finished run is checked against the settings this command would train it
with, so a run placed in ROOT by hand (a copy or link) is refused unless it
is the run this grid describes.
Writes OUTPUT.md and OUTPUT.json: mean ± std error per cell over the finished
seeds, the paper's numbers beside them, wall time and epochs per run, the machine
and this command.  Numbers in the README come from that file.
"""

import json
import os
import platform
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.records import command_line, write_report  # noqa: E402
from ssl_dgm.paper import NAMES as PAPER_NAMES, TABLE1 as PAPER  # noqa: E402

flags.DEFINE_list("models", ["m2", "m1m2"], "Models (m1, m2, m1m2).")
flags.DEFINE_list("labels", ["100", "600", "1000", "3000"], "Label counts N.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_string("root", "runs/table1", "Folder of all runs.")
flags.DEFINE_string("eval_split", "validation", "Split reported (validation: train[50000:]).")
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
flags.DEFINE_string("output", "docs/results", "Writes OUTPUT.md and OUTPUT.json.")
flags.DEFINE_float("time_budget_minutes", None, "Training-time budget per stage.")
flags.DEFINE_integer("epochs", 200, "Epochs of M2 (alone or on M1 codes).")
flags.DEFINE_integer("m1_epochs", 300, "Epochs of each seed's M1.")
flags.DEFINE_string("overrides", "{}", "JSON of extra TrainConfig fields for every run.")
flags.DEFINE_string("model_overrides", "{}", "JSON {model: {TrainConfig field: value}} for "
                    "one model's runs; give m1 and m1m2 the same m1_* fields (the M1 is "
                    "trained with m1's), so every run records the M1 it used. An m1_dir "
                    "(a finished run's m1/ folder) makes every seed of that model use it.")
flags.DEFINE_bool("report_only", False, "Only rewrite the report from finished runs.")
FLAGS = flags.FLAGS


def run_dir(model, labels, seed):
    return os.path.join(FLAGS.root, f"{model}_{labels}_seed{seed}")


def settings(model):
    """TrainConfig fields for `model`: --overrides, then --model_overrides[model]."""
    fields = json.loads(FLAGS.overrides)
    fields.update(json.loads(FLAGS.model_overrides).get(model, {}))
    return fields


def train_grid(command):
    from ssl_dgm import training

    for seed in map(int, FLAGS.seeds):
        for model in FLAGS.models:
            for labels in map(int, FLAGS.labels):
                folder = run_dir(model, labels, seed)
                common = dict(labels=labels, seed=seed, epochs=FLAGS.epochs,
                              m1_epochs=FLAGS.m1_epochs, data_dir=FLAGS.data_dir,
                              time_budget_minutes=FLAGS.time_budget_minutes)
                fields = settings(model)
                shared_m1 = fields.get("m1_dir")
                m1_dir = None
                if model in ("m1", "m1m2"):
                    m1_dir = shared_m1 or os.path.join(FLAGS.root, f"m1_seed{seed}", "m1")
                config = training.TrainConfig(**{**common, "model": model, "m1_dir": m1_dir,
                                                 "eval_split": FLAGS.eval_split, **fields})
                if os.path.exists(os.path.join(folder, "results.json")):
                    # Finished: is it this grid's run (epochs and budget included)?
                    training.check_same_config(folder, config, training.PLACEMENT_FIELDS)
                    continue
                if (m1_dir and not shared_m1  # a shared M1 is checked by training.run
                        and not os.path.exists(os.path.join(m1_dir, "results.json"))):
                    m1_config = training.TrainConfig(
                        **{**common, "model": "m1", "eval_split": "validation",
                           **settings("m1")})
                    training.run(m1_config, os.path.dirname(m1_dir), command)
                training.run(config, folder, command)


def collect():
    cells = {}
    for model in FLAGS.models:
        for labels in map(int, FLAGS.labels):
            runs = []
            for seed in map(int, FLAGS.seeds):
                folder = run_dir(model, labels, seed)
                path = os.path.join(folder, "results.json")
                if os.path.exists(path):
                    results = json.load(open(path))
                    grayscale = results.get("eval_error_grayscale")
                    runs.append({"seed": seed, "error": 100 * results["eval_error"],
                                 # A run linked into ROOT: where it was trained.
                                 "trained_in": os.path.realpath(folder)
                                 if os.path.islink(folder) else None,
                                 "error_grayscale": None if grayscale is None
                                 else 100 * grayscale,
                                 "train_minutes": results.get("total_train_minutes",
                                                              results["train_minutes"]),
                                 "epochs": results["epochs_done"],
                                 "m1_epochs": results.get("m1", {}).get("epochs_done"),
                                 "m1_active_dims": len(results.get("m1_active_dimensions", []))
                                 or None})
            cells[f"{model}/{labels}"] = runs
    return cells


def report(cells, command):
    split = FLAGS.eval_split
    lines = ["# Table 1, regenerated", "",
             ("Collected from finished runs (not trained by this command) by"
              if FLAGS.report_only else "Produced by")
             + f" `{command}` on {platform.machine()}, {os.cpu_count()} cores "
             f"(shared machine). Finished runs are skipped, so a run may have been trained "
             f"by an earlier invocation; its own commands.txt records which. "
             f"Error (%) on the **{split}** split"
             + (" (train[50000:]; the paper reports test error)" if split == "validation"
                else "") + ", its images binarised once, mean ± std over the finished "
             "seeds (n)."
             + "".join(f" Every {model} run uses the one M1 in `{settings(model)['m1_dir']}` "
                       "(not one M1 per seed), so its seeds vary the labeled subset, the data "
                       "order and the classifier's initialisation, not M1."
                       for model in FLAGS.models if settings(model).get("m1_dir")), "",
             "| model | " + " | ".join(f"N={n}" for n in FLAGS.labels) + " |",
             "|---|" + "---|" * len(FLAGS.labels)]
    for model in FLAGS.models:
        row = []
        for labels in map(int, FLAGS.labels):
            errors = [r["error"] for r in cells[f"{model}/{labels}"]]
            if not errors:
                row.append("—")
            elif len(errors) == 1:
                row.append(f"{errors[0]:.2f} (n=1)")
            else:
                row.append(f"{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f} "
                           f"(n={len(errors)})")
        lines.append(f"| ssl_dgm {model} | " + " | ".join(row) + " |")
        paper = PAPER[model]
        lines.append(f"| paper {PAPER_NAMES[model]} (test) | "
                     + " | ".join(f"{paper.get(int(n), float('nan')):.2f}" for n in FLAGS.labels)
                     + " |")
    lines += ["", "## Runs", "", "Error on grayscale inputs: the same split's stored "
              "intensities in [0, 1], what the exported classifier is served (recorded by "
              "runs finished since it was added; the table above uses the binarised one).",
              "", "| run | error % | on grayscale % | training minutes | epochs (M2 / M1) "
              "| M1 dims M2 models |", "|---|---|---|---|---|---|"]
    for key, runs in cells.items():
        for r in runs:
            grayscale = r.get("error_grayscale")
            origin = f" (linked from `{r['trained_in']}`)" if r.get("trained_in") else ""
            lines.append(f"| {key} seed {r['seed']}{origin} | {r['error']:.2f} | "
                         f"{'—' if grayscale is None else f'{grayscale:.2f}'} | "
                         f"{r['train_minutes']:.1f} | {r['epochs']} / {r['m1_epochs'] or '—'} "
                         f"| {r.get('m1_active_dims') or '—'} |")
    lines.append("")
    return "\n".join(lines)


def main(argv):
    del argv
    command = command_line()
    if not FLAGS.report_only:
        train_grid(command)
    cells = collect()
    text = report(cells, command)
    write_report(FLAGS.output, text, {"command": command, "split": FLAGS.eval_split,
                                      "cells": cells, "paper_test_error": PAPER})


if __name__ == "__main__":
    app.run(main)
