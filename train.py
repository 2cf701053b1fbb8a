"""Trains M1, M2 or M1+M2 semi-supervised on MNIST and reports the error.

    python train.py --model=m2 --labels=100 --eval_split=validation
    python train.py --model=m1m2 --labels=100 --eval_split=validation

Run directory layout: see ssl_dgm/training.py.  Rerun the same command to resume.
A few defaults differ by model (the help says which; `training.MODEL_DEFAULTS`):
a flag given on the command line always wins.
"""

import dataclasses
import os
import shlex
import sys

from absl import app, flags

flags.DEFINE_enum("model", "m2", ["m1", "m2", "m1m2"], "Which model of the paper to train.")
flags.DEFINE_integer("labels", 100, "Labeled training images N (a multiple of 10 on MNIST).")
flags.DEFINE_integer("epochs", 200, "Passes over the 50000 unlabeled training images "
                     "(--model=m1m2: 600).")
flags.DEFINE_integer("batch_size", 100, "Unlabeled images per step.")
flags.DEFINE_integer("labeled_batch_size", 100, "Labeled images per step.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's initial learning rate.")
flags.DEFINE_enum("lr_schedule", "cosine", ["constant", "cosine", "cosine_time"],
                  "Learning-rate schedule: cosine decays to 0 over --epochs, cosine_time "
                  "over --time_budget_minutes of training.")
flags.DEFINE_float("alpha", None, "Weight of -log q(y|x) per labeled example. "
                   "Default: the paper's 0.1*N per labeled example, 0.1*50000/labels.")
flags.DEFINE_string("labeled_weight", "1", "Weight of a labeled example's terms against an "
                    "unlabeled example's U per step: a number, or 'paper' for N_l / N_u "
                    "(every example once per pass, as the paper's sums). "
                    "--model=m1m2: 0.1.")
flags.DEFINE_list("hidden_sizes", ["500", "500"], "Encoder/decoder hidden widths "
                  "(--model=m1m2: 500).")
flags.DEFINE_list("classifier_hidden_sizes", ["500", "500"],
                  "q(y|x) hidden widths (--model=m1m2: 500).")
flags.DEFINE_integer("latent_size", 50, "Dimension of z.")
flags.DEFINE_string("activation", "softplus", "Hidden activation.")
flags.DEFINE_bool("binarize", True, "Dynamic binarisation of pixels (fresh sample per batch).")
flags.DEFINE_integer("seed", 0, "Seeds the labeled subset, data order and model RNG.")
flags.DEFINE_string("dataset", "mnist", "TFDS dataset name.")
flags.DEFINE_string("data_dir", os.environ.get("TFDS_DATA_DIR"),
                    "TFDS data folder (default: $TFDS_DATA_DIR, else TFDS's own).")
flags.DEFINE_string("model_dir", None, "Run directory (default: runs/<model>_<labels>_seed<seed>).")
flags.DEFINE_string("eval_split", "test", "Split whose error is reported at the end: "
                    "test, validation (= train[50000:]) or a TFDS split string.")
flags.DEFINE_float("time_budget_minutes", None, "Stop after this much training time.")
flags.DEFINE_integer("steps_per_execution", 50,
                     "Train steps per compiled call (looped inside one XLA call).")
flags.DEFINE_bool("jit_compile", True, "XLA-compile the train step.")
flags.DEFINE_integer("train_examples", None, "Use only the first N training images (smoke tests).")
flags.DEFINE_integer("m1_epochs", 300, "Epochs of the M1 stage (m1, m1m2).")
flags.DEFINE_enum("m1_lr_schedule", None, ["constant", "cosine", "cosine_time"],
                  "The M1 stage's --lr_schedule (default: the same as --lr_schedule), e.g. "
                  "cosine over --m1_epochs while M2 uses cosine_time (m1, m1m2).")
flags.DEFINE_list("m1_hidden_sizes", ["600", "600"], "M1 encoder/decoder hidden widths.")
flags.DEFINE_integer("m1_latent_size", 50, "Dimension of M1's latent z1.")
flags.DEFINE_integer("m1_kl_warmup_epochs", 0, "Epochs over which M1's KL weight rises "
                     "from 0 to 1 (0: the plain ELBO throughout; "
                     "--model=m1m2: 50).")
flags.DEFINE_string("m1_dir", None, "Reuse the finished M1 in this folder (e.g. runs/X/m1).")
flags.DEFINE_enum("m1_codes", "per_step", ["per_step", "cached"],
                  "M1+M2's training codes: M1's encoder on every batch, or q(z1|x) of "
                  "every training image computed once (grey levels) and sampled per "
                  "step, as the original code did (m1m2).")
flags.DEFINE_enum("m1_head", "spreading", ["spreading", "softmax"],
                  "Classifier on M1's codes (m1): label spreading over all training "
                  "codes (transductive, like the paper's TSVM) or a softmax regression on "
                  "the labeled codes.")
flags.DEFINE_integer("spreading_neighbours", 10, "Graph neighbours of the spreading head (m1).")
flags.DEFINE_float("spreading_alpha", 0.99, "Label spreading's alpha in (0, 1) (m1).")
flags.DEFINE_integer("head_steps", 500, "Full-batch steps of M1's softmax head (m1).")
flags.DEFINE_float("head_learning_rate", 1e-2, "Adam step size of M1's softmax head (m1).")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy: one device, all local devices, or the cluster "
                  "in TF_CONFIG. Batch sizes are global.")
flags.DEFINE_float("checkpoint_minutes", 10.0,
                   "Also checkpoint within an epoch after this many training minutes.")

FLAGS = flags.FLAGS


def labeled_weight_from_flag(value):
    if value == "paper":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--labeled_weight must be a number or 'paper', got {value!r}") from None


def config_from_flags():
    """The TrainConfig of the flags; a flag the command does not set takes the
    model's own default where it has one (`training.MODEL_DEFAULTS`)."""
    from ssl_dgm.training import MODEL_DEFAULTS, TrainConfig

    config = TrainConfig(
        model=FLAGS.model, labels=FLAGS.labels, epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size, labeled_batch_size=FLAGS.labeled_batch_size,
        learning_rate=FLAGS.learning_rate, lr_schedule=FLAGS.lr_schedule, alpha=FLAGS.alpha,
        labeled_weight=labeled_weight_from_flag(FLAGS.labeled_weight),
        hidden_sizes=tuple(int(h) for h in FLAGS.hidden_sizes),
        classifier_hidden_sizes=tuple(int(h) for h in FLAGS.classifier_hidden_sizes),
        latent_size=FLAGS.latent_size, activation=FLAGS.activation, binarize=FLAGS.binarize,
        seed=FLAGS.seed, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
        eval_split=FLAGS.eval_split, time_budget_minutes=FLAGS.time_budget_minutes,
        steps_per_execution=FLAGS.steps_per_execution, jit_compile=FLAGS.jit_compile,
        train_examples=FLAGS.train_examples, m1_epochs=FLAGS.m1_epochs,
        m1_lr_schedule=FLAGS.m1_lr_schedule,
        m1_hidden_sizes=tuple(int(h) for h in FLAGS.m1_hidden_sizes),
        m1_latent_size=FLAGS.m1_latent_size, m1_kl_warmup_epochs=FLAGS.m1_kl_warmup_epochs,
        m1_dir=FLAGS.m1_dir, m1_codes=FLAGS.m1_codes, m1_head=FLAGS.m1_head,
        spreading_neighbours=FLAGS.spreading_neighbours,
        spreading_alpha=FLAGS.spreading_alpha, head_steps=FLAGS.head_steps,
        head_learning_rate=FLAGS.head_learning_rate,
        strategy=FLAGS.strategy, checkpoint_minutes=FLAGS.checkpoint_minutes)
    unset = {name: value for name, value in MODEL_DEFAULTS.get(config.model, {}).items()
             if not FLAGS[name].present}
    return dataclasses.replace(config, **unset)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from ssl_dgm import training

    try:
        config = config_from_flags()
        model_dir = FLAGS.model_dir or os.path.join(
            "runs", f"{config.model}_{config.labels}_seed{config.seed}")
        command = " ".join(["python", *(shlex.quote(a) for a in sys.argv)])
        results = training.run(config, model_dir, command)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    grayscale = results.get("eval_error_grayscale")
    print(f"{config.model} with {config.labels} labels: {config.eval_split} error "
          f"{100 * results['eval_error']:.2f}% (validation {100 * results['validation_error']:.2f}%)"
          + (f", on grayscale inputs {100 * grayscale:.2f}%" if grayscale is not None else "")
          + f" after {results['epochs_done']} epochs, {results['total_train_minutes']:.1f} min "
          f"of training; "
          f"run directory {model_dir}")
    return 0


if __name__ == "__main__":
    app.run(main)
