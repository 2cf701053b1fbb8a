"""Error-vs-epoch and error-vs-minutes of finished (or running) training runs.

    python benchmarks/curve.py --run_dir=RUN [--run_dir=RUN2 ...] --output=docs/m2_100

Reads each run directory's ``commands.txt``, ``config.json``, ``history.csv`` and
``results.json`` (M1 stages in ``RUN/m1`` too) and writes OUTPUT.md (tables, with
the commands that produced the runs) and OUTPUT.png (the curves).
"""

import json
import os
import platform
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.records import command_line, read_history  # noqa: E402

flags.DEFINE_multi_string("run_dir", None, "Run directories to report.", required=True)
flags.DEFINE_string("output", None, "Writes OUTPUT.md and OUTPUT.png.", required=True)
flags.DEFINE_string("title", "Training curves", "Heading of the report.")
flags.DEFINE_integer("every", 5, "Table rows every this many epochs (plus first and last).")
flags.DEFINE_string("note", "", "A sentence on the conditions of the runs (e.g. machine load).")
FLAGS = flags.FLAGS


def stage_table(history, metric, every):
    lines = ["| epoch | training minutes | " + metric + " |", "|---|---|---|"]
    for i, row in enumerate(history):
        if i == 0 or i == len(history) - 1 or int(row["epoch"]) % every == 0:
            value = row[metric]
            shown = f"{100 * value:.2f}%" if "error" in metric else f"{value:.2f}"
            lines.append(f"| {int(row['epoch'])} | {row['train_minutes']:.1f} | {shown} |")
    return lines


def report_run(run_dir, every):
    lines = [f"## `{run_dir}`", ""]
    commands = os.path.join(run_dir, "commands.txt")
    if os.path.exists(commands):
        lines += ["Command(s):", "", "```"] + open(commands).read().strip().splitlines() + [
            "```", ""]
    results_path = os.path.join(run_dir, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else None
    curves = {}
    for stage, metric in (("m1", "val_loss"), ("", "val_error")):
        path = os.path.join(run_dir, stage, "history.csv")
        if not os.path.exists(path):
            continue
        history = read_history(path)
        seconds = statistics.median(r["epoch_train_seconds"] for r in history)
        name = "M1 stage (validation -ELBO, nats)" if stage else "classifier stage"
        lines += [f"### {name}", ""]
        stage_commands = os.path.join(run_dir, stage, "commands.txt")
        if stage and os.path.exists(stage_commands):
            lines += ["Trained by:", "", "```"] + open(stage_commands).read().strip(
                ).splitlines() + ["```", ""]
        lines += [
                  f"{len(history)} epochs, {history[-1]['train_minutes']:.1f} training minutes, "
                  f"median {seconds:.1f} s per epoch (training only; validation excluded).", ""]
        lines += stage_table(history, metric, every) + [""]
        curves[stage or "classifier"] = (history, metric)
    if results:
        summary = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
        lines += ["Final `results.json`: `" + json.dumps(summary, sort_keys=True) + "`", ""]
    else:
        lines += ["(no results.json: the run had not finished when this was written)", ""]
    return lines, curves


def plot(all_curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run_dir, curves in all_curves:
        if "classifier" not in curves:
            continue
        history, metric = curves["classifier"]
        offset = curves["m1"][0][-1]["train_minutes"] if "m1" in curves else 0.0
        errors = [100 * r[metric] for r in history]
        label = os.path.basename(run_dir.rstrip("/"))
        axes[0].plot([r["epoch"] for r in history], errors, label=label)
        axes[1].plot([offset + r["train_minutes"] for r in history], errors, label=label)
    minutes = "training minutes (incl. the run's own M1 stage, if any)"
    for axis, xlabel in zip(axes, ("epoch", minutes)):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("validation error (%)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv):
    del argv
    command = command_line()
    lines = [f"# {FLAGS.title}", "", f"Written by `{command}`.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared; other jobs may "
             f"have run alongside, see the issue notes).", ""]
    if FLAGS.note:
        lines += [FLAGS.note, ""]
    all_curves = []
    for run_dir in FLAGS.run_dir:
        run_lines, curves = report_run(run_dir, FLAGS.every)
        lines += run_lines
        all_curves.append((run_dir, curves))
    os.makedirs(os.path.dirname(FLAGS.output) or ".", exist_ok=True)
    plot(all_curves, FLAGS.output + ".png")
    lines += [f"![curves]({os.path.basename(FLAGS.output)}.png)", ""]
    with open(FLAGS.output + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
