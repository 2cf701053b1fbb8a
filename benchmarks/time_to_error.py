"""Time to accuracy: when finished runs first reached the paper's error, and their
error at a training-time budget.

    python -m benchmarks.time_to_error --run_dir=RUN [--run_dir=RUN2 ...] \
        --output=docs/time_to_error [--budget=m2:30 --budget=m1m2:120]

For each run (a folder with config.json, history.csv and results.json), minutes are
training minutes as recorded (validation passes excluded) and, for M1+M2, include
the M1 it used (results.json's "m1"), whether trained in the run or reused.  The
target is the paper's Table 1 test error for the run's model and label count;
the errors are those of the epochs that validated (every `--validation_every`-th and
the last; older runs validated after every epoch).  Writes OUTPUT.md and
OUTPUT.json.
"""

import json
import os
import platform

from absl import app, flags

from benchmarks.records import command_line, write_report
from ssl_dgm.rundir import read_history
from ssl_dgm.paper import NAMES, TABLE1

flags.DEFINE_multi_string("run_dir", None, "Finished run directories.", required=True)
flags.DEFINE_string("output", None, "Writes OUTPUT.md and OUTPUT.json.", required=True)
flags.DEFINE_multi_string("budget", ["m2:30", "m1m2:120"],
                          "model:minutes, training-time budgets (M1 included for m1m2).")
flags.DEFINE_string("note", "", "A sentence on the conditions of the runs (e.g. machine load).")
FLAGS = flags.FLAGS


def parse_budgets(values):
    budgets = {}
    for value in values:
        model, _, minutes = value.partition(":")
        try:
            budgets[model] = float(minutes)
        except ValueError:
            raise ValueError(f"--budget must be model:minutes, got {value!r}") from None
    return budgets


def time_to_error(run_dir, budgets):
    """One row of the report: the run's target, when it reached it, its budget error."""
    for name in ("config.json", "history.csv", "results.json"):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise ValueError(f"{run_dir} has no {name}: give finished m2 / m1m2 runs")
    config = json.load(open(os.path.join(run_dir, "config.json")))
    results = json.load(open(os.path.join(run_dir, "results.json")))
    model, labels = config["model"], config["data"]["labels"]
    if model not in ("m2", "m1m2"):
        raise ValueError(f"{run_dir} is an {model} run; give m2 / m1m2 runs")
    m1_minutes = results["m1"]["train_minutes"] if model == "m1m2" else 0.0
    history = read_history(os.path.join(run_dir, "history.csv"))
    validated = [row for row in history if "val_error" in row]
    target = TABLE1[model].get(labels)
    # Errors are stored as float32 fractions: compare in the reports' 0.01% steps.
    reached = next((row for row in validated
                    if target is not None and round(100 * row["val_error"], 2) <= target),
                   None)
    budget = budgets.get(model)
    within = [row for row in validated if m1_minutes + row["train_minutes"] <= budget] \
        if budget is not None else []
    return {
        "run": run_dir, "model": model, "labels": labels, "paper_error": target,
        "m1_minutes": m1_minutes,
        "reached_epoch": int(reached["epoch"]) if reached else None,
        "reached_minutes": m1_minutes + reached["train_minutes"] if reached else None,
        "budget_minutes": budget,
        "budget_epoch": int(within[-1]["epoch"]) if within else None,
        "budget_error": 100 * within[-1]["val_error"] if within else None,
        "final_error": 100 * results["eval_error"],
        "final_minutes": m1_minutes + history[-1]["train_minutes"],
        "epochs": int(history[-1]["epoch"]),
    }


def report(rows, command, note):
    lines = ["# Time to accuracy", "", f"Written by `{command}` on {platform.machine()}, "
             f"{os.cpu_count()} cores (shared; the runs' minutes depend on what ran beside "
             "them). Minutes: training time as recorded, M1 included for M1+M2. Target: the "
             "paper's Table 1 (test) error for the model and N; errors: validation.", ""]
    if note:
        lines += [note, ""]
    lines += ["| run | model | N | paper % | first validated epoch at or under it (minutes) "
              "| budget: error % at epoch (minutes ≤) | final error % (epochs, minutes) |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        reached = (f"{r['reached_epoch']} ({r['reached_minutes']:.1f})"
                   if r["reached_epoch"] else "not reached")
        if r["budget_epoch"]:
            budget = (f"{r['budget_error']:.2f} at {r['budget_epoch']} "
                      f"(≤ {r['budget_minutes']:g})")
        elif r["budget_minutes"] is not None:
            budget = f"no validated epoch within {r['budget_minutes']:g}"
        else:
            budget = "—"
        lines.append(f"| `{r['run']}` | {NAMES[r['model']]} | {r['labels']} | "
                     f"{r['paper_error'] if r['paper_error'] is not None else '—'} | "
                     f"{reached} | {budget} | {r['final_error']:.2f} ({r['epochs']}, "
                     f"{r['final_minutes']:.1f}) |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    command = command_line("benchmarks.time_to_error")
    budgets = parse_budgets(FLAGS.budget)
    rows = [time_to_error(run_dir, budgets) for run_dir in FLAGS.run_dir]
    text = report(rows, command, FLAGS.note)
    write_report(FLAGS.output, text, {"command": command, "rows": rows})


if __name__ == "__main__":
    app.run(main)
