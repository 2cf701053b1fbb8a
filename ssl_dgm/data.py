"""Data: TFDS splits, the balanced labeled subset, and in-memory tf.data streams.

The paper's protocol for MNIST: train on ``train[:50000]``, select models on the
validation split ``train[50000:]``, report on ``test``.  Of the training images,
N carry labels (N / K per class, drawn from a seed); all training images are
used as unlabeled data.  Pixels are scaled to [0, 1] and, by default,
dynamically binarised: each time an image is drawn it becomes a fresh Bernoulli
sample with its grey levels as probabilities, as in the original code.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

SPLITS = {
    "train": "train[:50000]",
    "validation": "train[50000:]",
    "test": "test",
}


@dataclasses.dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 ``[n, height, width, channels]``; labels int64 ``[n]``."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)


def load_split(name, dataset="mnist", data_dir=None):
    """Loads one of `SPLITS` (or any TFDS split string) into memory.

    Raises:
      FileNotFoundError / ValueError with what is missing and how to get it.
    """
    split = SPLITS.get(name, name)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"data_dir {data_dir!r} does not exist; point --data_dir (or TFDS_DATA_DIR) at "
            f"a folder holding TFDS datasets, or omit it to use TFDS's default")
    try:
        loaded = tfds.load(dataset, split=split, data_dir=data_dir, as_supervised=True)
        # Batches of 10000 rather than TFDS's batch_size=-1, which needs a known size.
        batches = list(tfds.as_numpy(loaded.batch(10000)))
    except tfds.core.registered.DatasetNotFoundError as error:
        raise ValueError(f"unknown TFDS dataset {dataset!r}") from error
    except (ValueError, KeyError) as error:
        message = str(error)
        if "split" in message.lower():
            raise ValueError(
                f"dataset {dataset!r} in {data_dir or 'the default TFDS folder'} has no split "
                f"{split!r} ({message.splitlines()[0]}); with a copy that holds only "
                f"'train', evaluate on --eval_split=validation") from error
        raise
    except Exception as error:  # offline download failures come in many types
        if "download" in type(error).__name__.lower() or "connection" in str(error).lower():
            raise FileNotFoundError(
                f"dataset {dataset!r} is not prepared in "
                f"{data_dir or 'the default TFDS folder'} and could not be downloaded: {error}"
            ) from error
        raise
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
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
