"""Trains M1, M2 or M1+M2 semi-supervised and reports the classification error.

    python train.py --model=m1m2 --labels=100 --eval_split=validation
    python train.py --model=m2 --labels=600 --set m2.optimization.learning_rate=3e-4

`--model` names a preset (`ssl_dgm.presets`); the flags below override it, and
`--config_file` / `--set` reach any other field of the composed config
(`--print_config` shows it).  Rerun the same command to resume a run.
"""

import json
import os
import shlex
import sys
import time

from absl import app, flags

from ssl_dgm import configs, overrides, presets

# Flags that set one config field each: (flag, help, the field's path). "STAGE" is the
# stage the model trains last: m2 for m2 and m1m2, m1 for m1.
FIELD_FLAGS = [
    ("epochs", "Epochs of the last stage (M2; --model=m1: M1).", "STAGE.optimization.epochs"),
    ("learning_rate", "Adam's initial learning rate, of every stage.",
     "*.optimization.learning_rate"),
    ("lr_schedule", "Last stage's schedule: constant, cosine, cosine_time.",
     "STAGE.optimization.lr_schedule"),
    ("time_budget_minutes", "Stop the last stage after this much training time.",
     "STAGE.optimization.time_budget_minutes"),
    ("alpha", "Weight of -log q(y|x) per labeled example (none: the paper's "
     "0.1*N_images/N_labels).", "m2.alpha"),
    ("labeled_weight", "Weight of a labeled example's terms against an unlabeled one's per "
     "step: a number, or 'paper' for N_l / N_u.", "m2.labeled_weight"),
    ("hidden_sizes", "Hidden widths of the last stage's encoder/decoder, e.g. 500,500.",
     "STAGE.hidden_sizes"),
    ("classifier_hidden_sizes", "q(y|x) hidden widths.", "m2.classifier_hidden_sizes"),
    ("latent_size", "Dimension of the last stage's z.", "STAGE.latent_size"),
    ("m1_epochs", "Epochs of the M1 stage.", "m1.optimization.epochs"),
    ("m1_dir", "Use the finished M1 in this folder (a run's m1/) instead of training one.",
     "m1_dir"),
    ("dataset", "TFDS image classification dataset.", "data.dataset"),
    ("data_dir", "TFDS data folder (default: $TFDS_DATA_DIR, else TFDS's own).",
     "data.data_dir"),
    ("eval_split", "Split reported at the end: test, validation (the held-out end of train) "
     "or a TFDS split.", "data.eval_split"),
    ("train_examples", "Use only the first N training images.", "data.train_examples"),
    ("batch_size", "Unlabeled images per step.", "data.batch_size"),
    ("labeled_batch_size", "Labeled images per step.", "data.labeled_batch_size"),
    ("strategy", "tf.distribute strategy: default, mirrored, multi_worker (TF_CONFIG).",
     "runtime.strategy"),
    ("steps_per_execution", "Train steps per compiled call.", "runtime.steps_per_execution"),
    ("checkpoint_minutes", "Also checkpoint within an epoch after this many minutes.",
     "runtime.checkpoint_minutes"),
    ("validation_every", "Validate after every this many epochs (and after the last).",
     "runtime.validation_every"),
]


def define_flags(flag_values=flags.FLAGS):
    """Defines train.py's flags on `flag_values` (tests parse a fresh set)."""
    def define(kind, name, default, help_, *args):
        getattr(flags, f"DEFINE_{kind}")(name, default, *args, help_, flag_values=flag_values)

    define("enum", "model", "m2", "Preset to train (ssl_dgm/presets.py).", list(presets.PRESETS))
    define("integer", "labels", 100, "Labeled training images N (a multiple of the classes).")
    define("integer", "seed", 0, "Seeds the labeled subset, data order and model RNG.")
    define("string", "model_dir", None, "Run folder (default: runs/<model>_<labels>_seed<seed>).")
    define("string", "config_file", None, "JSON file of config fields to override, nested as "
           "in a run's config.json (e.g. {\"m2\": {\"alpha\": 5}}).")
    define("multi_string", "set", [], "Override any config field: --set m2.latent_size=20 "
           "(repeatable; dotted paths as in config.json).")
    define("bool", "print_config", False, "Print the composed config and exit.")
    for name, help_, _ in FIELD_FLAGS:
        define("string", name, None, help_)


FLAGS = flags.FLAGS


def field_paths(config, pattern):
    """The config fields a flag's `pattern` names in `config`."""
    stage = "m2" if config.m2 is not None else "m1"
    if pattern.startswith("*."):
        return [f"{name}.{pattern[2:]}" for name, _ in config.stages]
    return [pattern.replace("STAGE", stage)]


def compose(flag_values):
    """The config of a command: preset, then --config_file, the flags, then --set.

    Raises:
      ValueError: one line naming the flag (or file) and what is wrong.
    """
    try:  # the preset's label-count-dependent values follow --labels
        config = presets.get(flag_values.model, flag_values.labels, flag_values.seed)
    except configs.ConfigError as error:  # DataConfig's own paths lack their "data."
        path = "data.labels" if error.path == "labels" else error.path
        raise ValueError(f"--{path.split('.')[-1]}: {path} {error.message}") from None
    if flag_values.config_file:
        try:
            with open(flag_values.config_file) as f:
                fields = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"--config_file {flag_values.config_file}: {error}") from None
        try:
            config = overrides.override(config, overrides.leaf_paths(fields))
        except configs.ConfigError as error:
            raise ValueError(f"--config_file {flag_values.config_file}: {error}") from None
    # --labels and --seed always apply (their defaults too), after a config file.
    updates = {"data.labels": flag_values.labels, "seed": flag_values.seed}
    origin = {"data.labels": "--labels", "seed": "--seed"}
    data_dir = flag_values.data_dir or os.environ.get("TFDS_DATA_DIR")
    for name, _, pattern in FIELD_FLAGS:
        value = data_dir if name == "data_dir" else flag_values[name].value
        if value is None:
            continue
        if name == "labeled_weight" and value == "paper":
            value = "none"
        for path in field_paths(config, pattern):
            updates[path], origin[path] = value, f"--{name}"
    for item in flag_values.set:
        path, value = overrides.parse_set(item)
        updates[path], origin[path] = value, f"--set {path}"
    try:
        return overrides.override(config, updates)
    except configs.ConfigError as error:
        flag = next((origin[p] for p in sorted(origin, key=len, reverse=True)
                     if error.path.startswith(p) or p.startswith(error.path + ".")), None)
        if flag is None:
            raise ValueError(str(error)) from None
        raise ValueError(f"{flag}: {error.path} {error.message}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        config = compose(FLAGS)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if FLAGS.print_config:
        print(json.dumps(configs.to_dict(config), indent=2))
        return 0
    from ssl_dgm import quiet
    quiet.quiet_tensorflow(verbose=FLAGS["verbosity"].present)
    from ssl_dgm.train import pipeline

    model_dir = FLAGS.model_dir or os.path.join(
        "runs", f"{FLAGS.model}_{config.data.labels}_seed{config.seed}")
    command = " ".join(["python", *(shlex.quote(a) for a in sys.argv)])
    started = time.perf_counter()
    try:
        results = pipeline.run(config, model_dir, command)
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    split = results["eval_split"]
    grayscale = results.get("eval_error_grayscale")
    print(f"{FLAGS.model}, {results['labels']} labels: {split} error "
          f"{100 * results['eval_error']:.2f}%"
          + (f" (grey levels {100 * grayscale:.2f}%)" if grayscale is not None else "")
          + (f", validation {100 * results['validation_error']:.2f}%"
             if split != "validation" else "")
          + f"; {results['epochs_done']} epochs, {results['total_train_minutes']:.1f} training "
          f"min, {(time.perf_counter() - started) / 60:.1f} min wall; run folder {model_dir}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
