"""Any TFDS image classification dataset: classes and image shape come from its info."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssl_dgm import builders, data, overrides, presets, serving
from ssl_dgm.train import evaluation, pipeline

# binary_alpha_digits: 36 classes of 20x16 images (MNIST: 10 of 28x28).
DATASET, CLASSES, SHAPE = "binary_alpha_digits", 36, (20, 16, 1)
TINY = {"data.dataset": DATASET, "data.labels": CLASSES, "data.batch_size": 40,
        "data.labeled_batch_size": 12, "data.eval_split": "validation",
        "m2.hidden_sizes": (7,), "m2.classifier_hidden_sizes": (6,), "m2.latent_size": 3,
        "m2.optimization.epochs": 1, "runtime.steps_per_execution": 2}


def test_dataset_info_gives_classes_shape_and_the_held_out_split(mnist_data_dir):
    info = data.dataset_info("mnist", mnist_data_dir)
    assert (info.num_classes, info.image_shape) == (10, (28, 28, 1))
    assert (info.split("train"), info.split("validation")) == ("train[:50000]",
                                                               "train[50000:]")
    # A run on the first N training images reads only those; never past the held-out cut.
    assert (info.split("train", 400), info.split("train", 60000),
            info.split("validation", 400)) == ("train[:400]", "train[:50000]", "train[50000:]")
    # TFDS interleaves a split's files as it reads: there the whole split is read and cut.
    sharded = dataclasses.replace(info, split_shards={"train": 2})
    assert sharded.split("train", 400) == "train[:50000]"
    with pytest.raises(ValueError, match="first=0: give a positive number"):
        info.split("train", 0)
    with tfds.testing.mock_data(num_examples=10):
        other = data.dataset_info(DATASET)
        # Sizes unknown, so the whole training split is read; the caller still gets N.
        whole = data.load_split("train", DATASET)
        first = data.load_split("train", DATASET, first=5)
    assert (other.num_classes, other.image_shape) == (CLASSES, SHAPE)
    assert len(whole) > len(first) == 5
    np.testing.assert_array_equal(first.images, whole.images[:5])


@pytest.mark.parametrize("model", ["m2", "m1m2"])
def test_another_dataset_trains_a_step_and_exports(model, tmp_path):
    config = presets.get(model)
    updates = dict(TINY)
    if model == "m1m2":
        updates.update({"m1.hidden_sizes": (9,), "m1.latent_size": 5,
                        "m1.optimization.epochs": 1})
    config = overrides.override(config, updates)
    with tfds.testing.mock_data(num_examples=400):
        results = pipeline.run(config, str(tmp_path / "run"), say=lambda *_: None)
    assert (results["num_classes"], results["image_shape"]) == (CLASSES, list(SHAPE))
    assert results["epochs_done"] == 1
    # The reloaded run scores what the run recorded, on the same (mock) images.
    with tfds.testing.mock_data(num_examples=400):
        model, _, _ = builders.load_trained(str(tmp_path / "run"))
        validation = data.load_split("validation", DATASET)
    errors = evaluation.split_errors(model, validation, config.seed)
    assert errors["error"] == pytest.approx(results["validation_error"])
    written = serving.export_run(str(tmp_path / "run"), str(tmp_path / "export"))
    classifier = tf.saved_model.load(written["classifier"]).signatures["serving_default"]
    images = np.random.default_rng(0).uniform(size=(3, *SHAPE)).astype(np.float32)
    probabilities = classifier(images=tf.constant(images))["probabilities"].numpy()
    assert probabilities.shape == (3, CLASSES)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    generator = tf.saved_model.load(written["generator"]).signatures["sample"]
    drawn = generator(labels=tf.constant([0, 35]), seed=tf.constant([1, 2]))["images"].numpy()
    assert drawn.shape == (2, *SHAPE) and 0.0 <= drawn.min() <= drawn.max() <= 1.0
