"""Labeled subset, binarisation and the paired tf.data streams."""

import os

import numpy as np
import pytest
import tensorflow as tf

from ssl_dgm import data


def fake_labels(per_class=(30, 25, 40), seed=0):
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(per_class)])
    return np.random.default_rng(seed).permutation(labels)


def test_labeled_subset_is_balanced_and_seeded():
    labels = fake_labels()
    chosen = data.labeled_indices(labels, 12, 3, seed=5)
    assert len(chosen) == 12 and len(set(chosen)) == 12
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=3), [4, 4, 4])
    np.testing.assert_array_equal(chosen, data.labeled_indices(labels, 12, 3, seed=5))
    assert not np.array_equal(chosen, data.labeled_indices(labels, 12, 3, seed=6))


@pytest.mark.parametrize("num_labels, message", [
    (10, "multiple of the number of classes"),
    (0, "positive multiple"),
    (78, "holds only 25"),
])
def test_bad_label_counts_are_clear_errors(num_labels, message):
    with pytest.raises(ValueError, match=message):
        data.labeled_indices(fake_labels(), num_labels, 3, seed=0)


def test_binarize_is_a_bernoulli_sample_of_the_grey_levels():
    grey = tf.constant(np.linspace(0, 1, 11, dtype=np.float32)[None].repeat(20000, 0))
    sample = data.binarize(grey, tf.constant([1, 2])).numpy()
    assert set(np.unique(sample)) <= {0.0, 1.0}
    np.testing.assert_allclose(sample.mean(axis=0), np.linspace(0, 1, 11), atol=0.015)
    again = data.binarize(grey, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(sample, again)


def small_splits():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(60, 2, 3, 1)).astype(np.float32)
    labels = np.arange(60) % 3
    labeled = data.Split(images[:9], labels[:9])
    return labeled, images


def test_semi_supervised_stream_pairs_one_unlabeled_pass_with_repeated_labels():
    labeled, images = small_splits()
    stream = data.semi_supervised_dataset(labeled, images, labeled_batch_size=4,
                                          unlabeled_batch_size=10, seed=3)
    batches = list(stream)
    assert len(batches) == 6  # 60 unlabeled images / 10 per batch
    seen_unlabeled = []
    for b in batches:
        x_l, y_l, x_u = b["labeled_x"], b["labels"], b["unlabeled_x"]
        assert x_l.shape == (4, 2, 3, 1) and y_l.shape == (4,) and x_u.shape == (10, 2, 3, 1)
        assert set(np.unique(x_u.numpy())) <= {0.0, 1.0}
        seen_unlabeled.append(x_u.numpy())
    # Each labeled batch holds labels of the labeled subset only, and the stream
    # ran past the 9 labeled images (6 batches x 4 = 24 draws).
    all_labels = np.concatenate([b["labels"].numpy() for b in batches])
    assert len(all_labels) == 24
    np.testing.assert_array_equal(np.bincount(all_labels, minlength=3), [8, 8, 8])
    # Same seed, same stream.
    again = [b["unlabeled_x"].numpy() for b in data.semi_supervised_dataset(
        labeled, images, 4, 10, seed=3)]
    np.testing.assert_array_equal(np.stack(seen_unlabeled), np.stack(again))


def test_a_repeated_stream_gives_each_epoch_the_batches_of_a_fresh_pass():
    # fit_stage keeps one iterator over the repeated pass instead of one per epoch.
    labeled, images = small_splits()
    for make in (lambda: data.unlabeled_dataset(images, 10, seed=3),
                 lambda: data.semi_supervised_dataset(labeled, images, 4, 10, seed=3)):
        passes = int(make().cardinality())
        assert passes == 6
        fresh = make()
        one_per_epoch = [b for _ in range(3) for b in fresh]
        kept = list(make().repeat().take(3 * passes))
        for a, b in zip(one_per_epoch, kept, strict=True):
            for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b), strict=True):
                np.testing.assert_array_equal(x.numpy(), y.numpy())
        # and the epochs differ from each other: each pass is reshuffled
        first, second = (np.concatenate([tf.nest.flatten(b)[-1].numpy() for b in
                                         kept[k * passes:(k + 1) * passes]]) for k in (0, 1))
        assert not np.array_equal(first, second)


def test_grey_levels_pass_through_when_binarisation_is_off():
    labeled, images = small_splits()
    batch = next(iter(data.unlabeled_dataset(images, 60, seed=1, binarized=False)))
    np.testing.assert_allclose(np.sort(batch.numpy().ravel()), np.sort(images.ravel()))


def test_evaluation_stream_is_ordered_and_fixed():
    labeled, _ = small_splits()
    first = [(x.numpy(), y.numpy()) for x, y in data.evaluation_dataset(labeled, 4, seed=2)]
    second = [(x.numpy(), y.numpy()) for x, y in data.evaluation_dataset(labeled, 4, seed=2)]
    assert [len(y) for _, y in first] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([y for _, y in first]), labeled.labels)
    for (a, _), (b, _) in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_split("train", data_dir=str(tmp_path / "nowhere"))


def test_real_mnist_splits_follow_the_paper(mnist_data_dir):
    validation = data.load_split("validation", data_dir=mnist_data_dir)
    assert validation.images.shape == (10000, 28, 28, 1)
    assert validation.images.dtype == np.float32
    assert 0.0 == validation.images.min() and validation.images.max() == 1.0
    assert set(np.unique(validation.labels)) == set(range(10))
    first = data.load_split("train", data_dir=mnist_data_dir, first=300)
    assert first.images.shape == (300, 28, 28, 1)
    # The same images as the head of the whole training split (its first 10,000 here).
    head = data.load_split("train[:10000]", data_dir=mnist_data_dir)
    np.testing.assert_array_equal(first.images, head.images[:300])
    np.testing.assert_array_equal(first.labels, head.labels[:300])


def test_withheld_split_names_the_way_out(mnist_data_dir):
    files = os.listdir(os.path.join(mnist_data_dir, "mnist", "3.0.1"))
    if any("-test." in name for name in files):
        pytest.skip("this copy of MNIST has a test split")
    with pytest.raises(ValueError, match="--eval_split=validation"):
        data.load_split("test", data_dir=mnist_data_dir)


def test_mock_tfds_data_loads_as_floats():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=20):
        split = data.load_split("train", "mnist")
    assert split.images.shape == (20, 28, 28, 1)
    assert split.images.max() <= 1.0 and split.labels.dtype == np.int64


def test_an_absent_dataset_that_cannot_be_downloaded_fails_fast_and_writes_nothing(
        tmp_path, monkeypatch):
    import time

    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import downloader

    retries = []

    def offline(self, *args, **kwargs):
        retries.append(downloader.MAX_RETRIES)
        os.makedirs(os.path.join(self.data_dir, "partial"))  # what TFDS leaves behind
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    data_dir = tmp_path / "datasets"
    data_dir.mkdir()
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"dataset 'mnist' is not prepared in .* could "
                                                r"not be downloaded \(ConnectionError"):
        data.dataset_info("mnist", str(data_dir))
    assert time.perf_counter() - started < 30
    assert retries == [1] and downloader.MAX_RETRIES == 10  # restored
    assert os.listdir(data_dir) == []
