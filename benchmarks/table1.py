"""Regenerates the paper's Table 1 with ssl_dgm's presets, resumably.

    python -m benchmarks.table1 --models=m1,m2,m1m2 --labels=100,600,1000,3000 \
        --seeds=0,1,2 --root=runs/table1

Every (model, labels, seed) run is the preset `model` at that label count and
seed (`ssl_dgm.presets`, as ``train.py --model=MODEL --labels=N --seed=S``), in
``ROOT/<model>_<labels>_seed<seed>``.  M1 is trained once per seed, by the m1
preset, in ``ROOT/m1_seed<seed>``, and every m1 / m1m2 run of that seed uses it
(``m1_dir``), whatever its label count: M1 never sees labels.  A finished run is
skipped (and checked to be the run this grid describes); an interrupted one
resumes from its last checkpoint, so rerunning the command after a stop goes on
where it stopped.  ``--set`` overrides a field of every run (tests use it for tiny
models), and the report says so.

Writes OUTPUT.md and OUTPUT.json: mean ± std error per cell over the finished
seeds (a missing cell is named), the paper's number beside it, errors on both
input kinds, minutes, epochs and machines per run, the grid's training minutes
(each seed's M1 once) and this command.
"""

import functools
import glob
import json
import os
import re
import shutil
import statistics
import sys

from absl import app, flags

from benchmarks.records import command_line, define_output, write_report
from ssl_dgm import overrides, presets, rundir
from ssl_dgm.paper import NAMES as PAPER_NAMES, TABLE1 as PAPER

flags.DEFINE_list("models", ["m1", "m2", "m1m2"], "Presets (rows of the table).")
flags.DEFINE_list("labels", ["100", "600", "1000", "3000"], "Label counts N (columns).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every cell.")
flags.DEFINE_string("root", "runs/table1", "Folder of all runs.")
flags.DEFINE_string("eval_split", "validation", "Split reported (validation: the held-out "
                    "end of train; test where TFDS has it).")
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"), "TFDS data folder.")
define_output("docs/results")
flags.DEFINE_multi_string("set", [], "section.field=value for every run (as train.py's).")
flags.DEFINE_string("records", None, "Keeps a copy of each finished run here, without its "
                    "checkpoints and TensorBoard logs but with each seed's M1 weights, and "
                    "restores the copies missing from --root before training: a grid goes on "
                    "from its records on a machine that has lost --root.")
flags.DEFINE_bool("report_only", False, "Only rewrite the report from finished runs.")
flags.DEFINE_bool("snapshot", False, "With --records: copy each unfinished run, with its "
                  "newest checkpoint only, into the records (safe beside a running grid), "
                  "then rewrite the report; a grid restored from the records resumes those "
                  "runs there instead of starting them over.")
FLAGS = flags.FLAGS


def run_dir(root, model, labels, seed):
    return os.path.join(root, f"{model}_{labels}_seed{seed}")


def m1_run_dir(root, seed):
    return os.path.join(root, f"m1_seed{seed}")


def _overridden(config, sets, eval_split, data_dir):
    updates = {"data.eval_split": eval_split}
    if data_dir:
        updates["data.data_dir"] = data_dir
    for item in sets:
        path, value = overrides.parse_set(item)
        updates[path] = value
    return overrides.override(config, {p: v for p, v in updates.items()
                                     if p.split(".")[0] not in ("m1", "m2", "head")
                                     or getattr(config, p.split(".")[0]) is not None})


def grid_config(root, model, labels, seed, sets=(), eval_split="validation", data_dir=None):
    """The config of one cell: the preset, with the seed's shared M1 for m1 / m1m2."""
    config = _overridden(presets.get(model, labels, seed), sets, eval_split, data_dir)
    if config.m1 is not None:
        config = overrides.override(config, {"m1_dir": os.path.join(m1_run_dir(root, seed),
                                                                  "m1")})
    return config


def m1_config(root, seed, labels, sets=(), eval_split="validation", data_dir=None):
    """The run that trains a seed's shared M1 (with its head, at the first label count)."""
    return _overridden(presets.get("m1", labels, seed), sets, eval_split, data_dir)


def grid(label_counts, seeds):
    """Every run of the grid, in training order: ``[(folder, config, M1 run or None)]``
    where the M1 run is ``(folder, config)`` of the seed's shared M1.  Seed by seed, so
    that a partial grid has whole seeds; within a seed the runs on its M1 come first
    (M1+M2 is the table's headline), then the rest.  Composing them all first means a
    bad --set fails before anything trains."""
    runs = []
    for seed in seeds:
        shared = (m1_run_dir(FLAGS.root, seed),
                  m1_config(FLAGS.root, seed, label_counts[0], FLAGS.set, FLAGS.eval_split,
                            FLAGS.data_dir))
        cells = []
        for model in FLAGS.models:
            for n in label_counts:
                config = grid_config(FLAGS.root, model, n, seed, FLAGS.set, FLAGS.eval_split,
                                     FLAGS.data_dir)
                cells.append((run_dir(FLAGS.root, model, n, seed), config,
                              shared if config.m1_dir else None))
        runs += sorted(cells, key=lambda cell: cell[2] is None)  # stable: flag order kept
    return runs


# What a record leaves out: resumable state, TensorBoard logs and temporary files.
NOT_RECORDED = ("checkpoints", "logs", rundir.LOCK, ".tmp.*", "*.tmp")


def _copy_whole(source, target, copy):
    """Copies the folder `source` over `target` with ``copy(source, temporary)`` into a
    temporary sibling and one rename, so that `target` is never half a copy."""
    parent, name = os.path.split(target)
    building = os.path.join(parent, ".tmp." + name)
    shutil.rmtree(building, ignore_errors=True)
    copy(source, building)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.replace(building, target)


def _newest_checkpoint(directory):
    """The prefix (``ckpt-N``) that `directory`'s ``checkpoint`` index names newest, or
    None.  tf.train.CheckpointManager rewrites the index only after the checkpoint's
    own files, so the one it names is whole."""
    try:
        with open(os.path.join(directory, "checkpoint")) as f:
            found = re.search(r'^model_checkpoint_path: "([^"]+)"', f.read(), re.M)
    except FileNotFoundError:
        return None
    return os.path.basename(found.group(1)) if found else None


def _checkpoint_folders(folder):
    """The ``checkpoints`` folders in run `folder` (its own; its M1 stage's)."""
    return [os.path.join(parent, "checkpoints") for parent, names, _ in os.walk(folder)
            if "checkpoints" in names]


def epochs_done(folder):
    """Epochs the run in `folder` has written history rows for, over its stages."""
    return sum(len(rundir.read_history(path))
               for path in glob.glob(os.path.join(glob.escape(folder), "**", "history.csv"),
                                         recursive=True))


def _copy_unfinished(source, target):
    """Copies the unfinished run `source` as a record does, but with the newest
    checkpoint of each stage (and an index naming only it)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*NOT_RECORDED))
    for checkpoints in _checkpoint_folders(source):
        prefix = _newest_checkpoint(checkpoints)
        if prefix is None:
            continue
        copied = os.path.join(target, os.path.relpath(checkpoints, source))
        os.makedirs(copied)
        files = glob.glob(os.path.join(glob.escape(checkpoints), glob.escape(prefix) + ".*"))
        if not any(f.endswith(".index") for f in files):
            raise FileNotFoundError(f"{checkpoints}/{prefix}.index")  # replaced meanwhile
        for path in files:
            shutil.copy2(path, copied)
        with open(os.path.join(copied, "checkpoint"), "w") as f:
            f.write(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')


def keep_unfinished(folder, records, attempts=3):
    """Copies the unfinished run `folder`, newest checkpoint only, to ``records/<its
    name>`` unless that record is as far along; returns whether it copied.

    The run may be training meanwhile: a checkpoint it deletes while it is being
    copied (it keeps two) makes the copy start again from the new index.
    """
    target = os.path.join(records, os.path.basename(folder))
    if (rundir.is_finished(folder) or not any(map(_newest_checkpoint,
                                                  _checkpoint_folders(folder)))
            or rundir.is_finished(target)
            or os.path.isdir(target) and epochs_done(target) >= epochs_done(folder)):
        return False
    os.makedirs(records, exist_ok=True)
    for attempt in range(attempts):
        try:
            _copy_whole(folder, target, _copy_unfinished)
            return True
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def _same_finished_run(folder, other):
    """Whether `other` is a finished copy of the run finished in `folder`."""
    return rundir.is_finished(other) and not rundir.differences(
        rundir.read_config(folder), rundir.read_config(other), rundir.PLACEMENT)


def keep_record(folder, records):
    """Copies the finished run `folder` to ``records/<its name>`` (M1 weights included)
    unless the same run is there already."""
    target = os.path.join(records, os.path.basename(folder))
    if not _same_finished_run(folder, target):
        os.makedirs(records, exist_ok=True)
        _copy_whole(folder, target, functools.partial(
            shutil.copytree, ignore=shutil.ignore_patterns(*NOT_RECORDED)))


def restore_records(records, root, wanted, say=print):
    """Copies each run of `records` that `root` lacks into `root`, if its config is the
    one `wanted` maps its name to; returns the names restored.

    A finished record is restored over an unfinished attempt, an unfinished one (a
    snapshot) only over a run with fewer epochs done; an attempt is replaced only if
    no process holds its folder.  A record made with other settings is left where it
    is (the grid trains that run again and its record is replaced).
    """
    restored = []
    for name, config in wanted.items():
        kept, there = os.path.join(records, name), os.path.join(root, name)
        if not os.path.isdir(kept) or rundir.is_finished(there):
            continue
        finished = rundir.is_finished(kept)
        if not finished and (not os.path.exists(os.path.join(kept, rundir.CONFIG))
                             or epochs_done(kept) <= epochs_done(there)):
            continue
        differing = rundir.differences(rundir.read_config(kept), config, rundir.PLACEMENT)
        if differing:
            say(f"== {kept}: not restored, made with other settings "
                f"({rundir.describe(differing)})")
            continue
        os.makedirs(root, exist_ok=True)
        lock = rundir.lock(there) if os.path.isdir(there) else None  # refused if in use
        try:
            _copy_whole(kept, there, shutil.copytree)
        finally:
            if lock is not None:
                lock.release()
        say(f"== {there}: restored from {records}" + (
            "" if finished else f", unfinished ({epochs_done(there)} epochs done): "
                                "it resumes from its checkpoint"))
        restored.append(name)
    return restored


def train_grid(runs, command, records=None, after_each=lambda: None):
    """Trains (or resumes, or skips) every run; `after_each` is called after each."""
    from ssl_dgm.train import pipeline

    for folder, config, shared in runs:
        if shared:
            if not rundir.is_finished(config.m1_dir):
                print(f"== {shared[0]}: the M1 of seed {config.seed}")
                pipeline.run(shared[1], shared[0], command)
            if records and rundir.is_finished(shared[0]):
                keep_record(shared[0], records)
        print(f"== {folder}")
        pipeline.run(config, folder, command)
        if records:
            keep_record(folder, records)
        after_each()


def collect(root, models, label_counts, seeds, eval_split):
    cells = {}
    for model in models:
        for labels in label_counts:
            runs = []
            for seed in seeds:
                path = os.path.join(run_dir(root, model, labels, seed), "results.json")
                if not os.path.exists(path):
                    continue
                with open(path) as f:
                    results = json.load(f)
                if results["eval_split"] != eval_split:
                    raise ValueError(f"{path} reports the {results['eval_split']} split, not "
                                     f"--eval_split={eval_split}")
                grayscale = results.get("eval_error_grayscale")
                m1 = results.get("m1", {})
                # Its M1's machines too: the M1 is most of an m1 run's minutes.
                folders = ([m1_run_dir(root, seed)] if m1 else []) + [os.path.dirname(path)]
                runs.append({"seed": seed, "error": 100 * results["eval_error"],
                             "error_grayscale": None if grayscale is None else 100 * grayscale,
                             "total_train_minutes": results["total_train_minutes"],
                             "train_minutes": results["train_minutes"],
                             "m1_train_minutes": m1.get("train_minutes"),
                             "machines": list(dict.fromkeys(
                                 m for folder in folders for m in rundir.machines(folder))),
                             "epochs": results["epochs_done"],
                             "m1_epochs": m1.get("epochs_done"),
                             "m1_active_dims": len(results.get("m1_active_dimensions", []))
                             or None})
            cells[f"{model}/{labels}"] = runs
    return cells


def shared_head_minutes(root, seeds):
    """Training minutes of the head of each seed's finished shared M1 run (the run that
    trains the M1 also fits an m1 head, at the grid's first label count)."""
    minutes = {}
    for seed in seeds:
        path = os.path.join(m1_run_dir(root, seed), rundir.RESULTS)
        if os.path.exists(path):
            minutes[seed] = rundir.read_json(path)["train_minutes"]
    return minutes


def grid_minutes(cells, head_minutes):
    """What the finished runs cost to train, each seed's M1 counted once.

    Returns ``(minutes, m1_minutes)``: the runs' own stages (an m1 run's head, an
    m1m2 run's M2 stage), plus, for each seed that a finished run used the M1 of,
    that M1 and its shared run's head (`head_minutes`, by seed); ``m1_minutes`` maps
    those seeds to their M1's minutes.
    """
    m1_minutes = {}
    for runs in cells.values():
        for r in runs:
            if r["m1_train_minutes"] is not None:
                m1_minutes.setdefault(r["seed"], r["m1_train_minutes"])
    own = sum(r["train_minutes"] for runs in cells.values() for r in runs)
    heads = sum(head_minutes.get(seed, 0.0) for seed in m1_minutes)
    return own + sum(m1_minutes.values()) + heads, m1_minutes


def _cell(errors, wanted):
    if not errors:
        return "missing"
    mean = statistics.mean(errors)
    text = f"{mean:.2f}" if len(errors) == 1 else \
        f"{mean:.2f} ± {statistics.stdev(errors):.2f}"
    return text + (f" (n={len(errors)})" if len(errors) != wanted or wanted == 1 else "")


def report(cells, command, models, label_counts, seeds, eval_split, sets, report_only,
           links=None, head_minutes=None):
    """The report's text, its missing cells and the grid's training minutes with each
    seed's M1 minutes (`grid_minutes`; `head_minutes` as there).  `links`, when given,
    maps a cell's key and seed to the path its row links to (the run's record) or None."""
    total_minutes, m1_minutes = grid_minutes(cells, head_minutes or {})
    missing = [f"{key} seed {s}" for key, runs in cells.items()
               for s in seeds if s not in {r["seed"] for r in runs}]
    lines = ["# Table 1, regenerated", "",
             ("Collected from finished runs by" if report_only else "Produced by")
             + f" `{command}`. Each run names the machines that trained it, its M1 "
             f"included (machines differ in speed, so minutes compare only between runs on "
             f"one machine). Each run is its preset (`ssl_dgm/presets.py`) at that label count "
             f"and seed; M1 is trained once per seed and shared by that seed's m1 and m1m2 "
             f"runs. Error (%) on the **{eval_split}** split"
             + (" (the held-out end of train, train[50000:] for MNIST; the presets were chosen "
                "on this split, and the paper reports test error)" if eval_split == "validation"
                else "") + f", its images binarised once, mean ± std over {len(seeds)} seeds "
             f"unless n says otherwise. {sum(len(runs) for runs in cells.values())} of the "
             f"{len(seeds) * len(models) * len(label_counts)} runs finished, "
             f"{total_minutes:.0f} training minutes in all, each seed's M1 counted once "
             f"({len(m1_minutes)} M1, {sum(m1_minutes.values()):.0f} minutes; a run's "
             f"minutes below include its M1).", ""]
    if sets:
        lines += ["Overrides of every run: " + ", ".join(f"`{s}`" for s in sets) + ".", ""]
    lines += ["| model | " + " | ".join(f"N={n}" for n in label_counts) + " |",
              "|---|" + "---|" * len(label_counts)]
    for model in models:
        lines.append(f"| ssl_dgm {model} | " + " | ".join(
            _cell([r["error"] for r in cells[f"{model}/{n}"]], len(seeds))
            for n in label_counts) + " |")
        kind = "m1m2" if model.startswith("m1m2") else model
        paper = PAPER.get(kind, {})
        lines.append(f"| paper {PAPER_NAMES.get(kind, kind)} (test) | " + " | ".join(
            f"{paper[n]:.2f}" if n in paper else "—" for n in label_counts) + " |")
    if missing:
        lines += ["", f"Missing ({len(missing)}): " + ", ".join(missing) + "."]
    lines += ["", "## Runs", "", "Grey levels: the same split's stored intensities in [0, 1], "
              "what the exported classifier is served.", "",
              "| run | error % | grey levels % | training minutes | epochs (M2 / M1) "
              "| M1 dims M2 models | machines |", "|---|---|---|---|---|---|---|"]
    for key, runs in cells.items():
        for r in runs:
            grayscale = r["error_grayscale"]
            name = f"{key} seed {r['seed']}"
            link = links(key, r["seed"]) if links else None
            if link:
                name = f"[{name}]({link})"
            lines.append(f"| {name} | {r['error']:.2f} | "
                         f"{'—' if grayscale is None else f'{grayscale:.2f}'} | "
                         f"{r['total_train_minutes']:.1f} | "
                         f"{r['epochs']} / {r['m1_epochs'] or '—'} "
                         f"| {r['m1_active_dims'] or '—'} "
                         f"| {'; '.join(r['machines']) or '—'} |")
    lines.append("")
    return "\n".join(lines), missing, total_minutes, m1_minutes


def write(command, label_counts, seeds, report_only):
    """Collects the finished runs and writes OUTPUT.md / OUTPUT.json."""
    cells = collect(FLAGS.root, FLAGS.models, label_counts, seeds, FLAGS.eval_split)
    links = None
    if FLAGS.records:
        def links(key, seed):
            model, labels = key.split("/")
            record = run_dir(FLAGS.records, model, labels, seed)
            return (os.path.relpath(record, os.path.dirname(FLAGS.output) or ".")
                    if rundir.is_finished(record) else None)
    text, missing, minutes, m1_minutes = report(
        cells, command, FLAGS.models, label_counts, seeds, FLAGS.eval_split, FLAGS.set,
        report_only, links, shared_head_minutes(FLAGS.root, seeds))
    write_report(FLAGS.output, text, {"command": command, "split": FLAGS.eval_split,
                                      "cells": cells, "missing": missing,
                                      "total_train_minutes": minutes,
                                      "m1_train_minutes": m1_minutes,
                                      "overrides": FLAGS.set,
                                      "paper_test_error": PAPER})


def main(argv):
    del argv
    command = command_line("benchmarks.table1")
    try:
        label_counts = [int(n) for n in FLAGS.labels]
        seeds = [int(s) for s in FLAGS.seeds]
        runs = grid(label_counts, seeds)  # every config checked before any training
        if FLAGS.records:
            wanted = {os.path.basename(f): c for f, c, _ in runs}
            wanted.update({os.path.basename(s[0]): s[1] for _, _, s in runs if s})
            restore_records(FLAGS.records, FLAGS.root, wanted)
        elif FLAGS.snapshot:
            raise ValueError("--snapshot copies runs into --records: give --records")
        if FLAGS.snapshot:
            for name in wanted:
                if keep_unfinished(os.path.join(FLAGS.root, name), FLAGS.records):
                    print(f"== {os.path.join(FLAGS.records, name)}: recorded unfinished, "
                          f"{epochs_done(os.path.join(FLAGS.records, name))} epochs done")
        report_only = FLAGS.report_only or FLAGS.snapshot
        if not report_only:
            from ssl_dgm import quiet
            quiet.quiet_tensorflow(verbose=FLAGS["verbosity"].present)
            # The report is rewritten after every run, so a stopped grid has a current one.
            train_grid(runs, command, FLAGS.records,
                       lambda: write(command, label_counts, seeds, False))
        if report_only or not runs:
            write(command, label_counts, seeds, report_only)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    app.run(main)
