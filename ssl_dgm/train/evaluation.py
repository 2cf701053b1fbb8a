"""Classification error of a trained model on a split, on both input kinds."""

import numpy as np

from ssl_dgm import data


def evaluate_error(model, dataset):
    """Classification error of `model(x)` probabilities on ``(x, y)`` batches, a fraction."""
    wrong = total = 0
    for x, labels in dataset:
        predictions = np.argmax(model.predict_on_batch(x), axis=-1)
        wrong += int(np.sum(predictions != labels.numpy()))
        total += len(predictions)
    return wrong / total


def split_errors(model, split, seed, binarize=True):
    """Classification errors on `split`: ``error`` on the inputs training sees
    (once-binarised with `seed` when `binarize`, as in the validation passes) and,
    when binarised, ``error_grayscale`` on the stored intensities in [0, 1] (what the
    exported classifier is served)."""
    errors = {"error": evaluate_error(model, data.evaluation_dataset(split, 1000, seed,
                                                                      binarize))}
    if binarize:
        errors["error_grayscale"] = evaluate_error(
            model, data.evaluation_dataset(split, 1000, seed, binarized=False))
    return errors
