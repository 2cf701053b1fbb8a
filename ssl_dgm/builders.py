"""Models from configs, and finished runs from their folders.

The one place that turns an `ExperimentConfig` (with what the data says: its
classes and image shape) into built Keras models, for training, for export
(`serving`) and for figures, so a loaded run is the run that was trained.
"""

import dataclasses
import glob
import os
import re

import numpy as np
import tensorflow as tf

from ssl_dgm import configs, objectives, rundir
from ssl_dgm.m1 import M1
from ssl_dgm.m2 import M2
from ssl_dgm.stacked import M1M2


def logit_of_mean(images):
    """Initial Bernoulli decoder bias: the logit of the mean training image."""
    mean = np.clip(images.reshape(len(images), -1).mean(axis=0), 1e-3, 1 - 1e-3)
    return np.log(mean / (1 - mean)).astype(np.float32)


def build_m1(m1_config: configs.M1Config, input_size, seed, decoder_bias=None,
             kl_warmup_steps=0):
    model = M1(input_size, latent_size=m1_config.latent_size,
               hidden_sizes=m1_config.hidden_sizes, activation=m1_config.activation,
               decoder_bias=decoder_bias, kl_warmup_steps=kl_warmup_steps, seed=seed)
    model.build()
    return model


def build_m2(config: configs.ExperimentConfig, num_classes, input_size, num_train, m1=None,
             active=None, decoder_bias=None):
    """The built M2 of an m2 run, or the M1M2 on `m1`'s `active` dims of an m1m2 run."""
    stage = config.m2
    labels = config.data.labels
    alpha = stage.alpha if stage.alpha is not None else objectives.default_alpha(num_train,
                                                                                labels)
    labeled_weight = (stage.labeled_weight if stage.labeled_weight is not None
                      else objectives.paper_labeled_weight(num_train, labels))
    arguments = dict(num_classes=num_classes, latent_size=stage.latent_size,
                     hidden_sizes=stage.hidden_sizes,
                     classifier_hidden_sizes=stage.classifier_hidden_sizes,
                     activation=stage.activation, alpha=alpha,
                     labeled_weight=labeled_weight,
                     shared_noise=stage.label_noise == "shared", seed=config.seed)
    if config.model == "m2":
        model = M2(input_size, likelihood="bernoulli", decoder_bias=decoder_bias, **arguments)
    else:
        model = M1M2(m1, active, codes=stage.codes, **arguments)
    model.build()
    return model


def weights_by_path(model):
    """``{path: variable}`` of the weights `model`'s checkpoints hold, so a checkpoint
    matches variables by name, not by their order in the model.

    Paths are relative to the model (``encoder/input_0/kernel``), since Keras numbers
    the names of models built in one process (``m2``, ``m2_1``, ...).  A stacked
    model's M1 is left out: it is frozen, and read from its own finished stage
    (``m1.weights.h5``) whenever the model is built, so its checkpoints hold what
    training changes (an M1+M2 checkpoint: 1.8 MB instead of 8.8 at the presets).
    """
    frozen = getattr(model, "m1", None)
    frozen = frozen.name if frozen is not None else None
    weights = {}
    for variable in model.weights:
        owner, _, rest = variable.path.partition("/")
        if owner == frozen:
            continue
        if owner != model.name:
            raise ValueError(f"{variable.path} is not a variable of {model.name}")
        if rest in weights:
            raise ValueError(f"two variables of {model.name} share the path {rest}")
        weights[rest] = variable
    return weights


def checkpoint_prefixes(directory, indexed=()):
    """Checkpoint prefixes in `directory`, newest first: those of the ``checkpoint``
    index (`indexed`) and every ``ckpt-N`` whose files are there, index or not."""
    found = set(indexed) | {p[:-len(".index")]
                            for p in glob.glob(os.path.join(directory, "ckpt-*.index"))}
    numbered = [p for p in found if re.search(r"ckpt-\d+$", p)]
    return sorted(numbered, key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)


def restore_newest(checkpoint, directory, indexed=(), warn=None):
    """Restores the newest checkpoint in `directory` that reads whole; returns its prefix.

    A checkpoint that cannot be read (a missing or damaged file) is skipped, with
    ``warn(prefix)``, for the next older one.  Returns None if there is none at all.

    Raises:
      ValueError: there are checkpoints, but none of them can be read.
    """
    prefixes = checkpoint_prefixes(directory, indexed)
    for prefix in prefixes:
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
            return prefix
        except (tf.errors.OpError, AssertionError, ValueError):
            if warn is not None:
                warn(prefix)
    if prefixes:
        raise ValueError(f"none of the checkpoints in {directory} can be read into this "
                         f"model ({', '.join(os.path.basename(p) for p in prefixes)}); "
                         f"restore them, or remove the folder to start over")
    return None


def read_m1_summary(stage_dir):
    """A finished M1 stage's results.json and the `M1Config` it records.

    Raises:
      ValueError: `stage_dir` holds no finished M1 of this ssl_dgm version.
    """
    results = os.path.join(stage_dir, rundir.RESULTS)
    weights = os.path.join(stage_dir, rundir.M1_WEIGHTS)
    if not (os.path.exists(results) and os.path.exists(weights)):
        raise ValueError(f"{stage_dir} holds no finished M1 ({rundir.M1_WEIGHTS} and "
                         f"{rundir.RESULTS}); give a finished run's m1/ folder")
    summary = rundir.read_json(results)
    try:
        return summary, configs.build(configs.M1Config, summary["m1"])
    except (KeyError, TypeError, configs.ConfigError) as error:
        raise ValueError(f"{stage_dir} does not hold an M1 of this ssl_dgm version "
                         f"({error}); train a new one") from None


def adopt_m1(config: configs.ExperimentConfig, image_shape):
    """`config` with `m1` set to the M1 in `config.m1_dir` (which it then uses).

    Raises:
      ValueError: there is no finished M1, or it was trained on other images.
    """
    summary, m1_config = read_m1_summary(config.m1_dir)
    if list(summary.get("image_shape", [])) != list(image_shape):
        raise ValueError(f"--m1_dir {config.m1_dir} holds an M1 of "
                         f"{summary.get('image_shape')} images ({summary.get('dataset')}); "
                         f"this run's images are {list(image_shape)}: give an M1 trained "
                         f"on this dataset")
    return dataclasses.replace(config, m1=m1_config)


def load_m1(stage_dir):
    """The finished M1 in `stage_dir` and its summary (``results.json``)."""
    summary, m1_config = read_m1_summary(stage_dir)
    m1 = build_m1(m1_config, int(np.prod(summary["image_shape"])), summary["seed"])
    try:
        m1.load_weights(os.path.join(stage_dir, rundir.M1_WEIGHTS))
    except (ValueError, OSError) as error:
        raise ValueError(f"{stage_dir}/{rundir.M1_WEIGHTS} does not fit the M1 its "
                         f"results.json describes ({error}); train a new M1") from None
    return m1, summary


def m1_stage_dir(config, model_dir):
    """Where a run's M1 lives: `config.m1_dir` if given, else ``<model_dir>/m1``."""
    return config.m1_dir or os.path.join(model_dir, "m1")


def load_trained(model_dir):
    """Rebuilds the finished M2 or M1+M2 run in `model_dir` with its last weights.

    Returns:
      ``(model, config, results)``.

    Raises:
      ValueError: the folder holds no finished M2 / M1+M2 run.
    """
    if not os.path.isdir(model_dir):
        raise ValueError(f"{model_dir} is not a folder; give a finished run's --model_dir")
    if not os.path.exists(os.path.join(model_dir, rundir.CONFIG)):
        raise ValueError(f"{model_dir} is not a training run directory (no config.json)")
    if not rundir.is_finished(model_dir):
        raise ValueError(f"{model_dir} holds an unfinished run (no results.json); finish it "
                         f"with the command in its commands.txt")
    config = rundir.read_config(model_dir)
    results = rundir.read_json(os.path.join(model_dir, rundir.RESULTS))
    if config.model not in ("m2", "m1m2"):
        raise ValueError(f"{model_dir} is an {config.model} run; only m2 and m1m2 runs "
                         f"generate digits and can be exported")
    m1 = load_m1(m1_stage_dir(config, model_dir))[0] if config.model == "m1m2" else None
    model = build_m2(config, results["num_classes"], int(np.prod(results["image_shape"])),
                     results["num_train"], m1, results.get("m1_active_dimensions"))
    checkpoint = tf.train.Checkpoint(weights=weights_by_path(model))
    restored = restore_newest(checkpoint, os.path.join(model_dir, "checkpoints"))
    if restored is None:
        raise ValueError(f"{model_dir} has no checkpoint to load")
    if restored != checkpoint_prefixes(os.path.join(model_dir, "checkpoints"))[0]:
        raise ValueError(f"the newest checkpoint of {model_dir} cannot be read into this "
                         f"run's model; restore it (an older one would not be the run's "
                         f"final weights)")
    return model, config, results
