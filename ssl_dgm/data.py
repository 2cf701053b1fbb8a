"""Data: TFDS splits, the balanced labeled subset, and in-memory tf.data streams.

The paper's protocol for MNIST: train on ``train[:50000]``, select models on the
validation split ``train[50000:]``, report on ``test``.  Of the training images,
N carry labels (N / K per class, drawn from a seed); all training images are
used as unlabeled data.  Pixels are scaled to [0, 1] and, by default,
dynamically binarised: each time an image is drawn it becomes a fresh Bernoulli
sample with its grey levels as probabilities, as in the original code.
"""

import contextlib
import dataclasses
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# Of a dataset's training split, the last sixth is held out for validation: for
# MNIST's 60000 images, train[:50000] and train[50000:], the paper's protocol.
VALIDATION_FRACTION = 1 / 6


@dataclasses.dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 ``[n, height, width, channels]``; labels int64 ``[n]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the data says about itself (from TFDS's metadata, before any image loads).

    Attributes:
      name: the TFDS name.
      num_classes: K, from the ``label`` feature.
      image_shape: ``(height, width, channels)``, from the ``image`` feature.
      split_sizes: examples per stored split (empty where TFDS does not know them).
      split_shards: files per stored split (TFDS interleaves its files as it reads, so
        only a one-file split's first images are the first ones it stores).
    """

    name: str
    num_classes: int
    image_shape: tuple
    split_sizes: dict
    split_shards: dict = dataclasses.field(default_factory=dict)

    def split(self, name, first=None):
        """The TFDS split string of ``train``, ``validation``, ``test`` or any split.

        `first` (>= 1): only the first this many images of ``train``, never past the
        held-out cut, where that reads the head of the whole of ``train`` (sizes known,
        one file); elsewhere the whole of it, which the caller cuts: the images a run
        trains on are the same either way.
        """
        if first is not None and first < 1:
            raise ValueError(f"first={first}: give a positive number of images")
        if name not in ("train", "validation"):
            return name
        total = self.split_sizes.get("train")
        if total is None:  # sizes unknown (e.g. TFDS's mock data): cut by percent
            cut = f"{round(100 * (1 - VALIDATION_FRACTION))}%"
        else:
            cut = total - round(total * VALIDATION_FRACTION)
            if name == "train" and first is not None and self.split_shards.get("train") == 1:
                cut = min(cut, first)
        return f"train[:{cut}]" if name == "train" else f"train[{cut}:]"

    def check_split(self, name):
        """Raises ValueError if `name` names a split this copy of the data lacks."""
        base = self.split(name).split("[")[0]
        if self.split_sizes and base not in self.split_sizes:
            raise ValueError(
                f"dataset {self.name!r} here has no split {base!r} (it has "
                f"{', '.join(sorted(self.split_sizes))}); choose another --eval_split, "
                f"e.g. --eval_split=validation (the held-out end of train)")


def _data_dir_error(data_dir):
    return FileNotFoundError(
        f"data_dir {data_dir!r} does not exist; point --data_dir (or TFDS_DATA_DIR) at a "
        f"folder holding TFDS datasets, or omit it to use TFDS's default")


@contextlib.contextmanager
def _few_download_retries(count=1):
    """TFDS retries a failing download ten times with a growing backoff (minutes when a
    machine is offline); a dataset that cannot be fetched should fail in seconds."""
    from tensorflow_datasets.core.download import downloader
    saved = downloader.MAX_RETRIES
    downloader.MAX_RETRIES = count
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved


def download(dataset, data_dir=None):
    """Downloads and prepares `dataset` in a scratch folder, then moves it into
    `data_dir` (TFDS's default folder if None): a failed download writes nothing there.

    Raises:
      FileNotFoundError: the dataset could not be fetched, naming what to do instead.
    """
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets")
    scratch = tempfile.mkdtemp(prefix="ssl_dgm-tfds-")
    try:
        try:
            with _few_download_retries():
                tfds.builder(dataset, data_dir=scratch).download_and_prepare()
        except Exception as error:  # offline failures come in many types
            reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            raise FileNotFoundError(
                f"dataset {dataset!r} is not prepared in {root} and could not be downloaded "
                f"({type(error).__name__}{': ' + reason if reason else ''}); prepare it where "
                f"there is a network (tfds build {dataset}) and copy it into {root}, or point "
                f"--data_dir at a prepared copy") from None
        prepared = os.path.join(scratch, dataset.split("/")[0].split(":")[0])
        if os.path.isdir(prepared):
            target = os.path.join(root, os.path.basename(prepared))
            os.makedirs(target, exist_ok=True)
            for version in os.listdir(prepared):
                final = os.path.join(target, version)
                if os.path.exists(final):
                    continue
                # Copied under a hidden name, then renamed: TFDS never sees half a copy.
                partial = os.path.join(target, f".partial-{version}-{os.getpid()}")
                shutil.copytree(os.path.join(prepared, version), partial)
                os.replace(partial, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dataset_info(dataset="mnist", data_dir=None):
    """The `DatasetInfo` of a TFDS image classification dataset.

    Raises:
      ValueError / FileNotFoundError: naming what is missing and what to do.
    """
    if data_dir is not None and not os.path.isdir(data_dir):
        raise _data_dir_error(data_dir)
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown TFDS dataset {dataset!r}; give a TFDS image "
                         f"classification dataset (e.g. mnist)") from None
    if not builder.is_prepared():
        download(dataset, data_dir)
        builder = tfds.builder(dataset, data_dir=data_dir)
    features = builder.info.features
    image = features["image"] if "image" in features else None
    label = features["label"] if "label" in features else None
    if image is None or not isinstance(label, tfds.features.ClassLabel) or None in image.shape:
        raise ValueError(f"dataset {dataset!r} is not an image classification dataset with "
                         f"fixed-size 'image' and a ClassLabel 'label'")
    splits = builder.info.splits.items()
    return DatasetInfo(dataset, int(label.num_classes), tuple(int(s) for s in image.shape),
                       {name: split.num_examples for name, split in splits},
                       {name: split.num_shards for name, split in splits})


def load_split(name, dataset="mnist", data_dir=None, info=None, first=None):
    """Loads ``train``, ``validation``, ``test`` (or any TFDS split string) into memory.

    `first` (>= 1): only the split's first this many images (all of them if it holds
    fewer); of ``train``, TFDS reads no more than those where it can
    (`DatasetInfo.split`).

    Raises:
      FileNotFoundError / ValueError with what is missing and how to get it.
    """
    info = info or dataset_info(dataset, data_dir)
    info.check_split(name)
    split = info.split(name, first)
    try:
        loaded = tfds.load(dataset, split=split, data_dir=data_dir, as_supervised=True)
        # Batches of 10000 rather than TFDS's batch_size=-1, which needs a known size.
        batches = list(tfds.as_numpy(loaded.batch(10000)))
    except (ValueError, KeyError) as error:
        message = str(error)
        if "split" in message.lower():
            raise ValueError(f"dataset {dataset!r} in {data_dir or 'the default TFDS folder'} "
                             f"cannot give split {split!r} ({message.splitlines()[0]})"
                             ) from None
        raise
    if not batches:
        raise ValueError(f"split {split!r} of {dataset!r} holds no images")
    images = np.concatenate([images for images, _ in batches])[:first]
    labels = np.concatenate([labels for _, labels in batches])[:first]
    return Split(images=images.astype(np.float32) / 255.0, labels=labels.astype(np.int64))


def labeled_indices(labels, num_labels, num_classes, seed):
    """N indices, N / K per class, drawn without replacement from a seed; sorted.

    Raises:
      ValueError: if N is not a positive multiple of K or a class holds too few images.
    """
    if num_labels <= 0 or num_labels % num_classes:
        raise ValueError(f"--labels={num_labels} must be a positive multiple of the number "
                         f"of classes ({num_classes}) so that every class gets as many")
    per_class = num_labels // num_classes
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(f"--labels={num_labels} asks for {per_class} images of class "
                             f"{label}, but the training split holds only {len(members)}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def binarize(images, seed):
    """A Bernoulli sample of grey-level images, from a stateless seed ``[2]``."""
    noise = tf.random.stateless_uniform(tf.shape(images), seed, dtype=images.dtype)
    return tf.cast(noise < images, images.dtype)


def _batches(images, labels, batch_size, seed, repeat, shuffle, binarized, drop_remainder):
    """Batches from in-memory arrays: indices are shuffled, images gathered per batch."""
    images = tf.constant(images)
    labels = None if labels is None else tf.constant(labels)
    indices = tf.data.Dataset.range(images.shape[0])
    if shuffle:
        indices = indices.shuffle(images.shape[0], seed=seed, reshuffle_each_iteration=True)
    if repeat:
        indices = indices.repeat()
    indices = indices.batch(batch_size, drop_remainder=drop_remainder)
    # A counter gives every batch its own stateless binarisation seed.
    batch_seeds = tf.data.Dataset.counter().map(lambda step: tf.stack([seed, step]))

    def gather(index, batch_seed):
        x = tf.gather(images, index)
        if binarized:
            x = binarize(x, batch_seed)
        return x if labels is None else (x, tf.gather(labels, index))

    return tf.data.Dataset.zip(indices, batch_seeds).map(gather,
                                                         num_parallel_calls=tf.data.AUTOTUNE)


def semi_supervised_dataset(labeled, unlabeled_images, labeled_batch_size,
                            unlabeled_batch_size, seed, binarized=True):
    """One epoch = one pass over the unlabeled images, each batch paired with labeled ones.

    Yields dicts ``{"labeled_x", "labels", "unlabeled_x"}``; the labeled stream
    repeats and reshuffles for as long as the unlabeled pass lasts.
    """
    labeled_stream = _batches(labeled.images, labeled.labels, labeled_batch_size, seed,
                              repeat=True, shuffle=True, binarized=binarized,
                              drop_remainder=True)
    unlabeled_stream = _batches(unlabeled_images, None, unlabeled_batch_size, seed + 1,
                                repeat=False, shuffle=True, binarized=binarized,
                                drop_remainder=True)
    paired = tf.data.Dataset.zip(labeled_stream, unlabeled_stream).map(
        lambda labeled_batch, unlabeled_x: {"labeled_x": labeled_batch[0],
                                            "labels": labeled_batch[1],
                                            "unlabeled_x": unlabeled_x})
    return paired.prefetch(tf.data.AUTOTUNE)


def unlabeled_dataset(images, batch_size, seed, binarized=True):
    """Shuffled batches of images alone (M1's training stream), one pass per epoch."""
    return _batches(images, None, batch_size, seed, repeat=False, shuffle=True,
                    binarized=binarized, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def evaluation_dataset(split, batch_size, seed, binarized=True):
    """``(x, y)`` batches in order; binarised with a fixed seed, so every epoch sees the same."""
    return _batches(split.images, split.labels, batch_size, seed, repeat=False,
                    shuffle=False, binarized=binarized,
                    drop_remainder=False).cache().prefetch(tf.data.AUTOTUNE)
