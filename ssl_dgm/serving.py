"""SavedModels for TF Serving and for drawing digits, written atomically.

Two `tf.Module`s wrap a trained M2 or M1+M2 (`M2`/`M1M2`); their signatures are
what a server or `tf.saved_model.load` sees, and need nothing from ssl_dgm:

classifier
  ``serving_default(images: float32 [batch, H, W, C] in [0, 1])``
  -> ``probabilities: float32 [batch, K]``, ``classes: int64 [batch]``

generator (every input has a batch dimension, so TF Serving's row format works)
  ``generate(labels: int32 [batch], z: float32 [batch, latent])`` -> ``images``
  ``sample(labels: int32 [batch], seed: int32 [batch])`` -> ``images``, with
  z ~ N(0, I) drawn from each row's seed (same seed, same digit)
  ``analogies(images: float32 [batch, H, W, C])`` -> ``images [batch, K, H, W, C]``:
  each input's style z = E[q(z|x, y*)], y* = argmax q(y|x), drawn as every class
  (the paper's figure 1b)

Images out are the Bernoulli means of p(x|y, z), in [0, 1].

TF Serving loads ``<base>/<name>/<version>/`` where version is an integer; a
version is written under a temporary, non-numeric name and renamed into place,
so a server polling the folder never sees a half-written model.
"""

import os
import shutil
import socket
import tempfile

import tensorflow as tf

from ssl_dgm import builders, rundir


def _check_images(images, image_shape):
    # Servers feed tensors without checking them against the signature, so check here.
    images = tf.ensure_shape(images, [None, *image_shape],
                             name="images_must_be_batch_x_" + "x".join(map(str, image_shape)))
    tf.debugging.assert_greater_equal(images, 0.0, message="images must be in [0, 1]")
    tf.debugging.assert_less_equal(images, 1.0, message="images must be in [0, 1]")
    return images


class Classifier(tf.Module):
    """``serving_default``: images -> q(y|x) probabilities and argmax classes."""

    def __init__(self, model, image_shape):
        super().__init__(name="classifier")
        # Track only the networks q(y|x) uses, so the SavedModel holds no decoder
        # weights; the model itself is kept out of tracking behind a closure.
        self.networks = list(model.classifier_networks())
        self._probabilities = lambda images: model(images)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.serving_default = tf.function(
            self._classify,
            input_signature=[tf.TensorSpec([None, *self.image_shape], tf.float32, "images")])

    def _classify(self, images):
        probabilities = self._probabilities(_check_images(images, self.image_shape))
        return {"probabilities": probabilities,
                "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

    def signatures(self):
        return {"serving_default": self.serving_default}


class Generator(tf.Module):
    """Class-conditional generation from a trained M2 / M1+M2 (see module docstring)."""

    def __init__(self, model, image_shape):
        super().__init__(name="generator")
        self.model = model
        self.image_shape = tuple(int(s) for s in image_shape)
        batch = [None]
        labels = tf.TensorSpec(batch, tf.int32, "labels")
        self.generate = tf.function(self._generate, input_signature=[
            labels, tf.TensorSpec([None, model.latent_size], tf.float32, "z")])
        self.sample = tf.function(self._sample, input_signature=[
            labels, tf.TensorSpec(batch, tf.int32, "seed")])
        self.analogies = tf.function(self._analogies, input_signature=[
            tf.TensorSpec([None, *self.image_shape], tf.float32, "images")])

    def _one_hot(self, labels):
        classes = self.model.num_classes
        labels = tf.ensure_shape(labels, [None], name="labels_must_be_a_batch_of_integers")
        tf.debugging.assert_non_negative(labels, message=f"labels must be in [0, {classes})")
        tf.debugging.assert_less(labels, classes, message=f"labels must be in [0, {classes})")
        return tf.one_hot(labels, classes)

    def _images(self, pixels, leading_shape):
        return tf.reshape(pixels, tf.concat([leading_shape, self.image_shape], axis=0))

    def _generate(self, labels, z):
        # As images are, z is checked here: a server feeds it without the signature's shape.
        latent = self.model.latent_size
        z = tf.ensure_shape(z, [None, latent], name=f"z_must_be_batch_x_{latent}")
        tf.debugging.assert_all_finite(z, message="z must be finite")
        tf.debugging.assert_equal(tf.shape(labels)[0], tf.shape(z)[0],
                                  message="labels and z need the same batch size")
        pixels = self.model.decode(z, self._one_hot(labels))
        return {"images": self._images(pixels, tf.shape(labels))}

    def _sample(self, labels, seed):
        tf.debugging.assert_equal(tf.shape(labels)[0], tf.shape(seed)[0],
                                  message="labels and seed need the same batch size")
        latent = self.model.latent_size
        z = tf.map_fn(lambda s: tf.random.stateless_normal([latent], tf.stack([s, 0])),
                      seed, fn_output_signature=tf.float32)
        return self._generate(labels, z)

    def _analogies(self, images):
        images = _check_images(images, self.image_shape)
        classes = self.model.num_classes
        predicted = tf.argmax(self.model(images), axis=-1)
        style = self.model.style(images, tf.one_hot(predicted, classes))   # [batch, latent]
        pixels = self.model.decode(style[:, None, :], tf.eye(classes))     # [batch, K, d]
        return {"images": self._images(pixels, tf.shape(pixels)[:2])}

    def signatures(self):
        return {"generate": self.generate, "sample": self.sample,
                "analogies": self.analogies}


def versions(export_dir, name):
    """The integer versions in ``export_dir/name``, ascending (none if it is absent)."""
    folder = os.path.join(export_dir, name)
    return sorted(int(v) for v in os.listdir(folder) if v.isdigit()) \
        if os.path.isdir(folder) else []


def next_version(export_dir, name):
    """One more than the largest integer version in ``export_dir/name`` (1 if none)."""
    return max(versions(export_dir, name), default=0) + 1


def newest(export_dir, name):
    """The folder of the newest version of ``export_dir/name``."""
    found = versions(export_dir, name)
    if not found:
        raise ValueError(f"{os.path.join(export_dir, name)} holds no exported version")
    return os.path.join(export_dir, name, str(found[-1]))


# Temporaries carry the host, so that a shared export folder's cleanup leaves other
# machines' exports alone (their pids mean nothing here).
_HOST = socket.gethostname().replace("-", "_")


def _remove_stale_temporaries(folder):
    """Removes ``.tmp-*`` folders left by exports of this host whose process is gone."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        parts = name.split("-")  # .tmp-VERSION-PID-HOST-random
        if (name.startswith(".tmp-") and len(parts) >= 5 and parts[2].isdigit()
                and parts[3] == _HOST):
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            except PermissionError:
                pass  # alive, another user's


def _write_temporary(module, export_dir, name, version):
    """Saves `module` under a temporary name in ``export_dir/name``; returns its path."""
    folder = os.path.join(export_dir, name)
    os.makedirs(folder, exist_ok=True)
    _remove_stale_temporaries(folder)
    temporary = tempfile.mkdtemp(prefix=f".tmp-{version}-{os.getpid()}-{_HOST}-", dir=folder)
    try:
        # mkdtemp makes an owner-only folder; a server running as another user must read it.
        os.chmod(temporary, 0o777 & ~rundir.umask())
        tf.saved_model.save(module, temporary, signatures=module.signatures())
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return temporary


def check_targets(export_dir, names, version):
    """The version folders to write; raises before anything is written if one cannot be.

    Raises:
      FileExistsError: a version exists already (versions are immutable).
      ValueError: `export_dir` is a file or `version` is not a positive integer.
    """
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise ValueError(f"--version must be a positive integer (TF Serving loads only "
                         f"those), got {version!r}")
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"--export_dir {export_dir} is a file; give a folder")
    finals = {}
    for name in names:
        finals[name] = os.path.join(export_dir, name, str(version))
        if os.path.exists(finals[name]):
            raise FileExistsError(f"{finals[name]} exists; TF Serving versions are "
                                  f"immutable, choose another --version")
    return finals


def save_all(modules, export_dir, version):
    """Writes every ``{name: module}`` as ``export_dir/name/version``: all or none.

    Every target is checked before anything is written; each module is saved to a
    temporary folder, and only when all are saved are they renamed into place (a
    failure then removes the versions already renamed).

    Raises: as `check_targets`.
    """
    finals = check_targets(export_dir, modules, version)
    temporaries, placed = {}, []
    try:
        for name, module in modules.items():
            temporaries[name] = _write_temporary(module, export_dir, name, version)
        for name, temporary in temporaries.items():
            os.replace(temporary, finals[name])
            placed.append(finals[name])
    except BaseException:
        for path in [*temporaries.values(), *placed]:
            shutil.rmtree(path, ignore_errors=True)
        raise
    return finals


MODELS_CONFIG = """model_config_list {{
{entries}}}
"""


def models_config(base_path, names=("classifier", "generator")):
    """TF Serving's ``--model_config_file`` text proto serving `names` from `base_path`."""
    entries = "".join(
        f'  config {{\n    name: "{n}"\n    base_path: "{base_path}/{n}"\n'
        f'    model_platform: "tensorflow"\n  }}\n' for n in names)
    return MODELS_CONFIG.format(entries=entries)


def export_run(model_dir, export_dir, version=None, base_path="/models"):
    """Exports a finished M2 / M1+M2 run as ``classifier`` and ``generator``.

    Returns:
      dict name -> written folder.
    """
    names = ("classifier", "generator")
    if version is None:
        version = max(next_version(export_dir, name) for name in names)
    check_targets(export_dir, names, version)  # before the run is loaded
    model, _, results = builders.load_trained(model_dir)
    image_shape = results["image_shape"]
    modules = {"classifier": Classifier(model, image_shape),
               "generator": Generator(model, image_shape)}
    written = save_all(modules, export_dir, version)
    rundir.atomic_write(os.path.join(export_dir, "models.config"), models_config(base_path))
    return written
